"""Training arguments of the two trainers: the walk LM (encoder phase) and the world model.

Each recipe key has one owner. The world model's loss settings (`pred_loss`, `regularizer`,
`reg_weight`, `loss_phase`, `sigreg_num_slices`) belong to `LeWMConfig`, since the model computes
its loss and `config.json` must say how it was trained; the arguments below hold only what the
trainers themselves use. Choices and ranges are declared on each field (`lewm_hf.fields`) and
checked once, by `validate_fields`.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import shutil
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import TrainingArguments

from .. import metric_keys as K
from ..errors import LeWMConfigError
from ..fields import (
    CollapseAction,
    ContextRule,
    Decoding,
    LoRATarget,
    LRSchedule,
    is_int_in,
    option,
    validate_fields,
)

# LoRA's default target modules: the predictor blocks' attention (`qkv`, `attn_out`), MLP
# (`mlp.0`, `mlp.2`) and AdaLN modulation (`adaLN_modulation.1`) projections; `mlp.0`/`mlp.2`
# also name the action encoder's MLP. Entries match module names by suffix.
DEFAULT_LORA_TARGET_MODULES = ("qkv", "attn_out", "mlp.0", "mlp.2", "adaLN_modulation.1")


def check_batch_sizes(args: TrainingArguments) -> None:
    """Batch sizes and accumulation steps are positive (else torch's DataLoader fails later with
    a bare `ValueError`, after the run has started).

    Raises:
        `LeWMConfigError`: naming the first field below 1.
    """
    for name in (
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
    ):
        value = getattr(args, name)
        if not is_int_in(value, 1):
            raise LeWMConfigError(name, value, "must be an integer >= 1")


def check_warmup(args: TrainingArguments, num_training_steps: int | None = None) -> None:
    """Warmup longer than the run is an error (a warmup that never ends is no schedule).

    Checked when the arguments are built if `max_steps` is set, and again by the trainer once
    the number of steps of an epoch-based run is known (`num_training_steps`).

    Raises:
        `LeWMConfigError`: naming `warmup_steps` and the number of steps.
    """
    total = num_training_steps if num_training_steps is not None else args.max_steps
    if total is None or total <= 0 or args.warmup_steps < 1:  # < 1: a fraction of the run
        return
    if args.warmup_steps > total:
        raise LeWMConfigError(
            "warmup_steps", args.warmup_steps, f"exceeds the run's {total} training steps"
        )


def check_torch_compile(args: TrainingArguments) -> None:
    """`torch_compile` with inductor on the CPU needs the C++ compiler inductor calls (`$CXX`,
    else `g++`, as `torch._inductor.cpp_builder` picks it); without one the first training step
    would fail deep inside inductor. Checked by the trainers once the device is known.

    Raises:
        `LeWMConfigError`: naming `torch_compile` and the missing compiler.
    """
    if not args.torch_compile or (args.torch_compile_backend or "inductor") != "inductor":
        return
    if args.device.type != "cpu":
        return
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise LeWMConfigError(
            "torch_compile",
            True,
            f"inductor builds CPU kernels with a C++ compiler and {compiler!r} was not found "
            "(install g++ or set CXX), or set torch_compile_backend='aot_eager' (no compiler, "
            "no speedup) or torch_compile=False",
        )


# ---- inherited fields a trainer does not honour ------------------------------------------
# Every `TrainingArguments` field that a trainer (with its callbacks, its own `create_optimizer`,
# `create_scheduler`, `compute_loss`, `prediction_step` and `log`, the feature cache and the
# collators) ignores, or whose non-default value would do nothing or break the run: field ->
# what it would do and what to use instead. Setting one to anything but its default is a
# `LeWMConfigError` when the arguments are built (`check_unused_arguments`); fields missing
# here are honoured.

# Read by training scripts, never by the Trainer; the task runners of `lewm_hf.tasks` always
# train, evaluate as `eval_strategy` says, and resume through their own recipe key.
_SCRIPT_FLAGS: dict[str, str] = {
    "do_train": "is read by training scripts, not by the Trainer; the task runners always "
    "train: remove it",
    "do_predict": "is read by training scripts, not by the Trainer; no task runner predicts: "
    "remove it",
    "resume_from_checkpoint": "is read by training scripts, not by the Trainer: pass "
    "trainer.train(resume_from_checkpoint=...) or set the recipe key resume_from_checkpoint",
}

WALK_LM_UNUSED_ARGUMENTS: dict[str, str] = dict(_SCRIPT_FLAGS)

# `LeWMTrainer.create_optimizer` builds its own parameter groups (per-part learning rates, no
# decay on biases and norms); `create_scheduler` follows `lr_schedule`; the loss is the model's
# latent prediction loss over each micro-batch (no labels, no `num_items_in_batch`); evaluation
# returns losses only (`prediction_step`: no logits, no labels) and the trainer reduces its own
# metrics in `log`, so `compute_metrics` and everything that feeds it are never used.
_NO_PREDICTIONS = (
    "LeWMTrainer's evaluation keeps no predictions or labels (prediction_step returns the loss "
    "only; pred_loss, reg_loss, pred_mse and copy_mse are reduced on the device by log), and "
    "compute_metrics is never called"
)
LEWM_UNUSED_ARGUMENTS: dict[str, str] = {
    **_SCRIPT_FLAGS,
    "lr_scheduler_type": "world models follow lr_schedule (wsd, cosine or constant; warmup "
    "from warmup_steps), LeWMTrainer builds no transformers scheduler: use lr_schedule",
    "lr_scheduler_kwargs": "configures a transformers scheduler, which LeWMTrainer never builds "
    "(it follows lr_schedule: wsd, cosine or constant): remove it",
    "optim_target_modules": "selects the layers of a GaLore / APOLLO optimizer, which cannot "
    "take LeWMTrainer's per-part parameter groups: use an optimizer such as adamw_torch_fused",
    "label_smoothing_factor": "smooths the labels of the Trainer's own loss; a world model's "
    "loss is its latent prediction loss and has no labels: set pred_loss / reg_weight instead",
    "label_names": "names the label columns of the Trainer's prediction step; world-model "
    "batches have no labels (LeWMTrainer evaluates the model's own loss): remove it",
    "prediction_loss_only": f"evaluation is always loss-only: {_NO_PREDICTIONS}",
    "include_for_metrics": f"passes inputs or losses to compute_metrics: {_NO_PREDICTIONS}",
    "batch_eval_metrics": f"calls compute_metrics once per batch: {_NO_PREDICTIONS}",
    "eval_accumulation_steps": f"moves gathered predictions to the CPU: {_NO_PREDICTIONS}",
    "eval_do_concat_batches": f"says how gathered predictions are stacked: {_NO_PREDICTIONS}",
    "eval_use_gather_object": f"gathers predictions that are not tensors: {_NO_PREDICTIONS}",
    "average_tokens_across_devices": "normalises a token-level loss by the tokens of every "
    "rank; a world model's loss is a mean over each micro-batch (the model takes no "
    "num_items_in_batch), so it has no effect: remove it",
    "use_liger_kernel": "patches the supported LLM architectures by model type; a LeWMModel "
    "is none of them (nor is its encoder patched through it), so nothing would be applied",
    "liger_kernel_config": "configures use_liger_kernel, which applies nothing to a LeWMModel",
    "use_cache": "the Trainer copies it into model.config.use_cache; a LeWMModel keeps no KV "
    "cache, so it would only be written into config.json: remove it",
}

# Values of an honoured field that LeWMTrainer cannot use: field -> (values, reason).
_MODEL_OPTIMIZERS = frozenset(
    {"lomo", "adalomo", "apollo_adamw", "apollo_adamw_layerwise"}
    | {
        f"galore_{name}{suffix}"
        for name in ("adamw", "adamw_8bit", "adafactor")
        for suffix in ("", "_layerwise")
    }
)
LEWM_UNSUPPORTED_VALUES: dict[str, tuple[frozenset[str], str]] = {
    "optim": (
        _MODEL_OPTIMIZERS,
        "needs the model itself (LOMO) or its own parameter groups (GaLore, APOLLO), while "
        "LeWMTrainer builds per-part groups (LR multipliers, no decay on norms): use e.g. "
        "adamw_torch_fused (the default), adamw_torch, adafactor or sgd",
    ),
}


def _plain(value: Any) -> Any:
    """A field's value without its enum wrapper (`OptimizerNames.SGD` -> `"sgd"`)."""
    return value.value if isinstance(value, enum.Enum) else value


