"""Planning problems: start windows cut from held-out walks (with their true history) and goal
vertices at a true shortest-path distance `d`, with the goal window the true system would show on
arriving along a shortest path. [`shortest_distances`] gives the true (BFS) distances.

Shapes: `P` problems, `w` the state window, `H` the model's history length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse.csgraph import shortest_path

from ..data.graphs import Graph
from ..errors import LeWMConfigError, LeWMInputError
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


__all__ = ["PlanningProblems", "sample_problems", "shortest_distances"]
