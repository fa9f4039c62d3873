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

**Cost.** For an action sequence `a_1 .. a_h` imagined from the true history (see
[`imagine_latents`], which slides the history window past `H`), `cost = min_k ||z_hat_k -
z_goal||^2` over `k = 1 .. h` (`cost="min"`, the default: reaching the goal early is allowed)
or `||z_hat_h - z_goal||^2` (`cost="final"`). Equal costs are broken by the earlier step `k`
that attains them (then by the sequence order), so that exact ties prefer shorter plans.

**Actions.** An action is a neighbour rank in `[0, A)`, `A = max_out_degree`. The first
action of a plan starts from the current true vertex `v`, so ranks `>= out_degree[v]` are
masked out of the search. For imagined steps beyond the first the vertex is unknown (the planner
sees only latents): every rank in `[0, A)` is searched and the model handles ranks that are
invalid at the vertex it imagines (a trained model has never seen them, so such plans are what
the model believes, not what the graph allows). This costs nothing under MPC, which executes
only the first (valid) action and replans from the true next state. A plan executed open loop
(`replan=False`) takes each rank modulo the true vertex's out-degree.

**Planners.** [`exhaustive_plan`] scores all sequences at once (feasible when `A^h` is small);
[`cem_plan`] runs the cross-entropy method over independent categorical distributions per step
(samples, elites, iterations, smoothing; a seeded `torch.Generator`), keeping the best sequence
seen; its imagined steps start from [`rank_prior`], the share of vertices where each rank is a
move (on the `small` graph, mean out-degree 11 against A = 47, uniform draws mostly name moves
that exist almost nowhere). Both score plans as a prefix tree: plans that share their first `k`
actions share the `k` imagined latents, so each step runs the predictor once per distinct
prefix. `planner="auto"` takes the exhaustive search when `A^h <= max_exhaustive`.
[`evaluate_planning`] runs MPC (replanning after every executed step over the remaining budget)
for goals stratified by `d`, for several seeds, against random valid actions for the same
budget, with Wilson 95% intervals.

Shapes: `P` problems, `S` sequences per problem, `h` plan horizon, `A` actions, `D` d_state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from scipy.sparse.csgraph import shortest_path

from .. import metric_keys as K
from ..data.graphs import Graph
from ..determinism import derive_seed
from ..errors import LeWMConfigError, LeWMInputError
from ..fields import PlanCost, Planner, RankPrior, is_int_in, option, validate_fields
from ..modeling_actions import ActionInputs
from .world_model import encode_states, evaluating, neighbor_table

# Imagined prefixes per predictor call (see `PlanningConfig.max_rows`).
DEFAULT_MAX_ROWS = 4096


# ----------------------------------------------------------------------------------------------
# Settings


