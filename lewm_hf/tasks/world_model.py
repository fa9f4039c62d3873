"""The world-model runner: one runner for every kind of trajectory data.

Tasks `world_model` (graph walks) and `edit_world_model` (DNA edits) are this runner, each
given its domain (`lewm_hf.tasks.domains`): the domain builds the trajectories, codes the
actions and runs its evaluation; everything else is here, once.

Reads top to bottom: arguments -> data -> model -> trainer -> train -> save -> evaluate ->
report -> publish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedConfig

from .. import metric_keys as K
from ..checkpoints import check_checkpoint_fits
from ..configuration_lewm import LeWMConfig
from ..determinism import derive_seed, prepare_run
from ..errors import LeWMCollapseError, LeWMConfigError
from ..hub import publish
from ..modeling_lewm import LeWMModel
from ..trainer.lewm_config import LeWMTrainingArguments, check_streaming_feature_cache
from ..trainer.lewm_trainer import LeWMTrainer
from .arguments import WorldModelArguments
from .base import PhaseContext, build_training_arguments, resolve_previous
from .domains import WorldModelData, WorldModelDomain

# Recipe targets every world-model task has; its domain adds the data and evaluation ones.
MODEL_TARGETS = {
    "model": WorldModelArguments,
    "config": LeWMConfig,
    "training": LeWMTrainingArguments,
}
# Parts of a model built around an encoder (not loaded whole) that start untrained.
FRESH_PARTS = ("projector", "action_encoder", "predictor")
# LeWMConfig keys a recipe may change when it starts from a whole saved world model; every other
# key is the checkpoint's architecture (or its action coding) and must equal the saved value.
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


@dataclass
class WorldModelTaskArguments:
    """The parsed arguments of a world-model phase.

    Args:
        domain (`Any`): The domain's arguments (`WalkArguments`, `EditArguments`): data and
            evaluation.
        model (`WorldModelArguments`): Where the state encoder (or the whole model) comes from.
        config (`dict`): The `LeWMConfig` keys the recipe sets (validated at parse time).
        training (`LeWMTrainingArguments`): The trainer's arguments.
    """

    domain: Any
    model: WorldModelArguments
    config: dict[str, Any]
    training: LeWMTrainingArguments


class WorldModelTask:
    """A world-model task: this module's runner with one domain.

    Args:
        domain (`WorldModelDomain`): What differs between kinds of trajectory data.
    """

    def __init__(self, domain: WorldModelDomain):
        self.domain = domain
        self.TARGETS = {**domain.targets, **MODEL_TARGETS}
        self.OWNERS = dict(domain.owners)
        # The `LeWMConfig` defaults this task sets otherwise (shown by `--help`).
        self.DEFAULTS = {"config": dict(domain.help_defaults)}

    def parse(
        self, parts: dict[str, dict[str, Any]], output_dir: Path, source: str
    ) -> WorldModelTaskArguments:
        """Build (and so validate) the phase's arguments from the recipe keys each target owns."""
        training = build_training_arguments(
            LeWMTrainingArguments, parts["training"], output_dir, source
        )
        model = WorldModelArguments(**parts["model"])
        if model.model_name_or_path and parts["model"].get("encoder_path") is not None:
            raise LeWMConfigError(
                "encoder_path",
                model.encoder_path,
                f"model_name_or_path={model.model_name_or_path} loads a whole world model, "
                "encoder included: set encoder_path to null",
            )
        if not model.model_name_or_path and "grow_action_vocab" in parts["model"]:
            raise LeWMConfigError(
                "grow_action_vocab",
                model.grow_action_vocab,
                "grows the action embedding of a saved world model (model_name_or_path); a new "
                "model is sized for its data: remove it",
            )
        args = WorldModelTaskArguments(
            domain=self.domain.parse(parts, training),
            model=model,
            config=dict(parts["config"]),
            training=training,
        )
        # Every model key is checked before anything runs; a new model's fit to the domain too
        # (a saved model's is checked once it is read).
        config = LeWMConfig(
            **{**self.domain.config_defaults(args.domain, args.config, None), **args.config}
        )
        if not model.model_name_or_path:
            self.domain.check_config(config, args.domain, None)
            check_streaming_feature_cache(training, config.encoder_mode)
        check_lora_start(args)
        return args

    def main(self, args: WorldModelTaskArguments, context: PhaseContext) -> dict[str, Any]:
        """Run the phase: see `run_world_model`."""
        return run_world_model(self.domain, args, context)


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


