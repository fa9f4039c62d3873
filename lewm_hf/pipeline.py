"""Recipe phases: the walk LM (encoder phase) and the LeWM world model, run on the HF Trainer.

`run_recipe` composes a recipe (`lewm_hf.recipe`), runs its phases in order (each starting from
the previous phase's output), and writes `summary.json` in the run's output dir. Entry scripts
(`recipes/train.py`) only parse the command line and call it.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainerState, set_seed
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_utils import get_last_checkpoint

from .configuration_lewm import LeWMConfig
from .data.collators import DataCollatorForWalkLM
from .data.walks import (
    MoveTrajectoryConfig,
    WalkCorpusConfig,
    build_move_trajectories,
    build_walk_corpus,
    load_walk_metadata,
)
from .errors import LeWMConfigError
from .evaluation.compliance import ComplianceGate
from .modeling_lewm import LeWMModel
from .recipe import Recipe, field_types, load_recipe, split_phase_keys
from .trainer.callbacks import (
    GATE_CHECKPOINT,
    ComplianceGateCallback,
    RunResultCallback,
    SummaryProgressCallback,
    console,
    write_json,
)
from .trainer.lewm_config import LeWMTrainingArguments, WalkLMTrainingArguments
from .trainer.lewm_trainer import LeWMTrainer

TASKS = ("lm", "world_model")
SUMMARY_FILE = "summary.json"


@dataclass
class WalkDataArguments:
    """Data arguments shared by walk phases.

    Args:
        corpus_preset (`str`, defaults to `"small"`): `WalkCorpusConfig` preset.
        corpus (`dict`, defaults to `{}`): `WalkCorpusConfig` field overrides.
        corpus_cache_dir (`str`, *optional*): Corpus cache root (default `$LEWM_HF_CACHE` or
            `~/.cache/lewm_hf/corpora`).
        history_length (`int`, defaults to 3): World-model clip actions (H).
        num_clips (`int`, defaults to 20000): World-model training clips.
        eval_clips (`int`, defaults to 2000): Held-out clips.
        clips_per_walk (`int`, defaults to 4): Clips cut per generated walk.
        trajectory_seed (`int`, defaults to 0): Seed of the clip walks.
    """

    corpus_preset: str = "small"
    corpus: dict = field(default_factory=dict)
    corpus_cache_dir: str | None = None
    history_length: int = 3
    num_clips: int = 20000
    eval_clips: int = 2000
    clips_per_walk: int = 4
    trajectory_seed: int = 0

    def corpus_config(self) -> WalkCorpusConfig:
        valid = {f.name for f in dataclasses.fields(WalkCorpusConfig)}
        for key in self.corpus:
            if key not in valid:
                raise LeWMConfigError(f"corpus.{key}", self.corpus[key], "unknown corpus field")
        return WalkCorpusConfig.preset(self.corpus_preset, **self.corpus)

    def trajectory_config(self) -> MoveTrajectoryConfig:
        return MoveTrajectoryConfig(
            corpus=self.corpus_config(),
            history_length=self.history_length,
            num_clips=self.num_clips,
            eval_clips=self.eval_clips,
            clips_per_walk=self.clips_per_walk,
            seed=self.trajectory_seed,
        )


@dataclass
class WalkLMModelArguments:
    """The encoder-phase model: any `transformers` causal LM built from a config.

    Args:
        model_name_or_path (`str`, *optional*): A local checkpoint to start from instead.
        model_type (`str`, defaults to `"llama"`): Architecture (`AutoConfig.for_model`).
        hidden_size (`int`, defaults to 128), num_hidden_layers (`int`, defaults to 4),
        num_attention_heads (`int`, defaults to 4), intermediate_size (`int`, defaults to 512):
            Size of the default CPU-sized model.
        model_config_overrides (`dict`, defaults to `{}`): Any other config fields.
    """

    model_name_or_path: str | None = None
    model_type: str = "llama"
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512
    model_config_overrides: dict = field(default_factory=dict)


@dataclass
class WorldModelArguments:
    """Where the world model's state encoder comes from (other `LeWMConfig` fields sit beside).

    Args:
        encoder_path (`str`, *optional*, defaults to `"previous"`): `"previous"` (the previous
            phase's model: its gate checkpoint when the gate passed), a local path, or null to
            build the encoder from `encoder_config`.
    """

    encoder_path: str | None = "previous"


def lewm_config_fields() -> dict[str, Any]:
    """Keyword arguments of `LeWMConfig` with their annotations (recipe keys of the model)."""
    hints = typing.get_type_hints(LeWMConfig.__init__)
    params = inspect.signature(LeWMConfig.__init__).parameters
    return {
        name: hints.get(name, Any)
        for name, p in params.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }


def build_walk_lm(model_args: WalkLMModelArguments, vocab_size: int, max_positions: int):
    """Build the encoder-phase causal LM (vocabulary = vertices).

    Args:
        model_args (`WalkLMModelArguments`): The model arguments.
        vocab_size (`int`): Number of vertices.
        max_positions (`int`): Longest context the model will see.

    Returns:
        `PreTrainedModel`: A causal LM.
    """
    if model_args.model_name_or_path:
        path = Path(model_args.model_name_or_path)
        if not (path / "config.json").is_file():
            raise LeWMConfigError("model_name_or_path", str(path), "no config.json there")
        return AutoModelForCausalLM.from_pretrained(path)
    kwargs = {
        "vocab_size": vocab_size,
        "hidden_size": model_args.hidden_size,
        "num_hidden_layers": model_args.num_hidden_layers,
        "num_attention_heads": model_args.num_attention_heads,
        "intermediate_size": model_args.intermediate_size,
        "max_position_embeddings": max_positions,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        **model_args.model_config_overrides,
    }
    try:
        config = AutoConfig.for_model(model_args.model_type, **kwargs)
    except ValueError as err:
        raise LeWMConfigError("model_type", model_args.model_type, str(err)) from err
    return AutoModelForCausalLM.from_config(config)


def _training_args(cls: type, kwargs: dict[str, Any], output_dir: Path, source: str):
    kwargs = {**kwargs, "output_dir": str(output_dir)}
    # Pinned memory only helps host-to-GPU copies (and warns at every epoch without a GPU).
    kwargs.setdefault("dataloader_pin_memory", torch.cuda.is_available())
    try:
        return cls(**kwargs)
    except LeWMConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise LeWMConfigError("training arguments", source, str(err)) from err


def _resume_arg(value: Any, output_dir: Path) -> str | bool | None:
    if value in (None, False):
        return None
    if value is True:
        if get_last_checkpoint(str(output_dir)) is None:
            raise LeWMConfigError(
                "resume_from_checkpoint", True, f"no checkpoint-* folder in {output_dir}"
            )
        return True
    if not Path(str(value)).is_dir():
        raise LeWMConfigError("resume_from_checkpoint", value, "checkpoint folder not found")
    return str(value)


def _gate_passed_checkpoint(
    resume: str | bool | None, output_dir: Path
) -> tuple[str, TrainerState] | None:
    """The checkpoint to resume from and its state, when the compliance gate had already passed
    in it (training on would overwrite `gate_checkpoint` with a later model while `result.json`
    keeps the first pass's step and numbers)."""
    if not resume:
        return None
    checkpoint = get_last_checkpoint(str(output_dir)) if resume is True else str(resume)
    state = TrainerState.load_from_json(os.path.join(checkpoint, "trainer_state.json"))
    if any(e.get("eval_gate_passed") == 1.0 for e in state.log_history):
        return checkpoint, state
    return None


def _use_summary_progress(trainer: Trainer) -> None:
    if not trainer.args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(SummaryProgressCallback())


def run_lm_phase(
    name: str,
    model_args: WalkLMModelArguments,
    data_args: WalkDataArguments,
    args: WalkLMTrainingArguments,
    resume_from_checkpoint: str | bool | None = None,
) -> dict[str, Any]:
    """Train a walk LM until the compliance gate passes (or the budget ends).

    Writes the final model, `result.json`, `curves.png` and (on a pass) `gate_checkpoint/` in
    `args.output_dir`.

    Returns:
        `dict[str, Any]`: The phase summary (`gate_passed`, losses, compliance, `model_path`).
    """
    start = time.time()
    set_seed(args.seed)
    corpus_cfg = data_args.corpus_config()
    with args.main_process_first(desc="walk corpus"):
        corpus = build_walk_corpus(corpus_cfg, data_args.corpus_cache_dir)
    meta = load_walk_metadata(corpus)
    w = corpus_cfg.context_window
    passed = _gate_passed_checkpoint(resume_from_checkpoint, Path(args.output_dir))
    if passed is not None:
        model = AutoModelForCausalLM.from_pretrained(passed[0])
    else:
        model = build_walk_lm(model_args, meta.graph.num_vertices, max_positions=2 * w + 2)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=corpus["train"],
        eval_dataset=corpus["validation"],
        data_collator=DataCollatorForWalkLM(),
    )
    _use_summary_progress(trainer)
    gate = ComplianceGate(
        edge_threshold=args.gate_edge_threshold,
        rule_threshold=args.gate_rule_threshold,
        min_rule_checks=args.gate_min_rule_checks,
    )
    gate_cb = ComplianceGateCallback(
        trainer,
        meta.graph,
        meta.jumpers,
        np.asarray(corpus["validation_walks"]["walk"]),
        w,
        gate,
        rule=args.gate_context_rule,
        decoding=args.gate_decoding,
        num_sequences=args.gate_num_sequences,
        temperature=args.gate_temperature,
        log_sampled=args.gate_log_other_decoding,
        seed=args.seed,
        batch_size=args.gate_batch_size,
    )
    curves = {
        "eval_loss": "eval_loss",
        "edge_compliance": "eval_edge_compliance",
        "rule_compliance": "eval_rule_compliance",
        "sampled_edge_compliance": "eval_sampled_edge_compliance",
        "sampled_rule_compliance": "eval_sampled_rule_compliance",
    }
    result_cb = RunResultCallback(name, curves, [gate_cb])
    trainer.add_callback(gate_cb)
    trainer.add_callback(result_cb)
    if passed is None:
        train_loss_mean = trainer.train(resume_from_checkpoint=resume_from_checkpoint).training_loss
    else:
        checkpoint, trainer.state = passed
        console(f"[resume] {name}: the gate already passed in {checkpoint}; not training further")
        result_cb.on_train_end(args, trainer.state, trainer.control)
        train_loss_mean = None
    trainer.save_model()
    result = result_cb.build(trainer.state)
    out_dir = Path(args.output_dir)
    model_path = out_dir / GATE_CHECKPOINT if result["gate_passed"] else out_dir
    losses = result["curves"]["train_loss"]["value"]
    return {
        "task": "lm",
        "output_dir": str(out_dir),
        "model_path": str(model_path),
        "gate_passed": result["gate_passed"],
        "gate_step": result.get("gate_step"),
        "edge_compliance": result.get("edge_compliance", result.get("final_edge_compliance")),
        "rule_compliance": result.get("rule_compliance", result.get("final_rule_compliance")),
        "failure_reason": result.get("failure_reason"),
        "final_train_loss": losses[-1] if losses else None,
        "global_step": trainer.state.global_step,
        "train_loss_mean": train_loss_mean,
        "wall_time_s": time.time() - start,
    }


def run_world_model_phase(
    name: str,
    model_kwargs: dict[str, Any],
    data_args: WalkDataArguments,
    args: LeWMTrainingArguments,
    previous: dict[str, Any] | None = None,
    resume_from_checkpoint: str | bool | None = None,
) -> dict[str, Any]:
    """Train a LeWM world model on move trajectories.

    Args:
        name (`str`): Phase name.
        model_kwargs (`dict`): `encoder_path` plus `LeWMConfig` fields.
        data_args (`WalkDataArguments`): Corpus and clip arguments.
        args (`LeWMTrainingArguments`): Training arguments.
        previous (`dict`, *optional*): The previous phase's summary (for `encoder_path: previous`).
        resume_from_checkpoint (`str` or `bool`, *optional*): Resume.

    Returns:
        `dict[str, Any]`: The phase summary (losses, `eval_pred_mse`, `eval_copy_mse`, ...).
    """
    start = time.time()
    set_seed(args.seed)
    traj_cfg = data_args.trajectory_config()
    with args.main_process_first(desc="move trajectories"):
        clips = build_move_trajectories(traj_cfg, data_args.corpus_cache_dir)
    meta = load_walk_metadata(clips)
    kwargs = dict(model_kwargs)
    encoder_path = kwargs.pop("encoder_path", "previous")
    kwargs.setdefault("action_vocab_size", meta.graph.max_out_degree)
    kwargs.setdefault("history_length", traj_cfg.history_length)
    if kwargs["action_vocab_size"] < meta.graph.max_out_degree:
        raise LeWMConfigError(
            "action_vocab_size",
            kwargs["action_vocab_size"],
            f"the graph has out-degree up to {meta.graph.max_out_degree}",
        )
    if encoder_path == "previous":
        if previous is None:
            raise LeWMConfigError("encoder_path", encoder_path, "there is no previous phase")
        encoder_path = previous["model_path"]
    if encoder_path:
        model = LeWMModel.from_encoder_pretrained(encoder_path, **kwargs)
    else:
        kwargs.setdefault("vocab_size", meta.graph.num_vertices)
        model = LeWMModel(LeWMConfig(**kwargs))
    trainer = LeWMTrainer(
        model=model,
        args=args,
        train_dataset=clips["train"],
        eval_dataset=clips["validation"],
        window=traj_cfg.corpus.context_window,
    )
    _use_summary_progress(trainer)
    curves = {
        "pred_loss": "pred_loss",
        "reg_loss": "reg_loss",
        "eval_pred_mse": "eval_pred_mse",
        "eval_copy_mse": "eval_copy_mse",
        "lr_multiplier": "lr_multiplier",
    }
    contributors = [trainer.collapse_monitor] if trainer.collapse_monitor else []
    result_cb = RunResultCallback(name, curves, contributors)
    trainer.add_callback(result_cb)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model()
    metrics = _final_eval_metrics(trainer)
    result = result_cb.build(trainer.state)
    final = {
        "eval_pred_mse": metrics.get("eval_pred_mse"),
        "eval_copy_mse": metrics.get("eval_copy_mse"),
        "eval_pred_loss": metrics.get("eval_pred_loss"),
        "eval_reg_loss": metrics.get("eval_reg_loss"),
    }
    result.update(final)
    if trainer.is_world_process_zero():
        write_json(Path(args.output_dir) / "result.json", result)
    pred = result["curves"]["pred_loss"]["value"]
    reg = result["curves"]["reg_loss"]["value"]
    return {
        "task": "world_model",
        "output_dir": args.output_dir,
        "model_path": args.output_dir,
        "encoder_path": encoder_path,
        **final,
        "final_pred_loss": pred[-1] if pred else None,
        "final_reg_loss": reg[-1] if reg else None,
        "collapse_alerts": len(result.get("collapse_alerts", [])),
        "global_step": trainer.state.global_step,
        "wall_time_s": time.time() - start,
    }


def _final_eval_metrics(trainer: Trainer) -> dict[str, Any]:
    """Evaluation metrics of the final model: the last logged evaluation when it ran at the final
    step on the final weights (no best-model reload), else a fresh `evaluate()`."""
    evals = [e for e in trainer.state.log_history if "eval_pred_mse" in e]
    if (
        evals
        and evals[-1]["step"] == trainer.state.global_step
        and not trainer.args.load_best_model_at_end
    ):
        return evals[-1]
    return trainer.evaluate()


def _phase_name(phase: dict[str, Any], index: int) -> str:
    return str(phase.get("name", phase.get("task", f"phase{index}")))


@dataclass
class PhasePlan:
    """One parsed phase of a recipe, ready to run."""

    name: str
    task: str
    output_dir: Path
    model: Any
    data: WalkDataArguments
    args: Any
    resume: str | bool | None


def parse_phase(recipe: Recipe, index: int, root: Path) -> PhasePlan:
    """Parse phase `index` of a recipe into its argument dataclasses (type-checked).

    Args:
        recipe (`Recipe`): The composed recipe.
        index (`int`): Phase index.
        root (`Path`): The run's output dir; the phase writes to `root / <name>`.

    Returns:
        `PhasePlan`: The phase's arguments.
    """
    phase = recipe.phases[index]
    name = _phase_name(phase, index)
    task = phase.get("task", "lm")
    if task not in TASKS:
        raise LeWMConfigError(f"phases.{index}.task", task, f"must be one of {TASKS}")
    output_dir = root / name
    ignore = ("defaults", "phases", "name", "task", "output_dir", "resume_from_checkpoint")
    data_fields = field_types(WalkDataArguments)
    if task == "lm":
        targets = {
            "model": field_types(WalkLMModelArguments),
            "data": data_fields,
            "training": field_types(WalkLMTrainingArguments),
        }
        args_cls: type = WalkLMTrainingArguments
    else:
        targets = {
            # A key goes to the first target that has it. `history_length` is both a clip and
            # a model field: the model takes it from the clips. The loss keys (`regularizer`,
            # `reg_weight`, `pred_loss`, `sigreg_num_slices`) are both training arguments and
            # model config fields: `LeWMTrainer` copies the training arguments into the config.
            "data": data_fields,
            "training": field_types(LeWMTrainingArguments),
            "model": {**field_types(WorldModelArguments), **lewm_config_fields()},
        }
        args_cls = LeWMTrainingArguments
    parts = split_phase_keys(recipe, index, targets, ignore)
    args = _training_args(args_cls, parts["training"], output_dir, recipe.source(name))
    data = WalkDataArguments(**parts["data"])
    data.corpus_config()  # validate the corpus fields now
    model = WalkLMModelArguments(**parts["model"]) if task == "lm" else parts["model"]
    return PhasePlan(name, task, output_dir, model, data, args, phase.get("resume_from_checkpoint"))


def validate_recipe(
    config: str | Path, overrides: list[tuple[str, Any]] | None = None
) -> list[PhasePlan]:
    """Compose and parse every phase of a recipe without running anything.

    Raises:
        `LeWMConfigError`: for any bad key, type or value, naming its path and file.
    """
    recipe = load_recipe(config, overrides)
    root = _run_root(recipe)
    return [parse_phase(recipe, i, root) for i in range(len(recipe.phases))]


def _run_root(recipe: Recipe) -> Path:
    return Path(str(recipe.shared.get("output_dir") or Path("outputs") / recipe.path.stem))


def run_recipe(
    config: str | Path, overrides: list[tuple[str, Any]] | None = None
) -> dict[str, Any]:
    """Run every phase of a recipe and write `summary.json` in its output dir.

    Every phase is parsed (and so validated) before the first one runs.

    Args:
        config (`str` or `Path`): The recipe YAML.
        overrides (`list[tuple[str, Any]]`, *optional*): Command-line overrides.

    Returns:
        `dict[str, Any]`: The summary: `phases.<name>.*`, `wall_time_s`, `output_dir`, `config`.
    """
    start = time.time()
    recipe = load_recipe(config, overrides)
    root = _run_root(recipe)
    plans = [parse_phase(recipe, i, root) for i in range(len(recipe.phases))]
    summary: dict[str, Any] = {"config": str(recipe.path), "output_dir": str(root), "phases": {}}
    previous = None
    for index, plan in enumerate(plans):
        console(
            f"== phase {index + 1}/{len(plans)}: {plan.name} ({plan.task}) -> {plan.output_dir}"
        )
        resume = _resume_arg(plan.resume, plan.output_dir)
        if plan.task == "lm":
            result = run_lm_phase(plan.name, plan.model, plan.data, plan.args, resume)
        else:
            result = run_world_model_phase(
                plan.name, plan.model, plan.data, plan.args, previous, resume
            )
        summary["phases"][plan.name] = previous = result
    summary["wall_time_s"] = time.time() - start
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(root / SUMMARY_FILE, summary)
    return summary
