"""Trainer callbacks: compliance gate, collapse monitor, WSD schedule check and progress.

The trainers of this package own their callbacks (`WalkLMTrainer` the gate, `LeWMTrainer` the
collapse monitor and the schedule check); a task runner never builds one by hand.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, TrainerState
from transformers.trainer_callback import ExportableState, ProgressCallback

from .. import metric_keys as K
from ..data.corpus import release_mapped_pages
from ..data.walks import generate_walks
from ..determinism import derive_seed
from ..distributed import gather_rows
from ..errors import LeWMConfigError, LeWMNonFiniteLossError
from ..evaluation.compliance import ComplianceGate, ComplianceResult, evaluate_compliance
from ..evaluation.latents import collapse_statistics
from ..reporting import console, curve
from .schedules import wsd_lr_multiplier


class SummaryProgressCallback(ProgressCallback):
    """The Trainer's tqdm bar, showing the latest train loss on the bar instead of printing a
    dict per log; evaluation summaries are printed by the callbacks that compute them."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        shown = {k: v for k, v in logs.items() if k in (K.LOSS, K.PRED_LOSS, K.REG_LOSS)}
        if shown:
            self.training_bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        elif K.TRAIN_RUNTIME in logs:
            self.training_bar.write(
                f"[train] done in {logs[K.TRAIN_RUNTIME]:.1f}s, "
                f"{logs.get('train_steps_per_second', 0):.2f} steps/s, "
                f"mean loss {logs.get(K.TRAIN_LOSS, float('nan')):.4g}"
            )