def read_saved_config(path: str) -> LeWMConfig:
    """The `LeWMConfig` of a saved world model (a folder or a Hub id).

    Raises:
        `LeWMConfigError`: when it cannot be read, or it is not a LeWM world model (an encoder
            LM belongs in `encoder_path`).
    """
    try:
        raw, _ = PreTrainedConfig.get_config_dict(path)
    except (OSError, ValueError) as err:
        raise LeWMConfigError("model_name_or_path", path, f"cannot load: {err}") from err
    model_type = raw.get("model_type")
    if model_type != LeWMConfig.model_type:
        raise LeWMConfigError(
            "model_name_or_path",
            path,
            f"is not a LeWM world model (its config.json has model_type {model_type!r}, not "
            f"{LeWMConfig.model_type!r}); to build a world model around this encoder, give it "
            "as encoder_path",
        )
    return LeWMConfig.from_pretrained(path)


def load_world_model(
    domain: WorldModelDomain, args: WorldModelTaskArguments, data: WorldModelData, path: str
) -> LeWMModel:
    """A whole saved world model, with the recipe's config keys applied or rejected.

    Every `LeWMConfig` key the recipe sets is either applied (`ADAPTABLE_CONFIG_KEYS`) or must
    equal the saved value: none is dropped. When the data has more actions than the saved
    `action_vocab_size` and `grow_action_vocab` is on, the action embedding grows to fit
    (`LeWMModel.grow_action_vocab`, new rows seeded from the run's seed); otherwise the
    domain's `check_config` rejects it.

    Raises:
        `LeWMConfigError`: when the checkpoint cannot be loaded or is no world model, a recipe
            key would change its architecture, or it does not fit the domain's data.
    """
    saved = read_saved_config(path)
    overrides = {}
    for key, value in args.config.items():
        if key in ADAPTABLE_CONFIG_KEYS:
            overrides[key] = value
        elif getattr(saved, key) != value:
            raise LeWMConfigError(
                key, value, f"is fixed by model_name_or_path={path} ({getattr(saved, key)!r})"
            )
    for key, value in overrides.items():
        setattr(saved, key, value)
    needed = required_action_vocab(domain, args, data)
    grow = args.model.grow_action_vocab and needed > saved.action_vocab_size
    if grow:
        saved.action_vocab_size = needed
    domain.check_config(saved, args.domain, data)
    model = LeWMModel.from_pretrained(path, **overrides)
    if grow:
        # The grown model is no longer the checkpoint at `path`: under LoRA the trainer saves it
        # beside the adapters (`base_model/`), which the adapter then names.
        model.grow_action_vocab(needed, seed=derive_seed(args.training.seed, "action_vocab"))
    return model


def required_action_vocab(
    domain: WorldModelDomain, args: WorldModelTaskArguments, data: WorldModelData
) -> int:
    """The action vocabulary the domain's data needs of a saved model it may grow, or 0 for a
    domain whose action vocabulary cannot grow (its `action_vocab_needed` is missing or None:
    the edit domain's action tokens are the DNA tokenizer's)."""
    needed = getattr(domain, "action_vocab_needed", None)
    value = needed(args.domain, data) if needed is not None else None
    return 0 if value is None else int(value)


def build_world_model(
    domain: WorldModelDomain,
    args: WorldModelTaskArguments,
    data: WorldModelData,
    encoder_path: str | None,
    model_path: str | None,
) -> LeWMModel:
    """The world model: the saved one in `model_path`, else the recipe's `LeWMConfig` keys over
    the domain's defaults, around the encoder saved in `encoder_path` (or a fresh one when it
    is None).

    Returns:
        `LeWMModel`: The model.
    """
    if model_path:
        return load_world_model(domain, args, data, model_path)
    kwargs = {**domain.config_defaults(args.domain, args.config, data), **args.config}
    if encoder_path:
        model = LeWMModel.from_encoder_pretrained(encoder_path, **kwargs)
    else:
        kwargs.setdefault("vocab_size", domain.fresh_vocab_size(data))
        model = LeWMModel(LeWMConfig(**kwargs))
    domain.check_config(model.config, args.domain, data)
    return model


