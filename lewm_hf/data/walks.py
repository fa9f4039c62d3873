"""Random walks with jumper rules, the walk LM corpus and move trajectories.

Walks take uniform random out-edges, except that on visiting a jumper the next `r` steps follow a
precomputed random `r`-step path that ends in the jumper's target block. The paths are drawn from
the uniform random walk conditioned on reaching the target block in exactly `r` steps with
interior vertices that are not jumpers (a Doob h-transform), so a splice never hides another
rule; a path that ends on a jumper starts that jumper's splice. Every corpus walk therefore obeys
every rule. Generation runs in a compiled (numba) kernel over chunks of walks.

Tokens are vertex ids: the vocabulary is `num_vertices` and no special tokens are used (every LM
row and every state window is full length).
"""

from __future__ import annotations

import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict

from .. import metric_keys as K
from ..determinism import derive_seed
from ..errors import LeWMConfigError, LeWMGraphError, LeWMInputError
from ..fields import AllClips, is_int_in
from ..progress import progress
from . import corpus as corpus_cache
from .graphs import (
    Graph,
    Jumper,
    load_jumpers,
    make_dcsbm_graph,
    make_jumpers,
    save_jumpers,
    splice_hit_probabilities,
)

DEFAULT_PATHS_PER_JUMPER = 256
# Walks per kernel call; each chunk has its own seed derived from the walks' seed, so the
# output does not depend on anything but the arguments.
WALK_CHUNK = 4096


@dataclass
class JumperPaths:
    """Precomputed splice paths for every jumper.

    Args:
        paths (`np.ndarray`): `(num_jumpers * pool, max_r + 1)` int32 paths, column 0 the jumper;
            columns past a path's `r` are padding.
        path_r (`np.ndarray`): `r` of each row.
        pool (`int`): Paths per jumper; jumper `j`'s rows are `j * pool ... (j + 1) * pool - 1`.
        jumper_index (`np.ndarray`): `(num_vertices,)` jumper index of each vertex, -1 if none.
    """

    paths: np.ndarray
    path_r: np.ndarray
    pool: int
    jumper_index: np.ndarray


def sample_jumper_paths(
    graph: Graph, jumpers: list[Jumper], pool: int = DEFAULT_PATHS_PER_JUMPER, seed: int = 0
) -> JumperPaths:
    """Draw `pool` conditioned splice paths per jumper (vectorised over the pool).

    Args:
        graph (`Graph`): The graph.
        jumpers (`list[Jumper]`): The rules.
        pool (`int`, defaults to 256): Paths per jumper.
        seed (`int`, defaults to 0): Random seed.

    Returns:
        `JumperPaths`: The paths.
    """
    n = graph.num_vertices
    jumper_index = np.full(n, -1, dtype=np.int64)
    for i, j in enumerate(jumpers):
        jumper_index[j.vertex] = i
    if not jumpers:
        return JumperPaths(np.zeros((0, 1), np.int32), np.zeros(0, np.int64), pool, jumper_index)
    rng = np.random.default_rng(seed)
    vertices = np.array([j.vertex for j in jumpers], dtype=np.int64)
    allowed = np.ones(n, dtype=np.float64)
    allowed[vertices] = 0.0
    max_r = max(j.r for j in jumpers)
    paths = np.zeros((len(jumpers) * pool, max_r + 1), dtype=np.int32)
    path_r = np.zeros(len(jumpers) * pool, dtype=np.int64)
    h_cache: dict[tuple[int, int], np.ndarray] = {}
    for i, jumper in enumerate(jumpers):
        key = (jumper.r, jumper.target_block)
        if key not in h_cache:
            h_cache[key] = splice_hit_probabilities(
                graph, vertices, jumper.r, np.array([jumper.target_block])
            )[:, :, 0]
        h = h_cache[key]
        rows = slice(i * pool, (i + 1) * pool)
        cur = np.full(pool, jumper.vertex, dtype=np.int64)
        paths[rows, 0] = cur
        path_r[rows] = jumper.r
        for step in range(1, jumper.r + 1):
            remaining = jumper.r - step
            weight = h[remaining] * (allowed if remaining > 0 else 1.0)
            edge_w = weight[graph.indices]
            cum = np.cumsum(edge_w)
            start = graph.indptr[cur]
            end = graph.indptr[cur + 1]
            base = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0)
            total = cum[end - 1] - base
            stuck = total <= 0
            if stuck.any():
                at = int(cur[stuck][0])
                raise LeWMGraphError(
                    f"jumper rule {jumper} has zero viable paths: from vertex {at} at step "
                    f"{step - 1} of {jumper.r}, no out-edge continues a path that reaches block "
                    f"{jumper.target_block} at step {jumper.r} through non-jumper vertices"
                )
            x = base + rng.random(pool) * total
            e = np.clip(np.searchsorted(cum, x, side="right"), start, end - 1)
            cur = graph.indices[e].astype(np.int64)
            paths[rows, step] = cur
        paths[rows, jumper.r + 1 :] = paths[rows, jumper.r : jumper.r + 1]
    return JumperPaths(paths, path_r, pool, jumper_index)


