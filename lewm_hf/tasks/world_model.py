"""Task `world_model`: a LeWM world model on move trajectories of a walk corpus's graph.

Reads top to bottom: arguments -> data -> model -> trainer -> train -> save -> evaluate -> report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import metric_keys as K
from ..configuration_lewm import LeWMConfig
from ..data.walks import (
    MoveTrajectoryConfig,
    WalkMetadata,
    build_move_trajectories,
    load_walk_metadata,
)
from ..determinism import prepare_run
from ..errors import LeWMCollapseError, LeWMConfigError
from ..evaluation.suite import EvaluationArguments, run_evaluation_suite
from ..evaluation.world_model import evaluate_world_model
from ..hub import publish
from ..modeling_lewm import LeWMModel
from ..trainer.lewm_config import LeWMTrainingArguments
from ..trainer.lewm_trainer import LeWMTrainer
from .arguments import WalkCorpusArguments, WorldModelArguments
from .base import PhaseContext, build_training_arguments

# Recipe targets: each key belongs to exactly one of them.
TARGETS = {
    "data": WalkCorpusArguments,
    "clips": MoveTrajectoryConfig,
    "model": WorldModelArguments,
    "config": LeWMConfig,
    "training": LeWMTrainingArguments,
    "evaluation": EvaluationArguments,
}
# Keys that two targets declare, and their one owner: the corpus is chosen by the corpus keys
# (the clips' `corpus` field is filled from them), and the clips' history length is the model's.
OWNERS = {"corpus": "data", "history_length": "clips"}


@dataclass
class WorldModelTaskArguments:
    """The parsed arguments of a `world_model` phase.

    Args:
        data (`WalkCorpusArguments`): The walk corpus.
        clips (`MoveTrajectoryConfig`): The move clips (its `history_length` is the model's).
        model (`WorldModelArguments`): Where the state encoder comes from.
        config (`dict`): The `LeWMConfig` fields the recipe sets (validated at parse time).
        training (`LeWMTrainingArguments`): The trainer's arguments.
    """

    data: WalkCorpusArguments
    clips: MoveTrajectoryConfig
    model: WorldModelArguments
    config: dict[str, Any]
    training: LeWMTrainingArguments
    evaluation: EvaluationArguments


def parse(
    parts: dict[str, dict[str, Any]], output_dir: Path, source: str
) -> WorldModelTaskArguments:
    """Build (and so validate) the phase's arguments from the recipe keys each target owns."""
    data = WalkCorpusArguments(**parts["data"])
    clips = MoveTrajectoryConfig(corpus=data.corpus_config(), **parts["clips"])
    LeWMConfig(**parts["config"])  # every model key is checked before anything runs
    args = WorldModelTaskArguments(
        data=data,
        clips=clips,
        model=WorldModelArguments(**parts["model"]),
        config=dict(parts["config"]),
        training=build_training_arguments(
            LeWMTrainingArguments, parts["training"], output_dir, source
        ),
        evaluation=EvaluationArguments(**parts["evaluation"]),
    )
    check_lora_start(args)
    return args


# Parts of a model built around an encoder (not loaded whole) that start untrained.
FRESH_PARTS = ("projector", "action_encoder", "predictor")
# LeWMConfig keys a recipe may change when it starts from a whole saved world model; every other
# key is the checkpoint's architecture.
ADAPTABLE_CONFIG_KEYS = (
    "encoder_mode",
    "dropout",
    "pred_loss",
    "regularizer",
    "reg_weight",
    "loss_phase",
    "sigreg_num_slices",
    "sigreg_seed",
)


def check_lora_start(args: WorldModelTaskArguments) -> None:
    """LoRA on a model built around an encoder must train its fresh parts somehow.

    Raises:
        `LeWMConfigError`: when a fresh part (projector, action encoder, predictor) is neither
            adapted (`lora_targets`) nor trained in full (`lora_modules_to_save`).
    """
    training = args.training
    if not training.lora_targets or args.model.model_name_or_path:
        return
    idle = [
        part
        for part in FRESH_PARTS
        if part not in training.lora_targets and part not in training.lora_modules_to_save
    ]
    if idle:
        raise LeWMConfigError(
            "lora_targets",
            list(training.lora_targets),
            f"the model is built around an encoder, so {idle} start untrained: add them to "
            "lora_modules_to_save (trained in full) or start from a saved world model "
            "(model_name_or_path)",
        )


def resolve_encoder_path(encoder_path: str | None, context: PhaseContext) -> str | None:
    """`previous` becomes the previous phase's `model_path`; a path or None is kept."""
    if encoder_path != "previous":
        return encoder_path
    if context.previous is None:
        raise LeWMConfigError("encoder_path", encoder_path, "there is no previous phase")
    return context.previous["model_path"]


def resolve_model_path(model_path: str | None, context: PhaseContext) -> str | None:
    """`model_name_or_path: previous` becomes the previous phase's `model_path`."""
    if model_path != "previous":
        return model_path
    if context.previous is None:
        raise LeWMConfigError("model_name_or_path", model_path, "there is no previous phase")
    return context.previous["model_path"]


def load_world_model(args: WorldModelTaskArguments, meta: WalkMetadata, path: str) -> LeWMModel:
    """A whole saved world model (`model_name_or_path`), with the recipe's adaptable keys.

    Raises:
        `LeWMConfigError`: when the checkpoint cannot be loaded, a recipe key would change its
            architecture, or it does not fit the clips (history length, action vocabulary).
    """
    try:
        saved = LeWMConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise LeWMConfigError("model_name_or_path", path, f"cannot load: {err}") from err
    overrides = {}
    for key, value in args.config.items():
        if key in ADAPTABLE_CONFIG_KEYS:
            overrides[key] = value
        elif getattr(saved, key, None) != value:
            raise LeWMConfigError(
                key, value, f"is fixed by model_name_or_path={path} ({getattr(saved, key, None)!r})"
            )
    if saved.history_length != args.clips.history_length:
        raise LeWMConfigError(
            "history_length",
            args.clips.history_length,
            f"model_name_or_path={path} was trained with history_length={saved.history_length}",
        )
    if saved.action_vocab_size < meta.graph.max_out_degree:
        raise LeWMConfigError(
            "model_name_or_path",
            path,
            f"its action_vocab_size={saved.action_vocab_size} is below this graph's out-degree "
            f"{meta.graph.max_out_degree} (pick another corpus seed or train a new model)",
        )
    return LeWMModel.from_pretrained(path, **overrides)


def build_world_model(
    args: WorldModelTaskArguments,
    meta: WalkMetadata,
    encoder_path: str | None,
    model_path: str | None = None,
) -> LeWMModel:
    """The world model: the saved one in `model_path`, else the recipe's `LeWMConfig` fields,
    sized to the clips' graph, around the encoder saved in `encoder_path` (or a fresh one when it
    is None).

    Args:
        args (`WorldModelTaskArguments`): The parsed arguments.
        meta (`WalkMetadata`): The clips' graph and jumpers.
        encoder_path (`str`, *optional*): A checkpoint folder (or Hub id) of the encoder.
        model_path (`str`, *optional*): A saved `LeWMModel` (folder or Hub id) to start from.

    Returns:
        `LeWMModel`: The model.
    """
    if model_path:
        return load_world_model(args, meta, model_path)
    kwargs = dict(args.config)
    kwargs["history_length"] = args.clips.history_length
    max_degree = meta.graph.max_out_degree
    kwargs.setdefault("action_vocab_size", max_degree)
    if kwargs["action_vocab_size"] < max_degree:
        raise LeWMConfigError(
            "action_vocab_size",
            kwargs["action_vocab_size"],
            f"the graph has out-degree up to {max_degree}",
        )
    if encoder_path:
        return LeWMModel.from_encoder_pretrained(encoder_path, **kwargs)
    kwargs.setdefault("vocab_size", meta.graph.num_vertices)
    return LeWMModel(LeWMConfig(**kwargs))


def main(args: WorldModelTaskArguments, context: PhaseContext) -> dict[str, Any]:
    """Train a LeWM world model on move trajectories and evaluate it on held-out clips.

    Writes the model (`model.safetensors`, `config.json`; under LoRA the adapters,
    `adapter_config.json` and `adapter_model.safetensors`), `result.json`, `curves.png`,
    `determinism.json`, `recipe.yaml` and the model card `README.md` in the phase's output dir,
    and pushes them with `push_to_hub`. A run that starts from a saved world model
    (`model_name_or_path`) also reports that model's metrics on this run's data
    (`before_eval_pred_mse`, `before_eval_copy_mse`).

    Args:
        args (`WorldModelTaskArguments`): The parsed arguments.
        context (`PhaseContext`): Phase name, previous phase, resume checkpoint.

    Returns:
        `dict[str, Any]`: The phase summary (`eval_pred_mse`, `eval_copy_mse`, losses, ...).

    Raises:
        `LeWMCollapseError`: when the collapse monitor stopped training (`collapse_action: stop`),
            after `result.json` is written.
    """
    start = time.time()
    training_args = args.training
    seeds = prepare_run(training_args, context.recipe)

    # Data
    with training_args.main_process_first(desc="move trajectories"):
        clips = build_move_trajectories(args.clips, args.data.corpus_cache_dir)
    meta = load_walk_metadata(clips)

    # Model
    model_path = resolve_model_path(args.model.model_name_or_path, context)
    encoder_path = None if model_path else resolve_encoder_path(args.model.encoder_path, context)
    model = build_world_model(args, meta, encoder_path, model_path)

    # Trainer
    trainer = LeWMTrainer(
        model=model,
        args=training_args,
        train_dataset=clips["train"],
        eval_dataset=clips["validation"],
        window=args.clips.corpus.context_window,
    )

    # A saved world model is first evaluated as it is, on this run's data: `before_eval_*`
    # (held-out MSE and, with `run_evaluation`, action discrimination).
    before = {}
    if model_path:
        metrics = trainer.evaluate()
        before = {
            K.BEFORE_PREFIX + key: metrics.get(key) for key in (K.EVAL_PRED_MSE, K.EVAL_COPY_MSE)
        }
        if args.evaluation.run_evaluation:
            start_eval = evaluate_world_model(model, meta, args.evaluation.configs()[0])
            before.update(
                {
                    K.BEFORE_PREFIX + key: value
                    for key, value in start_eval.items()
                    if key.startswith(K.EVAL_ACTION_PREFIX)
                }
            )

    # Train
    trainer.train(resume_from_checkpoint=context.resume)

    # Save
    trainer.save_model()

    # Evaluate: the final evaluation reuses the last logged one when it ran on the final weights.
    metrics = trainer.final_metrics()
    final = {
        key: metrics.get(key)
        for key in (K.EVAL_PRED_MSE, K.EVAL_COPY_MSE, K.EVAL_PRED_LOSS, K.EVAL_REG_LOSS)
    }
    # ... then action discrimination, rollouts, surprise and planning on held-out walks.
    if args.evaluation.run_evaluation:
        evaluated = trainer.accelerator.unwrap_model(trainer.model)
        final.update(run_evaluation_suite(evaluated, meta, args.evaluation))

    # Report
    result = trainer.build_result(context.name, **final, **before, seeds=vars(seeds))
    trainer.write_result(result)
    if result.get("collapse_stopped"):
        raise LeWMCollapseError(
            f"phase {context.name!r} stopped at step {trainer.state.global_step}: collapse alerts "
            f"{result['collapse_alerts']} (collapse_action: stop); see {training_args.output_dir}"
        )
    publish(trainer)  # the model card, and the Hub upload with `push_to_hub`
    pred = result["curves"][K.PRED_LOSS]["value"]
    reg = result["curves"][K.REG_LOSS]["value"]
    return {
        "task": "world_model",
        "output_dir": training_args.output_dir,
        "model_path": training_args.output_dir,
        "encoder_path": encoder_path,
        "model_name_or_path": model_path,
        **final,
        **before,
        K.TRAINABLE_FRACTION: result[K.TRAINABLE_FRACTION],
        "final_pred_loss": pred[-1] if pred else None,
        "final_reg_loss": reg[-1] if reg else None,
        "reg_weight": model.config.reg_weight,
        "collapse_alerts": len(result.get("collapse_alerts", [])),
        "global_step": trainer.state.global_step,
        "wall_time_s": time.time() - start,
    }