def run_world_model(
    domain: WorldModelDomain, args: WorldModelTaskArguments, context: PhaseContext
) -> dict[str, Any]:
    """Train a LeWM world model on the domain's trajectories and evaluate it on held-out rows.

    Writes the model (`model.safetensors`, `config.json`; under LoRA the adapters), a tokenizer
    where the domain has one, `result.json`, `curves.png`, `determinism.json`, `recipe.yaml` and
    the model card `README.md` in the phase's output dir, and pushes them with `push_to_hub`.
    A run that starts from a saved world model (`model_name_or_path`) also reports that model's
    numbers on this run's data (`before_eval_*`).

    Args:
        domain (`WorldModelDomain`): The kind of trajectory data.
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
    with training_args.main_process_first(desc=domain.description):
        data = domain.build_data(args.domain)

    # Model
    model_path = resolve_previous(args.model.model_name_or_path, context, "model_name_or_path")
    encoder_path = None
    if not model_path:
        encoder_path = resolve_previous(args.model.encoder_path, context, "encoder_path")
    model = build_world_model(domain, args, data, encoder_path, model_path)
    # A domain may fit its rows to the model (trajectories: clips of `history_length` actions).
    fit_data = getattr(domain, "fit_data", None)
    if fit_data is not None:
        data = fit_data(model, args.domain, data)
    if context.resume:
        check_checkpoint_fits(context.resume, model, "resume_from_checkpoint")

    # Trainer
    trainer = LeWMTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        **domain.trainer_kwargs(model, args.domain, data),
    )
    trainer = context.prepare_trainer(trainer)

    # A saved world model is first evaluated as it is, on this run's data: `before_eval_*`.
    before = {}
    if model_path:
        metrics = trainer.evaluate()
        before = {key: metrics.get(key) for key in (K.EVAL_PRED_MSE, K.EVAL_COPY_MSE)}
        before.update(domain.before_evaluation(model, args.domain, data))
        before = {K.BEFORE_PREFIX + key: value for key, value in before.items()}

    # Train
    trainer.train(resume_from_checkpoint=context.resume)

    # Save
    trainer.save_model()

    # Evaluate: the final evaluation reuses the last logged one when it ran on the final weights,
    # then the domain's evaluation of the trained model.
    metrics = trainer.final_metrics()
    final = {
        key: metrics.get(key)
        for key in (K.EVAL_PRED_MSE, K.EVAL_COPY_MSE, K.EVAL_PRED_LOSS, K.EVAL_REG_LOSS)
    }
    if args.domain.evaluation.run_evaluation:
        evaluated = trainer.accelerator.unwrap_model(trainer.model)
        final.update(domain.evaluate(evaluated, args.domain, data))

    # Report
    result = trainer.build_result(context.name, **final, **before, seeds=vars(seeds))
    trainer.write_result(result)
    if result.get("collapse_stopped"):
        raise LeWMCollapseError(
            f"phase {context.name!r} stopped at step {trainer.state.global_step}: collapse alerts "
            f"{result['collapse_alerts']} (collapse_action: stop); see {training_args.output_dir}"
        )

    # Publish: the model card, and the Hub upload with `push_to_hub`
    publish(trainer)
    pred = result["curves"][K.PRED_LOSS]["value"]
    reg = result["curves"][K.REG_LOSS]["value"]
    return {
        "task": domain.name,
        "output_dir": training_args.output_dir,
        "model_path": training_args.output_dir,
        "encoder_path": encoder_path,
        "model_name_or_path": model_path,
        **final,
        **before,
        **data.summary,
        K.TRAINABLE_FRACTION: result[K.TRAINABLE_FRACTION],
        "final_pred_loss": pred[-1] if pred else None,
        "final_reg_loss": reg[-1] if reg else None,
        "reg_weight": model.config.reg_weight,
        "collapse_alerts": len(result.get("collapse_alerts", [])),
        "global_step": trainer.state.global_step,
        "wall_time_s": time.time() - start,
    }


__all__ = [
    "ADAPTABLE_CONFIG_KEYS",
    "WorldModelTask",
    "WorldModelTaskArguments",
    "build_world_model",
    "check_lora_start",
    "load_world_model",
    "read_saved_config",
    "required_action_vocab",
    "run_world_model",
]
