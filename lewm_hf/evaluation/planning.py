"""Planning in latent space on a graph (docs/design.md, section 9 (Evaluation)): exhaustive
search, categorical CEM and model-predictive control, with success checked on the true graph.

**States and goals.** A state is the window of the last `w` vertices. A planning problem starts
at a window of a held-out walk ending at vertex `s` (with the true history of the `H - 1`
windows before it) and has a goal vertex `g` at true shortest-path distance `d` (BFS) from `s`,
so never `g == s`. The goal *state* comes in two forms. `walk`: a window of another held-out
walk that ends at `g`, drawn independently of the start, so the goal latent says where to go
and not how. `path`: the window the true system would show on arriving at `g` along a shortest
path (the start window followed by the `d` vertices of a shortest `s -> g` path, drawn
uniformly at each step among the successors that stay on a shortest path, keeping the last
`w`), so the goal latent carries the path. Its latent `z_goal` is what the planner aims at;
success only asks for the goal *vertex*, reached by any path within the budget
(`d + budget_slack` steps).

[`evaluate_planning`] runs MPC (replanning after every executed step over the remaining budget)
for goals stratified by `d`, for several seeds and each goal form, against random valid
actions for the same budget, with 95% intervals from a bootstrap over the distinct
(start, goal) pairs ([`pair_bootstrap_interval`]: trials of one pair are not independent), and
the steps the successful episodes took. This module holds that stratified evaluation and its
baselines ([`random_baseline`], [`random_episodes`], [`wilson_interval`]); the parts live in
modules of their own:
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


def random_episodes(
    graph: Graph, start: np.ndarray, goal: np.ndarray, budget: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random valid moves from `start` for up to `budget` steps, stopping at `goal`.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: whether the goal was reached `(P,)`, and the steps
        executed `(P,)` (up to and including reaching it; `budget` where it was not reached).
    """
    table = neighbor_table(graph)
    degree = graph.out_degree
    cur = np.asarray(start, dtype=np.int64).copy()
    reached = np.zeros(cur.shape[0], dtype=bool)
    steps = np.zeros(cur.shape[0], dtype=np.int64)
    for _ in range(budget):
        rank = np.minimum(
            (rng.random(cur.shape[0]) * degree[cur]).astype(np.int64), degree[cur] - 1
        )
        steps += ~reached
        cur = np.where(reached, cur, table[cur, rank])
        reached |= cur == goal
    return reached, steps


def random_baseline(
    graph: Graph, start: np.ndarray, goal: np.ndarray, budget: int, rng: np.random.Generator
) -> np.ndarray:
    """Whether uniform random valid moves from `start` reach `goal` within `budget` steps, `(P,)`
    (the first output of [`random_episodes`])."""
    return random_episodes(graph, start, goal, budget, rng)[0]