def _is_default(value: Any, default: Any) -> bool:
    empty = (None, "", [], (), {})
    return _plain(value) == _plain(default) or (value in empty and default in empty)


def check_unused_arguments(args: TrainingArguments) -> None:
    """Reject the inherited fields that `args`'s trainer would not honour.

    Reads the class's `unused_arguments` (field -> reason: any value but the field's default is
    refused) and `unsupported_values` (field -> (values, reason): those values are refused).
    Called from `__post_init__`, on the values as given.

    Raises:
        `LeWMConfigError`: naming the field, its value and what to use instead.
    """
    defaults = {
        f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(args)
    }
    for name, reason in type(args).unused_arguments.items():
        value = getattr(args, name)
        if not _is_default(value, defaults[name]):
            raise LeWMConfigError(name, _plain(value), reason)
    for name, (values, reason) in type(args).unsupported_values.items():
        value = _plain(getattr(args, name))
        if value in values:
            raise LeWMConfigError(name, value, reason)


def use_cpu_without_accelerator(args: TrainingArguments) -> None:
    """Run every process of a distributed launch on the CPU when the machine has no accelerator.

    transformers sets up a distributed run (DDP over gloo) only with `use_cpu` on a machine
    without GPUs; otherwise each process of `torchrun` or `accelerate launch` would train alone,
    on the whole dataset, and race to write the same files. Called from `__post_init__`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not args.use_cpu and torch.accelerator.current_accelerator() is None:
        args.use_cpu = True


def check_model_arguments(args: TrainingArguments, model: Any, feature_cache: bool) -> None:
    """Reject the arguments that do nothing for this particular world model.

    - `neftune_noise_alpha`: NEFTune adds noise to the token embeddings of a module in train
      mode; a frozen encoder stays in eval mode (and with the feature cache never runs).
    - `include_num_input_tokens_seen`: the Trainer counts the tokens of `input_ids`; with the
      frozen feature cache the batches carry the states' features instead.

    Args:
        args (`LeWMTrainingArguments`): The arguments.
        model (`nn.Module`): The model (or its peft wrapper).
        feature_cache (`bool`): Whether the trainer collates cached state features.

    Raises:
        `LeWMConfigError`: naming the field, its value and what to do instead.
    """
    if args.neftune_noise_alpha is not None and model.config.encoder_mode == "frozen":
        raise LeWMConfigError(
            "neftune_noise_alpha",
            args.neftune_noise_alpha,
            "adds noise to the embeddings of an encoder in train mode, and encoder_mode is "
            "frozen (the encoder stays in eval mode): set encoder_mode: train or remove it",
        )
    if feature_cache and _plain(args.include_num_input_tokens_seen) not in ("no", False):
        raise LeWMConfigError(
            "include_num_input_tokens_seen",
            _plain(args.include_num_input_tokens_seen),
            "counts the tokens of input_ids, and with the frozen feature cache the batches "
            "carry the states' features instead: set frozen_feature_cache: false to count them",
        )


def check_early_stopping(args: TrainingArguments) -> None:
    """Early stopping needs evaluations to compare; a threshold needs a patience.

    Raises:
        `LeWMConfigError`: for `early_stopping_patience` with `eval_strategy: "no"`, or an
            `early_stopping_threshold` without `early_stopping_patience`.
    """
    if args.early_stopping_patience is None:
        if args.early_stopping_threshold != 0.0:
            raise LeWMConfigError(
                "early_stopping_threshold",
                args.early_stopping_threshold,
                "does nothing without early_stopping_patience: set it or remove the threshold",
            )
        return
    if _plain(args.eval_strategy) == "no":
        raise LeWMConfigError(
            "early_stopping_patience",
            args.early_stopping_patience,
            "counts evaluations, and eval_strategy is 'no': set eval_strategy to steps or epoch",
        )


# Rows the shuffle buffer of a streamed training split holds (`streaming_buffer_size`).
DEFAULT_STREAMING_BUFFER_SIZE = 10_000


@dataclass
class StreamingArguments:
    r"""The streaming fields every trainer's arguments share.

    Parameters that control streaming (`lewm_hf.data.streaming`):
        dataset_streaming (`bool`, defaults to `False`): Train on a `StreamingDataset` over the
            training split (an `IterableDataset`: the corpus's memory-mapped Arrow files read
            lazily in blocks, in a seeded shuffled order, pass after pass) instead of the split
            itself. A stream has no length, so `max_steps` must be set; a resumed run continues
            where the stream stopped. Evaluation still reads its (held-out) split as a dataset.
            Settings that cannot combine with it are errors (`check_streaming`).
        streaming_buffer_size (`int`, defaults to `10000`): Rows in the shuffle buffer (the
            memory the stream holds besides one block of rows); 1 keeps each block's order.
    """

    dataset_streaming: bool = option(
        False, help="Stream the training rows lazily (an IterableDataset; needs max_steps)."
    )
    streaming_buffer_size: int = option(
        DEFAULT_STREAMING_BUFFER_SIZE, help="Rows in the stream's shuffle buffer.", low=1
    )


def check_streaming(args: TrainingArguments) -> None:
    """The settings that cannot combine with `dataset_streaming: true` are errors.

    - `max_steps` must be positive: a stream has no length to count epochs in (as TRL and the
      `Trainer` require for an `IterableDataset`).
    - `dataloader_in_order` must stay true with `dataloader_num_workers`: each worker yields
      every `num_workers`-th batch of the stream, and the loader must put them back in order.
    - `auto_find_batch_size` must be false: the stream is split among workers, and skipped on
      resume, by the batch size it was built with.
    - `train_sampling_strategy` must be `random`: samplers need indexed access, and the
      `Trainer` would ignore another strategy (the stream's shuffle replaces the sampler).

    Unless `accelerator_config` sets `dispatch_batches`, it becomes False: every process then
    reads the stream and keeps its own rows of each global batch (accelerate's
    `IterableDatasetShard`), instead of the main process collating every batch and sending it
    out (accelerate's default for an `IterableDataset`, which cannot rebuild a world model's
    `ActionInputs`).

    (The world model's frozen-feature cache is checked by `check_streaming_feature_cache`.)

    Raises:
        `LeWMConfigError`: naming the field that conflicts with streaming.
    """
    if not getattr(args, "dataset_streaming", False):
        return
    if args.max_steps is None or args.max_steps <= 0:
        raise LeWMConfigError(
            "max_steps",
            args.max_steps,
            "dataset_streaming: true trains on a stream with no length, so the run's length "
            "must be given: set max_steps > 0",
        )
    if args.dataloader_num_workers and not args.dataloader_in_order:
        raise LeWMConfigError(
            "dataloader_in_order",
            args.dataloader_in_order,
            "with dataset_streaming: true and data-loader workers, each worker yields every "
            "num_workers-th batch of the stream and the loader must keep their order: set true",
        )
    if args.train_sampling_strategy != "random":
        raise LeWMConfigError(
            "train_sampling_strategy",
            args.train_sampling_strategy,
            "samplers need indexed access and a stream is read in order (its shuffle buffer "
            "replaces the sampler): remove it or set dataset_streaming: false",
        )
    if args.auto_find_batch_size:
        raise LeWMConfigError(
            "auto_find_batch_size",
            True,
            "with dataset_streaming: true the stream is split among data-loader workers and "
            "skipped on resume by a fixed batch size: set per_device_train_batch_size instead",
        )
    config = args.accelerator_config
    if config is not None and getattr(config, "dispatch_batches", None) is None:
        config.dispatch_batches = False


def check_streaming_feature_cache(args: TrainingArguments, encoder_mode: str) -> None:
    """A frozen encoder's feature cache cannot combine with streaming.

    The cache encodes every distinct state of the training rows before training and adds a
    column to them; a stream is never held or enumerated as a whole.

    Raises:
        `LeWMConfigError`: naming `frozen_feature_cache`.
    """
    streaming = getattr(args, "dataset_streaming", False)
    if streaming and getattr(args, "frozen_feature_cache", False) and encoder_mode == "frozen":
        raise LeWMConfigError(
            "frozen_feature_cache",
            True,
            "the cache encodes every state of the training rows before training, and "
            "dataset_streaming: true streams them: set frozen_feature_cache: false (the frozen "
            "encoder then runs at every step) or dataset_streaming: false",
        )


@dataclass
class CausalLMTrainingArguments(StreamingArguments, TrainingArguments):
    """`TrainingArguments` of a plain causal-LM phase (the DNA encoder phase, `CausalLMTrainer`):
    every Trainer field works, except those only training scripts read (`do_train`,
    `do_predict`, `resume_from_checkpoint`: see `check_unused_arguments`). Streaming
    (`dataset_streaming`, `streaming_buffer_size`): see `StreamingArguments`."""

    unused_arguments: ClassVar[dict[str, str]] = WALK_LM_UNUSED_ARGUMENTS
    unsupported_values: ClassVar[dict[str, tuple[frozenset[str], str]]] = {}

    def __post_init__(self):
        validate_fields(self)
        check_unused_arguments(self)
        use_cpu_without_accelerator(self)
        super().__post_init__()
        check_batch_sizes(self)
        check_streaming(self)


@dataclass
class WalkLMTrainingArguments(StreamingArguments, TrainingArguments):
    r"""`TrainingArguments` for the encoder phase: a causal LM on walks, stopped by a compliance gate.

    Parameters that control the gate (evaluated after every Trainer evaluation):
        gate_edge_threshold (`float`, defaults to `0.95`): Edge compliance must exceed this.
        gate_rule_threshold (`float`, defaults to `0.80`): Rule compliance must exceed this.
        gate_min_rule_checks (`int`, defaults to `100`): At least this many rule checks.
        gate_context_rule (`str`, defaults to `"window"`): `"window"` (exact) or `"chunked"` (KV cache).
        gate_decoding (`str`, defaults to `"sample"`): Decoding the gate uses (`"sample"`/`"greedy"`).
            Sampling at temperature 1.0 checks that the LM learned the walk distribution; greedy
            decoding can pass by cycling through a few walks that meet the rules.
        gate_log_other_decoding (`bool`, defaults to `True`): Also evaluate and log the other decoding.
        gate_temperature (`float`, defaults to `1.0`): Sampling temperature.
        gate_num_sequences (`int`, defaults to `1000`): Generated sequences per evaluation.
        gate_batch_size (`int`, defaults to `1000`): Generation batch size. On CPU the gate's
            evaluation of 1000 sequences ran about 2x faster in one batch of 1000 than in
            batches of 256 (`benchmarks/gate_cost.py`); lower it only to save memory.
        gate_confirm (`bool`, defaults to `True`): At a pass, evaluate the passing model again on
            fresh held-out walks (generated on the graph from a seed of their own) with another
            sampling seed, and pass only if that confirmation passes too: a gate that stops at the
            first pass of the same noisy evaluation reports the maximum of a noisy series.

    Streaming (`dataset_streaming`, `streaming_buffer_size`): see `StreamingArguments`.

    Parameters that control early stopping (transformers' `EarlyStoppingCallback`, on any
    source; with a `dataset_name` source, which has no gate, it is what stops training early):
        early_stopping_patience (`int`, *optional*): Stop once this many evaluations in a row
            did not improve `metric_for_best_model` (default `eval_loss`) by more than
            `early_stopping_threshold`. Needs an `eval_strategy` other than `"no"`.
        early_stopping_threshold (`float`, defaults to `0.0`): The improvement that counts.

    Defaults that differ from `TrainingArguments`: `logging_steps=1` (so `result.json` has the train
    loss of every step), `eval_strategy="epoch"`, `lr_scheduler_type="cosine"`, `warmup_steps=0.1` (a
    fraction), `save_strategy="epoch"`, `report_to="none"`.

    Inherited fields that no trainer reads (`WALK_LM_UNUSED_ARGUMENTS`: `do_train`, `do_predict`,
    `resume_from_checkpoint`) are errors when set.
    """

    # Parameters that control the gate
    gate_edge_threshold: float = option(0.95, help="Edge compliance > this.", low=0, high=1)
    gate_rule_threshold: float = option(0.80, help="Rule compliance > this.", low=0, high=1)
    gate_min_rule_checks: int = option(100, help="Minimum rule checks.", low=0)
    gate_context_rule: ContextRule = option("window", help="window (exact) or chunked (KV cache).")
    gate_decoding: Decoding = option("sample", help="Decoding the gate uses: sample or greedy.")
    gate_log_other_decoding: bool = option(True, help="Also log the other decoding.")
    gate_temperature: float = option(1.0, help="Sampling temperature.", low=0, low_open=True)
    gate_num_sequences: int = option(1000, help="Sequences per evaluation.", low=1)
    gate_batch_size: int = option(1000, help="Generation batch size.", low=1)
    gate_confirm: bool = option(True, help="Confirm a pass on fresh walks with another seed.")

    # Parameters that control early stopping
    early_stopping_patience: int | None = option(
        None, help="Stop after this many evaluations without a better eval_loss (null: off).", low=1
    )
    early_stopping_threshold: float = option(
        0.0, help="Smallest eval_loss improvement that counts as better.", low=0
    )

    # Defaults that differ from TrainingArguments
    logging_steps: float = option(1, help="Log every N steps.")
    eval_strategy: str = option("epoch", help="When to evaluate (and so run the gate).")
    save_strategy: str = option("epoch", help="When to save.")
    lr_scheduler_type: str = option("cosine", help="Scheduler type.")
    warmup_steps: float = option(0.1, help="Warmup steps (< 1: a fraction of the run).", low=0)
    report_to: str | list[str] | None = option("none", help="Reporting integrations.")

    # Inherited fields the walk-LM trainer does not honour (see `check_unused_arguments`).
    unused_arguments: ClassVar[dict[str, str]] = WALK_LM_UNUSED_ARGUMENTS
    unsupported_values: ClassVar[dict[str, tuple[frozenset[str], str]]] = {}

    def __post_init__(self):
        validate_fields(self)
        check_unused_arguments(self)
        use_cpu_without_accelerator(self)
        if self.early_stopping_patience is not None and self.metric_for_best_model is None:
            self.metric_for_best_model = K.EVAL_LOSS
        super().__post_init__()
        check_batch_sizes(self)
        check_warmup(self)
        check_streaming(self)
        check_early_stopping(self)

    def compliance_kwargs(self, decoding: str) -> dict[str, Any]:
        """Keyword arguments of `evaluate_compliance` for one decoding (the gate's or the other)."""
        return {
            "num_sequences": self.gate_num_sequences,
            "rule": self.gate_context_rule,
            "decoding": decoding,
            "temperature": self.gate_temperature,
            "seed": self.seed,
            "batch_size": self.gate_batch_size,
        }

    @property
    def other_decoding(self) -> str | None:
        """The decoding logged beside the gate's, or None."""
        if not self.gate_log_other_decoding:
            return None
        return "sample" if self.gate_decoding == "greedy" else "greedy"


@dataclass
class LeWMTrainingArguments(StreamingArguments, TrainingArguments):
    r"""`TrainingArguments` for the LeWM world model.

    The loss settings are `LeWMConfig` fields (`pred_loss`, `regularizer`, `reg_weight`,
    `loss_phase`, `sigreg_num_slices`): a recipe key reaches the model's config directly.

    Parameters that control the optimisation:
        lr_schedule (`str`, defaults to `"wsd"`): `"wsd"`, `"cosine"` or `"constant"`
            (docs/design.md, section 6 (The learning-rate schedule)); warmup from
            `warmup_steps` (a fraction when < 1).
        encoder_lr_multiplier (`float`, defaults to `1.0`): LR multiplier of the state encoder
            and its projector.
        predictor_lr_multiplier (`float`, defaults to `1.0`): LR multiplier of the predictor.
        action_encoder_lr_multiplier (`float`, defaults to `1.0`): LR multiplier of the action
            encoder.
        frozen_feature_cache (`bool`, defaults to `True`): With `encoder_mode="frozen"`, compute
            the encoder's pooled features of every training and evaluation state once, before
            training (`FeatureCache`), instead of at every step; the results are the same.
        feature_cache_memory_mb (`float`, defaults to `1024.0`): The feature cache stays in
            memory up to this many MiB; a larger one is written to
            `<output_dir>/feature_cache/` while it is built and read from there a batch's
            rows at a time (bitwise the same features, and the process does not hold them).
            0 always writes it to disk.

    Parameters that control the collapse monitor (alerts: see `CollapseMonitorCallback`):
        collapse_monitor_steps (`int`, defaults to `50`): Check period in steps (0 disables).
        collapse_action (`str`, defaults to `"warn"`): `"warn"` (log and count) or `"stop"` (stop
            training and raise `LeWMCollapseError`).
        collapse_var_ratio (`float`, defaults to `0.5`): Alert when the target latents' variance
            per dimension falls below this fraction of its first value.
        collapse_distance_ratio (`float`, defaults to `0.5`): Alert when their mean pairwise
            distance falls below this fraction of its first value.
        collapse_kl_per_dim_max (`float`, defaults to `4.0`): Alert when their Gaussian KL to
            N(0, I), divided by d_state, exceeds this.
        collapse_min_rank_fraction (`float`, defaults to `0.1`): Alert when their effective rank
            falls below this fraction of d_state.

    Parameters that control LoRA (`lewm_hf.trainer.lora`; the trainer applies peft itself):
        lora_targets (`list[str]`, defaults to `[]`): Parts to adapt: any of `"encoder"`,
            `"predictor"`, `"action_encoder"`. Empty: no LoRA, the model trains as configured.
            With LoRA only the adapters, the BatchNorm layers (affine parameters and running
            statistics, carried in the adapter as `modules_to_save`) and `lora_modules_to_save`
            train; every other parameter and buffer stays bitwise as loaded.
        lora_r (`int`, defaults to `8`): Rank of every adapter.
        lora_alpha (`float`, defaults to `16.0`): Scale numerator (`alpha / r`).
        lora_dropout (`float`, defaults to `0.05`): Dropout on the adapters' input.
        lora_target_modules (`list[str]`, defaults to `["qkv", "attn_out", "mlp.0", "mlp.2",
            "adaLN_modulation.1"]`): Linear layers of the targeted parts to adapt, matched by
            name suffix (the defaults: the predictor's attention, MLP and AdaLN projections and
            the action encoder's MLP; e.g. `[q_proj, v_proj]` for a Llama encoder). An entry
            that matches no Linear layer is an error listing the available ones.
        lora_modules_to_save (`list[str]`, defaults to `[]`): Further modules (e.g.
            `projector`, `predictor`) trained in full and saved in the adapter: needed for the
            freshly initialised parts of a model built around a pretrained encoder.
        lora_seed (`int`, *optional*): Seed of the adapters' initialisation; defaults to
            `derive_seed(seed, "lora")` (`lewm_hf.determinism.run_seeds`).

    Parameters that control distributed training and robustness:
        sync_batchnorm (`bool`, defaults to `True`): Under DDP or FSDP (more than one process),
            normalise every BatchNorm (the projector's and the predictor head's) over the global
            batch (`lewm_hf.distributed.GlobalBatchNorm1d` on CPU, `torch.nn.SyncBatchNorm` on
            CUDA), so training matches one process on the concatenated batch; names and state
            dict are unchanged. False: each rank normalises its own batch.
        max_nonfinite_steps (`int`, defaults to `3`): A step whose loss is NaN or Inf on any rank
            is skipped on every rank (no optimizer update, BatchNorm running statistics
            restored) and counted (`nonfinite_steps` in the logs); after this many consecutive
            ones training stops with `LeWMNonFiniteLossError`. With a fused torch optimizer (the
            default) the skip is decided on the device and counted at the next log or
            checkpoint, so no step synchronises the host (see `LeWMTrainer.training_step`).

    Streaming (`dataset_streaming`, `streaming_buffer_size`): see `StreamingArguments`.

    Defaults that differ from `TrainingArguments`: `remove_unused_columns=False` (the action
    fields are collator columns, not `forward` arguments), `logging_steps=1`, `warmup_steps=0.05`
    (a fraction), `report_to="none"`, `logging_nan_inf_filter=False` (the trainer already keeps
    a skipped step's NaN / Inf loss out of the logged loss, on the device; the Trainer's own
    filter reads every step's loss on the host), `lr_scheduler_type=None`.

    Inherited fields that `LeWMTrainer` does not honour are errors when set to anything but
    their default, with the reason and what to use instead (`LEWM_UNUSED_ARGUMENTS`): among
    them `lr_scheduler_type` and `lr_scheduler_kwargs` (use `lr_schedule`), the label and
    prediction settings (`label_smoothing_factor`, `label_names`, `prediction_loss_only`,
    `include_for_metrics`, `batch_eval_metrics`, `eval_accumulation_steps`, ...),
    `optim_target_modules`, `use_liger_kernel` and `use_cache`; so are the `optim` values that
    build their own parameter groups (`LEWM_UNSUPPORTED_VALUES`: GaLore, APOLLO, LOMO).
    """

    # Parameters that control the optimisation
    lr_schedule: LRSchedule = option("wsd", help="wsd, cosine or constant.")
    encoder_lr_multiplier: float = option(1.0, help="Encoder + projector LR factor.", low=0)
    predictor_lr_multiplier: float = option(1.0, help="Predictor LR factor.", low=0)
    action_encoder_lr_multiplier: float = option(1.0, help="Action encoder LR factor.", low=0)
    frozen_feature_cache: bool = option(
        True, help="With a frozen encoder, compute its state features once (false: every step)."
    )
    feature_cache_memory_mb: float = option(
        1024.0, help="Feature cache in memory up to this many MiB, else read from disk.", low=0
    )

    # Parameters that control the collapse monitor
    collapse_monitor_steps: int = option(50, help="Check period in steps (0: off).", low=0)
    collapse_action: CollapseAction = option("warn", help="warn (log, count) or stop.")
    collapse_var_ratio: float = option(
        0.5, help="Alert: target variance < ratio x its first value.", low=0, high=1
    )
    collapse_distance_ratio: float = option(
        0.5, help="Alert: mean pairwise distance < ratio x its first value.", low=0, high=1
    )
    # Per dimension, so one threshold suits every d_state. The latents of a 100-vertex world are
    # low-rank (effective rank about 23 of 64 in a healthy run): their KL to N(0, I) sits near
    # 100 at d = 64 (1.6 per dimension, a 192-row estimate adding about d / (2 N) per dimension
    # of bias), while a collapsed batch, whose covariance loses rank, reaches 7 per dimension and
    # more through the log-determinant.
    collapse_kl_per_dim_max: float = option(
        4.0, help="Alert: Gaussian KL / d_state > this.", low=0, low_open=True
    )
    collapse_min_rank_fraction: float = option(
        0.1, help="Alert: effective rank < fraction x d_state.", low=0, high=1
    )

    # Parameters that control LoRA
    lora_targets: list[LoRATarget] = option(
        default_factory=list,
        help="Parts to adapt with LoRA: encoder, predictor, action_encoder (empty: no LoRA).",
    )
    lora_r: int = option(8, help="LoRA rank.", low=1)
    lora_alpha: float = option(16.0, help="LoRA alpha (scale alpha / r).", low=0, low_open=True)
    lora_dropout: float = option(
        0.05, help="Dropout on the adapters' input.", low=0, high=1, high_open=True
    )
    lora_target_modules: list[str] = option(
        default_factory=lambda: list(DEFAULT_LORA_TARGET_MODULES),
        help="Linear layers of the targeted parts to adapt (name suffixes).",
    )
    lora_modules_to_save: list[str] = option(
        default_factory=list, help="Modules trained in full and saved in the adapter."
    )
    lora_seed: int | None = option(
        None, help="Seed of the adapters' init (null: derived from seed).", low=0
    )

    # Parameters that control distributed training and robustness
    sync_batchnorm: bool = option(
        True, help="BatchNorm over the global batch under DDP/FSDP (false: per rank)."
    )
    max_nonfinite_steps: int = option(
        3, help="Stop after this many consecutive skipped NaN/Inf-loss steps.", low=1
    )

    # Defaults that differ from TrainingArguments
    remove_unused_columns: bool = option(False, help="Keep the collator's action columns.")
    logging_steps: float = option(1, help="Log every N steps.")
    warmup_steps: float = option(0.05, help="Warmup steps (< 1: a fraction of the run).", low=0)
    report_to: str | list[str] | None = option("none", help="Reporting integrations.")
    logging_nan_inf_filter: bool = option(
        False, help="Trainer's host-side NaN/Inf loss filter (the trainer filters on the device)."
    )
    # Not used: world models follow `lr_schedule`; any value is an error (`unused_arguments`).
    lr_scheduler_type: str | None = option(
        None, help="Not used by world models: set lr_schedule (wsd, cosine or constant)."
    )

    # Inherited fields the world-model trainer does not honour (see `check_unused_arguments`).
    unused_arguments: ClassVar[dict[str, str]] = LEWM_UNUSED_ARGUMENTS
    unsupported_values: ClassVar[dict[str, tuple[frozenset[str], str]]] = LEWM_UNSUPPORTED_VALUES

    def __post_init__(self):
        validate_fields(self)
        check_unused_arguments(self)
        use_cpu_without_accelerator(self)
        # `TrainingArguments.__post_init__` parses `lr_scheduler_type` into a `SchedulerType`;
        # it gets a stand-in, and the field stays None: no transformers scheduler is built.
        self.lr_scheduler_type = "constant"
        super().__post_init__()
        self.lr_scheduler_type = None
        check_batch_sizes(self)
        check_warmup(self)
        check_streaming(self)
