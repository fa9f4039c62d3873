"""Trainer callbacks: compliance gate, collapse monitor, WSD logging, progress and run results.

Curves are read back from `TrainerState.log_history`, which the Trainer saves in every
checkpoint and restores on resume, so `result.json`'s curves stay continuous across a resume.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback, TrainerState
from transformers.trainer_callback import ProgressCallback

from ..errors import LeWMConfigError
from ..evaluation.compliance import ComplianceGate, evaluate_compliance
from ..evaluation.latents import collapse_statistics
from .schedules import wsd_lr_multiplier

GATE_CHECKPOINT = "gate_checkpoint"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Atomically write `payload` as indented JSON (non-finite floats become null)."""

    def clean(obj: Any) -> Any:
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        if isinstance(obj, (np.floating, np.integer)):
            return clean(obj.item())
        return obj

    atomic_write_text(path, json.dumps(clean(payload), indent=2, sort_keys=True) + "\n")


def curve(log_history: list[dict[str, Any]], key: str) -> dict[str, list[float]]:
    """A curve `{"step": [...], "value": [...]}` of `key` from a Trainer log history."""
    steps, values = [], []
    for entry in log_history:
        if key in entry:
            steps.append(int(entry["step"]))
            values.append(float(entry[key]))
    return {"step": steps, "value": values}


def plot_curves(curves: dict[str, dict[str, list[float]]], path: str | Path, title: str) -> None:
    """Plot each non-empty curve in its own panel and save a PNG (atomically).

    Args:
        curves (`dict[str, dict[str, list[float]]]`): Name -> `{"step", "value"}`.
        path (`str` or `Path`): The PNG file.
        title (`str`): Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(name, c) for name, c in curves.items() if c["step"]]
    if not items:
        return
    fig, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 3.2), squeeze=False)
    for ax, (name, c) in zip(axes[0], items):
        ax.plot(c["step"], c["value"], marker="." if len(c["step"]) < 50 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def console(message: str, state: TrainerState | None = None) -> None:
    """Print one line on the main process without breaking a tqdm progress bar."""
    if state is not None and not state.is_world_process_zero:
        return
    try:
        from tqdm.auto import tqdm

        tqdm.write(message)
    except ImportError:  # pragma: no cover
        print(message, flush=True)


class SummaryProgressCallback(ProgressCallback):
    """The Trainer's tqdm bar, showing the latest train loss on the bar instead of printing a
    dict per log; evaluation summaries are printed by the callbacks that compute them."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        shown = {k: v for k, v in logs.items() if k in ("loss", "pred_loss", "reg_loss")}
        if shown:
            self.training_bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        elif "train_runtime" in logs:
            self.training_bar.write(
                f"[train] done in {logs['train_runtime']:.1f}s, "
                f"{logs.get('train_steps_per_second', 0):.2f} steps/s, "
                f"mean loss {logs.get('train_loss', float('nan')):.4g}"
            )


