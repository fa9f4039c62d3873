"""Reporting: atomic JSON writes, console lines, curves and plots, and the run's summary table.

Every file a run writes (`result.json`, `summary.json`, `curves.png`) goes through a temporary
file and a rename, so a crash never leaves one half-written.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerState

from . import metric_keys as K


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


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_evaluation(results: dict[str, Any]) -> str:
    """A short table of the suite's headline numbers against their references."""

    def f(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [
        f"action R@1     {f(results.get(K.EVAL_ACTION_R1))}  copy {f(results.get(K.EVAL_ACTION_R1_COPY))}"
        f"  shuffled {f(results.get(K.EVAL_ACTION_R1_SHUFFLED))}  chance {f(results.get(K.EVAL_ACTION_CHANCE))}",
        f"surprise AUROC {f(results.get(K.EVAL_SURPRISE_AUROC))} (true moves vs teleports)",
    ]
    if K.EVAL_SURPRISE_OTHER_ROW in results:  # a trajectory dataset: no teleports
        lines[1] = lines[1].replace("true moves vs teleports", "observed vs another row's next")
    if K.EVAL_SURPRISE_AUROC_COPY in results:
        lines[-1] += (
            f"  copy {f(results.get(K.EVAL_SURPRISE_AUROC_COPY))}"
            f"  shuffled {f(results.get(K.EVAL_SURPRISE_AUROC_SHUFFLED))}"
        )
    if K.EVAL_SURPRISE_AUROC_HARD in results:
        lines.append(
            f"surprise AUROC {f(results.get(K.EVAL_SURPRISE_AUROC_HARD))} (vs hard negatives)"
            f"  copy {f(results.get(K.EVAL_SURPRISE_AUROC_HARD_COPY))}"
            f"  shuffled {f(results.get(K.EVAL_SURPRISE_AUROC_HARD_SHUFFLED))}"
        )
    l2, copy = results.get(K.EVAL_ROLLOUT_L2) or [], results.get(K.EVAL_ROLLOUT_L2_COPY) or []
    if l2:
        lines.append(
            "rollout L2     "
            + " ".join(f"h{h}:{a:.2f}/{b:.2f}" for h, (a, b) in enumerate(zip(l2, copy), 1))
            + "  (model/copy)"
        )
    success = results.get(K.EVAL_PLAN_SUCCESS) or {}
    random = results.get(K.EVAL_PLAN_SUCCESS_RANDOM) or {}
    if success:
        lines.append(
            "plan success   "
            + " ".join(f"d{d}:{success[d]:.2f}/{random.get(d, float('nan')):.2f}" for d in success)
            + "  (model/random)"
        )
    lines += _plan_goal_form_lines(results.get(K.EVAL_PLAN_BY_GOAL_FORM) or {})
    return "\n".join(lines)


def _plan_goal_form_lines(by_form: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Per goal form and distance: success [interval] against random, distinct (start, goal)
    pairs, and the mean steps / d of the successes."""

    def f(value: Any) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = []
    for form, numbers in by_form.items():
        success = numbers.get(K.EVAL_PLAN_SUCCESS) or {}
        ci = numbers.get(K.EVAL_PLAN_CI) or {}
        random = numbers.get(K.EVAL_PLAN_SUCCESS_RANDOM) or {}
        pairs = numbers.get(K.EVAL_PLAN_DISTINCT_PAIRS) or {}
        ratio = numbers.get(K.EVAL_PLAN_STEPS_RATIO) or {}
        lines.append(f"plan goals from {form}: d success [interval] random pairs steps/d")
        for d in success:
            low, high = ci.get(d, (None, None))
            lines.append(
                f"  d{d}: {f(success[d])} [{f(low)}, {f(high)}] {f(random.get(d))} "
                f"{pairs.get(d, '-')} {f(ratio.get(d))}"
            )
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    """A short table: per phase the final losses, the gate result and, for world models, the
    held-out latent prediction error against the copy baseline.

    Args:
        summary (`dict[str, Any]`): The `summary.json` payload of `run_recipe`.

    Returns:
        `str`: The table, ready to print.
    """
    rows = [("phase", "task", "steps", "final loss", "gate / eval", "time (s)")]
    for name, p in summary["phases"].items():
        if p["task"] == "lm" and K.GATE_PASSED in p:  # the walk LM (a dataset LM has no gate)
            gate = "passed" if p[K.GATE_PASSED] else f"failed: {p.get('failure_reason')}"
            detail = (
                f"{gate} (edge {_fmt(p.get(K.EDGE_COMPLIANCE))}, "
                f"rule {_fmt(p.get(K.RULE_COMPLIANCE))})"
            )
            loss = _fmt(p.get("final_train_loss"))
        elif K.EVAL_PRED_MSE not in p:  # an LM without a gate (the DNA encoder phase)
            detail = f"eval loss {_fmt(p.get('final_eval_loss'))}"
            loss = _fmt(p.get("final_train_loss"))
        else:
            pred, copy = p.get(K.EVAL_PRED_MSE), p.get(K.EVAL_COPY_MSE)
            ratio = pred / copy if pred is not None and copy else None
            detail = f"pred MSE {_fmt(pred)} vs copy {_fmt(copy)} (ratio {_fmt(ratio)})"
            loss = f"pred {_fmt(p.get('final_pred_loss'))} reg {_fmt(p.get('final_reg_loss'))}"
        rows.append(
            (name, p["task"], _fmt(p.get("global_step")), loss, detail, _fmt(p["wall_time_s"]))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for name, p in summary["phases"].items():
        if K.EVAL_SNV_RECOVERY_R1 in p:
            lines.append(
                f"{name} evaluation: SNV recovery R@1 {_fmt(p[K.EVAL_SNV_RECOVERY_R1])} "
                f"(copy {_fmt(p.get(K.EVAL_SNV_RECOVERY_R1_COPY))}, chance "
                f"{_fmt(p.get(K.EVAL_SNV_RECOVERY_CHANCE))}); edit action R@1 "
                f"{_fmt(p.get(K.EVAL_EDIT_ACTION_R1))} (copy "
                f"{_fmt(p.get(K.EVAL_EDIT_ACTION_R1_COPY))}, chance "
                f"{_fmt(p.get(K.EVAL_EDIT_ACTION_CHANCE))})"
            )
            if K.EVAL_SNV_RECOVERY_CHANCE_PRIOR in p:
                lines.append(
                    f"{name} evaluation: SNV recovery chance under the draw's prior "
                    f"{_fmt(p[K.EVAL_SNV_RECOVERY_CHANCE_PRIOR])}, shuffled actions "
                    f"{_fmt(p.get(K.EVAL_SNV_RECOVERY_R1_SHUFFLED))}; edit action R@1 shuffled "
                    f"{_fmt(p.get(K.EVAL_EDIT_ACTION_R1_SHUFFLED))}, perfect predictor "
                    f"{_fmt(p.get(K.EVAL_EDIT_ACTION_R1_CEILING))}"
                )
        variants = [
            (label, key)
            for label, key in (
                ("LM", K.EVAL_VARIANT_AUROC_LM),
                ("surprise", K.EVAL_VARIANT_AUROC_SURPRISE),
                ("k-mer", K.EVAL_VARIANT_AUROC_KMER),
            )
            if key in p
        ]
        if variants:
            lines.append(
                f"{name} variant effect (nonsense vs synonymous AUROC, 95% CI): "
                + "; ".join(
                    f"{label} {_fmt(p[key])} [{', '.join(_fmt(v) for v in p.get(key + K.CI_SUFFIX) or [])}]"
                    for label, key in variants
                )
            )
        if K.EVAL_ACTION_R1 in p:
            lines.append(f"{name} evaluation:")
            lines.extend("  " + line for line in format_evaluation(p).splitlines())
    lines.append(
        f"total wall time {summary['wall_time_s']:.1f}s; outputs in {summary['output_dir']}"
    )
    return "\n".join(lines)
