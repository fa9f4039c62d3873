"""Directed degree-corrected stochastic block-model graphs and jumper rules.

A graph has `num_vertices` vertices split into `num_blocks` equal blocks
(`block(v) = v // (num_vertices // num_blocks)`). Each ordered pair `(i, j)`, `i != j`, gets an
edge independently with probability `min(1, theta_i * theta_j * omega)`, where `omega` is `p_in`
inside a block and `p_out` across blocks. `theta` is Zipf (`1 / rank`) with the ranks shuffled
inside each block and normalised so that each block's thetas sum to the block size.

A `Jumper(vertex, source_block, target_block, r)` is a rule: a walk that visits `vertex` at step
`t` must be in `target_block` at step `t + r`. Walks serve a rule by splicing a precomputed random
`r`-step path (see `lewm_hf.data.walks`) whose interior vertices are not jumpers; the conditioned
path distribution is computed here by `JumperPaths`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import LeWMConfigError, LeWMGraphError

MAX_GRAPH_ATTEMPTS = 10


@dataclass
class Graph:
    """A directed graph stored as CSR adjacency, with block labels and degree parameters.

    Args:
        indptr (`np.ndarray`): CSR row pointer, shape `(num_vertices + 1,)`, int64.
        indices (`np.ndarray`): CSR column indices (out-neighbours), sorted within each row, int32.
        blocks (`np.ndarray`): Block label of each vertex, shape `(num_vertices,)`, int32.
        theta (`np.ndarray`): Degree parameter of each vertex, float64.
        num_blocks (`int`): Number of blocks.
        seed (`int`): The seed that produced this graph (after retries).
    """

    indptr: np.ndarray
    indices: np.ndarray
    blocks: np.ndarray
    theta: np.ndarray
    num_blocks: int
    seed: int

    @property
    def num_vertices(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.indices.shape[0])

    @property
    def out_degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    @property
    def max_out_degree(self) -> int:
        return int(self.out_degree.max())

    def neighbors(self, vertex: int) -> np.ndarray:
        """Sorted out-neighbours of `vertex`."""
        return self.indices[self.indptr[vertex] : self.indptr[vertex + 1]]

    def has_edges(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Vectorised edge test.

        Args:
            src (`np.ndarray`): Source vertices, any shape.
            dst (`np.ndarray`): Destination vertices, same shape.

        Returns:
            `np.ndarray`: Boolean array, True where `src -> dst` is an edge.
        """
        return self.neighbor_rank(src, dst)[1]

    def neighbor_rank(self, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rank of `dst` in the sorted out-neighbour list of `src` (the move action).

        Args:
            src (`np.ndarray`): Source vertices.
            dst (`np.ndarray`): Destination vertices, same shape.

        Returns:
            `tuple[np.ndarray, np.ndarray]`: The ranks (int64, meaningless where not found) and a
            boolean array saying whether `src -> dst` is an edge.
        """
        src = np.asarray(src, dtype=np.int64)
        dst = np.asarray(dst, dtype=np.int64)
        n = self.num_vertices
        valid = (src >= 0) & (src < n) & (dst >= 0) & (dst < n)
        s = np.where(valid, src, 0)
        d = np.where(valid, dst, 0)
        keys = self._edge_keys()
        query = s * n + d
        pos = np.searchsorted(keys, query)
        pos_c = np.minimum(pos, max(len(keys) - 1, 0))
        found = valid & (len(keys) > 0) & (keys[pos_c] == query)
        rank = pos - self.indptr[s]
        return rank, found

    def _edge_keys(self) -> np.ndarray:
        if getattr(self, "_keys", None) is None:
            rows = np.repeat(np.arange(self.num_vertices, dtype=np.int64), self.out_degree)
            self._keys = rows * self.num_vertices + self.indices.astype(np.int64)
        return self._keys

    def to_scipy(self) -> csr_matrix:
        """The adjacency as a `scipy.sparse.csr_matrix` of ones."""
        n = self.num_vertices
        data = np.ones(self.num_edges, dtype=np.float64)
        return csr_matrix((data, self.indices, self.indptr), shape=(n, n))

    def save(self, path: str | Path) -> None:
        """Save to an `.npz` file."""
        np.savez(
            path,
            indptr=self.indptr,
            indices=self.indices,
            blocks=self.blocks,
            theta=self.theta,
            num_blocks=np.int64(self.num_blocks),
            seed=np.int64(self.seed),
        )

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        """Load a graph saved with `save`."""
        with np.load(path) as f:
            return cls(
                indptr=f["indptr"],
                indices=f["indices"],
                blocks=f["blocks"],
                theta=f["theta"],
                num_blocks=int(f["num_blocks"]),
                seed=int(f["seed"]),
            )


def _validate_graph_args(num_vertices: int, num_blocks: int, p_in: float, p_out: float) -> None:
    if not isinstance(num_vertices, int) or num_vertices < 2:
        raise LeWMConfigError("num_vertices", num_vertices, "must be an integer >= 2")
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise LeWMConfigError("num_blocks", num_blocks, "must be a positive integer")
    if num_vertices % num_blocks != 0:
        raise LeWMConfigError(
            "num_blocks", num_blocks, f"must divide num_vertices={num_vertices} into equal blocks"
        )
    for name, p in (("p_in", p_in), ("p_out", p_out)):
        if not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
            raise LeWMConfigError(name, p, "must be a probability in [0, 1]")


def zipf_theta(num_vertices: int, num_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Zipf (alpha = 1) degree parameters with ranks shuffled within each block.

    Each block's thetas sum to the block size.

    Args:
        num_vertices (`int`): Number of vertices.
        num_blocks (`int`): Number of equal blocks.
        rng (`np.random.Generator`): Random source for the rank shuffles.

    Returns:
        `np.ndarray`: theta, shape `(num_vertices,)`, float64.
    """
    size = num_vertices // num_blocks
    base = 1.0 / np.arange(1, size + 1, dtype=np.float64)
    base *= size / base.sum()
    return np.concatenate([rng.permutation(base) for _ in range(num_blocks)])


def make_dcsbm_graph(
    num_vertices: int = 500,
    num_blocks: int = 4,
    p_in: float = 0.25,
    p_out: float = 0.03,
    seed: int = 0,
) -> Graph:
    """Sample a directed degree-corrected SBM graph that is strongly connected.

    Tries seeds `seed, seed + 1, ...` (up to 10 attempts) until the sample is strongly connected
    and every vertex has out-degree >= 1.

    Args:
        num_vertices (`int`, defaults to 500): Number of vertices.
        num_blocks (`int`, defaults to 4): Number of equal blocks; must divide `num_vertices`.
        p_in (`float`, defaults to 0.25): Within-block base probability.
        p_out (`float`, defaults to 0.03): Across-block base probability.
        seed (`int`, defaults to 0): Seed of the first attempt.

    Returns:
        `Graph`: The graph.

    Raises:
        `LeWMConfigError`: on bad arguments. `LeWMGraphError`: when no attempt gives a valid graph.
    """
    _validate_graph_args(num_vertices, num_blocks, p_in, p_out)
    size = num_vertices // num_blocks
    blocks = (np.arange(num_vertices) // size).astype(np.int32)
    same = blocks[:, None] == blocks[None, :]
    omega = np.where(same, float(p_in), float(p_out))
    problems = []
    for attempt in range(MAX_GRAPH_ATTEMPTS):
        rng = np.random.default_rng(seed + attempt)
        theta = zipf_theta(num_vertices, num_blocks, rng)
        prob = np.minimum(1.0, theta[:, None] * theta[None, :] * omega)
        np.fill_diagonal(prob, 0.0)
        adj = rng.random((num_vertices, num_vertices)) < prob
        out_deg = adj.sum(axis=1)
        if (out_deg == 0).any():
            problems.append(
                f"seed {seed + attempt}: {int((out_deg == 0).sum())} vertices without out-edges"
            )
            continue
        mat = csr_matrix(adj)
        n_comp, _ = connected_components(mat, directed=True, connection="strong")
        if n_comp != 1:
            problems.append(f"seed {seed + attempt}: {n_comp} strongly connected components")
            continue
        mat.sort_indices()
        return Graph(
            indptr=mat.indptr.astype(np.int64),
            indices=mat.indices.astype(np.int32),
            blocks=blocks,
            theta=theta,
            num_blocks=num_blocks,
            seed=seed + attempt,
        )
    raise LeWMGraphError(
        f"no valid DCSBM graph (num_vertices={num_vertices}, num_blocks={num_blocks}, p_in={p_in}, "
        f"p_out={p_out}) in {MAX_GRAPH_ATTEMPTS} attempts from seed {seed}: "
        + "; ".join(problems)
        + ". Raise p_in/p_out so that the lowest-theta vertex expects several out-edges."
    )


@dataclass(frozen=True)
class Jumper:
    """A walk that visits `vertex` at step `t` must be in `target_block` at step `t + r`."""

    vertex: int
    source_block: int
    target_block: int
    r: int


def _mean_over_neighbors(graph: Graph, values: np.ndarray) -> np.ndarray:
    """`out[u] = mean of values[v] over out-neighbours v of u` (rows of `values` are vertices)."""
    sums = np.add.reduceat(values[graph.indices], graph.indptr[:-1], axis=0)
    return sums / graph.out_degree.reshape((-1,) + (1,) * (values.ndim - 1))


def splice_hit_probabilities(
    graph: Graph, jumper_vertices: np.ndarray, r: int, target_blocks: np.ndarray
) -> np.ndarray:
    """Doob h-functions for r-step paths with non-jumper interiors ending in a block.

    `h[k, u, b]` is the probability that a uniform random walk from `u` is in block `b` after `k`
    steps with its interior vertices (steps 1..k-1) outside `jumper_vertices`; the first vertex
    `u` itself may be anything.

    Args:
        graph (`Graph`): The graph.
        jumper_vertices (`np.ndarray`): The jumper vertices (excluded from path interiors).
        r (`int`): Path length.
        target_blocks (`np.ndarray`): The blocks to compute the probabilities for.

    Returns:
        `np.ndarray`: `h`, shape `(r + 1, num_vertices, len(target_blocks))`, float64.
    """
    n = graph.num_vertices
    allowed = np.ones(n, dtype=np.float64)
    allowed[jumper_vertices] = 0.0
    h = np.zeros((r + 1, n, len(target_blocks)), dtype=np.float64)
    h[0] = (graph.blocks[:, None] == np.asarray(target_blocks)[None, :]).astype(np.float64)
    for k in range(1, r + 1):
        prev = h[k - 1] if k == 1 else h[k - 1] * allowed[:, None]
        h[k] = _mean_over_neighbors(graph, prev)
    return h


def make_jumpers(
    graph: Graph,
    context_window: int = 64,
    per_block: int = 2,
    r_scales: tuple[float, ...] = (0.5, 0.7, 0.9, 1.0),
    seed: int = 0,
) -> list[Jumper]:
    """Pick jumper rules that are satisfiable and non-trivial.

    Jumper vertices are drawn without replacement, `per_block` from each block. The delays `r`
    are `round(scale * context_window)` with the scales assigned round-robin over the jumpers.
    The target block is drawn among the other blocks that a path of exactly `r` steps with a
    non-jumper interior can reach, and the rule must be non-trivial: some other block must be
    reachable in exactly `r` steps too. A vertex without a valid target is replaced by another
    vertex of its block.

    Args:
        graph (`Graph`): The graph.
        context_window (`int`, defaults to 64): The window `w`.
        per_block (`int`, defaults to 2): Jumpers per block.
        r_scales (`tuple[float, ...]`): Scales of `w` giving the delays, round-robin.
        seed (`int`, defaults to 0): Random seed.

    Returns:
        `list[Jumper]`: The jumpers, ordered by block then draw.

    Raises:
        `LeWMConfigError`: on bad arguments or when a delay cannot be met in some block.
    """
    if not isinstance(context_window, int) or context_window < 1:
        raise LeWMConfigError("context_window", context_window, "must be a positive integer")
    if not isinstance(per_block, int) or per_block < 0:
        raise LeWMConfigError("jumpers_per_block", per_block, "must be a non-negative integer")
    if per_block == 0:
        return []
    if graph.num_blocks < 2:
        raise LeWMConfigError("num_blocks", graph.num_blocks, "jumpers need at least 2 blocks")
    if len(r_scales) == 0:
        raise LeWMConfigError("r_scales", r_scales, "must not be empty")
    rs = []
    for scale in r_scales:
        r = round(float(scale) * context_window)
        if r < 1:
            raise LeWMConfigError("r_scales", r_scales, f"scale {scale} gives r={r} < 1")
        rs.append(r)
    size = graph.num_vertices // graph.num_blocks
    if per_block * graph.num_blocks > graph.num_vertices // 2 or per_block >= size:
        raise LeWMConfigError(
            "jumpers_per_block", per_block, f"too many jumpers for blocks of {size} vertices"
        )
    rng = np.random.default_rng(seed)
    all_blocks = np.arange(graph.num_blocks)
    # Candidate order per block; the first `per_block` candidates are the initial choice.
    order = [rng.permutation(np.arange(b * size, (b + 1) * size)) for b in range(graph.num_blocks)]
    chosen = [list(o[:per_block]) for o in order]
    spare = [list(o[per_block:]) for o in order]
    slot_r = [rs[i % len(rs)] for i in range(per_block * graph.num_blocks)]
    for _ in range(size):  # each round replaces at least one unsatisfiable vertex or finishes
        vertices = np.array([v for c in chosen for v in c], dtype=np.int64)
        bad = None
        targets = []
        h_cache: dict[int, np.ndarray] = {}
        for slot, v in enumerate(vertices):
            r = slot_r[slot]
            if r not in h_cache:
                h_cache[r] = splice_hit_probabilities(graph, vertices, r, all_blocks)[r]
            reach = h_cache[r][v] > 0
            src = int(graph.blocks[v])
            # Non-trivial: besides the target, some other block is reachable in exactly r steps.
            valid = [b for b in all_blocks if b != src and reach[b]] if reach.sum() >= 2 else []
            if not valid:
                bad = slot
                break
            targets.append(int(rng.choice(valid)))
        if bad is None:
            return [
                Jumper(int(v), int(graph.blocks[v]), t, slot_r[i])
                for i, (v, t) in enumerate(zip(vertices, targets))
            ]
        b, i = divmod(bad, per_block)
        if not spare[b]:
            raise LeWMConfigError(
                "r_scales",
                r_scales,
                f"r={slot_r[bad]} cannot be met non-trivially by any vertex of block {b}",
            )
        chosen[b][i] = spare[b].pop(0)
    raise LeWMConfigError("r_scales", r_scales, "no satisfiable jumper set found")


def save_jumpers(jumpers: list[Jumper], path: str | Path) -> None:
    """Write jumpers as JSON."""
    Path(path).write_text(json.dumps([asdict(j) for j in jumpers], indent=1))


def load_jumpers(path: str | Path) -> list[Jumper]:
    """Read jumpers written by `save_jumpers`."""
    return [Jumper(**d) for d in json.loads(Path(path).read_text())]
