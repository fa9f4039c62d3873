"""Training arguments of the two phases: the walk LM (encoder phase) and the world model."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..errors import LeWMConfigError


@dataclass
class WalkLMTrainingArguments(TrainingArguments):
    r"""`TrainingArguments` for the encoder phase: a causal LM on walks, stopped by a compliance gate.

    Parameters that control the gate:
        gate_edge_threshold (`float`, defaults to `0.95`): Edge compliance must exceed this.
        gate_rule_threshold (`float`, defaults to `0.80`): Rule compliance must exceed this.
        gate_min_rule_checks (`int`, defaults to `100`): At least this many rule checks.
        gate_context_rule (`str`, defaults to `"window"`): `"window"` (exact) or `"chunked"` (KV cache).
        gate_decoding (`str`, defaults to `"greedy"`): Decoding the gate uses (`"greedy"`/`"sample"`).
        gate_log_other_decoding (`bool`, defaults to `True`): Also evaluate and log the other decoding.
        gate_temperature (`float`, defaults to `1.0`): Sampling temperature.
        gate_num_sequences (`int`, defaults to `1000`): Generated sequences per evaluation.
        gate_batch_size (`int`, defaults to `256`): Generation batch size.

    Defaults that differ from `TrainingArguments`: `logging_steps=1` (so `result.json` has the train
    loss of every step), `eval_strategy="epoch"`, `lr_scheduler_type="cosine"`, `warmup_steps=0.1` (a fraction),
    `save_strategy="epoch"`, `report_to="none"`.
    """

    # Parameters that control the gate
    gate_edge_threshold: float = field(default=0.95, metadata={"help": "Edge compliance > this."})
    gate_rule_threshold: float = field(default=0.80, metadata={"help": "Rule compliance > this."})
    gate_min_rule_checks: int = field(default=100, metadata={"help": "Minimum rule checks."})
    gate_context_rule: str = field(default="window", metadata={"help": "window or chunked."})
    gate_decoding: str = field(default="greedy", metadata={"help": "greedy or sample."})
    gate_log_other_decoding: bool = field(
        default=True, metadata={"help": "Also log compliance under the other decoding."}
    )
    gate_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    gate_num_sequences: int = field(default=1000, metadata={"help": "Sequences per evaluation."})
    gate_batch_size: int = field(default=256, metadata={"help": "Generation batch size."})

    # Defaults that differ from TrainingArguments
    logging_steps: float = field(default=1, metadata={"help": "Log every N steps."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Scheduler type."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warmup steps (< 1: fraction)."})
    report_to: str | list[str] | None = field(default="none", metadata={"help": "Reporters."})

    def __post_init__(self):
        super().__post_init__()
        if self.gate_context_rule not in ("window", "chunked"):
            raise LeWMConfigError("gate_context_rule", self.gate_context_rule, "window or chunked")
        if self.gate_decoding not in ("greedy", "sample"):
            raise LeWMConfigError("gate_decoding", self.gate_decoding, "greedy or sample")
        for name in ("gate_edge_threshold", "gate_rule_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise LeWMConfigError(name, value, "must lie in [0, 1]")
        if self.gate_num_sequences < 1:
            raise LeWMConfigError("gate_num_sequences", self.gate_num_sequences, "must be >= 1")


@dataclass
class LeWMTrainingArguments(TrainingArguments):
    r"""`TrainingArguments` for the LeWM world model.

    Parameters that control the loss (copied into the model's config at trainer start):
        pred_loss (`str`, defaults to `"mse"`): `"mse"` or `"cos_mse"`.
        regularizer (`str`, defaults to `"sigreg"`): `"sigreg"`, `"kl"` or `"none"`.
        reg_weight (`float`, defaults to `0.09`): Regulariser weight (lambda).
        loss_phase (`str`, defaults to `"phase2"`): `"phase1"` (prediction only, regulariser
            logged) or `"phase2"` (prediction + weight * regulariser).
        sigreg_num_slices (`int`, defaults to `1024`): SIGReg random projections.

    Parameters that control the optimisation:
        lr_schedule (`str`, defaults to `"wsd"`): `"wsd"`, `"cosine"` or `"constant"` (DESIGN.md
            section 7); warmup from `warmup_steps` (a fraction when < 1).
        encoder_lr_multiplier (`float`, defaults to `1.0`): LR multiplier of the state encoder
            and its projector.
        predictor_lr_multiplier (`float`, defaults to `1.0`): LR multiplier of the predictor.
        action_encoder_lr_multiplier (`float`, defaults to `1.0`): LR multiplier of the action
            encoder.

    Parameters that control the collapse monitor:
        collapse_monitor_steps (`int`, defaults to `50`): Check period in steps (0 disables).
        collapse_action (`str`, defaults to `"warn"`): `"warn"` or `"stop"`.
        collapse_var_ratio (`float`, defaults to `0.5`), collapse_distance_ratio (`float`,
            defaults to `0.5`), collapse_kl_max (`float`, defaults to `10.0`),
            collapse_min_rank_fraction (`float`, defaults to `0.1`): Alert thresholds.

    Defaults that differ from `TrainingArguments`: `remove_unused_columns=False` (the action
    fields are not `forward` arguments by name only), `logging_steps=1`, `warmup_steps=0.05` (a fraction),
    `report_to="none"`.
    """

    # Parameters that control the loss
    pred_loss: str = field(default="mse", metadata={"help": "mse or cos_mse."})
    regularizer: str = field(default="sigreg", metadata={"help": "sigreg, kl or none."})
    reg_weight: float = field(default=0.09, metadata={"help": "Regulariser weight."})
    loss_phase: str = field(default="phase2", metadata={"help": "phase1 or phase2."})
    sigreg_num_slices: int = field(default=1024, metadata={"help": "SIGReg projections."})

    # Parameters that control the optimisation
    lr_schedule: str = field(default="wsd", metadata={"help": "wsd, cosine or constant."})
    encoder_lr_multiplier: float = field(default=1.0, metadata={"help": "Encoder LR factor."})
    predictor_lr_multiplier: float = field(default=1.0, metadata={"help": "Predictor LR factor."})
    action_encoder_lr_multiplier: float = field(
        default=1.0, metadata={"help": "Action encoder LR factor."}
    )

    # Parameters that control the collapse monitor
    collapse_monitor_steps: int = field(default=50, metadata={"help": "Check period (0: off)."})
    collapse_action: str = field(default="warn", metadata={"help": "warn or stop."})
    collapse_var_ratio: float = field(default=0.5, metadata={"help": "pred_var < r * target_var."})
    collapse_distance_ratio: float = field(
        default=0.5, metadata={"help": "pairwise distance < r * first value."}
    )
    collapse_kl_max: float = field(default=10.0, metadata={"help": "KL alert threshold."})
    collapse_min_rank_fraction: float = field(
        default=0.1, metadata={"help": "effective rank < f * d alert."}
    )

    # Defaults that differ from TrainingArguments
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep action fields."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N steps."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup steps (< 1: fraction)."})
    report_to: str | list[str] | None = field(default="none", metadata={"help": "Reporters."})

    def __post_init__(self):
        super().__post_init__()
        checks = {
            "pred_loss": ("mse", "cos_mse"),
            "regularizer": ("sigreg", "kl", "none"),
            "loss_phase": ("phase1", "phase2"),
            "lr_schedule": ("wsd", "cosine", "constant"),
            "collapse_action": ("warn", "stop"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise LeWMConfigError(name, getattr(self, name), f"must be one of {allowed}")
        for name in (
            "reg_weight",
            "encoder_lr_multiplier",
            "predictor_lr_multiplier",
            "action_encoder_lr_multiplier",
        ):
            if getattr(self, name) < 0:
                raise LeWMConfigError(name, getattr(self, name), "must be >= 0")
        if self.sigreg_num_slices < 1:
            raise LeWMConfigError("sigreg_num_slices", self.sigreg_num_slices, "must be >= 1")
        if self.collapse_monitor_steps < 0:
            raise LeWMConfigError(
                "collapse_monitor_steps", self.collapse_monitor_steps, "must be >= 0"
            )