def generate_walks(
    graph: Graph,
    jumpers: list[Jumper],
    num_walks: int,
    walk_length: int,
    seed: int = 0,
    paths: JumperPaths | None = None,
) -> np.ndarray:
    """Generate random walks that obey every jumper rule.

    A compiled kernel (numba, releasing the GIL) runs the walks in chunks of `WALK_CHUNK` on a
    thread per core; each chunk's random stream is seeded from `seed`, so the output depends only on the arguments (not on the
    process or the machine). Per walk: a uniform start vertex; at every step a uniform
    out-edge, except during a splice, which follows its precomputed path; visiting a jumper
    outside a splice (including at t = 0 and at the end of a splice) starts that jumper's
    splice with a uniformly chosen path from its pool.

    Args:
        graph (`Graph`): The graph.
        jumpers (`list[Jumper]`): The rules.
        num_walks (`int`): Number of walks.
        walk_length (`int`): Vertices per walk.
        seed (`int`, defaults to 0): Random seed.
        paths (`JumperPaths`, *optional*): Precomputed splice paths; drawn from `seed` if None.

    Returns:
        `np.ndarray`: `(num_walks, walk_length)` int32 vertex ids.
    """
    if not isinstance(num_walks, int) or num_walks < 1:
        raise LeWMConfigError("num_walks", num_walks, "must be a positive integer")
    if not isinstance(walk_length, int) or walk_length < 1:
        raise LeWMConfigError("walk_length", walk_length, "must be a positive integer")
    if paths is None:
        paths = sample_jumper_paths(graph, jumpers, seed=derive_seed(seed, "paths"))
    walks = np.empty((num_walks, walk_length), dtype=np.int32)
    num_chunks = -(-num_walks // WALK_CHUNK)
    chunk_seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=num_chunks)
    indptr = graph.indptr.astype(np.int64)
    indices = graph.indices.astype(np.int32)
    jumper_index = paths.jumper_index.astype(np.int64)
    splice = np.ascontiguousarray(paths.paths, dtype=np.int32)
    path_r = paths.path_r.astype(np.int64)

    bar = progress(desc="walks", total=num_walks, unit="walk")

    def run(c: int) -> None:
        _walk_kernel(
            walks[c * WALK_CHUNK : (c + 1) * WALK_CHUNK],
            int(chunk_seeds[c]),
            indptr,
            indices,
            jumper_index,
            splice,
            path_r,
            paths.pool,
        )
        bar.update(min(WALK_CHUNK, num_walks - c * WALK_CHUNK))  # tqdm locks its counter

    workers = min(num_chunks, os.cpu_count() or 1)
    if workers > 1:  # the kernel releases the GIL; chunks are independent
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, range(num_chunks)))
    else:
        for c in range(num_chunks):
            run(c)
    bar.close()
    return walks


@numba.njit(cache=True, nogil=True)
def _walk_kernel(
    out, seed, indptr, indices, jumper_index, splice, path_r, pool
):  # pragma: no cover
    """Fill `out` (walks x steps) with walks; numba's generator is seeded with `seed`."""
    np.random.seed(seed)
    num_vertices = indptr.shape[0] - 1
    for n in range(out.shape[0]):
        cur = min(int(np.random.random() * num_vertices), num_vertices - 1)
        out[n, 0] = cur
        row = -1
        off = 0
        j = jumper_index[cur]
        if j >= 0:
            row = j * pool + min(int(np.random.random() * pool), pool - 1)
        for t in range(1, out.shape[1]):
            if row >= 0:
                off += 1
                cur = splice[row, off]
                if off >= path_r[row]:
                    row = -1
            else:
                start = indptr[cur]
                degree = indptr[cur + 1] - start
                cur = indices[start + min(int(np.random.random() * degree), degree - 1)]
            out[n, t] = cur
            if row < 0:
                j = jumper_index[cur]
                if j >= 0:
                    row = j * pool + min(int(np.random.random() * pool), pool - 1)
                    off = 0


