"""Learning-rate schedules: warmup-stable-decay (WSD), cosine and constant
(docs/design.md, section 6 (The learning-rate schedule)).

`wsd_lr_multiplier` gives the multiplier of the base learning rate at a 1-indexed optimisation
step; `get_wsd_scheduler` wraps it in a `LambdaLR` that the HF `Trainer` can save and resume.
"""

from __future__ import annotations

import math
import operator

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from ..errors import LeWMConfigError
from ..fields import LRSchedule, check_choice


def _as_int(field: str, value: object, minimum: int) -> int:
    if isinstance(value, bool):
        raise LeWMConfigError(field, value, "must be an integer")
    try:
        number = operator.index(value)
    except TypeError:
        raise LeWMConfigError(field, value, "must be an integer") from None
    if number < minimum:
        raise LeWMConfigError(field, value, f"must be >= {minimum}")
    return number


def wsd_lr_multiplier(
    step: int, total_steps: int, warmup_steps: int, schedule: LRSchedule = "wsd"
) -> float:
    """Learning-rate multiplier at the 1-indexed optimisation step `step` of `total_steps`.

    With `s = step`, `S = total_steps`, `W = warmup_steps`, every schedule starts with a linear
    warmup `s / W` for `s <= W` (when `W > 0`) and is 1.0 throughout when `S <= W`. After it:

    - `wsd`: with `P = S - W`, `decay_start = W + max(1, floor(0.80 P))` and
      `taper_start = W + max(1, floor(0.98 P))`: 1.0 up to `decay_start`, then linear to 0.1 at
      `taper_start` (`1 - 0.9 (s - decay_start) / max(1, taper_start - decay_start)`), then
      `max(0.01, 0.1 - 0.09 (s - taper_start) / max(1, S - taper_start))` down to 0.01 at `S`.
      The floors are taken in exact integer arithmetic (`4 P // 5`, `49 P // 50`).
    - `cosine`: over the `P = S - W` steps after warmup, with `s' = s - W`:
      `0.5 (1 + cos(pi (s' - 1) / (P - 1)))`, from 1.0 down to 0.0 at `S`; 1.0 when `P = 1`.
      With `W = 0` this is `0.5 (1 + cos(pi (s - 1) / (S - 1)))` over the whole run
      (docs/design.md, section 6 (The learning-rate schedule)).
    - `constant`: 1.0.

    Args:
        step (`int`): 1-indexed step, `1 <= step <= total_steps`.
        total_steps (`int`): Number of optimisation steps `S >= 1`.
        warmup_steps (`int`): Warmup steps `W >= 0`.
        schedule (`str`, *optional*, defaults to `"wsd"`): `"wsd"`, `"cosine"` or `"constant"`.

    Returns:
        `float`: The multiplier, in `[0, 1]`.
    """
    check_choice("lr_schedule", schedule, LRSchedule)
    total = _as_int("total_steps", total_steps, minimum=1)
    warmup = _as_int("warmup_steps", warmup_steps, minimum=0)
    s = _as_int("step", step, minimum=1)
    if s > total:
        raise LeWMConfigError("step", step, f"must be <= total_steps={total}")

    if warmup > 0 and s <= warmup:
        return s / warmup
    if total <= warmup or schedule == "constant":
        return 1.0

    remaining = total - warmup
    if schedule == "cosine":
        if remaining == 1:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (s - warmup - 1) / (remaining - 1)))

    decay_start = warmup + max(1, (4 * remaining) // 5)  # floor(0.80 P)
    taper_start = warmup + max(1, (49 * remaining) // 50)  # floor(0.98 P)
    if s <= decay_start:
        return 1.0
    if s <= taper_start:
        return 1.0 - 0.9 * (s - decay_start) / max(1, taper_start - decay_start)
    return max(0.01, 0.1 - 0.09 * (s - taper_start) / max(1, total - taper_start))


class WSDLambda:
    """Picklable `LambdaLR` lambda: scheduler counter `i` (0-indexed) -> multiplier at `i + 1`.

    The step is clamped to `total_steps`: the HF `Trainer` calls `scheduler.step()` after the
    last optimiser step too, which asks for step `total_steps + 1`; it gets the final value.
    Being a plain object (not a function), its attributes are saved by
    `LambdaLR.state_dict()` and restored by `load_state_dict()`.

    Args:
        total_steps (`int`): Number of optimisation steps.
        warmup_steps (`int`): Warmup steps.
        schedule (`str`, *optional*, defaults to `"wsd"`): Schedule name.
    """

    def __init__(self, total_steps: int, warmup_steps: int, schedule: str = "wsd"):
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.schedule = schedule

    def __call__(self, counter: int) -> float:
        step = min(max(counter + 1, 1), self.total_steps)
        return wsd_lr_multiplier(step, self.total_steps, self.warmup_steps, self.schedule)

    def __repr__(self) -> str:
        return (
            f"WSDLambda(total_steps={self.total_steps}, warmup_steps={self.warmup_steps}, "
            f"schedule={self.schedule!r})"
        )


def get_wsd_scheduler(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int,
    schedule: str = "wsd",
    last_epoch: int = -1,
) -> LambdaLR:
    """A `LambdaLR` following `wsd_lr_multiplier`, for the HF `Trainer` or a hand-written loop.

    Optimisation step `n` (1-indexed) runs with `base_lr * wsd_lr_multiplier(n, ...)` for every
    parameter group, so the ratios between the groups' learning rates are kept. The scheduler
    counter `i` maps to step `i + 1`, clamped to `total_steps` (see `WSDLambda`). The scheduler
    pickles and round-trips through `state_dict()` / `load_state_dict()`.

    Args:
        optimizer (`torch.optim.Optimizer`): The optimiser; each group's `lr` is its base lr.
        total_steps (`int`): Number of optimisation steps.
        warmup_steps (`int`): Warmup steps.
        schedule (`str`, *optional*, defaults to `"wsd"`): `"wsd"`, `"cosine"` or `"constant"`.
        last_epoch (`int`, *optional*, defaults to -1): Index of the last counter value when
            resuming (as in `LambdaLR`).

    Returns:
        `torch.optim.lr_scheduler.LambdaLR`: The scheduler.
    """
    wsd_lr_multiplier(1, total_steps, warmup_steps, schedule)  # validate the settings up front
    return LambdaLR(
        optimizer, WSDLambda(total_steps, warmup_steps, schedule), last_epoch=last_epoch
    )