class ComplianceGateCallback(TrainerCallback):
    """Evaluate edge/rule compliance of generated walks at every evaluation and gate on it.

    Runs after each Trainer evaluation (so `eval_strategy`/`eval_steps` decide how often) with the
    `gate_*` settings of the trainer's `WalkLMTrainingArguments`; logs `eval_edge_compliance`,
    `eval_rule_compliance`, `eval_rule_checks`, `eval_distinct_fraction` and `eval_gate_passed`
    (and the other decoding's `eval_sampled_*` / `eval_greedy_*` when `gate_log_other_decoding`)
    through `Trainer.log`, adds them to the evaluation metrics (so `metric_for_best_model` can use
    them), prints a one-line summary, and on a pass saves `<output_dir>/gate_checkpoint` (outside
    the `checkpoint-*` rotation, so `save_total_limit` never deletes it) and stops training.

    With `gate_confirm` a pass is confirmed first: the same model, under the gate's decoding, on
    `gate_num_sequences` fresh walks generated on the graph (`derive_seed(seed,
    "gate-confirmation-walks")`) with another sampling seed (`derive_seed(seed,
    "gate-confirmation")`). The gate passes only if the confirmation passes its thresholds too;
    the confirmation's numbers are logged as `eval_gate_confirmed_*` and `eval_gate_confirmed`.

    Args:
        trainer (`WalkLMTrainer`): The trainer (for its arguments, `log` and `save_model`).
        graph (`Graph`), jumpers (`list[Jumper]`): The walk process.
        prompt_walks (`np.ndarray`): Held-out walks; their first tokens are the prompts.
        context_window (`int`): The window `w`.
    """

    def __init__(self, trainer, graph, jumpers, prompt_walks: np.ndarray, context_window: int):
        args = trainer.args
        self.trainer = trainer
        self.graph = graph
        self.jumpers = jumpers
        self.prompt_walks = prompt_walks
        self.context_window = context_window
        self.gate = ComplianceGate(
            edge_threshold=args.gate_edge_threshold,
            rule_threshold=args.gate_rule_threshold,
            min_rule_checks=args.gate_min_rule_checks,
        )
        self.last_failure: str | None = "no compliance evaluation ran"
        self._confirmation_walks: np.ndarray | None = None

    def confirmation_walks(self) -> np.ndarray:
        """Fresh held-out walks for the confirmation: as many as the gate's sequences, of the
        prompt walks' length, from a seed no corpus uses (generated once)."""
        if self._confirmation_walks is None:
            args = self.trainer.args
            self._confirmation_walks = generate_walks(
                self.graph,
                self.jumpers,
                args.gate_num_sequences,
                int(self.prompt_walks.shape[1]),
                seed=derive_seed(args.seed, "gate-confirmation-walks"),
            )
        return self._confirmation_walks

    def confirm(self, model, decoding: str) -> ComplianceResult:
        """Compliance of `model` on the fresh walks with the confirmation's sampling seed."""
        kwargs = self.trainer.args.compliance_kwargs(decoding)
        kwargs["seed"] = derive_seed(self.trainer.args.seed, "gate-confirmation")
        return evaluate_compliance(
            model,
            self.graph,
            self.jumpers,
            self.confirmation_walks(),
            self.context_window,
            **kwargs,
        )

    def evaluate(self, model, decoding: str) -> ComplianceResult:
        """Compliance of `model` under one decoding, with the gate's settings."""
        return evaluate_compliance(
            model,
            self.graph,
            self.jumpers,
            self.prompt_walks,
            self.context_window,
            **self.trainer.args.compliance_kwargs(decoding),
        )

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        result = self.evaluate(model, args.gate_decoding)
        logs = {
            K.EVAL_EDGE_COMPLIANCE: result.edge_compliance,
            K.EVAL_RULE_COMPLIANCE: result.rule_compliance,
            K.EVAL_RULE_CHECKS: float(result.rule_checks),
            K.EVAL_DISTINCT_FRACTION: result.distinct_fraction,
        }
        other = None
        if args.other_decoding is not None:
            other = self.evaluate(model, args.other_decoding)
            prefix = K.decoding_prefix(args.other_decoding)
            logs.update(
                {
                    prefix + K.EDGE_COMPLIANCE: other.edge_compliance,
                    prefix + K.RULE_COMPLIANCE: other.rule_compliance,
                    prefix + K.RULE_CHECKS: float(other.rule_checks),
                    prefix + K.DISTINCT_FRACTION: other.distinct_fraction,
                }
            )
        passed, reason = self.gate.check(result)
        confirmed = None
        if passed and args.gate_confirm:
            confirmed = self.confirm(model, args.gate_decoding)
            passed, reason = self.gate.check(confirmed)
            reason = None if passed else f"confirmation on fresh walks: {reason}"
            logs.update(
                {
                    K.EVAL_GATE_CONFIRMED_PREFIX + K.EDGE_COMPLIANCE: confirmed.edge_compliance,
                    K.EVAL_GATE_CONFIRMED_PREFIX + K.RULE_COMPLIANCE: confirmed.rule_compliance,
                    K.EVAL_GATE_CONFIRMED_PREFIX + K.RULE_CHECKS: float(confirmed.rule_checks),
                    K.EVAL_GATE_CONFIRMED_PREFIX + K.DISTINCT_FRACTION: confirmed.distinct_fraction,
                    K.EVAL_GATE_CONFIRMED: float(passed),
                }
            )
        logs[K.EVAL_GATE_PASSED] = float(passed)
        self.last_failure = reason
        self.trainer.log(dict(logs))
        if metrics is not None:
            metrics.update(logs)
        line = (
            f"[gate] step {state.global_step} epoch {state.epoch or 0:.2f} | {result.decoding}: "
            f"edge {result.edge_compliance:.3f} rule {result.rule_compliance:.3f} "
            f"(checks {result.rule_checks}, distinct {result.distinct_fraction:.2f})"
        )
        if other is not None:
            line += (
                f" | {other.decoding}: edge {other.edge_compliance:.3f} "
                f"rule {other.rule_compliance:.3f} (checks {other.rule_checks})"
            )
        if confirmed is not None:
            line += (
                f" | confirmed: edge {confirmed.edge_compliance:.3f} "
                f"rule {confirmed.rule_compliance:.3f} (checks {confirmed.rule_checks}, "
                f"distinct {confirmed.distinct_fraction:.2f})"
            )
        line += " | PASS" if passed else f" | not yet: {reason}"
        console(line, state)
        if passed:
            self.trainer.save_model(os.path.join(args.output_dir, K.GATE_CHECKPOINT))
            control.should_training_stop = True
        return control

    def result(self, state: TrainerState) -> dict[str, Any]:
        """The gate part of `result.json`, derived from the log history (so it survives resume)."""
        args = self.trainer.args
        history = state.log_history
        passes = [e for e in history if e.get(K.EVAL_GATE_PASSED) == 1.0]
        evals = [e for e in history if K.EVAL_EDGE_COMPLIANCE in e]
        out: dict[str, Any] = {
            K.GATE_PASSED: bool(passes),
            "gate": {
                "edge_threshold": self.gate.edge_threshold,
                "rule_threshold": self.gate.rule_threshold,
                "min_rule_checks": self.gate.min_rule_checks,
                **args.compliance_kwargs(args.gate_decoding),
            },
        }
        other = K.decoding_prefix(args.other_decoding) if args.other_decoding else None
        if passes:
            entry = passes[0]
            out.update(
                gate_step=int(entry["step"]),
                gate_epoch=entry.get("epoch"),
                gate_checkpoint=K.GATE_CHECKPOINT,
            )
        else:
            out["failure_reason"] = self.last_failure
            entry = evals[-1] if evals else {}
        prefix = "" if passes else "final_"
        out[prefix + K.EDGE_COMPLIANCE] = entry.get(K.EVAL_EDGE_COMPLIANCE)
        out[prefix + K.RULE_COMPLIANCE] = entry.get(K.EVAL_RULE_COMPLIANCE)
        out[prefix + K.RULE_CHECKS] = _as_int(entry.get(K.EVAL_RULE_CHECKS))
        out[prefix + K.DISTINCT_FRACTION] = entry.get(K.EVAL_DISTINCT_FRACTION)
        if other is not None:
            name = other[len(K.EVAL_PREFIX) :]
            out[prefix + name + K.EDGE_COMPLIANCE] = entry.get(other + K.EDGE_COMPLIANCE)
            out[prefix + name + K.RULE_COMPLIANCE] = entry.get(other + K.RULE_COMPLIANCE)
            out[prefix + name + K.RULE_CHECKS] = _as_int(entry.get(other + K.RULE_CHECKS))
        # The confirmation of the pass (or, without one, of the last evaluation that passed the
        # thresholds and failed its confirmation); None when none ran.
        confirmations = [e for e in history if K.EVAL_GATE_CONFIRMED in e]
        confirmation = entry if passes else (confirmations[-1] if confirmations else {})
        confirmed = K.EVAL_GATE_CONFIRMED_PREFIX
        out[K.GATE_CONFIRMED] = (
            None if K.EVAL_GATE_CONFIRMED not in confirmation
            else bool(confirmation[K.EVAL_GATE_CONFIRMED])
        )  # fmt: skip
        out[K.GATE_CONFIRMED_EDGE_COMPLIANCE] = confirmation.get(confirmed + K.EDGE_COMPLIANCE)
        out[K.GATE_CONFIRMED_RULE_COMPLIANCE] = confirmation.get(confirmed + K.RULE_COMPLIANCE)
        out[K.GATE_CONFIRMED_RULE_CHECKS] = _as_int(confirmation.get(confirmed + K.RULE_CHECKS))
        out[K.GATE_CONFIRMED_DISTINCT_FRACTION] = confirmation.get(confirmed + K.DISTINCT_FRACTION)
        return out


