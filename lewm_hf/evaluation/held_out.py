"""Held-out graph walks for evaluation, and the items cut from them: the neighbour table of a
graph (action rank -> vertex), random spans of consecutive vertices, and the move actions along
a span.

The walks come from a seed of their own, distinct from every seed that draws training walks or
clips (see [`held_out_walks`]).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import DatasetDict

from ..data.graphs import Graph
from ..data.walks import WalkMetadata, generate_walks, load_walk_metadata
from ..determinism import derive_seed
from ..errors import LeWMConfigError, LeWMInputError


@dataclass
class HeldOutWalks:
    """Held-out walks on a graph, and the state window.

    Args:
        graph (`Graph`): The graph the walks move on.
        walks (`np.ndarray`): `(num_walks, walk_length)` vertex ids; consecutive vertices are edges.
        window (`int`): The state window `w`.
    """

    graph: Graph
    walks: np.ndarray
    window: int

    def __post_init__(self) -> None:
        walks = np.asarray(self.walks)
        if walks.ndim != 2 or walks.shape[0] < 1 or not np.issubdtype(walks.dtype, np.integer):
            raise LeWMInputError(
                "walks", f"shape {walks.shape}, dtype {walks.dtype}", "must be (N, L) integers"
            )
        if not isinstance(self.window, int) or self.window < 1:
            raise LeWMConfigError("window", self.window, "must be a positive integer")
        self.walks = walks.astype(np.int64, copy=False)


def held_out_walks(
    source: HeldOutWalks | WalkMetadata | DatasetDict | str | Path,
    num_walks: int = 256,
    walk_length: int | None = None,
    seed: int = 0,
) -> HeldOutWalks:
    """Held-out walks for evaluation, generated on a corpus's graph with its jumper rules.

    The walks come from a seed derived from `seed` and the purpose `"world-model-eval"`, distinct
    from every seed that draws training walks or clips, so they are held out (on a small graph
    individual windows still recur, as they would in any fresh sample).

    Args:
        source (`HeldOutWalks`, `WalkMetadata`, `DatasetDict`, `str` or `Path`):
            Walks given as they are, or a walk / move corpus (or its folder, or its metadata) whose
            graph, jumpers and window define the walks.
        num_walks (`int`, defaults to 256): Walks to generate.
        walk_length (`int`, *optional*): Vertices per walk; the corpus's walk length if None.
        seed (`int`, defaults to 0): Base seed.

    Returns:
        `HeldOutWalks`: The walks, graph and window.
    """
    if isinstance(source, HeldOutWalks):
        return source
    meta = source if isinstance(source, WalkMetadata) else load_walk_metadata(source)
    length = meta.config.walk_length if walk_length is None else walk_length
    walks = generate_walks(
        meta.graph, meta.jumpers, num_walks, length, seed=derive_seed(seed, "world-model-eval")
    )
    return HeldOutWalks(meta.graph, walks, meta.config.context_window)


def neighbor_table(graph: Graph) -> np.ndarray:
    """Sorted out-neighbours of every vertex, padded with -1.

    Args:
        graph (`Graph`): The graph.

    Returns:
        `np.ndarray`: `(num_vertices, max_out_degree)` int64; row `v`, column `r` is the vertex
        that action (rank) `r` leads to from `v`, or -1 when `r >= out_degree[v]`.
    """
    degree = graph.out_degree
    table = np.full((graph.num_vertices, graph.max_out_degree), -1, dtype=np.int64)
    rows = np.repeat(np.arange(graph.num_vertices), degree)
    cols = np.arange(graph.num_edges) - np.repeat(graph.indptr[:-1], degree)
    table[rows, cols] = graph.indices
    return table


def sample_spans(walks: np.ndarray, length: int, num: int, rng: np.random.Generator) -> np.ndarray:
    """Cut `num` spans of `length` consecutive vertices at random walks and offsets.

    Args:
        walks (`np.ndarray`): `(num_walks, walk_length)` walks.
        length (`int`): Vertices per span (`<= walk_length`).
        num (`int`): Spans to cut.
        rng (`np.random.Generator`): Random source.

    Returns:
        `np.ndarray`: `(num, length)` int64 spans.
    """
    if length > walks.shape[1]:
        raise LeWMConfigError(
            "walk_length", walks.shape[1], f"spans of {length} vertices need longer walks"
        )
    rows = rng.integers(0, walks.shape[0], size=num)
    starts = rng.integers(0, walks.shape[1] - length + 1, size=num)
    return walks[rows[:, None], starts[:, None] + np.arange(length)].astype(np.int64)


def move_actions(graph: Graph, spans: np.ndarray, window: int) -> np.ndarray:
    """The move actions (neighbour ranks) along spans; `(N, S - window)` for spans `(N, S)`."""
    ranks, found = graph.neighbor_rank(spans[:, window - 1 : -1], spans[:, window:])
    if not found.all():
        row = int(np.flatnonzero(~found.all(axis=1))[0])
        raise LeWMInputError("spans", f"row {row}", "contains a move that is not a graph edge")
    return ranks.astype(np.int64)


__all__ = ["HeldOutWalks", "held_out_walks", "move_actions", "neighbor_table", "sample_spans"]