WALK_PRESETS: dict[str, dict[str, Any]] = {
    "anchor": {},
    # Builds in about a second on 2 cores. p_in/p_out are raised so that the lowest-theta
    # vertex of a 25-vertex block still expects several out-edges (see docs/design.md,
    # section 3 (The data path)).
    "small": {
        "num_vertices": 100,
        "p_in": 0.5,
        "p_out": 0.06,
        "context_window": 16,
        "walk_length": 64,
        "corpus_size": 8000,
        "eval_size": 1000,
    },
}


@dataclass
class WalkCorpusConfig:
    """Everything that defines a walk corpus; every field is part of the cache key.

    Args:
        num_vertices (`int`, defaults to 500): Vertices (= vocabulary size).
        num_blocks (`int`, defaults to 4): Equal blocks.
        p_in (`float`, defaults to 0.25): Within-block edge base probability.
        p_out (`float`, defaults to 0.03): Across-block edge base probability.
        jumpers_per_block (`int`, defaults to 2): Jumper rules per block.
        r_scales (`list[float]`, defaults to `[0.5, 0.7, 0.9, 1.0]`): Rule delays as fractions of
            `context_window`, assigned round-robin.
        context_window (`int`, defaults to 64): The window `w` (LM rows have `w + 1` tokens).
        walk_length (`int`, defaults to 256): Vertices per walk; at least `2 * w`.
        corpus_size (`int`, defaults to 200000): Training walks.
        eval_size (`int`, defaults to 2000): Held-out walks (own seed).
        chunk_length (`int`, *optional*): Tokens per LM row, from 2 to `walk_length`; `w + 1`
            if None. A longer row shows a rule with its jumper in context wherever the jumper
            falls in it (a row of `w + 1` tokens shows a rule with `r` close to `w` only when
            its jumper opens the row).
        chunk_stride (`int`, *optional*): Stride between LM train rows in a walk; the row length
            if None (non-overlapping). A smaller stride shows rules with `r` close to `w` more
            often.
        paths_per_jumper (`int`, defaults to 256): Precomputed splice paths per jumper.
        seed (`int`, defaults to 0): Base seed; graph, jumpers, paths, train and eval walks use
            distinct seeds derived from it.
    """

    num_vertices: int = 500
    num_blocks: int = 4
    p_in: float = 0.25
    p_out: float = 0.03
    jumpers_per_block: int = 2
    r_scales: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.9, 1.0])
    context_window: int = 64
    walk_length: int = 256
    corpus_size: int = 200000
    eval_size: int = 2000
    chunk_length: int | None = None
    chunk_stride: int | None = None
    paths_per_jumper: int = DEFAULT_PATHS_PER_JUMPER
    seed: int = 0

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> WalkCorpusConfig:
        """A named preset (`"anchor"` or `"small"`) with optional field overrides."""
        if name not in WALK_PRESETS:
            raise LeWMConfigError("preset", name, f"must be one of {sorted(WALK_PRESETS)}")
        return cls(**{**WALK_PRESETS[name], **overrides})

    def __post_init__(self) -> None:
        self.r_scales = [float(s) for s in self.r_scales]
        for name in (
            "num_vertices",
            "num_blocks",
            "context_window",
            "walk_length",
            "corpus_size",
            "eval_size",
            "paths_per_jumper",
        ):
            value = getattr(self, name)
            if not is_int_in(value, 1):
                raise LeWMConfigError(name, value, "must be a positive integer")
        if self.num_vertices % self.num_blocks:
            raise LeWMConfigError(
                "num_blocks", self.num_blocks, f"must divide num_vertices={self.num_vertices}"
            )
        for name in ("p_in", "p_out"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise LeWMConfigError(name, value, "must be a probability in [0, 1]")
        if self.walk_length < 2 * self.context_window:
            raise LeWMConfigError(
                "walk_length",
                self.walk_length,
                f"must be at least 2 * context_window = {2 * self.context_window}",
            )
        if self.jumpers_per_block < 0:
            raise LeWMConfigError("jumpers_per_block", self.jumpers_per_block, "must be >= 0")
        for s in self.r_scales:
            if not 0.0 < s <= 1.0:
                raise LeWMConfigError("r_scales", self.r_scales, "scales must lie in (0, 1]")
        if self.chunk_length is not None and not is_int_in(self.chunk_length, 2, self.walk_length):
            raise LeWMConfigError(
                "chunk_length",
                self.chunk_length,
                f"must be an integer from 2 to walk_length={self.walk_length}",
            )
        if self.chunk_stride is not None and not is_int_in(self.chunk_stride, 1):
            raise LeWMConfigError("chunk_stride", self.chunk_stride, "must be a positive integer")

    @property
    def row_length(self) -> int:
        """Tokens per LM row: `chunk_length`, or `w + 1`."""
        return self.chunk_length if self.chunk_length is not None else self.context_window + 1

    @property
    def stride(self) -> int:
        """Offset between LM train rows: `chunk_stride`, or the row length."""
        return self.chunk_stride if self.chunk_stride is not None else self.row_length


def build_graph_and_jumpers(config: WalkCorpusConfig) -> tuple[Graph, list[Jumper]]:
    """The graph and jumper rules a walk corpus config defines."""
    graph = make_dcsbm_graph(
        config.num_vertices,
        config.num_blocks,
        config.p_in,
        config.p_out,
        seed=derive_seed(config.seed, "graph"),
    )
    jumpers = make_jumpers(
        graph,
        config.context_window,
        config.jumpers_per_block,
        tuple(config.r_scales),
        seed=derive_seed(config.seed, "jumpers"),
    )
    return graph, jumpers


def chunk_walks(walks: np.ndarray, length: int, stride: int) -> np.ndarray:
    """Cut every walk into rows of `length` tokens, `stride` apart (a partial tail is dropped).

    Args:
        walks (`np.ndarray`): `(num_walks, walk_length)` walks.
        length (`int`): Row length.
        stride (`int`): Offset between consecutive rows of one walk.

    Returns:
        `np.ndarray`: `(num_walks * rows_per_walk, length)` rows, walk-major.
    """
    starts = np.arange(0, walks.shape[1] - length + 1, stride)
    idx = starts[:, None] + np.arange(length)[None, :]
    return walks[:, idx].reshape(-1, length)


def fixed_length_dataset(columns: dict[str, np.ndarray]) -> Dataset:
    """A `Dataset` of fixed-length int32 sequence columns, built directly as Arrow arrays.

    (`Dataset.from_dict` converts row by row: 18 s for the anchor corpus, against 0.4 s here.)

    Args:
        columns (`dict[str, np.ndarray]`): Column name -> `(rows, length)` integer array.

    Returns:
        `Dataset`: Columns typed `List(Value("int32"), length=length)`.
    """
    arrays = {
        name: pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(values, dtype=np.int32).reshape(-1)), values.shape[1]
        )
        for name, values in columns.items()
    }
    return Dataset(pa.table(arrays))


