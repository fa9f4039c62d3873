"""Console reporting of a recipe run."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


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
        if p["task"] == "lm":
            gate = "passed" if p["gate_passed"] else f"failed: {p.get('failure_reason')}"
            detail = (
                f"{gate} (edge {_fmt(p.get('edge_compliance'))}, "
                f"rule {_fmt(p.get('rule_compliance'))})"
            )
            loss = _fmt(p.get("final_train_loss"))
        else:
            pred, copy = p.get("eval_pred_mse"), p.get("eval_copy_mse")
            ratio = pred / copy if pred is not None and copy else None
            detail = f"pred MSE {_fmt(pred)} vs copy {_fmt(copy)} (ratio {_fmt(ratio)})"
            loss = f"pred {_fmt(p.get('final_pred_loss'))} reg {_fmt(p.get('final_reg_loss'))}"
        rows.append(
            (name, p["task"], _fmt(p.get("global_step")), loss, detail, _fmt(p["wall_time_s"]))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        f"total wall time {summary['wall_time_s']:.1f}s; outputs in {summary['output_dir']}"
    )
    return "\n".join(lines)
