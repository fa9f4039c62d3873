"""Planning in latent space on a graph (docs/design.md, section 9 (Evaluation)): exhaustive
search, categorical CEM and model-predictive control, with success checked on the true graph.

**States and goals.** A state is the window of the last `w` vertices. A planning problem starts
at a window of a held-out walk ending at vertex `s` (with the true history of the `H - 1`
windows before it) and has a goal vertex `g` at true shortest-path distance `d` (BFS) from `s`,
so never `g == s`. The goal *state* is the window the true system would show on arriving at `g`
along a shortest path: the start window followed by the `d` vertices of a shortest `s -> g` path
(drawn uniformly at each step among the successors that stay on a shortest path), keeping the
last `w`. Its latent `z_goal` is what the planner aims at; success only asks for the goal
*vertex*, reached by any path within the budget (`d + budget_slack` steps).

[`evaluate_planning`] runs MPC (replanning after every executed step over the remaining budget)
for goals stratified by `d`, for several seeds, against random valid actions for the same
budget, with Wilson 95% intervals. This module holds that stratified evaluation and its
baselines ([`random_baseline`], [`wilson_interval`]); the parts live in modules of their own:
`planning_config` (the settings, [`PlanningConfig`]), `planning_search` (the cost, the
exhaustive and CEM planners scored as a prefix tree, and the choice between them),
`planning_problems` (start windows and goals at a true distance) and `planning_episodes` (the
MPC or open-loop episode loop on the true graph). Their public names are importable from here
as well.

Shapes: `P` problems, `w` the state window, `H` the model's history length.
"""

from __future__ import annotations

import math
import time
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from .. import metric_keys as K
from ..data.graphs import Graph
from ..determinism import derive_seed
from ..errors import LeWMConfigError, LeWMInputError
from ..progress import progress
from .held_out import neighbor_table
from .planning_config import DEFAULT_MAX_ROWS as DEFAULT_MAX_ROWS
from .planning_config import PlanningConfig
from .planning_episodes import EpisodeResult, run_episodes
from .planning_problems import PlanningProblems, sample_problems, shortest_distances
from .planning_search import (
    Plan,
    all_sequences,
    cem_plan,
    exhaustive_plan,
    plan_actions,
    rank_prior,
    sequence_costs,
)