def build_walk_corpus(
    config: WalkCorpusConfig | None = None, cache_dir: str | Path | None = None
) -> DatasetDict:
    """Build (or load from the cache) a tokenized walk LM corpus.

    Splits: `train` and `validation` hold LM rows (`input_ids`, `chunk_length` vertex tokens,
    `w + 1` by default; a causal LM is trained on input `[:-1]`, labels `[1:]`); train rows are
    `chunk_stride` apart, validation rows never overlap (whatever `chunk_stride` is);
    `validation_walks` holds the held-out walks whole (`walk`), used as generation prompts and
    for world-model clips. The graph
    (`graph.npz`) and jumpers (`jumpers.json`) are saved beside the data: see
    `load_walk_metadata`.

    Args:
        config (`WalkCorpusConfig`, *optional*): The corpus config; anchor defaults if None.
        cache_dir (`str` or `Path`, *optional*): Cache root (see `corpus.default_cache_dir`).

    Returns:
        `DatasetDict`: Memory-mapped splits.
    """
    config = config if config is not None else WalkCorpusConfig()
    folder = corpus_cache.cached_build(
        "walks", config, functools.partial(_write_walk_corpus, config), cache_dir
    )
    return corpus_cache.load_corpus(folder)


def _write_walk_corpus(config: WalkCorpusConfig, folder: Path) -> None:
    """Generate a walk corpus into `folder` (called by the cache inside a temporary folder)."""
    graph, jumpers = build_graph_and_jumpers(config)
    paths = sample_jumper_paths(
        graph, jumpers, config.paths_per_jumper, seed=derive_seed(config.seed, "paths")
    )
    train = generate_walks(
        graph, jumpers, config.corpus_size, config.walk_length,
        seed=derive_seed(config.seed, "train"), paths=paths,
    )  # fmt: skip
    held_out = generate_walks(
        graph, jumpers, config.eval_size, config.walk_length,
        seed=derive_seed(config.seed, "eval"), paths=paths,
    )  # fmt: skip
    length = config.row_length
    dsd = DatasetDict(
        {
            "train": fixed_length_dataset({"input_ids": chunk_walks(train, length, config.stride)}),
            "validation": fixed_length_dataset(
                {"input_ids": chunk_walks(held_out, length, length)}
            ),
            "validation_walks": fixed_length_dataset({"walk": held_out}),
        }
    )
    dsd.save_to_disk(str(folder / corpus_cache.DATA_SUBDIR))
    graph.save(folder / K.GRAPH_FILE)
    save_jumpers(jumpers, folder / K.JUMPERS_FILE)


