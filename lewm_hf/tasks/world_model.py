"""Task `world_model`: a LeWM world model on move trajectories of a walk corpus's graph.

Reads top to bottom: arguments -> data -> model -> trainer -> train -> save -> evaluate -> report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import set_seed

from .. import metric_keys as K
from ..configuration_lewm import LeWMConfig
from ..data.walks import (
    MoveTrajectoryConfig,
    WalkMetadata,
    build_move_trajectories,
    load_walk_metadata,
)
from ..errors import LeWMCollapseError, LeWMConfigError
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


def parse(
    parts: dict[str, dict[str, Any]], output_dir: Path, source: str
) -> WorldModelTaskArguments:
    """Build (and so validate) the phase's arguments from the recipe keys each target owns."""
    data = WalkCorpusArguments(**parts["data"])
    clips = MoveTrajectoryConfig(corpus=data.corpus_config(), **parts["clips"])
    LeWMConfig(**parts["config"])  # every model key is checked before anything runs
    return WorldModelTaskArguments(
        data=data,
        clips=clips,
        model=WorldModelArguments(**parts["model"]),
        config=dict(parts["config"]),
        training=build_training_arguments(
            LeWMTrainingArguments, parts["training"], output_dir, source
        ),
    )


def resolve_encoder_path(encoder_path: str | None, context: PhaseContext) -> str | None:
    """`previous` becomes the previous phase's `model_path`; a path or None is kept."""
    if encoder_path != "previous":
        return encoder_path
    if context.previous is None:
        raise LeWMConfigError("encoder_path", encoder_path, "there is no previous phase")
    return context.previous["model_path"]


def build_world_model(
    args: WorldModelTaskArguments, meta: WalkMetadata, encoder_path: str | None
) -> LeWMModel:
    """The world model: the recipe's `LeWMConfig` fields, sized to the clips' graph, around the
    encoder saved in `encoder_path` (or a fresh one when it is None).

    Args:
        args (`WorldModelTaskArguments`): The parsed arguments.
        meta (`WalkMetadata`): The clips' graph and jumpers.
        encoder_path (`str`, *optional*): A checkpoint folder (or Hub id) of the encoder.

    Returns:
        `LeWMModel`: The model.
    """
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

    Writes the model (`model.safetensors`, `config.json`), `result.json` and `curves.png` in the
    phase's output dir.

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
    set_seed(training_args.seed)

    # Data
    with training_args.main_process_first(desc="move trajectories"):
        clips = build_move_trajectories(args.clips, args.data.corpus_cache_dir)
    meta = load_walk_metadata(clips)

    # Model
    encoder_path = resolve_encoder_path(args.model.encoder_path, context)
    model = build_world_model(args, meta, encoder_path)

    # Trainer
    trainer = LeWMTrainer(
        model=model,
        args=training_args,
        train_dataset=clips["train"],
        eval_dataset=clips["validation"],
        window=args.clips.corpus.context_window,
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

    # Report
    result = trainer.build_result(context.name, **final)
    trainer.write_result(result)
    if result.get("collapse_stopped"):
        raise LeWMCollapseError(
            f"phase {context.name!r} stopped at step {trainer.state.global_step}: collapse alerts "
            f"{result['collapse_alerts']} (collapse_action: stop); see {training_args.output_dir}"
        )
    pred = result["curves"][K.PRED_LOSS]["value"]
    reg = result["curves"][K.REG_LOSS]["value"]
    return {
        "task": "world_model",
        "output_dir": training_args.output_dir,
        "model_path": training_args.output_dir,
        "encoder_path": encoder_path,
        **final,
        "final_pred_loss": pred[-1] if pred else None,
        "final_reg_loss": reg[-1] if reg else None,
        "reg_weight": model.config.reg_weight,
        "collapse_alerts": len(result.get("collapse_alerts", [])),
        "global_step": trainer.state.global_step,
        "wall_time_s": time.time() - start,
    }