class ComplianceGateCallback(TrainerCallback):
    """Evaluate edge/rule compliance of generated walks at every evaluation and gate on it.

    Runs after each Trainer evaluation (so `eval_strategy`/`eval_steps` decide how often), logs
    `eval_edge_compliance`, `eval_rule_compliance`, `eval_rule_checks`, `eval_distinct_fraction`
    (and the `eval_sampled_*` variants when `log_sampled`) through `Trainer.log`, adds them to the
    evaluation metrics (so `metric_for_best_model` can use them), prints a one-line summary,
    and on a pass saves `<output_dir>/gate_checkpoint` (outside the `checkpoint-*` rotation, so
    `save_total_limit` never deletes it) and stops training. At the end of training it writes
    `result.json` and `curves.png` in the output dir.

    Args:
        trainer (`transformers.Trainer`): The trainer (for `log` and `save_model`).
        graph (`Graph`), jumpers (`list[Jumper]`): The walk process.
        prompt_walks (`np.ndarray`): Held-out walks; their first tokens are the prompts.
        context_window (`int`): The window `w`.
        gate (`ComplianceGate`): Thresholds.
        rule (`str`): `"window"` or `"chunked"`.
        decoding (`str`): Decoding the gate uses, `"greedy"` or `"sample"`.
        num_sequences (`int`): Sequences generated per evaluation.
        temperature (`float`): Sampling temperature.
        log_sampled (`bool`): Also evaluate (and log) the other decoding.
        seed (`int`): Sampling seed.
        batch_size (`int`): Generation batch size.
    """

    def __init__(
        self,
        trainer,
        graph,
        jumpers,
        prompt_walks: np.ndarray,
        context_window: int,
        gate: ComplianceGate,
        rule: str = "window",
        decoding: str = "greedy",
        num_sequences: int = 1000,
        temperature: float = 1.0,
        log_sampled: bool = True,
        seed: int = 0,
        batch_size: int = 256,
    ):
        self.trainer = trainer
        self.graph = graph
        self.jumpers = jumpers
        self.prompt_walks = prompt_walks
        self.context_window = context_window
        self.gate = gate
        self.rule = rule
        self.decoding = decoding
        self.num_sequences = num_sequences
        self.temperature = temperature
        self.log_sampled = log_sampled
        self.seed = seed
        self.batch_size = batch_size
        self.last_failure: str | None = "no compliance evaluation ran"

    def _evaluate(self, model, decoding: str):
        return evaluate_compliance(
            model,
            self.graph,
            self.jumpers,
            self.prompt_walks,
            self.context_window,
            num_sequences=self.num_sequences,
            rule=self.rule,
            decoding=decoding,
            temperature=self.temperature,
            seed=self.seed,
            batch_size=self.batch_size,
        )

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        result = self._evaluate(model, self.decoding)
        logs = {
            "eval_edge_compliance": result.edge_compliance,
            "eval_rule_compliance": result.rule_compliance,
            "eval_rule_checks": float(result.rule_checks),
            "eval_distinct_fraction": result.distinct_fraction,
        }
        other = None
        if self.log_sampled:
            other_decoding = "sample" if self.decoding == "greedy" else "greedy"
            other = self._evaluate(model, other_decoding)
            prefix = "eval_sampled_" if other_decoding == "sample" else "eval_greedy_"
            logs.update(
                {
                    f"{prefix}edge_compliance": other.edge_compliance,
                    f"{prefix}rule_compliance": other.rule_compliance,
                    f"{prefix}rule_checks": float(other.rule_checks),
                }
            )
        passed, reason = self.gate.check(result)
        logs["eval_gate_passed"] = float(passed)
        self.last_failure = reason
        self.trainer.log(dict(logs))
        if metrics is not None:
            metrics.update(logs)
        line = (
            f"[gate] step {state.global_step} epoch {state.epoch or 0:.2f} | {self.decoding}: "
            f"edge {result.edge_compliance:.3f} rule {result.rule_compliance:.3f} "
            f"(checks {result.rule_checks}, distinct {result.distinct_fraction:.2f})"
        )
        if other is not None:
            line += (
                f" | {other.decoding}: edge {other.edge_compliance:.3f} "
                f"rule {other.rule_compliance:.3f} (checks {other.rule_checks})"
            )
        line += " | PASS" if passed else f" | not yet: {reason}"
        console(line, state)
        if passed:
            self.trainer.save_model(os.path.join(args.output_dir, GATE_CHECKPOINT))
            control.should_training_stop = True
        return control

    def result(self, state: TrainerState) -> dict[str, Any]:
        """The gate part of `result.json`, derived from the log history."""
        history = state.log_history
        passes = [e for e in history if e.get("eval_gate_passed") == 1.0]
        evals = [e for e in history if "eval_edge_compliance" in e]
        out: dict[str, Any] = {
            "gate_passed": bool(passes),
            "gate": {
                "edge_threshold": self.gate.edge_threshold,
                "rule_threshold": self.gate.rule_threshold,
                "min_rule_checks": self.gate.min_rule_checks,
                "rule": self.rule,
                "decoding": self.decoding,
                "num_sequences": self.num_sequences,
            },
        }
        if passes:
            out["gate_step"] = int(passes[0]["step"])
            out["gate_epoch"] = passes[0].get("epoch")
            out["gate_checkpoint"] = GATE_CHECKPOINT
            out["edge_compliance"] = passes[0]["eval_edge_compliance"]
            out["rule_compliance"] = passes[0]["eval_rule_compliance"]
            out["rule_checks"] = int(passes[0]["eval_rule_checks"])
        else:
            out["failure_reason"] = self.last_failure
            last = evals[-1] if evals else {}
            out["final_edge_compliance"] = last.get("eval_edge_compliance")
            out["final_rule_compliance"] = last.get("eval_rule_compliance")
            out["final_rule_checks"] = last.get("eval_rule_checks")
        return out