@dataclass
class PlanningConfig:
    """Settings of [`evaluate_planning`]; every field is checked once, here.

    Args:
        distances (`list[int]`, defaults to `[1, 2, 3, 4, 5]`): Goal strata: true shortest-path
            distances `d` from the start vertex.
        goals_per_distance (`int`, defaults to 300): Goals per stratum and seed (`n`).
        seeds (`list[int]`, defaults to `[0, 1, 2]`): One goal draw and planner stream per seed.
        planner (`str`, defaults to `"auto"`): `exhaustive`, `cem`, or `auto` (exhaustive when
            `A^h <= max_exhaustive`).
        max_exhaustive (`int`, defaults to 4096): Largest `A^h` searched exhaustively by `auto`.
        cem_samples (`int`, defaults to 256): Sequences sampled per CEM iteration.
        cem_elites (`int`, defaults to 32): Elite sequences refitting the distribution.
        cem_iterations (`int`, defaults to 4): CEM iterations.
        cem_smoothing (`float`, defaults to 0.1): Weight of the old distribution in the refit
            (`p = smoothing * p + (1 - smoothing) * elite frequencies`); 0 refits from scratch.
        cem_rank_prior (`str`, defaults to `"degree"`): CEM's initial distribution over the
            ranks of the imagined steps after the first: `degree` ([`rank_prior`]: the share of
            vertices where the rank is valid) or `uniform`.
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
        confidence (`float`, defaults to 0.95): Level of the Wilson intervals.
    """

    distances: list[int] = option(
        default_factory=lambda: [1, 2, 3, 4, 5], help="Goal strata (true distances d)."
    )
    goals_per_distance: int = option(300, help="Goals per stratum and seed.", low=1)
    seeds: list[int] = option(default_factory=lambda: [0, 1, 2], help="Evaluation seeds.")
    planner: Planner = option("auto", help="exhaustive, cem, or auto.")
    max_exhaustive: int = option(4096, help="Largest A^h searched exhaustively.", low=1)
    cem_samples: int = option(256, help="CEM samples per iteration.", low=1)
    cem_elites: int = option(32, help="CEM elites.", low=1)
    cem_iterations: int = option(4, help="CEM iterations.", low=1)
    cem_smoothing: float = option(0.1, help="Weight of the old CEM distribution.", low=0, high=1)
    cem_rank_prior: RankPrior = option("degree", help="degree or uniform: CEM's initial ranks.")
    cost: PlanCost = option("min", help="min (over steps) or final.")
    budget_slack: int = option(0, help="Steps allowed beyond the distance.", low=0)
    replan: bool = option(True, help="MPC: replan after every executed step.")
    batch_size: int = option(1024, help="States per encoder call.", low=1)
    max_rows: int = option(
        DEFAULT_MAX_ROWS, help="Imagined prefixes (rows) per predictor call.", low=1
    )
    confidence: float = option(
        0.95, help="Wilson interval level.", low=0, high=1, low_open=True, high_open=True
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
        if self.cem_elites > self.cem_samples:
            raise LeWMConfigError("cem_elites", self.cem_elites, "must not exceed cem_samples")


# ----------------------------------------------------------------------------------------------
# Statistics


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


# ----------------------------------------------------------------------------------------------
# Planners


@dataclass
class Plan:
    """The best action sequence found per problem.

    Args:
        actions (`torch.LongTensor` of shape `(P, h)`): Neighbour ranks.
        cost (`torch.FloatTensor` of shape `(P,)`): Its cost.
        step (`torch.LongTensor` of shape `(P,)`): 1-based step attaining the cost (`h` for
            `cost="final"`).
    """

    actions: torch.Tensor
    cost: torch.Tensor
    step: torch.Tensor


def sequence_costs(
    model: Any,
    z_hist: torch.Tensor,
    past_actions: torch.Tensor,
    z_goal: torch.Tensor,
    plans: torch.Tensor,
    cost: str = "min",
    max_rows: int = DEFAULT_MAX_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Imagine every plan from its problem's history and score it against the goal latent.

    Args:
        model: An object with `predict` and `config.history_length`.
        z_hist (`torch.Tensor` of shape `(P, T0, D)`): True latents up to the current state.
        past_actions (`torch.LongTensor` of shape `(P, T0 - 1)`): The actions between them.
        z_goal (`torch.Tensor` of shape `(P, D)`): Goal latents.
        plans (`torch.LongTensor` of shape `(P, S, h)`): Action sequences.
        cost (`str`, defaults to `"min"`): `min` or `final` (see the module docstring).
        max_rows (`int`, defaults to 4096): Distinct prefixes per predictor call.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: costs `(P, S)` and the 1-based attaining steps
        `(P, S)`.
    """
    problems, samples, horizon = plans.shape
    owner = torch.arange(problems, device=z_hist.device).repeat_interleave(samples)  # (P*S,)
    flat = plans.to(z_hist.device).reshape(problems * samples, horizon)
    values, steps = _costs_of_rows(model, z_hist, past_actions, z_goal, owner, flat, cost, max_rows)
    return values.view(problems, samples), steps.view(problems, samples)


def _costs_of_rows(
    model: Any,
    z_hist: torch.Tensor,
    past_actions: torch.Tensor,
    z_goal: torch.Tensor,
    owner: torch.Tensor,
    plans: torch.Tensor,
    cost: str,
    max_rows: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Costs and steps `(N,)` of plans `(N, h)`, row `i` imagined from problem `owner[i]`.

    The rollout is [`imagine_latents`]'s (a sliding history window), run as a prefix tree: the
    latent imagined at step `k` depends only on the problem and the actions `a_1 .. a_k`, so
    each step runs the predictor once per distinct (problem, prefix) and the plans sharing it
    share the result. An exhaustive search's `A^h` sequences hold `A + A^2 + ... + A^h`
    prefixes (not `h * A^h`), and CEM's samples, drawn from a concentrating distribution,
    repeat prefixes more with every iteration.
    """
    rows, horizon = plans.shape
    device = z_hist.device
    owner = owner.to(device)
    plans = plans.to(device)
    known = z_hist.shape[1]
    history = model.config.history_length
    actions = torch.cat([past_actions.to(device)[owner], plans], dim=1)  # (N, T0 - 1 + h)
    base = int(plans.max()) + 1 if rows else 1
    arange = torch.arange(rows, device=device)
    prefix = owner  # the prefix id of every row (before any action: its problem)
    prefixes: list[torch.Tensor] = []  # per step: (N,) prefix id of every row
    imagined: list[torch.Tensor] = []  # per step: (U_k, D) latent of every distinct prefix
    dist = torch.empty(rows, horizon, device=device)
    for k in range(horizon):
        prefix = torch.unique(prefix * base + plans[:, k], return_inverse=True)[1]
        count = int(prefix.max()) + 1 if rows else 0
        first = torch.full((count,), rows, dtype=torch.long, device=device)
        first.scatter_reduce_(0, prefix, arange, reduce="amin")  # a row holding each prefix
        prefixes.append(prefix)
        m = known + k  # the index of the latent imagined at this step
        lo = max(0, m - history)
        latents = []
        for start in range(0, count, max_rows):
            rep = first[start : start + max_rows]
            steps = [
                z_hist[owner[rep], i]
                if i < known
                else imagined[i - known][prefixes[i - known][rep]]
                for i in range(lo, m)
            ]
            out = model.predict(torch.stack(steps, dim=1), ActionInputs(ids=actions[rep, lo:m]))
            latents.append(out[:, -1].to(z_hist.dtype))
        imagined.append(torch.cat(latents) if latents else z_hist.new_empty(0, z_hist.shape[-1]))
        goal = z_goal[owner[first]].float()
        dist[:, k] = (imagined[k].float() - goal).pow(2).sum(-1)[prefix]
    if cost == "final":
        return dist[:, -1], torch.full((rows,), horizon, dtype=torch.long, device=device)
    low, arg = dist.min(dim=1)  # the first minimum: the earliest step attaining it
    return low, arg + 1


def _order(costs: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Indices sorting each row by (cost, step, position), `(P, S)`."""
    by_step = torch.sort(steps, dim=1, stable=True).indices
    by_cost = torch.sort(costs.gather(1, by_step), dim=1, stable=True).indices
    return by_step.gather(1, by_cost)


def all_sequences(
    num_actions: int, horizon: int, device: torch.device | None = None
) -> torch.Tensor:
    """Every sequence of `horizon` ranks in `[0, A)`, in lexicographic order, `(A^horizon, horizon)`."""
    index = torch.arange(num_actions**horizon, device=device)
    place = num_actions ** torch.arange(horizon - 1, -1, -1, device=device)  # (h,)
    return (index[:, None] // place) % num_actions


def exhaustive_plan(
    model: Any,
    z_hist: torch.Tensor,
    past_actions: torch.Tensor,
    z_goal: torch.Tensor,
    first_valid: torch.Tensor,
    horizon: int,
    cost: str = "min",
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Plan:
    """Exhaustive search over all `A^h` sequences, batched over problems and sequences.

    Only sequences whose first rank is valid at the current vertex are imagined
    (`out_degree[v] * A^(h-1)` per problem), all problems in one flat batch.

    Args:
        model: An object with `predict` and `config.history_length`.
        z_hist (`torch.Tensor` of shape `(P, T0, D)`): True latents up to the current state.
        past_actions (`torch.LongTensor` of shape `(P, T0 - 1)`): Actions between them.
        z_goal (`torch.Tensor` of shape `(P, D)`): Goal latents.
        first_valid (`torch.BoolTensor` of shape `(P, A)`): Ranks valid at the current vertex
            (at least one per problem); sequences starting with another rank are never chosen.
        horizon (`int`): Plan length `h >= 1`.
        cost (`str`, defaults to `"min"`): `min` or `final`.
        max_rows (`int`, defaults to 4096): Distinct prefixes per predictor call.

    Returns:
        `Plan`: The optimum of every problem (ties: earliest step, then first in
        lexicographic order).
    """
    problems, num_actions = first_valid.shape
    device = z_hist.device
    # Only the valid first actions are imagined: rows (problem, first action, continuation).
    owner, first = first_valid.to(device).nonzero(as_tuple=True)  # (R,), (R,) sorted by problem
    rest = all_sequences(num_actions, horizon - 1, device)  # (A^(h-1), h - 1)
    num_rest = rest.shape[0]
    plans = torch.cat(
        [first.repeat_interleave(num_rest)[:, None], rest.repeat(first.shape[0], 1)], dim=1
    )  # (R * A^(h-1), h), lexicographic within each problem
    owner = owner.repeat_interleave(num_rest)
    costs, steps = _costs_of_rows(model, z_hist, past_actions, z_goal, owner, plans, cost, max_rows)
    # Sort by (problem, cost, step, row) with stable sorts, then take each problem's first row.
    order = torch.sort(steps, stable=True).indices
    order = order[torch.sort(costs[order], stable=True).indices]
    order = order[torch.sort(owner[order], stable=True).indices]
    counts = torch.bincount(owner, minlength=problems)
    if bool((counts == 0).any()):
        raise LeWMInputError("first_valid", "a row without valid action", "needs one per problem")
    best = order[torch.cumsum(counts, 0) - counts]  # (P,) first row of every problem
    return Plan(plans[best], costs[best], steps[best])


def cem_plan(
    model: Any,
    z_hist: torch.Tensor,
    past_actions: torch.Tensor,
    z_goal: torch.Tensor,
    first_valid: torch.Tensor,
    horizon: int,
    cost: str = "min",
    samples: int = 256,
    elites: int = 32,
    iterations: int = 4,
    smoothing: float = 0.1,
    generator: torch.Generator | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    prior: torch.Tensor | None = None,
) -> Plan:
    """Cross-entropy method over categorical actions, batched over problems.

    Each problem keeps independent categorical distributions over the `A` ranks per step: at
    first uniform over the valid ranks for step 1, and `prior` (uniform if None) for the imagined
    steps after it. Every iteration samples `samples` sequences,
    scores them, and refits `p = smoothing * p + (1 - smoothing) * freq(elites)` on the `elites`
    best (ordered by cost, then step). The best sequence seen in any iteration is returned.

    Args:
        model, z_hist, past_actions, z_goal, first_valid, horizon, cost, max_rows:
            As in [`exhaustive_plan`].
        samples (`int`, defaults to 256): Sequences per iteration.
        elites (`int`, defaults to 32): Elites per iteration (`<= samples`).
        iterations (`int`, defaults to 4): Iterations.
        smoothing (`float`, defaults to 0.1): Weight of the old distribution.
        generator (`torch.Generator`, *optional*): Random source of the samples (CPU generator;
            samples are drawn on CPU and moved).
        prior (`torch.Tensor` of shape `(A,)`, *optional*): Initial weights of the ranks at the
            imagined steps 2 .. h (see [`rank_prior`]); uniform if None.

    Returns:
        `Plan`: The best sequence seen per problem.
    """
    problems, num_actions = first_valid.shape
    device = z_hist.device
    probs = torch.ones(problems, horizon, num_actions, dtype=torch.float64)
    if prior is not None:
        if prior.shape != (num_actions,) or not bool((prior >= 0).all() and prior.sum() > 0):
            raise LeWMInputError(
                "prior", tuple(prior.shape), f"must be ({num_actions},) non-negative weights"
            )
        probs[:, 1:] = prior.cpu().double()
    probs[:, 0] = first_valid.cpu().double()
    probs = probs / probs.sum(-1, keepdim=True)  # (P, h, A)
    rows = torch.arange(problems)
    best_actions = torch.zeros(problems, horizon, dtype=torch.long)
    best_cost = torch.full((problems,), math.inf)
    best_step = torch.full((problems,), horizon, dtype=torch.long)
    valid_cpu = first_valid.cpu()
    for _ in range(iterations):
        draws = torch.multinomial(
            probs.view(-1, num_actions), samples, replacement=True, generator=generator
        )  # (P*h, S)
        plans = draws.view(problems, horizon, samples).transpose(1, 2).contiguous()  # (P, S, h)
        costs, steps = sequence_costs(model, z_hist, past_actions, z_goal, plans, cost, max_rows)
        costs, steps = costs.cpu(), steps.cpu()
        costs = costs.masked_fill(~valid_cpu.gather(1, plans[:, :, 0]), math.inf)
        order = _order(costs, steps)
        elite = plans[rows[:, None], order[:, :elites]]  # (P, E, h)
        top_cost, top_step = costs[rows, order[:, 0]], steps[rows, order[:, 0]]
        better = (top_cost < best_cost) | ((top_cost == best_cost) & (top_step < best_step))
        best_actions[better] = plans[rows, order[:, 0]][better]
        best_cost = torch.where(better, top_cost, best_cost)
        best_step = torch.where(better, top_step, best_step)
        freq = torch.nn.functional.one_hot(elite, num_actions).double().mean(1)  # (P, h, A)
        probs = smoothing * probs + (1 - smoothing) * freq
    return Plan(best_actions.to(device), best_cost.to(device), best_step.to(device))


def rank_prior(graph: Graph) -> torch.Tensor:
    """The share of vertices at which each rank is a valid action, `(A,)`: `#{v: deg(v) > r} / n`.

    Beyond the first step the planner does not know the vertex it imagines, so every rank in
    `[0, A)` is a candidate; on a graph whose degrees spread widely (the `small` preset: mean
    11.4, maximum 47) most high ranks are invalid almost everywhere. CEM starts the imagined
    steps from this prior (`cem_rank_prior="degree"`) instead of uniform, so its samples go
    where moves exist.
    """
    degree = torch.as_tensor(np.asarray(graph.out_degree), dtype=torch.float64)
    ranks = torch.arange(graph.max_out_degree, dtype=torch.float64)
    return (degree[None, :] > ranks[:, None]).double().mean(1)


def plan_actions(
    model: Any,
    z_hist: torch.Tensor,
    past_actions: torch.Tensor,
    z_goal: torch.Tensor,
    first_valid: torch.Tensor,
    horizon: int,
    config: PlanningConfig,
    generator: torch.Generator | None = None,
    prior: torch.Tensor | None = None,
) -> tuple[Plan, str]:
    """Plan with the planner `config` selects for this horizon; returns the plan and its name.
    `prior` (`(A,)`, *optional*) is CEM's initial rank weights for the imagined steps."""
    num_actions = first_valid.shape[1]
    kind = config.planner
    if kind == "auto":
        kind = "exhaustive" if num_actions**horizon <= config.max_exhaustive else "cem"
    if kind == "exhaustive":
        plan = exhaustive_plan(
            model, z_hist, past_actions, z_goal, first_valid, horizon, config.cost, config.max_rows
        )
    else:
        plan = cem_plan(
            model, z_hist, past_actions, z_goal, first_valid, horizon, config.cost,
            config.cem_samples, config.cem_elites, config.cem_iterations, config.cem_smoothing,
            generator, config.max_rows, prior,
        )  # fmt: skip
    return plan, kind


# ----------------------------------------------------------------------------------------------
# Problems


def shortest_distances(graph: Graph) -> np.ndarray:
    """All-pairs BFS distances `(n, n)` (float64, `inf` where unreachable)."""
    return shortest_path(graph.to_scipy(), method="D", unweighted=True, directed=True)


@dataclass
class PlanningProblems:
    """Start states and goals of one stratum.

    Args:
        history (`np.ndarray`): `(P, w + H - 1)` vertices: the `H` true windows up to the start.
        past_actions (`np.ndarray`): `(P, H - 1)` the actions between those windows.
        start (`np.ndarray`): `(P,)` start vertices (the last vertex of `history`).
        goal (`np.ndarray`): `(P,)` goal vertices at distance `d` from `start`.
        goal_window (`np.ndarray`): `(P, w)` the window on arriving at `goal` along `path`.
        path (`np.ndarray`): `(P, d)` a shortest path's vertices after `start` (ends at `goal`).
    """

    history: np.ndarray
    past_actions: np.ndarray
    start: np.ndarray
    goal: np.ndarray
    goal_window: np.ndarray
    path: np.ndarray


def sample_problems(
    graph: Graph,
    walks: np.ndarray,
    window: int,
    history: int,
    distance: int,
    num: int,
    rng: np.random.Generator,
    dist: np.ndarray | None = None,
) -> PlanningProblems:
    """Draw `num` problems with goals at true distance exactly `distance` (never the start).

    The `(start, goal)` vertex pair is uniform among the pairs at that distance whose start vertex
    ends some window of the walks; the start window (with its `H - 1` predecessors) is then
    uniform among the walk positions ending at the start vertex. The path to the goal window
    steps to a uniform successor that stays on a shortest path.

    Args:
        graph (`Graph`): The graph.
        walks (`np.ndarray`): `(M, L)` held-out walks, `L >= w + H - 1`.
        window (`int`): The state window `w`.
        history (`int`): The model's history length `H`.
        distance (`int`): The stratum `d >= 1`.
        num (`int`): Problems.
        rng (`np.random.Generator`): Random source.
        dist (`np.ndarray`, *optional*): Precomputed [`shortest_distances`].

    Returns:
        `PlanningProblems`: The problems.
    """
    dist = shortest_distances(graph) if dist is None else dist
    span = window + history - 1
    if walks.shape[1] < span:
        raise LeWMConfigError("walk_length", walks.shape[1], f"must be >= w + H - 1 = {span}")
    if not (dist == distance).any():
        raise LeWMInputError("distances", distance, "no vertex pair is that far apart")
    # Every walk position that can end a start window (it has H - 1 windows before it).
    ends = walks[:, span - 1 :].astype(np.int64)  # (M, L - span + 1)
    order = np.argsort(ends, axis=None, kind="stable")  # positions grouped by end vertex
    count = np.bincount(ends.reshape(-1), minlength=graph.num_vertices)
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    src, dst = np.nonzero((dist == distance) & (count > 0)[:, None])  # pairs with a start window
    if src.size == 0:
        raise LeWMInputError(
            "distances", distance, "no vertex pair that far apart starts at a walk window"
        )
    pair = rng.integers(0, src.size, size=num)
    start, goals = src[pair], dst[pair]
    offset = np.minimum((rng.random(num) * count[start]).astype(np.int64), count[start] - 1)
    flat = order[first[start] + offset]  # (P,) flat index into `ends`
    rows, cols = np.divmod(flat, ends.shape[1])
    spans = walks[rows[:, None], cols[:, None] + np.arange(span)].astype(np.int64)  # (P, span)
    start = spans[:, -1]

    table = neighbor_table(graph)
    path = np.empty((num, distance), dtype=np.int64)
    cur = start
    for step in range(distance):
        succ = table[cur]  # (P, A), -1 padded
        on_path = (succ >= 0) & (dist[np.maximum(succ, 0), goals[:, None]] == distance - step - 1)
        score = np.where(on_path, rng.random(succ.shape), -1.0)
        cur = succ[np.arange(num), score.argmax(1)]
        path[:, step] = cur
    goal_window = np.concatenate([spans[:, span - window :], path], axis=1)[:, -window:]
    ranks, _ = graph.neighbor_rank(spans[:, window - 1 : -1], spans[:, window:])
    return PlanningProblems(
        history=spans,
        past_actions=ranks.astype(np.int64),
        start=start,
        goal=goals,
        goal_window=goal_window,
        path=path,
    )


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
# Episodes


@dataclass
class EpisodeResult:
    """Outcome of planning episodes on the true graph.

    Args:
        success (`np.ndarray`): `(P,)` the goal vertex was reached within the budget.
        steps (`np.ndarray`): `(P,)` executed steps (up to and including reaching the goal).
        plans (`int`): Planner calls, counting one per problem per replanning.
        plan_seconds (`float`): Wall time spent in the planners.
        actions (`np.ndarray`): `(P, budget)` executed ranks, -1 after the episode stopped.
        vertices (`np.ndarray`): `(P, budget)` vertices reached, -1 after the episode stopped.
        planners (`list[str]`): The planner used at each replanning round.
    """

    success: np.ndarray
    steps: np.ndarray
    plans: int
    plan_seconds: float
    actions: np.ndarray
    vertices: np.ndarray
    planners: list[str] = field(default_factory=list)


def run_episodes(
    model: Any,
    graph: Graph,
    problems: PlanningProblems,
    window: int,
    budget: int,
    config: PlanningConfig,
    generator: torch.Generator | None = None,
) -> EpisodeResult:
    """Plan and act on the true graph, batched over problems.

    MPC (`config.replan`): at every step the still-active problems plan over the remaining
    budget from their true history (the last `H` true latents and actions), execute the first
    action (valid by construction) on the graph, encode the new true window, and stop on
    reaching the goal vertex. Open loop: one plan over the whole budget, executed with each rank
    taken modulo the true vertex's out-degree, stopping at the goal.

    Args:
        model: A [`LeWMModel`] or an object with `encode`, `predict`, `config.history_length`.
        graph (`Graph`): The true graph.
        problems (`PlanningProblems`): Starts and goals.
        window (`int`): The state window `w`.
        budget (`int`): Steps allowed.
        config (`PlanningConfig`): Planner settings.
        generator (`torch.Generator`, *optional*): Random source of CEM.

    Returns:
        `EpisodeResult`: Success and executed steps per problem, planner calls and time.
    """
    history = model.config.history_length
    table = neighbor_table(graph)
    degree = graph.out_degree
    num = problems.start.shape[0]
    num_actions = graph.max_out_degree
    bs = config.batch_size
    prior = rank_prior(graph) if config.cem_rank_prior == "degree" else None
    with evaluating(model):
        hist_states = torch.from_numpy(problems.history).unfold(1, window, 1)  # (P, H, w)
        latents = encode_states(model, hist_states, bs)  # (P, H, D)
        device = latents.device
        z_goal = encode_states(model, torch.from_numpy(problems.goal_window), bs)  # (P, D)
        actions = torch.from_numpy(problems.past_actions).to(device)  # (P, H - 1)
        last_window = problems.history[:, -window:].copy()  # (P, w)
        cur = problems.start.copy()
        done = np.zeros(num, dtype=bool)
        steps = np.zeros(num, dtype=np.int64)
        plans = 0
        seconds = 0.0
        planners: list[str] = []
        open_loop: np.ndarray | None = None
        executed = np.full((num, budget), -1, dtype=np.int64)
        visited = np.full((num, budget), -1, dtype=np.int64)
        for step in range(budget):
            active = np.flatnonzero(~done)
            if active.size == 0:
                break
            if config.replan or open_loop is None:
                idx = torch.from_numpy(active).to(device)
                keep = min(history, latents.shape[1])  # the last H true latents and actions
                valid = torch.from_numpy(np.arange(num_actions)[None] < degree[cur[active], None])
                started = time.perf_counter()
                plan, kind = plan_actions(
                    model,
                    latents[idx, -keep:],
                    actions[idx, actions.shape[1] - (keep - 1) :],
                    z_goal[idx],
                    valid.to(device),
                    budget - step,
                    config,
                    generator,
                    prior,
                )
                seconds += time.perf_counter() - started
                plans += int(active.size)
                planners.append(kind)
                chosen = plan.actions[:, 0].cpu().numpy()
                if not config.replan:
                    open_loop = np.zeros((num, budget), dtype=np.int64)
                    open_loop[active] = plan.actions.cpu().numpy()
            if open_loop is not None:  # open loop: a rank invalid at the true vertex wraps
                rank = open_loop[active, step] % degree[cur[active]]
            else:  # MPC: the planners mask the first action, so it is valid
                rank = chosen
                if (rank >= degree[cur[active]]).any():
                    raise LeWMInputError(
                        "first_valid", config.planner, "a plan began with an invalid action"
                    )
            nxt = table[cur[active], rank]
            executed[active, step] = rank
            visited[active, step] = nxt
            cur[active] = nxt
            steps[active] += 1
            done[active] |= nxt == problems.goal[active]
            last_window[active] = np.concatenate([last_window[active, 1:], nxt[:, None]], axis=1)
            going = active[~done[active]]  # the true history grows only where it is used again
            if config.replan and step + 1 < budget and going.size:
                rows = torch.from_numpy(going).to(device)
                z_new = latents.new_zeros(num, latents.shape[-1])
                z_new[rows] = encode_states(model, torch.from_numpy(last_window[going]), bs)
                a_new = actions.new_zeros(num)
                a_new[torch.from_numpy(active).to(device)] = torch.from_numpy(rank).to(device)
                latents = torch.cat([latents, z_new[:, None]], dim=1)  # (P, H + step + 1, D)
                actions = torch.cat([actions, a_new[:, None]], dim=1)  # (P, H + step)
    return EpisodeResult(done, steps, plans, seconds, executed, visited, planners)


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
        for i, seed in enumerate(config.seeds):
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
