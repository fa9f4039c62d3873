"""Tests of `lewm_hf.trainer.schedules`: the WSD / cosine / constant multipliers and scheduler."""

from __future__ import annotations

import itertools
import math
import pickle

import pytest
import torch

from lewm_hf.errors import LeWMConfigError
from lewm_hf.trainer.schedules import get_wsd_scheduler, wsd_lr_multiplier

# (total_steps S, warmup_steps W): S <= W, W = 0, S = 1, S = 2, S = 10, S = 100 and others.
CASES = [
    (1, 0),
    (1, 1),
    (1, 5),
    (2, 0),
    (2, 1),
    (2, 2),
    (3, 5),
    (5, 5),
    (10, 0),
    (10, 1),
    (10, 3),
    (10, 10),
    (11, 10),
    (37, 4),
    (100, 0),
    (100, 10),
    (1000, 50),
]


def transcribed_wsd(s: int, S: int, W: int) -> float:
    """The WSD formula of docs/design.md, section 6 (The learning-rate schedule), line by line."""
    if W > 0 and s <= W:
        return s / W
    if S <= W:
        return 1.0
    P = S - W
    decay_start = W + max(1, math.floor(0.80 * P))
    taper_start = W + max(1, math.floor(0.98 * P))
    if s <= decay_start:
        return 1.0
    if s <= taper_start:
        return 1 - 0.9 * (s - decay_start) / max(1, taper_start - decay_start)
    return max(0.01, 0.1 - 0.09 * (s - taper_start) / max(1, S - taper_start))


def transcribed_cosine(s: int, S: int, W: int) -> float:
    """Linear warmup, then the cosine of docs/design.md, section 6, over the steps after it."""
    if W > 0 and s <= W:
        return s / W
    P, r = S - W, s - W
    return 1.0 if P == 1 else 0.5 * (1 + math.cos(math.pi * (r - 1) / (P - 1)))


def transcribed_constant(s: int, S: int, W: int) -> float:
    return s / W if W > 0 and s <= W else 1.0


@pytest.mark.parametrize(("total", "warmup"), CASES)
def test_every_step_matches_the_formula(total, warmup):
    for step in range(1, total + 1):
        assert wsd_lr_multiplier(step, total, warmup) == pytest.approx(
            transcribed_wsd(step, total, warmup), abs=1e-12
        )
        assert wsd_lr_multiplier(step, total, warmup, "cosine") == pytest.approx(
            transcribed_cosine(step, total, warmup), abs=1e-12
        )
        assert wsd_lr_multiplier(step, total, warmup, "constant") == pytest.approx(
            transcribed_constant(step, total, warmup), abs=1e-12
        )


def test_wsd_shape_landmarks():
    # S = 100, W = 10: P = 90, decay from step 82, taper from step 98, 0.01 at the end.
    values = [wsd_lr_multiplier(s, 100, 10) for s in range(1, 101)]
    assert values[0] == pytest.approx(0.1)
    assert values[9] == 1.0
    assert values[81] == 1.0 and values[82] < 1.0
    assert values[97] == pytest.approx(0.1)
    assert values[-1] == pytest.approx(0.01)
    assert all(a >= b for a, b in itertools.pairwise(values[9:]))  # non-increasing after warmup
    # Cosine without warmup: 1 at the first step, 0 at the last.
    assert wsd_lr_multiplier(1, 10, 0, "cosine") == 1.0
    assert wsd_lr_multiplier(10, 10, 0, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert wsd_lr_multiplier(1, 1, 0, "cosine") == 1.0


def test_errors_name_the_field():
    for step in (0, 11, -1):
        with pytest.raises(LeWMConfigError) as info:
            wsd_lr_multiplier(step, 10, 2)
        assert info.value.field == "step"
    with pytest.raises(LeWMConfigError) as info:
        wsd_lr_multiplier(1, 0, 0)
    assert info.value.field == "total_steps"
    with pytest.raises(LeWMConfigError) as info:
        wsd_lr_multiplier(1, 10, -1)
    assert info.value.field == "warmup_steps"
    with pytest.raises(LeWMConfigError) as info:
        wsd_lr_multiplier(1, 10, 2, "linear")
    assert info.value.field == "lr_schedule"
    with pytest.raises(LeWMConfigError):
        get_wsd_scheduler(_optimizer(), 0, 0)


def _optimizer(lrs=(1e-2, 3e-3)) -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in lrs]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, lrs)]
    return torch.optim.SGD(groups, lr=lrs[0])


def _run(optimizer, scheduler, steps: int) -> list[list[float]]:
    """lrs used at each optimisation step (HF Trainer order: optimizer.step, scheduler.step)."""
    used = []
    for _ in range(steps):
        used.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return used


@pytest.mark.parametrize("schedule", ["wsd", "cosine", "constant"])
@pytest.mark.parametrize(("total", "warmup"), [(1, 0), (2, 1), (10, 3), (100, 10)])
def test_scheduler_follows_multiplier_and_keeps_group_ratios(schedule, total, warmup):
    lrs = (1e-2, 3e-3)
    optimizer = _optimizer(lrs)
    scheduler = get_wsd_scheduler(optimizer, total, warmup, schedule)
    used = _run(optimizer, scheduler, total)
    for step, group_lrs in enumerate(used, start=1):
        multiplier = wsd_lr_multiplier(step, total, warmup, schedule)
        for lr, base in zip(group_lrs, lrs):
            assert lr == pytest.approx(base * multiplier, rel=1e-12, abs=1e-15)
    # The extra scheduler.step() after the last step is clamped to the final value.
    final = wsd_lr_multiplier(total, total, warmup, schedule)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lrs[0] * final, abs=1e-15)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lrs[0] * final, abs=1e-15)


def test_scheduler_state_dict_round_trip_resumes_identically():
    total, warmup, split = 40, 5, 17
    reference_opt = _optimizer()
    reference = _run(reference_opt, get_wsd_scheduler(reference_opt, total, warmup), total)

    optimizer = _optimizer()
    scheduler = get_wsd_scheduler(optimizer, total, warmup)
    first = _run(optimizer, scheduler, split)
    state = pickle.loads(pickle.dumps(scheduler.state_dict()))  # as a checkpoint would
    optimizer_state = optimizer.state_dict()

    # A fresh run, built with other settings, resumes from the checkpoint (HF Trainer order:
    # build optimizer and scheduler, then load the optimizer state, then the scheduler state).
    resumed_opt = _optimizer()
    resumed = get_wsd_scheduler(resumed_opt, 7, 0, "constant")
    resumed_opt.load_state_dict(optimizer_state)
    resumed.load_state_dict(state)
    assert resumed.lr_lambdas[0].schedule == "wsd" and resumed.lr_lambdas[0].total_steps == total
    second = _run(resumed_opt, resumed, total - split)
    assert first + second == reference

    # The scheduler itself pickles.
    clone = pickle.loads(pickle.dumps(scheduler))
    assert clone.get_last_lr() == scheduler.get_last_lr()