class RunResultCallback(TrainerCallback):
    """Write `result.json` and `curves.png` in the output dir at the end of training.

    Curves come from the Trainer's log history (so they survive resume): `train_loss` at every
    logged step (every step with `logging_steps=1`) plus each key of `curve_keys` that was
    logged. Other callbacks that define `result(state)` contribute their keys.

    Args:
        phase (`str`): The phase name written in the result.
        curve_keys (`dict[str, str]`): Result curve name -> logged key.
        contributors (`list`): Objects with a `result(state) -> dict` method.
    """

    def __init__(self, phase: str, curve_keys: dict[str, str], contributors: list | None = None):
        self.phase = phase
        self.curve_keys = curve_keys
        self.contributors = contributors or []
        self.extra: dict[str, Any] = {}

    def build(self, state: TrainerState) -> dict[str, Any]:
        curves = {"train_loss": curve(state.log_history, "loss")}
        for name, key in self.curve_keys.items():
            curves[name] = curve(state.log_history, key)
        payload: dict[str, Any] = {
            "phase": self.phase,
            "global_step": state.global_step,
            "epoch": state.epoch,
            "curves": curves,
        }
        final = [e for e in state.log_history if "train_loss" in e]
        if final:
            payload["train_runtime_s"] = final[-1].get("train_runtime")
        for c in self.contributors:
            payload.update(c.result(state))
        payload.update(self.extra)
        return payload

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        payload = self.build(state)
        write_json(Path(args.output_dir) / "result.json", payload)
        plot_curves(payload["curves"], Path(args.output_dir) / "curves.png", self.phase)


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
        return {} if self.multiplier is None else {"lr_multiplier": self.multiplier}


class CollapseMonitorCallback(TrainerCallback):
    """Watch the latents for collapse every `every_steps` steps.

    Alerts (DESIGN.md section 8): `pred_var_per_dim < 0.5 * target_var_per_dim`;
    `mean_pairwise_distance < 0.5 *` its first value; `gaussian_kl > kl_max`; `effective_rank
    < min_rank_fraction * d`. Statistics are logged as `collapse/<name>` through `Trainer.log`
    with `collapse/alerts` (the running count). Action `warn` logs and counts; `stop` stops
    training (`result.json` then says `collapse_stopped: true`).

    The statistics are computed by the trainer from the latest training batch (see
    `LeWMTrainer.latest_latents`).

    Args:
        trainer (`LeWMTrainer`): The trainer.
        every_steps (`int`): Check period.
        action (`str`): `"warn"` or `"stop"`.
        var_ratio (`float`), distance_ratio (`float`), kl_max (`float`),
        min_rank_fraction (`float`): Alert thresholds.
    """

    def __init__(
        self,
        trainer,
        every_steps: int = 50,
        action: str = "warn",
        var_ratio: float = 0.5,
        distance_ratio: float = 0.5,
        kl_max: float = 10.0,
        min_rank_fraction: float = 0.1,
    ):
        if action not in ("warn", "stop"):
            raise LeWMConfigError("collapse_action", action, "must be 'warn' or 'stop'")
        if every_steps < 1:
            raise LeWMConfigError("collapse_monitor_steps", every_steps, "must be >= 1")
        self.trainer = trainer
        self.every_steps = every_steps
        self.action = action
        self.var_ratio = var_ratio
        self.distance_ratio = distance_ratio
        self.kl_max = kl_max
        self.min_rank_fraction = min_rank_fraction
        self.first_distance: float | None = None
        self.alerts: list[dict[str, Any]] = []

    def check(self, stats: dict[str, float], dim: int) -> list[str]:
        """The alert names raised by one set of statistics."""
        if self.first_distance is None:
            self.first_distance = stats["mean_pairwise_distance"]
        reasons = []
        if stats["pred_var_per_dim"] < self.var_ratio * stats["target_var_per_dim"]:
            reasons.append("pred_var")
        if stats["mean_pairwise_distance"] < self.distance_ratio * self.first_distance:
            reasons.append("pairwise_distance")
        if stats["gaussian_kl"] > self.kl_max:
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
        stats = collapse_statistics(predictions, targets, reg)
        reasons = self.check(stats, targets.shape[-1])
        if reasons:
            self.alerts.append({"step": state.global_step, "alerts": reasons})
            console(f"[collapse] step {state.global_step}: alert {', '.join(reasons)}", state)
            if self.action == "stop":
                control.should_training_stop = True
        logs = {f"collapse/{k}": v for k, v in stats.items()}
        logs["collapse/alerts"] = float(len(self.alerts))
        self.trainer.log(logs)
        return control

    def result(self, state: TrainerState) -> dict[str, Any]:
        return {
            "collapse_alerts": self.alerts,
            "collapse_stopped": self.action == "stop" and bool(self.alerts),
        }


__all__ = [
    "GATE_CHECKPOINT",
    "CollapseMonitorCallback",
    "ComplianceGateCallback",
    "RunResultCallback",
    "SummaryProgressCallback",
    "WSDSchedulerCallback",
    "atomic_write_text",
    "console",
    "curve",
    "plot_curves",
    "write_json",
]