# ----------------------------------------------------------------------------------------------
# Baselines and statistics


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    `(p + z^2 / 2n +- z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)`, `p = successes / n`,
    `z` the two-sided normal quantile of `confidence`.

    Args:
        successes (`int`): Successes, `0 <= successes <= trials`.
        trials (`int`): Trials, `>= 1`.
        confidence (`float`, defaults to 0.95): Level in `(0, 1)`.

    Returns:
        `tuple[float, float]`: `(low, high)`.
    """
    if not isinstance(trials, (int, np.integer)) or trials < 1:
        raise LeWMInputError("trials", trials, "must be a positive integer")
    if not 0 <= successes <= trials:
        raise LeWMInputError("successes", successes, f"must lie in [0, {trials}]")
    if not 0 < confidence < 1:
        raise LeWMConfigError("confidence", confidence, "must lie in (0, 1)")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    n = float(trials)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends, no rounding residue
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def random_baseline(
    graph: Graph, start: np.ndarray, goal: np.ndarray, budget: int, rng: np.random.Generator
) -> np.ndarray:
    """Whether uniform random valid moves from `start` reach `goal` within `budget` steps, `(P,)`."""
    table = neighbor_table(graph)
    degree = graph.out_degree
    cur = np.asarray(start, dtype=np.int64).copy()
    reached = np.zeros(cur.shape[0], dtype=bool)
    for _ in range(budget):
        rank = np.minimum(
            (rng.random(cur.shape[0]) * degree[cur]).astype(np.int64), degree[cur] - 1
        )
        cur = np.where(reached, cur, table[cur, rank])
        reached |= cur == goal
    return reached


# ----------------------------------------------------------------------------------------------
# Everything


def evaluate_planning(
    model: Any,
    graph: Graph,
    window: int,
    walks: np.ndarray,
    config: PlanningConfig | None = None,
) -> dict[str, Any]:
    """Goal-reaching by planning in latent space, stratified by true distance, against random.

    For every seed and stratum `d`: `goals_per_distance` problems ([`sample_problems`], from
    `derive_seed(seed, f"planning-goals-{d}")`), episodes with budget `d + budget_slack`
    ([`run_episodes`]), and the random-valid-action baseline on the same problems and budget.
    Rates pool the seeds (`n * len(seeds)` trials per stratum).

    Args:
        model: A [`LeWMModel`] (or an object with `encode`, `predict` and
            `config.history_length`), evaluated in eval mode and restored afterwards.
        graph (`Graph`): The true graph.
        window (`int`): The state window `w`.
        walks (`np.ndarray`): `(M, L)` held-out walks giving the start windows, `L >= w + H - 1`.
        config (`PlanningConfig`, *optional*): Settings; defaults if None.

    Returns:
        `dict[str, Any]`: keyed by `str(d)`: `eval_plan_success`, `eval_plan_success_random`,
        `eval_plan_shortest_rate` (reached in exactly `d` steps, over all goals),
        `eval_plan_ci` and `eval_plan_ci_random` (`[low, high]` Wilson intervals),
        `eval_plan_success_per_seed` (a list over seeds), `eval_plans_per_second` (planner
        calls per second of planning time), `eval_plan_planners` (planner per replanning round
        of the first seed), `eval_plan_distinct_pairs` (distinct (start, goal) vertex pairs:
        small graphs have few pairs at the larger distances, drawn again and again); and
        `eval_plan_trials` (trials per stratum), `eval_plan_missing_distances` (strata without
        any vertex pair that far apart, skipped: the small preset's diameter is 4, the anchor
        graph's 3), `eval_plan_budget_slack`, `eval_plan_seconds`.
    """
    started = time.perf_counter()
    config = config if config is not None else PlanningConfig()
    walks = np.asarray(walks)
    if walks.ndim != 2 or walks.shape[0] < 1 or not np.issubdtype(walks.dtype, np.integer):
        raise LeWMInputError("walks", f"shape {walks.shape}", "must be (M, L) integer walks")
    vocab = getattr(model.config, "action_vocab_size", None)
    if vocab is not None and graph.max_out_degree > vocab:
        raise LeWMConfigError(
            "action_vocab_size", vocab, f"below the graph's max out-degree {graph.max_out_degree}"
        )
    history = model.config.history_length
    dist = shortest_distances(graph)
    out: dict[str, Any] = {
        key: {}
        for key in (
            K.EVAL_PLAN_SUCCESS,
            K.EVAL_PLAN_SUCCESS_RANDOM,
            K.EVAL_PLAN_SHORTEST_RATE,
            K.EVAL_PLAN_CI,
            K.EVAL_PLAN_CI_RANDOM,
            K.EVAL_PLAN_SUCCESS_PER_SEED,
            K.EVAL_PLANS_PER_SECOND,
            K.EVAL_PLAN_PLANNERS,
        )
    }
    out[K.EVAL_PLAN_DISTINCT_PAIRS] = {}
    missing = [d for d in config.distances if not (dist == d).any()]
    for d in config.distances:
        if d in missing:
            continue
        budget = d + config.budget_slack
        pairs: set[tuple[int, int]] = set()
        wins, random_wins, shortest, per_seed = 0, 0, 0, []
        plans, seconds = 0, 0.0
        for i, seed in enumerate(progress(config.seeds, desc=f"planning d={d}", unit="seed")):
            rng = np.random.default_rng(derive_seed(seed, f"planning-goals-{d}"))
            problems = sample_problems(
                graph, walks, window, history, d, config.goals_per_distance, rng, dist
            )
            generator = torch.Generator().manual_seed(derive_seed(seed, f"planning-cem-{d}"))
            result = run_episodes(model, graph, problems, window, budget, config, generator)
            baseline = random_baseline(
                graph, problems.start, problems.goal, budget,
                np.random.default_rng(derive_seed(seed, f"planning-random-{d}")),
            )  # fmt: skip
            pairs.update(zip(problems.start.tolist(), problems.goal.tolist()))
            wins += int(result.success.sum())
            shortest += int((result.success & (result.steps == d)).sum())
            random_wins += int(baseline.sum())
            per_seed.append(float(result.success.mean()))
            plans += result.plans
            seconds += result.plan_seconds
            if i == 0:
                out[K.EVAL_PLAN_PLANNERS][str(d)] = result.planners
        trials = config.goals_per_distance * len(config.seeds)
        key = str(d)
        out[K.EVAL_PLAN_SUCCESS][key] = wins / trials
        out[K.EVAL_PLAN_SUCCESS_RANDOM][key] = random_wins / trials
        out[K.EVAL_PLAN_SHORTEST_RATE][key] = shortest / trials
        out[K.EVAL_PLAN_CI][key] = list(wilson_interval(wins, trials, config.confidence))
        out[K.EVAL_PLAN_CI_RANDOM][key] = list(
            wilson_interval(random_wins, trials, config.confidence)
        )
        out[K.EVAL_PLAN_SUCCESS_PER_SEED][key] = per_seed
        out[K.EVAL_PLANS_PER_SECOND][key] = plans / seconds if seconds > 0 else float("inf")
        out[K.EVAL_PLAN_DISTINCT_PAIRS][key] = len(pairs)
    out[K.EVAL_PLAN_MISSING_DISTANCES] = missing
    out[K.EVAL_PLAN_TRIALS] = config.goals_per_distance * len(config.seeds)
    out[K.EVAL_PLAN_BUDGET_SLACK] = config.budget_slack
    out[K.EVAL_PLAN_SECONDS] = time.perf_counter() - started
    return out


__all__ = [
    "EpisodeResult",
    "Plan",
    "PlanningConfig",
    "PlanningProblems",
    "all_sequences",
    "cem_plan",
    "evaluate_planning",
    "exhaustive_plan",
    "plan_actions",
    "random_baseline",
    "rank_prior",
    "run_episodes",
    "sample_problems",
    "sequence_costs",
    "shortest_distances",
    "wilson_interval",
]
