"""What a trainer reports when a phase ends: `result.json` (curves from the log history and
each contributor's numbers), `curves.png`, and the same numbers sent to the `report_to`
trackers at the final step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

from transformers import TrainerState
from transformers.trainer_callback import ProgressCallback

from .. import metric_keys as K
from ..reporting import curve, plot_curves, write_json
from .callbacks import SummaryProgressCallback

# Where transformers' tracker callbacks (`report_to`) live.
TRACKER_MODULE = "transformers.integrations"
# `result.json` keys `report_result` does not send: curves (logged step by step already),
# bookkeeping and settings.
UNTRACKED_KEYS = frozenset(
    {"phase", "global_step", "epoch", "curves", K.COLLAPSE_STATISTICS, "seeds", "gate"}
)


def flatten_numbers(payload: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a nested payload as one flat mapping: `{"a": {"b": [1, 2]}}` ->
    `{"a/b/0": 1.0, "a/b/1": 2.0}`; booleans become 0 / 1, everything else (strings, None,
    lists of mappings) is left out.

    Args:
        payload (`dict[str, Any]`): The payload.
        prefix (`str`, *optional*): Put before every key.

    Returns:
        `dict[str, float]`: Flat key -> number.
    """
    out: dict[str, float] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, (bool, int, float)) and not isinstance(value, str):
            if math.isfinite(float(value)):
                out[name] = float(value)
        elif isinstance(value, dict):
            out.update(flatten_numbers(value, name + "/"))
        elif isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            out.update(flatten_numbers(dict(enumerate(value)), name + "/"))
    return out


class ResultMixin:
    """`result.json` of a trainer: curves from the log history plus each contributor's keys.

    Subclasses set `result_curves` (result curve name -> logged key) and `result_contributors`
    (objects with a `result(state) -> dict` method). The task runner writes the payload once,
    after training and the final evaluation.
    """

    result_curves: ClassVar[dict[str, str]] = {}

    def _use_summary_progress(self) -> None:
        if not self.args.disable_tqdm:
            self.remove_callback(ProgressCallback)
            self.add_callback(SummaryProgressCallback())

    @property
    def result_contributors(self) -> list[Any]:
        return []

    def build_result(self, phase: str, **extra: Any) -> dict[str, Any]:
        """The run's result: `phase`, `global_step`, `epoch`, `curves.train_loss` (every logged
        step) and the other curves, the train runtime, the contributors' keys and `extra`."""
        state: TrainerState = self.state
        curves = {K.TRAIN_LOSS: curve(state.log_history, K.LOSS)}
        for name, key in self.result_curves.items():
            curves[name] = curve(state.log_history, key)
        payload: dict[str, Any] = {
            "phase": phase,
            "global_step": state.global_step,
            "epoch": state.epoch,
            "curves": curves,
        }
        final = [e for e in state.log_history if K.TRAIN_LOSS in e]
        if final:
            payload["train_runtime_s"] = final[-1].get(K.TRAIN_RUNTIME)
        for contributor in self.result_contributors:
            payload.update(contributor.result(state))
        payload.update(extra)
        return payload

    def write_result(self, payload: dict[str, Any]) -> None:
        """Write `result.json` and `curves.png` in the output dir (main process only), and send
        its final numbers to the `report_to` trackers (`report_result`)."""
        if not self.is_world_process_zero():
            return
        out = Path(self.args.output_dir)
        write_json(out / K.RESULT_FILE, payload)
        plot_curves(payload["curves"], out / K.CURVES_PLOT, payload["phase"])
        self.report_result(payload)

    def report_result(self, payload: dict[str, Any]) -> dict[str, float]:
        """Send the numbers of `result.json` that training did not log (the evaluation suite's
        `eval_*`, `before_eval_*`, the final compliance and losses, the trainable fraction) to
        the `report_to` trackers, at the final step, and close their runs again.

        During training the trackers already receive every logged step (`loss`, `pred_loss`,
        `reg_loss`, `collapse/*`, the gate's `eval_*_compliance` and rule-check counts): they
        are the Trainer's `on_log` integrations. The evaluation after training comes after
        `on_train_end`, which closes the trackers' runs; here each integration logs the
        numbers once more through its own `on_log` (TensorBoard reopens its event file,
        trackio resumes the run of the same name) and is closed with `on_train_end`. Nested
        numbers are flattened (`eval_rollout_cos/0`, `lora/r`); curves, strings, seeds and
        bookkeeping (`global_step`, `epoch`) are left out.

        Args:
            payload (`dict[str, Any]`): The `result.json` payload.

        Returns:
            `dict[str, float]`: What was sent (empty without a tracker).
        """
        trackers = [
            callback
            for callback in self.callback_handler.callbacks
            if type(callback).__module__.startswith(TRACKER_MODULE)
        ]
        if not trackers or not self.is_world_process_zero():
            return {}
        logs = flatten_numbers({k: v for k, v in payload.items() if k not in UNTRACKED_KEYS})
        if not logs:
            return {}
        model = self.model
        for callback in trackers:
            callback.on_log(self.args, self.state, self.control, logs=dict(logs), model=model)
            callback.on_train_end(self.args, self.state, self.control, model=model)
        return logs


__all__ = ["TRACKER_MODULE", "UNTRACKED_KEYS", "ResultMixin", "flatten_numbers"]