@dataclass
class WalkMetadata:
    """What a walk corpus folder holds beside its data."""

    graph: Graph
    jumpers: list[Jumper]
    config: WalkCorpusConfig
    folder: Path


def load_walk_metadata(corpus: DatasetDict | str | Path) -> WalkMetadata:
    """Load the graph, jumpers and config saved with a walk corpus.

    Args:
        corpus (`DatasetDict` or `str` or `Path`): A corpus from `build_walk_corpus`, or its folder.

    Returns:
        `WalkMetadata`: The graph, jumpers, config and folder.
    """
    if isinstance(corpus, DatasetDict):
        folder = corpus_cache.corpus_folder(corpus)
    else:
        folder = Path(corpus)
    meta = json.loads((folder / K.CORPUS_META_FILE).read_text())
    cfg = meta["config"]
    if meta["kind"] == "moves":
        cfg = cfg["corpus"]
    return WalkMetadata(
        graph=Graph.load(folder / K.GRAPH_FILE),
        jumpers=load_jumpers(folder / K.JUMPERS_FILE),
        config=WalkCorpusConfig(**cfg),
        folder=folder,
    )


@dataclass
class MoveTrajectoryConfig:
    """Move trajectories (world-model clips) drawn on a walk corpus's graph.

    A clip has `history_length + 1` states and `history_length` actions: the state at step `t`
    is the window of the last `w` vertices ending at `t`; the action is the rank of the next
    vertex in the sorted out-neighbour list of the current vertex. A clip is stored as its
    `w + history_length` token span (`tokens`) and its actions (`actions`); the collator unfolds
    the span into windows.

    Args:
        corpus (`WalkCorpusConfig`): The walk corpus (graph, jumpers, `w`, walk length).
        history_length (`int`, defaults to 3): Actions per clip (H).
        num_clips (`int`, defaults to 20000): Training clips.
        eval_clips (`int`, defaults to 2000): Held-out clips (own seed).
        clips_per_walk (`int` or `"all"`, defaults to 4): Clips cut from each generated walk, at
            random start positions; `"all"` cuts every clip of the walk (`walk_length - w - H + 1`
            of them, each one step after the last), so each state window serves up to `H + 1`
            clips, as when training on every sub-trajectory of recorded episodes; a frozen
            encoder's feature cache then encodes about `H + 1` times fewer distinct states.
        trajectory_seed (`int`, defaults to 0): Seed for the trajectory walks (distinct from the
            corpus's `seed`, so clips are not the corpus's training walks).
    """

    corpus: WalkCorpusConfig = field(default_factory=WalkCorpusConfig)
    history_length: int = 3
    num_clips: int = 20000
    eval_clips: int = 2000
    clips_per_walk: int | AllClips = 4
    trajectory_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.corpus, dict):
            self.corpus = WalkCorpusConfig(**self.corpus)
        for name in ("history_length", "num_clips", "eval_clips"):
            value = getattr(self, name)
            if not is_int_in(value, 1):
                raise LeWMConfigError(name, value, "must be a positive integer")
        per_walk = self.clips_per_walk
        if per_walk != "all" and not is_int_in(per_walk, 1):
            raise LeWMConfigError("clips_per_walk", per_walk, 'must be a positive integer or "all"')
        w = self.corpus.context_window
        if w + self.history_length > self.corpus.walk_length:
            raise LeWMConfigError(
                "history_length",
                self.history_length,
                f"clips need w + H <= {self.corpus.walk_length}",
            )

    @property
    def clip_starts(self) -> int:
        """Start positions of a clip in one walk: `walk_length - w - H + 1`."""
        return self.corpus.walk_length - self.corpus.context_window - self.history_length + 1

    @property
    def clips_from_each_walk(self) -> int:
        """Clips cut from each walk: `clips_per_walk`, or every start position for `"all"`."""
        return self.clip_starts if self.clips_per_walk == "all" else self.clips_per_walk


