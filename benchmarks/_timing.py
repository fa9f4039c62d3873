"""Timing shared by the benchmarks: interleaved rounds, a fixed clock, min / median / max.

Every benchmark compares a candidate with a reference measured in the same process. Running them
alternately (`a b a b ...`, at least 5 rounds) spreads slow periods of a shared machine over both,
and the per-round ratio's median is the figure reported. The clock is per-process CPU time by
default (`time.process_time`: time the process's threads spent on a core, so a neighbour's load
does not count as ours); `wall` uses `time.perf_counter`.

    from _timing import interleave, set_threads
    set_threads(2)
    stats = interleave({"fused": run_fused, "plain": run_plain}, rounds=5)
    print(ratio_line("sigreg_speedup", stats["plain"], stats["fused"]))
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CLOCKS: dict[str, Callable[[], float]] = {"process": time.process_time, "wall": time.perf_counter}
MIN_ROUNDS = 5


@dataclass
class Timings:
    """The seconds of one measured function over the rounds.

    Args:
        name (`str`): What was timed.
        seconds (`list[float]`): One entry per round.
        clock (`str`): `process` or `wall`.
    """

    name: str
    seconds: list[float] = field(default_factory=list)
    clock: str = "process"

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self, unit: str = "s", scale: float = 1.0) -> str:
        """`name: min a, median b, max c <unit> over N rounds (clock)`."""
        low, mid, high = (scale * v for v in (min(self.seconds), self.median, max(self.seconds)))
        return (
            f"{self.name}: min {low:.4g}, median {mid:.4g}, max {high:.4g} {unit} "
            f"over {len(self.seconds)} rounds ({self.clock} time)"
        )


def set_threads(threads: int | None) -> int:
    """Fix torch's intra-op threads (default: `OMP_NUM_THREADS`, else every core); returns it."""
    import torch

    if threads is None:
        threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    return threads


def interleave(
    fns: dict[str, Callable[[], object]],
    rounds: int = MIN_ROUNDS,
    clock: str = "process",
    warmup: bool = True,
) -> dict[str, Timings]:
    """Time each function once per round, alternating them, after one untimed warm-up call each.

    Args:
        fns (`dict[str, Callable]`): Name -> a function doing one measured unit of work.
        rounds (`int`, defaults to 5): Rounds, at least `MIN_ROUNDS`.
        clock (`str`, defaults to `"process"`): `process` (CPU time of this process) or `wall`.
        warmup (`bool`, defaults to `True`): Call each function once before timing.

    Returns:
        `dict[str, Timings]`: The seconds of every round, per function.
    """
    if rounds < MIN_ROUNDS:
        raise ValueError(f"rounds={rounds}: at least {MIN_ROUNDS} interleaved rounds are needed")
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r}: must be one of {sorted(CLOCKS)}")
    now = CLOCKS[clock]
    if warmup:
        for fn in fns.values():
            fn()
    out = {name: Timings(name, clock=clock) for name in fns}
    for r in range(rounds):
        # Alternate the order too, so neither function always runs first in a round.
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for name in order:
            start = now()
            fns[name]()
            out[name].seconds.append(now() - start)
    return out


def ratio_line(label: str, numerator: Timings, denominator: Timings) -> str:
    """`label: X.XX (per-round min a, median b, max c over N rounds)`; the ratio is the median of
    the per-round ratios `numerator / denominator` (for a speedup: reference over candidate)."""
    ratios = [n / d for n, d in zip(numerator.seconds, denominator.seconds, strict=True)]
    mid = statistics.median(ratios)
    return (
        f"{label}: {mid:.2f} (per-round min {min(ratios):.2f}, median {mid:.2f}, "
        f"max {max(ratios):.2f} over {len(ratios)} rounds, {numerator.clock} time)"
    )


__all__ = ["CLOCKS", "MIN_ROUNDS", "Timings", "interleave", "ratio_line", "set_threads"]