def _as_int(value: float | None) -> int | None:
    return None if value is None else int(value)


class WSDSchedulerCallback(TrainerCallback):
    """Check at every step that the learning rate follows the schedule, and expose the
    multiplier of the step just taken as `lr_multiplier` in the train logs (read by
    `LeWMTrainer.log`; it matches the `learning_rate` the Trainer logs for that step).

    After optimisation step `s` the scheduler has already set the learning rate of step
    `s + 1`; the check compares it with `base_lr * multiplier(s + 1)` for every parameter group
    (so per-group ratios and a resumed scheduler are verified too).

    Args:
        schedule (`str`): `"wsd"`, `"cosine"` or `"constant"`.
        warmup_steps (`int`): Warmup steps.
    """

    def __init__(self, schedule: str, warmup_steps: int):
        self.schedule = schedule
        self.warmup_steps = warmup_steps
        self.multiplier: float | None = None

    def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        total = state.max_steps
        self.multiplier = wsd_lr_multiplier(
            min(state.global_step, total), total, self.warmup_steps, self.schedule
        )
        if optimizer is None or lr_scheduler is None or state.global_step >= total:
            return
        upcoming = wsd_lr_multiplier(state.global_step + 1, total, self.warmup_steps, self.schedule)
        for group, base in zip(optimizer.param_groups, lr_scheduler.base_lrs):
            expected = base * upcoming
            if not math.isclose(group["lr"], expected, rel_tol=1e-6, abs_tol=1e-12):
                raise LeWMConfigError(
                    "lr_schedule",
                    self.schedule,
                    f"lr {group['lr']:.6g} != {expected:.6g} for step {state.global_step + 1}",
                )

    def extra_logs(self) -> dict[str, float]:
        return {} if self.multiplier is None else {K.LR_MULTIPLIER: self.multiplier}


