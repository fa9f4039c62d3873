"""Settings of the planning evaluation ([`PlanningConfig`]): goal strata and seeds, the planner
(exhaustive, CEM, or auto) and its sizes, the cost, the step budget, MPC or open loop, and the
batch sizes of the encoder and predictor calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import LeWMConfigError
from ..fields import GoalForm, PlanCost, Planner, RankPrior, is_int_in, option, validate_fields

# Imagined prefixes per predictor call (see `PlanningConfig.max_rows`).
DEFAULT_MAX_ROWS = 4096


@dataclass
class PlanningConfig:
    """Settings of [`evaluate_planning`]; every field is checked once, here.

    Args:
        distances (`list[int]`, defaults to `[1, 2, 3, 4, 5]`): Goal strata: true shortest-path
            distances `d` from the start vertex.
        goals_per_distance (`int`, defaults to 300): Goals per stratum and seed (`n`).
        seeds (`list[int]`, defaults to `[0, 1, 2]`): One goal draw and planner stream per seed.
        planner (`str`, defaults to `"auto"`): `exhaustive`, `cem`, `auto` (exhaustive when
            `A^h <= max_exhaustive`), or `tree` (breadth-first over the distinct imagined
            states, [`tree_plan`]).
        max_exhaustive (`int`, defaults to 4096): Largest `A^h` searched exhaustively by `auto`.
        cem_samples (`int`, defaults to 256): Sequences sampled per CEM iteration.
        cem_elites (`int`, defaults to 32): Elite sequences refitting the distribution.
        cem_iterations (`int`, defaults to 4): CEM iterations.
        cem_smoothing (`float`, defaults to 0.1): Weight of the old distribution in the refit
            (`p = smoothing * p + (1 - smoothing) * elite frequencies`); 0 refits from scratch.
        cem_rank_prior (`str`, defaults to `"degree"`): CEM's initial distribution over the
            ranks of the imagined steps after the first: `degree` ([`rank_prior`]: the share of
            vertices where the rank is valid) or `uniform`.
        merge_radius (`float`, defaults to 0.05): The `tree` planner's merge radius: two
            imagined latents whose mean squared difference per dimension is below it are one
            state ([`tree_plan`]).
        tree_max_nodes (`int`, defaults to 256): Children the `tree` planner keeps per depth
            and problem.
        cost (`str`, defaults to `"min"`): `min` (min over horizon steps, reaching early allowed) or
            `final` (the last step only).
        budget_slack (`int`, defaults to 0): Steps allowed beyond `d`; the budget is `d + slack`.
        replan (`bool`, defaults to `True`): MPC (replan after every executed step); `False`
            executes the first plan open loop.
        batch_size (`int`, defaults to 1024): States per encoder call.
        max_rows (`int`, defaults to 4096): Imagined prefixes (rows) per predictor call. On a
            CPU, 65536 rows made every activation a fresh multi-hundred-MB allocation that the
            kernel maps and zeroes (system time equal to user time, 1.8x the wall time of
            1024-4096 rows, same results).
        confidence (`float`, defaults to 0.95): Level of the bootstrap intervals.
        goal_forms (`list[str]`, defaults to `["walk", "path"]`): The goal windows evaluated,
            each on its own problems: `walk` (a window of another held-out walk ending at the
            goal vertex: it names the place, not the way) and `path` (the start window followed
            by a shortest path, so the goal latent carries the path). The first form's numbers
            are the top-level ones.
        bootstrap_resamples (`int`, defaults to 1000): Resamples of the (start, goal) pairs
            behind each interval.
    """

    distances: list[int] = option(
        default_factory=lambda: [1, 2, 3, 4, 5], help="Goal strata (true distances d)."
    )
    goals_per_distance: int = option(300, help="Goals per stratum and seed.", low=1)
    seeds: list[int] = option(default_factory=lambda: [0, 1, 2], help="Evaluation seeds.")
    planner: Planner = option("auto", help="exhaustive, cem, auto, or tree.")
    max_exhaustive: int = option(4096, help="Largest A^h searched exhaustively.", low=1)
    cem_samples: int = option(256, help="CEM samples per iteration.", low=1)
    cem_elites: int = option(32, help="CEM elites.", low=1)
    cem_iterations: int = option(4, help="CEM iterations.", low=1)
    cem_smoothing: float = option(0.1, help="Weight of the old CEM distribution.", low=0, high=1)
    cem_rank_prior: RankPrior = option("degree", help="degree or uniform: CEM's initial ranks.")
    merge_radius: float = option(
        0.05,
        help="tree: mean squared difference per dimension merging two imagined states.",
        low=0,
    )
    tree_max_nodes: int = option(256, help="tree: children kept per depth and problem.", low=1)
    cost: PlanCost = option("min", help="min (over steps) or final.")
    budget_slack: int = option(0, help="Steps allowed beyond the distance.", low=0)
    replan: bool = option(True, help="MPC: replan after every executed step.")
    batch_size: int = option(1024, help="States per encoder call.", low=1)
    max_rows: int = option(
        DEFAULT_MAX_ROWS, help="Imagined prefixes (rows) per predictor call.", low=1
    )
    confidence: float = option(
        0.95, help="Bootstrap interval level.", low=0, high=1, low_open=True, high_open=True
    )
    goal_forms: list[GoalForm] = option(
        default_factory=lambda: ["walk", "path"],
        help="Goal windows: walk (another walk's window at the goal) and/or path (start + path).",
    )
    bootstrap_resamples: int = option(
        1000, help="Bootstrap resamples of (start, goal) pairs.", low=1
    )

    @classmethod
    def fast(cls, **overrides: Any) -> PlanningConfig:
        """A setting for a main job on CPU: 30 goals per stratum and seed, a lighter CEM
        (128 samples, 16 elites, 3 iterations). Measured 100-180 s for a `small`-preset model
        (d_state 64, d_model 128) on two shared CPU cores, against an estimated 20 minutes for
        the defaults (300 goals). Fields in `overrides` replace the preset's."""
        preset = {"goals_per_distance": 30, "cem_samples": 128, "cem_elites": 16}
        return cls(**{**preset, "cem_iterations": 3, **overrides})

    def __post_init__(self) -> None:
        validate_fields(self)
        if not self.distances or not all(is_int_in(d, 1) for d in self.distances):
            raise LeWMConfigError("distances", self.distances, "must be integers >= 1")
        if len(set(self.distances)) != len(self.distances):
            raise LeWMConfigError("distances", self.distances, "must be distinct")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise LeWMConfigError("seeds", self.seeds, "must be distinct, at least one")
        if not self.goal_forms or len(set(self.goal_forms)) != len(self.goal_forms):
            raise LeWMConfigError("goal_forms", self.goal_forms, "must be distinct, at least one")
        if self.cem_elites > self.cem_samples:
            raise LeWMConfigError("cem_elites", self.cem_elites, "must not exceed cem_samples")


__all__ = ["DEFAULT_MAX_ROWS", "PlanningConfig"]
