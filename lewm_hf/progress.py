"""Progress bars of the stages that take more than a few seconds: one helper for all of them.

Corpus and trajectory builds, the frozen-feature cache, evaluation and planning report their
progress through `progress`, a `tqdm` bar with a rate and an ETA. A bar is shown only when a
user can watch it: never when standard output (or the bar's stream, standard error) is not a
terminal (logs, pipes, CI, tests), nor when the run's `disable_tqdm` is set (the task runner
passes each phase's value to `set_progress_disabled`; a trainer passes its own). The
environment variable `LEWM_HF_PROGRESS` overrides both: `1` always shows the bars, `0` never.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

# `1`: always show the bars (even into a file); `0`: never.
PROGRESS_ENV = "LEWM_HF_PROGRESS"
# Seconds between two redraws of a bar.
MIN_INTERVAL_S = 0.5

_disabled = False


def set_progress_disabled(disabled: bool) -> None:
    """Turn the bars off (`disable_tqdm`) or back on for the stages that follow."""
    global _disabled
    _disabled = bool(disabled)


def progress_enabled(disable: bool | None = None) -> bool:
    """Whether a bar would be shown now.

    Args:
        disable (`bool`, *optional*): The caller's `disable_tqdm`; None: the value last given to
            `set_progress_disabled`.

    Returns:
        `bool`: False under `LEWM_HF_PROGRESS=0`, True under `LEWM_HF_PROGRESS=1`, else True
        when not disabled, on the main process (`RANK` 0 or unset), and both standard output
        and standard error are terminals.
    """
    forced = os.environ.get(PROGRESS_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if _disabled if disable is None else disable:
        return False
    if int(os.environ.get("RANK", "0")) != 0:  # one bar per run: the main process's
        return False
    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, sys.stderr))


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    disable: bool | None = None,
) -> tqdm:
    """A `tqdm` bar (rate and ETA) over `iterable`, or one updated by hand (`bar.update(n)`).

    Args:
        iterable (`Iterable`, *optional*): What to iterate over.
        desc (`str`): The stage, as the bar's label (`"walks"`, `"feature cache"`).
        total (`int`, *optional*): The number of units (needed for an ETA when `iterable` has no
            length).
        unit (`str`, defaults to `"it"`): What one unit is (`"walk"`, `"row"`, `"episode"`).
        disable (`bool`, *optional*): The caller's `disable_tqdm` (see `progress_enabled`).

    Returns:
        `tqdm`: The bar; a disabled one draws nothing and costs next to nothing. Use it as a
        context manager (or `close()` it) when updated by hand.
    """
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        disable=not progress_enabled(disable),
        file=sys.stderr,
        mininterval=MIN_INTERVAL_S,
        dynamic_ncols=True,
    )


__all__ = ["PROGRESS_ENV", "progress", "progress_enabled", "set_progress_disabled"]
