"""Planning problems: start windows cut from held-out walks (with their true history) and goal
vertices at a true shortest-path distance `d`. The goal window is a window of another held-out
walk that ends at the goal vertex (goal form `walk`: it says where to go, not how), or the window
the true system would show on arriving along a shortest path (goal form `path`: the start window
followed by the path, so the goal latent carries the path). [`shortest_distances`] gives the true
(BFS) distances.

Shapes: `P` problems, `w` the state window, `H` the model's history length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np
from scipy.sparse.csgraph import shortest_path

from ..data.graphs import Graph
from ..errors import LeWMConfigError, LeWMInputError
from ..fields import GoalForm
from .held_out import neighbor_table


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
        goal_window (`np.ndarray`): `(P, w)` the goal state: a window ending at `goal` (goal
            form `walk`: cut from another held-out walk; `path`: the start window followed by
            `path`).
        path (`np.ndarray`): `(P, d)` a shortest path's vertices after `start` (ends at `goal`).
        start_row (`np.ndarray`, *optional*): `(P,)` the walk each start window was cut from.
        goal_row (`np.ndarray`, *optional*): `(P,)` the walk each goal window was cut from
            (goal form `walk`), -1 for the `path` form.
    """

    history: np.ndarray
    past_actions: np.ndarray
    start: np.ndarray
    goal: np.ndarray
    goal_window: np.ndarray
    path: np.ndarray
    start_row: np.ndarray | None = None
    goal_row: np.ndarray | None = None


def _window_index(ends: np.ndarray, num_vertices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk positions grouped by the vertex they end at: `(order, count, first)`, where the
    positions ending at `v` are `order[first[v] : first[v] + count[v]]` (flat indices into
    `ends`)."""
    order = np.argsort(ends, axis=None, kind="stable")
    count = np.bincount(ends.reshape(-1), minlength=num_vertices)
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    return order, count, first


def _other_walk_windows(
    walks: np.ndarray,
    window: int,
    goal: np.ndarray,
    start_rows: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """For each goal, a window `(w,)` of a held-out walk other than its start's that ends at the
    goal vertex, uniform among such windows: the windows `(P, w)` and their walks `(P,)`."""
    ends = walks[:, window - 1 :].astype(np.int64)  # (M, L - w + 1): every full window's end
    order, count, first = _window_index(ends, int(max(ends.max(), goal.max())) + 1)
    out = np.empty((goal.shape[0], window), dtype=np.int64)
    rows = np.empty(goal.shape[0], dtype=np.int64)
    for i, (g, row) in enumerate(zip(goal.tolist(), start_rows.tolist())):
        flat = order[first[g] : first[g] + count[g]]
        flat = flat[flat // ends.shape[1] != row]  # another walk than the start's
        r, c = divmod(int(flat[rng.integers(0, flat.size)]), ends.shape[1])
        out[i] = walks[r, c : c + window]
        rows[i] = r
    return out, rows


def sample_problems(
    graph: Graph,
    walks: np.ndarray,
    window: int,
    history: int,
    distance: int,
    num: int,
    rng: np.random.Generator,
    dist: np.ndarray | None = None,
    goal_form: GoalForm = "path",
) -> PlanningProblems:
    """Draw `num` problems with goals at true distance exactly `distance` (never the start).

    The `(start, goal)` vertex pair is uniform among the pairs at that distance whose start vertex
    ends some window of the walks (and, for goal form `walk`, whose goal vertex ends a window of
    a walk other than the start's); the start window (with its `H - 1` predecessors) is then
    uniform among the walk positions ending at the start vertex. The shortest path steps to a
    uniform successor that stays on a shortest path. The goal window is, for `path`, the start
    window followed by that path (its last `w` vertices); for `walk`, a window of another walk
    ending at the goal vertex, uniform among them, drawn independently of the start.

    Args:
        graph (`Graph`): The graph.
        walks (`np.ndarray`): `(M, L)` held-out walks, `L >= w + H - 1`.
        window (`int`): The state window `w`.
        history (`int`): The model's history length `H`.
        distance (`int`): The stratum `d >= 1`.
        num (`int`): Problems.
        rng (`np.random.Generator`): Random source.
        dist (`np.ndarray`, *optional*): Precomputed [`shortest_distances`].
        goal_form (`str`, defaults to `"path"`): `walk` or `path` (see above).

    Returns:
        `PlanningProblems`: The problems.
    """
    dist = shortest_distances(graph) if dist is None else dist
    span = window + history - 1
    if walks.shape[1] < span:
        raise LeWMConfigError("walk_length", walks.shape[1], f"must be >= w + H - 1 = {span}")
    if goal_form not in get_args(GoalForm):
        raise LeWMConfigError("goal_form", goal_form, f"must be one of {get_args(GoalForm)}")
    if not (dist == distance).any():
        raise LeWMInputError("distances", distance, "no vertex pair is that far apart")
    # Every walk position that can end a start window (it has H - 1 windows before it).
    ends = walks[:, span - 1 :].astype(np.int64)  # (M, L - span + 1)
    order, count, first = _window_index(ends, graph.num_vertices)
    reachable = (dist == distance) & (count > 0)[:, None]  # pairs with a start window
    if goal_form == "walk":  # goals ending a window of at least two walks (one is not the start's)
        full = walks[:, window - 1 :].astype(np.int64)
        walks_at = np.zeros((walks.shape[0], graph.num_vertices), dtype=bool)
        walks_at[np.repeat(np.arange(walks.shape[0]), full.shape[1]), full.reshape(-1)] = True
        reachable &= (walks_at.sum(0) >= 2)[None, :]
    src, dst = np.nonzero(reachable)
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
    if goal_form == "path":
        goal_window = np.concatenate([spans[:, span - window :], path], axis=1)[:, -window:]
        goal_rows = np.full(num, -1, dtype=np.int64)
    else:
        goal_window, goal_rows = _other_walk_windows(walks, window, goals, rows, rng)
    ranks, _ = graph.neighbor_rank(spans[:, window - 1 : -1], spans[:, window:])
    return PlanningProblems(
        history=spans,
        past_actions=ranks.astype(np.int64),
        start=start,
        goal=goals,
        goal_window=goal_window,
        path=path,
        start_row=rows.astype(np.int64),
        goal_row=goal_rows,
    )


__all__ = ["PlanningProblems", "sample_problems", "shortest_distances"]
