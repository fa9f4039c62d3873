"""What every task runner shares: the phase context and the training-arguments constructor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers.integrations import is_tensorboard_available, is_trackio_available
from transformers.trainer_utils import get_last_checkpoint

from ..checkpoints import check_checkpoint_dir
from ..errors import LeWMConfigError


@dataclass
class PhaseContext:
    """Where a task runs within a recipe.

    Args:
        name (`str`): The phase name (its output folder under the run's output dir).
        index (`int`): The phase's position in the recipe.
        previous (`dict`, *optional*): The previous phase's summary (its `model_path` feeds
            `encoder_path: previous`).
        resume (`str`, *optional*): The checkpoint folder to resume from.
        recipe (`dict`, *optional*): The phase's resolved recipe keys (written as `recipe.yaml`).
        hooks (`PhaseHooks`, *optional*): What the launcher adds to the run (Ray Train's report
            callback, for one); the default adds nothing.
    """

    name: str
    index: int = 0
    previous: dict[str, Any] | None = None
    resume: str | None = None
    recipe: dict[str, Any] | None = None
    hooks: PhaseHooks = field(default_factory=lambda: PhaseHooks())

    def prepare_trainer(self, trainer: Any) -> Any:
        """The phase's trainer as the launcher wants it (every task calls this once, right after
        building its trainer): `trainer` itself unless a launcher's hooks change it."""
        return self.hooks.prepare_trainer(trainer, self)


@dataclass
class RestoredRun:
    """Where a launcher restarts a run of the phase runner (a restarted Ray Train worker group).

    Args:
        finished (`dict[str, dict]`): The summaries of the phases that had finished, by phase
            name: those phases are not run again.
        phase (`str`, *optional*): The phase the checkpoint belongs to.
        checkpoint (`str`, *optional*): The checkpoint folder `phase` resumes from.
    """

    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    phase: str | None = None
    checkpoint: str | None = None


class PhaseHooks:
    """What a launcher adds to the phase runner (`lewm_hf.tasks.runner.run_recipe`).

    The runner is the same under every launcher; a launcher that needs more than the process
    group (Ray Train: a report callback on every trainer, a restart from the last reported
    checkpoint) subclasses this. The base class changes nothing.
    """

    def restore(self) -> RestoredRun | None:
        """Where the run restarts, or None to run every phase from its start.

        Returns:
            `RestoredRun` or None.
        """
        return None

    def prepare_trainer(self, trainer: Any, context: PhaseContext) -> Any:
        """The trainer a phase will train with (called once per phase, before `train`).

        Args:
            trainer (`transformers.Trainer`): The phase's trainer.
            context (`PhaseContext`): The phase.

        Returns:
            `transformers.Trainer`: The trainer to use (`trainer` itself here).
        """
        return trainer

    def phase_finished(self, context: PhaseContext, summary: dict[str, Any]) -> None:
        """Called when a phase has finished (or was restored as finished), with its summary."""


def build_training_arguments(
    cls: type, kwargs: dict[str, Any], output_dir: Path, source: str
) -> Any:
    """Construct a task's `TrainingArguments` subclass, turning its errors into typed ones.

    Args:
        cls (`type`): The arguments class.
        kwargs (`dict[str, Any]`): The recipe keys it owns.
        output_dir (`Path`): The phase's output folder.
        source (`str`): The recipe file (named in errors).

    Returns:
        The arguments.
    """
    kwargs = {**kwargs, "output_dir": str(output_dir)}
    # The Trainer names a repo after the output dir's last part, the phase name; with the run's
    # name in front, phases and runs do not overwrite each other's repos.
    if kwargs.get("push_to_hub") and not kwargs.get("hub_model_id"):
        kwargs["hub_model_id"] = f"{output_dir.parent.name}-{output_dir.name}"
    # Trackers name a run after `run_name`: one per phase, the same on a rerun or resume (trackio
    # resumes a run of that name, so the numbers reported after training join the same run).
    if not kwargs.get("run_name"):
        kwargs["run_name"] = f"{output_dir.parent.name}-{output_dir.name}"
    # Pinned memory only helps host-to-GPU copies (and warns at every epoch without a GPU).
    kwargs.setdefault("dataloader_pin_memory", torch.cuda.is_available())
    check_trackers(kwargs.get("report_to"), source)
    try:
        return cls(**kwargs)
    except LeWMConfigError:
        raise
    except (ValueError, TypeError) as err:
        field = _named_field(kwargs, str(err))
        if field in kwargs:
            raise LeWMConfigError(field, kwargs[field], str(err), source) from err
        raise LeWMConfigError(field, source, str(err)) from err


# Local trackers of `report_to` and the check that their package is installed.
LOCAL_TRACKERS = {
    "tensorboard": is_tensorboard_available,
    "trackio": is_trackio_available,
}


def check_trackers(report_to: Any, source: str | None = None) -> None:
    """A tracker named in `report_to` must be installed before any phase runs (else the
    Trainer would fail when the phase that names it starts, after the earlier ones trained).

    Raises:
        `LeWMConfigError`: naming `report_to` and the extra that installs the tracker.
    """
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        available = LOCAL_TRACKERS.get(name)
        if available is not None and not available():
            raise LeWMConfigError(
                "report_to",
                name,
                f"{name} is not installed: pip install 'lewm_hf[trackers]' (tensorboard and "
                "trackio), or set report_to: none",
                source,
            )


def _named_field(kwargs: dict[str, Any], message: str) -> str:
    """The key a `TrainingArguments` error is about: one named in the message, else one whose
    value the message rejects (`"nope is not a valid OptimizerNames"`), else a generic name."""
    for key in kwargs:
        if key in message:
            return key
    for key, value in kwargs.items():
        if isinstance(value, str) and value and f"{value} is not a valid" in message:
            return key
    return "training arguments"


def resolve_resume(value: Any, output_dir: Path) -> str | None:
    """The checkpoint folder `resume_from_checkpoint` names (`true`: the last one), or None.

    Raises:
        `LeWMConfigError`: when there is no such checkpoint.
    """
    if value in (None, False):
        return None
    if value is True:
        last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if last is None:
            raise LeWMConfigError(
                "resume_from_checkpoint", True, f"no checkpoint-* folder in {output_dir}"
            )
        check_checkpoint_dir(last, "resume_from_checkpoint")
        return last
    if not Path(str(value)).is_dir():
        raise LeWMConfigError("resume_from_checkpoint", value, "checkpoint folder not found")
    # A truncated or corrupt checkpoint fails here, naming the file, before any phase runs on.
    check_checkpoint_dir(str(value), "resume_from_checkpoint")
    return str(value)


def resolve_previous(value: str | None, context: PhaseContext, field: str) -> str | None:
    """`previous` becomes the previous phase's `model_path`; a path, a Hub id or None is kept.

    Raises:
        `LeWMConfigError`: for `previous` in the first phase.
    """
    if value != "previous":
        return value
    if context.previous is None:
        raise LeWMConfigError(field, value, "there is no previous phase")
    return context.previous["model_path"]


__all__ = [
    "PhaseContext",
    "PhaseHooks",
    "RestoredRun",
    "build_training_arguments",
    "resolve_previous",
    "resolve_resume",
]