class CollapseMonitorCallback(TrainerCallback, ExportableState):
    """Watch the latents for collapse every `every_steps` steps.

    Statistics of the latest training batch's latents (`collapse_statistics`; the trainer keeps
    them in `LeWMTrainer.latest_latents`) are logged as `collapse/<name>` with `collapse/alerts`
    (the running count). Alerts are about the *target* latents, the encoder's output, which is
    what collapses:

    - `target_var`: variance per dimension below `var_ratio` x its first value;
    - `pairwise_distance`: mean pairwise distance below `distance_ratio` x its first value;
    - `kl`: Gaussian KL to N(0, I) per dimension above `kl_per_dim_max`;
    - `effective_rank`: below `min_rank_fraction` x d.

    The predictions' variance is logged (`collapse/pred_var_per_dim`) but raises no alert: a
    predictor regresses to the conditional mean, so early in training its variance is well below
    the targets' on a healthy run (the former `pred_var < 0.5 target_var` rule alerted at steps
    50-150 of the main job while its held-out MSE was 60x below copy).

    Action `warn` logs and counts; `stop` stops training (the world-model task then writes
    `result.json` with `collapse_stopped: true` and raises `LeWMCollapseError`). The first values
    and the alerts are checkpointed (`ExportableState`) and restored on resume.

    Args:
        trainer (`LeWMTrainer`): The trainer.
        every_steps (`int`): Check period.
        action (`str`): `"warn"` or `"stop"`.
        var_ratio (`float`), distance_ratio (`float`), kl_per_dim_max (`float`),
        min_rank_fraction (`float`): Alert thresholds.
    """

    def __init__(
        self,
        trainer=None,
        every_steps: int = 50,
        action: str = "warn",
        var_ratio: float = 0.5,
        distance_ratio: float = 0.5,
        kl_per_dim_max: float = 4.0,
        min_rank_fraction: float = 0.1,
    ):
        self.trainer = trainer
        self.every_steps = every_steps
        self.action = action
        self.var_ratio = var_ratio
        self.distance_ratio = distance_ratio
        self.kl_per_dim_max = kl_per_dim_max
        self.min_rank_fraction = min_rank_fraction
        self.first_distance: float | None = None
        self.first_target_var: float | None = None
        self.alerts: list[dict[str, Any]] = []

    @classmethod
    def from_args(cls, trainer, args) -> CollapseMonitorCallback:
        """The monitor configured by `LeWMTrainingArguments`' `collapse_*` fields."""
        return cls(
            trainer,
            every_steps=args.collapse_monitor_steps,
            action=args.collapse_action,
            var_ratio=args.collapse_var_ratio,
            distance_ratio=args.collapse_distance_ratio,
            kl_per_dim_max=args.collapse_kl_per_dim_max,
            min_rank_fraction=args.collapse_min_rank_fraction,
        )

    def check(self, stats: dict[str, float], dim: int) -> list[str]:
        """The alert names raised by one set of statistics (the first set fixes the references)."""
        if self.first_distance is None:
            self.first_distance = stats["mean_pairwise_distance"]
            self.first_target_var = stats["target_var_per_dim"]
        reasons = []
        if stats["target_var_per_dim"] < self.var_ratio * self.first_target_var:
            reasons.append("target_var")
        if stats["mean_pairwise_distance"] < self.distance_ratio * self.first_distance:
            reasons.append("pairwise_distance")
        if stats["gaussian_kl"] > self.kl_per_dim_max * dim:
            reasons.append("kl")
        if stats["effective_rank"] < self.min_rank_fraction * dim:
            reasons.append("effective_rank")
        return reasons

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_steps != 0:
            return control
        latest = getattr(self.trainer, "latest_latents", None)
        if latest is None:
            return control
        predictions, targets, reg = latest
        # The statistics of the global batch, on every rank (so every rank takes the same
        # decision on `stop`): the ranks' latents are gathered in rank order, which is the
        # order of the samples in one process's batch of the same global size.
        predictions, targets = gather_rows(predictions), gather_rows(targets)
        stats = collapse_statistics(predictions, targets, float(reg))
        reasons = self.check(stats, targets.shape[-1])
        if reasons:
            self.alerts.append({"step": state.global_step, "alerts": reasons})
            console(f"[collapse] step {state.global_step}: alert {', '.join(reasons)}", state)
            if self.action == "stop":
                control.should_training_stop = True
        logs = {f"{K.COLLAPSE_PREFIX}{k}": v for k, v in stats.items()}
        logs[K.COLLAPSE_ALERTS] = float(len(self.alerts))
        # `Trainer.log` ends in `CallbackHandler.on_log`, which clears `should_log`: without
        # restoring it, the step's own train-loss log (due after `on_step_end`) would be dropped
        # at every check step, leaving holes in `curves.train_loss`.
        should_log = control.should_log
        self.trainer.log(logs)
        control.should_log = should_log
        return control

    @property
    def stopped(self) -> bool:
        """Whether the monitor stopped training."""
        return self.action == "stop" and bool(self.alerts)

    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "every_steps": self.every_steps,
                "action": self.action,
                "var_ratio": self.var_ratio,
                "distance_ratio": self.distance_ratio,
                "kl_per_dim_max": self.kl_per_dim_max,
                "min_rank_fraction": self.min_rank_fraction,
            },
            "attributes": {
                "first_distance": self.first_distance,
                "first_target_var": self.first_target_var,
                "alerts": self.alerts,
            },
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Restore the attributes of a checkpointed `state()` in place."""
        for name, value in saved.get("attributes", {}).items():
            setattr(self, name, value)

    def result(self, state: TrainerState) -> dict[str, Any]:
        """The alerts, whether they stopped training, and each statistic's curve
        (`collapse_statistics`: name -> `{"step", "value"}`, from the log history)."""
        names = sorted({k for e in state.log_history for k in e if k.startswith(K.COLLAPSE_PREFIX)})
        statistics = {
            name.removeprefix(K.COLLAPSE_PREFIX): curve(state.log_history, name) for name in names
        }
        return {
            "collapse_alerts": self.alerts,
            "collapse_stopped": self.stopped,
            K.COLLAPSE_STATISTICS: statistics,
        }


class NonFiniteLossGuard(TrainerCallback, ExportableState):
    """Counts the optimizer steps skipped for a NaN or Inf loss, and stops a run that keeps
    producing them.

    `LeWMTrainer.training_step` decides once per optimizer step, from a flag all-reduced over
    the ranks (so every rank decides alike), whether any micro-batch's loss was non-finite; such
    a step is skipped (no optimizer update). With a fused torch optimizer the decision stays on
    the device: `defer` hands the flag to the optimizer (`found_inf`, read by its fused kernel)
    and keeps it, and `flush` (at every log and checkpoint, and at the end of training) reads
    the pending flags in one host sync and counts them; otherwise the trainer reads the flag at
    once and calls `record`. `total` is logged as `nonfinite_steps`; `max_consecutive` skipped
    steps in a row raise `LeWMNonFiniteLossError` (at the flush that sees them) before anything
    else is saved, so the last checkpoint holds the last finite step's weights. The counters
    are checkpointed (`ExportableState`) and restored on resume.

    Args:
        max_consecutive (`int`): Consecutive skipped steps that stop training.
    """

    def __init__(self, max_consecutive: int = 3):
        self.max_consecutive = max_consecutive
        self.total = 0
        self.consecutive = 0
        self.skipped_steps: list[int] = []
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, 0-dim bool "skipped")
        self._armed: torch.optim.Optimizer | None = None  # holds this step's `found_inf`

    def defer(self, skip: torch.Tensor, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Skip optimizer step `step` on the device where `skip` (a 0-dim bool tensor) is true,
        and count it at the next `flush`.

        `optimizer` must be a fused torch optimizer: its step reads `found_inf` (a 0-dim float
        tensor, as `torch.amp.GradScaler` sets it) and leaves every parameter, its state and its
        step count unchanged when it is 1. The attribute is removed after the step.
        """
        optimizer.found_inf = skip.float()
        self._armed = optimizer
        self._pending.append((step, skip))

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self._armed is not None:
            del self._armed.found_inf
            self._armed = None

    def flush(self, state: TrainerState | None = None) -> None:
        """Count the deferred steps (one host sync), in order.

        Raises:
            `LeWMNonFiniteLossError`: when they complete `max_consecutive` skipped steps in a row.
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        skipped = torch.stack([flag for _, flag in pending]).tolist()
        for (step, _), was_skipped in zip(pending, skipped):
            self.record(not was_skipped, step, state)

    def record(self, finite: bool, step: int, state: TrainerState | None = None) -> None:
        """Count optimizer step `step` (1-indexed) as finite or skipped.

        Raises:
            `LeWMNonFiniteLossError`: at the `max_consecutive`-th skipped step in a row.
        """
        if finite:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        self.skipped_steps.append(step)
        console(f"[nonfinite] step {step}: NaN/Inf loss, step skipped ({self.total} so far)", state)
        if self.consecutive >= self.max_consecutive:
            first = self.skipped_steps[-self.consecutive]
            raise LeWMNonFiniteLossError(
                f"max_nonfinite_steps={self.max_consecutive}: the loss was NaN or Inf at "
                f"{self.consecutive} consecutive steps ({first} to {step}); every one was skipped, "
                "so the last checkpoint holds the weights of the last finite step"
            )

    def state(self) -> dict[str, Any]:
        return {
            "args": {"max_consecutive": self.max_consecutive},
            "attributes": {
                "total": self.total,
                "consecutive": self.consecutive,
                "skipped_steps": self.skipped_steps,
            },
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Restore the attributes of a checkpointed `state()` in place."""
        for name, value in saved.get("attributes", {}).items():
            setattr(self, name, value)

    def result(self, state: TrainerState) -> dict[str, Any]:
        return {K.NONFINITE_STEPS: self.total, "nonfinite_skipped_steps": self.skipped_steps}