def move_clips(
    graph: Graph,
    walks: np.ndarray,
    window: int,
    history: int,
    per_walk: int | AllClips,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut move clips from walks.

    Args:
        graph (`Graph`): The graph (for neighbour ranks).
        walks (`np.ndarray`): `(num_walks, walk_length)` walks.
        window (`int`): State window `w`.
        history (`int`): Actions per clip `H`.
        per_walk (`int` or `"all"`): Clips per walk, at random start positions; `"all"`: every
            start position, in order.
        seed (`int`): Random seed for the clip positions.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: spans `(N, w + H)` and actions `(N, H)`, int32, walk-major.
    """
    rng = np.random.default_rng(seed)
    num_walks, length = walks.shape
    starts = length - window - history + 1
    if per_walk == "all":
        first = np.broadcast_to(np.arange(starts), (num_walks, starts))
        per_walk = starts
    else:
        first = rng.integers(0, starts, size=(num_walks, per_walk))
    span_idx = first[..., None] + np.arange(window + history)
    spans = np.take_along_axis(walks[:, None, :].repeat(per_walk, 1), span_idx, axis=2)
    spans = spans.reshape(-1, window + history)
    src = spans[:, window - 1 : -1]
    dst = spans[:, window:]
    actions, found = graph.neighbor_rank(src, dst)
    if not found.all():
        row = int(np.flatnonzero(~found.all(axis=1))[0])
        raise LeWMInputError("walks", f"clip {row}", "contains a move that is not a graph edge")
    return spans.astype(np.int32), actions.astype(np.int32)


def build_move_trajectories(
    config: MoveTrajectoryConfig | None = None, cache_dir: str | Path | None = None
) -> DatasetDict:
    """Build (or load from the cache) move-trajectory clips for the world model.

    Walks are drawn on the walk corpus's graph with the same jumper rules, from seeds derived
    from `config.trajectory_seed` (so clips are not the corpus's training walks). Splits `train`
    and `validation` with columns `tokens` (`w + H`) and `actions` (`H`).

    Args:
        config (`MoveTrajectoryConfig`, *optional*): Defaults if None.
        cache_dir (`str` or `Path`, *optional*): Cache root.

    Returns:
        `DatasetDict`: Memory-mapped splits.
    """
    config = config if config is not None else MoveTrajectoryConfig()
    walk_cfg = config.corpus

    def build(folder: Path) -> None:
        meta = load_walk_metadata(build_walk_corpus(walk_cfg, cache_dir))
        paths = sample_jumper_paths(
            meta.graph, meta.jumpers, walk_cfg.paths_per_jumper,
            seed=derive_seed(walk_cfg.seed, "paths"),
        )  # fmt: skip
        w, h = walk_cfg.context_window, config.history_length
        splits = {}
        for split, n_clips in (("train", config.num_clips), ("validation", config.eval_clips)):
            n_walks = -(-n_clips // config.clips_from_each_walk)
            walks = generate_walks(
                meta.graph, meta.jumpers, n_walks, walk_cfg.walk_length,
                seed=derive_seed(config.trajectory_seed, f"moves-{split}"), paths=paths,
            )  # fmt: skip
            spans, actions = move_clips(
                meta.graph, walks, w, h, config.clips_per_walk,
                seed=derive_seed(config.trajectory_seed, f"clips-{split}"),
            )  # fmt: skip
            splits[split] = fixed_length_dataset(
                {"tokens": spans[:n_clips], "actions": actions[:n_clips]}
            )
        DatasetDict(splits).save_to_disk(str(folder / corpus_cache.DATA_SUBDIR))
        meta.graph.save(folder / K.GRAPH_FILE)
        save_jumpers(meta.jumpers, folder / K.JUMPERS_FILE)

    folder = corpus_cache.cached_build("moves", config, build, cache_dir)
    return corpus_cache.load_corpus(folder)


__all__ = [
    "JumperPaths",
    "MoveTrajectoryConfig",
    "WalkCorpusConfig",
    "WalkMetadata",
    "build_move_trajectories",
    "build_walk_corpus",
    "chunk_walks",
    "generate_walks",
    "load_walk_metadata",
    "move_clips",
    "sample_jumper_paths",
]