def pair_bootstrap_interval(
    pairs: np.ndarray,
    success: np.ndarray,
    confidence: float = 0.95,
    resamples: int = 1000,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a success rate, resampling distinct pairs.

    Trials of the same `(start, goal)` pair (drawn again by another goal or seed) are not
    independent, so the resampled unit is the pair: each resample draws the distinct pairs
    with replacement and pools their trials (`sum successes / sum trials`). When every trial
    succeeded (or every one failed) all resamples agree and the percentile interval would
    collapse to a point; the interval is then the Wilson interval of as many trials as there are
    distinct pairs ([`wilson_interval`]), so it still narrows only with more pairs.

    Args:
        pairs (`np.ndarray`): `(N,)` an identifier of each trial's pair (any integers).
        success (`np.ndarray`): `(N,)` booleans, `N >= 1`.
        confidence (`float`, defaults to 0.95): Level in `(0, 1)`.
        resamples (`int`, defaults to 1000): Bootstrap resamples, `>= 1`.
        rng (`np.random.Generator`, *optional*): Random source; seed 0 if None.

    Returns:
        `tuple[float, float]`: `(low, high)`.
    """
    pairs = np.asarray(pairs).reshape(-1)
    success = np.asarray(success, dtype=bool).reshape(-1)
    if pairs.size < 1 or pairs.shape != success.shape:
        raise LeWMInputError(
            "success",
            f"shape {success.shape}",
            f"must be non-empty, the shape of pairs {pairs.shape}",
        )
    if not 0 < confidence < 1:
        raise LeWMConfigError("confidence", confidence, "must lie in (0, 1)")
    if not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise LeWMConfigError("bootstrap_resamples", resamples, "must be a positive integer")
    rng = rng if rng is not None else np.random.default_rng(0)
    _, inverse = np.unique(pairs, return_inverse=True)
    trials = np.bincount(inverse).astype(np.float64)  # (K,) per distinct pair
    if success.all() or not success.any():
        return wilson_interval(int(success.any()) * trials.size, trials.size, confidence)
    wins = np.bincount(inverse, weights=success.astype(np.float64))
    draw = rng.integers(0, trials.size, size=(resamples, trials.size))
    rates = wins[draw].sum(1) / trials[draw].sum(1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(rates, [tail, 1 - tail])
    return float(low), float(high)


# ----------------------------------------------------------------------------------------------
# Everything


_PER_DISTANCE = K.EVAL_PLAN_PER_DISTANCE + K.EVAL_PLAN_STEPS_PER_DISTANCE


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def _evaluate_stratum(
    model: Any,
    graph: Graph,
    window: int,
    walks: np.ndarray,
    config: PlanningConfig,
    dist: np.ndarray,
    d: int,
    form: str,
) -> dict[str, Any]:
    """Every per-distance number of one stratum `d` and goal form, pooled over the seeds."""
    history = model.config.history_length
    budget = d + config.budget_slack
    pair_ids, wins, random_wins, steps, random_steps, per_seed = [], [], [], [], [], []
    plans, seconds, planners = 0, 0.0, []
    seeds = progress(config.seeds, desc=f"planning d={d} ({form} goals)", unit="seed")
    for i, seed in enumerate(seeds):
        # The `path` form keeps the seeds it always had, so its numbers stay comparable.
        tag = f"planning-goals-{d}" if form == "path" else f"planning-goals-{form}-{d}"
        rng = np.random.default_rng(derive_seed(seed, tag))
        problems = sample_problems(
            graph, walks, window, history, d, config.goals_per_distance, rng, dist, form
        )
        generator = torch.Generator().manual_seed(derive_seed(seed, f"planning-cem-{d}"))
        result = run_episodes(model, graph, problems, window, budget, config, generator)
        reached, taken = random_episodes(
            graph, problems.start, problems.goal, budget,
            np.random.default_rng(derive_seed(seed, f"planning-random-{d}")),
        )  # fmt: skip
        pair_ids.append(problems.start * graph.num_vertices + problems.goal)
        wins.append(result.success)
        steps.append(result.steps)
        random_wins.append(reached)
        random_steps.append(taken)
        per_seed.append(float(result.success.mean()))
        plans += result.plans
        seconds += result.plan_seconds
        if i == 0:
            planners = result.planners
    pairs, win, rwin = np.concatenate(pair_ids), np.concatenate(wins), np.concatenate(random_wins)
    step, rstep = np.concatenate(steps), np.concatenate(random_steps)
    boot = np.random.default_rng(derive_seed(config.seeds[0], f"planning-bootstrap-{form}-{d}"))
    interval = (config.confidence, config.bootstrap_resamples, boot)
    return {
        K.EVAL_PLAN_SUCCESS: float(win.mean()),
        K.EVAL_PLAN_SUCCESS_RANDOM: float(rwin.mean()),
        K.EVAL_PLAN_SHORTEST_RATE: float((win & (step == d)).mean()),
        K.EVAL_PLAN_CI: list(pair_bootstrap_interval(pairs, win, *interval)),
        K.EVAL_PLAN_CI_RANDOM: list(pair_bootstrap_interval(pairs, rwin, *interval)),
        K.EVAL_PLAN_SUCCESS_PER_SEED: per_seed,
        K.EVAL_PLANS_PER_SECOND: plans / seconds if seconds > 0 else float("inf"),
        K.EVAL_PLAN_PLANNERS: planners,
        K.EVAL_PLAN_DISTINCT_PAIRS: int(np.unique(pairs).size),
        K.EVAL_PLAN_STEPS: _mean_or_none(step[win]),
        K.EVAL_PLAN_STEPS_RANDOM: _mean_or_none(rstep[rwin]),
        K.EVAL_PLAN_STEPS_RATIO: _mean_or_none(step[win] / d),
        K.EVAL_PLAN_STEPS_RATIO_RANDOM: _mean_or_none(rstep[rwin] / d),
    }


def evaluate_planning(
    model: Any,
    graph: Graph,
    window: int,
    walks: np.ndarray,
    config: PlanningConfig | None = None,
) -> dict[str, Any]:
    """Goal-reaching by planning in latent space, stratified by true distance, against random.

    For every goal form, seed and stratum `d`: `goals_per_distance` problems
    ([`sample_problems`], from `derive_seed(seed, f"planning-goals-{d}")` for the `path` form,
    `f"planning-goals-{form}-{d}"` for the others), episodes with budget `d + budget_slack`
    ([`run_episodes`]), and the random-valid-action baseline on the same problems and budget.
    Rates pool the seeds (`n * len(seeds)` trials per stratum); intervals resample the distinct
    (start, goal) pairs ([`pair_bootstrap_interval`]).

    Args:
        model: A [`LeWMModel`] (or an object with `encode`, `predict` and
            `config.history_length`), evaluated in eval mode and restored afterwards.
        graph (`Graph`): The true graph.
        window (`int`): The state window `w`.
        walks (`np.ndarray`): `(M, L)` held-out walks giving the start windows (and, for the
            `walk` goal form, the goal windows), `L >= w + H - 1`.
        config (`PlanningConfig`, *optional*): Settings; defaults if None.

    Returns:
        `dict[str, Any]`: for the first of `config.goal_forms` (named by `eval_plan_goal_form`),
        keyed by `str(d)`: `eval_plan_success`, `eval_plan_success_random`,
        `eval_plan_shortest_rate` (reached in exactly `d` steps, over all goals),
        `eval_plan_ci` and `eval_plan_ci_random` (`[low, high]` bootstrap intervals over the
        (start, goal) pairs), `eval_plan_success_per_seed` (a list over seeds),
        `eval_plans_per_second` (planner calls per second of planning time),
        `eval_plan_planners` (planner per replanning round of the first seed),
        `eval_plan_distinct_pairs` (distinct (start, goal) vertex pairs: small graphs have few
        pairs at the larger distances, drawn again and again), `eval_plan_steps` and
        `eval_plan_steps_ratio` (mean executed steps, and steps / d, of the successful episodes;
        None when none succeeded) and their `_random` counterparts; `eval_plan_by_goal_form`
        (`{form: {key: {d: value}}}`, the same numbers for every goal form, timings left out);
        and
        `eval_plan_trials` (trials per stratum), `eval_plan_missing_distances` (strata without
        any vertex pair that far apart, skipped: the small preset's diameter is 4, the anchor
        graph's 3), `eval_plan_budget_slack`, `eval_plan_ci_method`, `eval_plan_seconds`.
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
    dist = shortest_distances(graph)
    missing = [d for d in config.distances if not (dist == d).any()]
    by_form: dict[str, dict[str, dict[str, Any]]] = {}
    for form in config.goal_forms:
        numbers: dict[str, dict[str, Any]] = {key: {} for key in _PER_DISTANCE}
        for d in config.distances:
            if d in missing:
                continue
            stratum = _evaluate_stratum(model, graph, window, walks, config, dist, d, form)
            for key, value in stratum.items():
                numbers[key][str(d)] = value
        by_form[form] = numbers
    out: dict[str, Any] = dict(by_form[config.goal_forms[0]])
    out[K.EVAL_PLAN_GOAL_FORM] = config.goal_forms[0]
    # Every form's numbers but the timings (which differ from run to run; the first form's are
    # the top-level `eval_plans_per_second`).
    out[K.EVAL_PLAN_BY_GOAL_FORM] = {
        form: {k: v for k, v in numbers.items() if k != K.EVAL_PLANS_PER_SECOND}
        for form, numbers in by_form.items()
    }
    out[K.EVAL_PLAN_MISSING_DISTANCES] = missing
    out[K.EVAL_PLAN_TRIALS] = config.goals_per_distance * len(config.seeds)
    out[K.EVAL_PLAN_BUDGET_SLACK] = config.budget_slack
    out[K.EVAL_PLAN_CI_METHOD] = (
        f"percentile bootstrap over distinct (start, goal) pairs, "
        f"{config.bootstrap_resamples} resamples, level {config.confidence}"
    )
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
    "pair_bootstrap_interval",
    "plan_actions",
    "random_baseline",
    "random_episodes",
    "rank_prior",
    "run_episodes",
    "sample_problems",
    "sequence_costs",
    "shortest_distances",
    "wilson_interval",
]