# Training steps between two hand-backs of the datasets' mapped pages (`MappedPagesCallback`).
RELEASE_PAGES_EVERY_STEPS = 50


class MappedPagesCallback(TrainerCallback):
    """Hands back the pages of a trainer's memory-mapped datasets that training has read
    (`lewm_hf.data.corpus.release_mapped_pages`), every `RELEASE_PAGES_EVERY_STEPS` steps and
    when training ends.

    A memory-mapped Arrow corpus is read in random batches, and every page read would otherwise
    stay resident until the dataset is dropped: over a few epochs, the whole corpus. The
    process then holds at most the pages of that many steps' batches; the data read is the
    same.

    Args:
        trainer (`transformers.Trainer`): Its `train_dataset` and `eval_dataset` (a dataset or
            a dict of them) are looked up at each call.
    """

    def __init__(self, trainer: Any):
        self.trainer = trainer

    def release(self) -> int:
        """Hand back the datasets' pages now; returns the bytes of the mappings advised."""
        released = 0
        for name in ("train_dataset", "eval_dataset"):
            data = getattr(self.trainer, name, None)
            for dataset in data.values() if isinstance(data, dict) else [data]:
                released += release_mapped_pages(dataset)
        return released

    def on_step_end(self, args: Any, state: TrainerState, control: Any, **kwargs: Any) -> None:
        if state.global_step % RELEASE_PAGES_EVERY_STEPS == 0:
            self.release()

    def on_train_end(self, args: Any, state: TrainerState, control: Any, **kwargs: Any) -> None:
        self.release()


__all__ = [
    "CollapseMonitorCallback",
    "ComplianceGateCallback",
    "MappedPagesCallback",
    "NonFiniteLossGuard",
    "SummaryProgressCallback",
    "WSDSchedulerCallback",
]
