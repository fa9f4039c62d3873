"""Training arguments of the two trainers: the walk LM (encoder phase) and the world model.

Each recipe key has one owner. The world model's loss settings (`pred_loss`, `regularizer`,
`reg_weight`, `loss_phase`, `sigreg_num_slices`) belong to `LeWMConfig`, since the model computes
its loss and `config.json` must say how it was trained; the arguments below hold only what the
trainers themselves use. Choices and ranges are declared on each field (`lewm_hf.fields`) and
checked once, by `validate_fields`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

from transformers import TrainingArguments

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


@dataclass
class WalkLMTrainingArguments(TrainingArguments):
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

    Defaults that differ from `TrainingArguments`: `logging_steps=1` (so `result.json` has the train
    loss of every step), `eval_strategy="epoch"`, `lr_scheduler_type="cosine"`, `warmup_steps=0.1` (a
    fraction), `save_strategy="epoch"`, `report_to="none"`.
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

    # Defaults that differ from TrainingArguments
    logging_steps: float = option(1, help="Log every N steps.")
    eval_strategy: str = option("epoch", help="When to evaluate (and so run the gate).")
    save_strategy: str = option("epoch", help="When to save.")
    lr_scheduler_type: str = option("cosine", help="Scheduler type.")
    warmup_steps: float = option(0.1, help="Warmup steps (< 1: a fraction of the run).", low=0)
    report_to: str | list[str] | None = option("none", help="Reporting integrations.")

    def __post_init__(self):
        validate_fields(self)
        super().__post_init__()
        check_batch_sizes(self)
        check_warmup(self)

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
class LeWMTrainingArguments(TrainingArguments):
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

    Defaults that differ from `TrainingArguments`: `remove_unused_columns=False` (the action
    fields are collator columns, not `forward` arguments), `logging_steps=1`, `warmup_steps=0.05`
    (a fraction), `report_to="none"`, `logging_nan_inf_filter=False` (the trainer already keeps
    a skipped step's NaN / Inf loss out of the logged loss, on the device; the Trainer's own
    filter reads every step's loss on the host).
    """

    # Parameters that control the optimisation
    lr_schedule: LRSchedule = option("wsd", help="wsd, cosine or constant.")
    encoder_lr_multiplier: float = option(1.0, help="Encoder + projector LR factor.", low=0)
    predictor_lr_multiplier: float = option(1.0, help="Predictor LR factor.", low=0)
    action_encoder_lr_multiplier: float = option(1.0, help="Action encoder LR factor.", low=0)
    frozen_feature_cache: bool = option(
        True, help="With a frozen encoder, compute its state features once (false: every step)."
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

    def __post_init__(self):
        validate_fields(self)
        super().__post_init__()
        check_batch_sizes(self)
        check_warmup(self)
