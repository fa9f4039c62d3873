"""Plan search in latent space: the cost of action sequences imagined from a true history (scored
as a prefix tree), the exhaustive search, categorical CEM, and the choice between them.

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
[`tree_plan`] (`planner="tree"`) searches breadth-first over the distinct states the model
imagines, merging children within `merge_radius` of a state already in the tree, so it reaches
the whole budget where `A^h` sequences would not fit (Taxi: at most 4 moves out of a state).

Shapes: `P` problems, `S` sequences per problem, `h` plan horizon, `A` actions, `D` d_state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.graphs import Graph
from ..errors import LeWMInputError
from ..modeling_actions import ActionInputs
from .planning_config import DEFAULT_MAX_ROWS, PlanningConfig


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


def tree_plan(
    model: Any,
    z_hist: torch.Tensor,
    past_actions: torch.Tensor,
    z_goal: torch.Tensor,
    first_valid: torch.Tensor,
    horizon: int,
    merge_radius: float,
    max_nodes: int,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Plan:
    """Breadth-first search over the states the model imagines, merging equal ones.

    From each problem's history, every node of depth `k` is expanded by every action and the
    predictor imagines the children; a child whose latent lies within `merge_radius` (mean
    squared difference per latent dimension) of a node already in the tree (the root
    included) or of an earlier child is the same state reached another way and is dropped, so
    actions that change nothing (a move into a wall) and paths that meet are searched once.
    The tree thus holds the distinct states the model believes reachable in `1 .. horizon`
    steps, where an exhaustive search would hold `A^h` sequences. At most `max_nodes` children
    per depth and problem are kept (those closest to the goal). The plan is the path to the
    node closest to the goal over every depth (the `min` cost; ties to the shallower node).

    Args:
        model: An object with `predict` and `config.history_length`.
        z_hist (`torch.Tensor` of shape `(P, T0, D)`): True latents of each problem.
        past_actions (`torch.LongTensor` of shape `(P, T0 - 1)`): Actions between them.
        z_goal (`torch.Tensor` of shape `(P, D)`): Goal latents.
        first_valid (`torch.BoolTensor` of shape `(P, A)`): Valid first actions.
        horizon (`int`): Deepest level searched.
        merge_radius (`float`): Mean squared difference per dimension under which two imagined
            latents are one state.
        max_nodes (`int`): Children kept per depth and problem.
        max_rows (`int`, defaults to `DEFAULT_MAX_ROWS`): Rows per predictor call.

    Returns:
        `Plan`: The path to the best node (padded with action 0 to `horizon`), its cost and depth.
    """
    device = z_hist.device
    problems, known, dim = z_hist.shape
    num_actions = first_valid.shape[1]
    history = model.config.history_length
    keep = min(history, known)
    lat = z_hist[:, known - keep :].float()  # (N, W, D): every node's latent window
    act = past_actions.to(device)[:, past_actions.shape[1] - (keep - 1) :]  # (N, W - 1)
    owner = torch.arange(problems, device=device)
    paths = torch.zeros(problems, 0, dtype=torch.long, device=device)
    seen = [z_hist[p, -1:].float() for p in range(problems)]  # latents in each tree
    goal = z_goal.float()
    best_cost = torch.full((problems,), math.inf, device=device)
    best_depth = torch.full((problems,), horizon, dtype=torch.long, device=device)
    best_path = torch.zeros(problems, horizon, dtype=torch.long, device=device)
    threshold = merge_radius * dim
    for depth in range(1, horizon + 1):
        if owner.numel() == 0:
            break
        n = owner.numel()
        c_owner = owner.repeat_interleave(num_actions)
        c_act = torch.arange(num_actions, device=device).repeat(n)
        c_lat = lat.repeat_interleave(num_actions, dim=0)
        c_hist = torch.cat([act.repeat_interleave(num_actions, dim=0), c_act[:, None]], dim=1)
        c_paths = torch.cat([paths.repeat_interleave(num_actions, dim=0), c_act[:, None]], dim=1)
        if depth == 1:
            ok = first_valid.to(device)[c_owner, c_act]
            c_owner, c_lat, c_hist, c_paths = c_owner[ok], c_lat[ok], c_hist[ok], c_paths[ok]
        out = torch.cat([
            model.predict(c_lat[i : i + max_rows], ActionInputs(ids=c_hist[i : i + max_rows]))[:, -1]
            for i in range(0, c_owner.numel(), max_rows)
        ]).float()  # fmt: skip
        cost = (out - goal[c_owner]).pow(2).sum(-1)
        kept = torch.zeros(c_owner.numel(), dtype=torch.bool, device=device)
        for p in torch.unique(c_owner).tolist():
            rows = torch.nonzero(c_owner == p).flatten()
            rows = rows[torch.sort(cost[rows], stable=True).indices]
            z = out[rows]
            rows = rows[~(torch.cdist(z, seen[p]).pow(2) < threshold).any(1)]
            close = (torch.cdist(out[rows], out[rows]).pow(2) < threshold).cpu().numpy()
            chosen = np.zeros(rows.numel(), dtype=bool)
            for i in range(rows.numel()):  # greedy: the child nearest the goal represents
                if not (close[i] & chosen).any():
                    chosen[i] = True
                    if chosen.sum() >= max_nodes:
                        break
            rows = rows[torch.from_numpy(chosen).to(device)]
            seen[p] = torch.cat([seen[p], out[rows]])
            kept[rows] = True
        owner, out, cost, c_hist, c_paths = (
            c_owner[kept],
            out[kept],
            cost[kept],
            c_hist[kept],
            c_paths[kept],
        )
        if owner.numel():
            low = torch.full((problems,), math.inf, device=device)
            low.scatter_reduce_(0, owner, cost, reduce="amin")
            better = low < best_cost
            for p in torch.nonzero(better).flatten().tolist():
                r = torch.nonzero((owner == p) & (cost == low[p])).flatten()[0]
                best_path[p] = 0
                best_path[p, :depth] = c_paths[r]
            best_depth = torch.where(better, torch.full_like(best_depth, depth), best_depth)
            best_cost = torch.minimum(best_cost, low)
        lat = torch.cat([c_lat[kept], out[:, None]], dim=1)[:, -history:]
        act = c_hist[:, -(history - 1) :] if history > 1 else c_hist[:, :0]
        paths = c_paths
    return Plan(best_path, best_cost.to(z_hist.dtype), best_depth)


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
    if kind == "tree":
        plan = tree_plan(
            model, z_hist, past_actions, z_goal, first_valid, horizon,
            config.merge_radius, config.tree_max_nodes, config.max_rows,
        )  # fmt: skip
    elif kind == "exhaustive":
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


__all__ = [
    "Plan",
    "all_sequences",
    "cem_plan",
    "exhaustive_plan",
    "plan_actions",
    "rank_prior",
    "sequence_costs",
    "tree_plan",
]
