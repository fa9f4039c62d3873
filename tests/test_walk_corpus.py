"""The walk corpus: graph, jumper rules, walk process, LM rows, move clips and the cache.

Every property is recomputed here from the raw arrays (dense boolean matrices, explicit scans of
the walks) rather than read back from the generator, so a wrong process fails a test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.stats import chi2

import lewm_hf.data.walks as walks_mod
from lewm_hf import metric_keys as K
from lewm_hf.data import corpus as corpus_cache
from lewm_hf.data.graphs import Graph, Jumper, make_dcsbm_graph, make_jumpers
from lewm_hf.data.walks import (
    MoveTrajectoryConfig,
    WalkCorpusConfig,
    build_graph_and_jumpers,
    build_move_trajectories,
    build_walk_corpus,
    generate_walks,
    load_walk_metadata,
    move_clips,
    sample_jumper_paths,
)
from lewm_hf.determinism import derive_seed
from lewm_hf.errors import LeWMConfigError, LeWMGraphError, LeWMInputError

REPO = Path(__file__).resolve().parents[1]
CORPUS_SIZE = 300
EVAL_SIZE = 60


def small_config(**overrides) -> WalkCorpusConfig:
    return WalkCorpusConfig.preset(
        "small", **{"corpus_size": CORPUS_SIZE, "eval_size": EVAL_SIZE, **overrides}
    )


# A graph where splice paths often end on a jumper, so chained splices are common.
NESTED_JUMPERS_PER_BLOCK = 10


@pytest.fixture(scope="module")
def small():
    config = small_config()
    graph, jumpers = build_graph_and_jumpers(config)
    return config, graph, jumpers


@pytest.fixture(scope="module")
def nested():
    config = small_config(jumpers_per_block=NESTED_JUMPERS_PER_BLOCK)
    graph, jumpers = build_graph_and_jumpers(config)
    return config, graph, jumpers


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    cache = tmp_path_factory.mktemp("small_cache")
    config = small_config()
    return config, cache, build_walk_corpus(config, cache)


class CallCounter:
    """Wraps `generate_walks`, counting calls (or raising when `forbid` is set)."""

    def __init__(self, forbid: bool = False):
        self.calls = 0
        self.forbid = forbid

    def __call__(self, *args, **kwargs):
        if self.forbid:
            raise AssertionError("generate_walks called on a cache hit")
        self.calls += 1
        return generate_walks(*args, **kwargs)


def as_array(dataset, column: str) -> np.ndarray:
    return np.asarray(dataset.with_format("numpy")[column])


def dense_adjacency(graph: Graph) -> np.ndarray:
    adj = np.zeros((graph.num_vertices, graph.num_vertices), dtype=bool)
    rows = np.repeat(np.arange(graph.num_vertices), np.diff(graph.indptr))
    adj[rows, graph.indices] = True
    return adj


def exact_reach_blocks(graph: Graph, jumpers: list[Jumper], vertex: int, r: int) -> set[int]:
    """Blocks reachable from `vertex` in exactly `r` steps with non-jumper interior vertices."""
    adj = dense_adjacency(graph).astype(np.int64)
    allowed = np.ones(graph.num_vertices, dtype=bool)
    allowed[[j.vertex for j in jumpers]] = False
    reach = adj[vertex] > 0  # after one step
    for _ in range(r - 1):
        reach = ((reach & allowed).astype(np.int64) @ adj) > 0
    return {int(b) for b in np.unique(graph.blocks[reach])}


def block_of(graph: Graph, v) -> np.ndarray:
    return np.asarray(v) // (graph.num_vertices // graph.num_blocks)


def assert_edges(graph: Graph, walks: np.ndarray) -> None:
    ok = graph.has_edges(walks[:, :-1], walks[:, 1:])
    assert ok.all(), f"{int((~ok).sum())} non-edges in the walks"


def assert_rules(graph: Graph, jumpers: list[Jumper], walks: np.ndarray) -> int:
    """Every jumper visit at t with t + r < length is in the target block at t + r."""
    length = walks.shape[1]
    checks = 0
    for j in jumpers:
        w_idx, t_idx = np.nonzero(walks[:, : max(length - j.r, 0)] == j.vertex)
        landed = block_of(graph, walks[w_idx, t_idx + j.r])
        assert (landed == j.target_block).all(), f"rule of {j} broken"
        checks += t_idx.size
    return checks


def scan_splices(jumpers: list[Jumper], walks: np.ndarray) -> tuple[int, int]:
    """Replay the splice schedule; count jumper visits that open a chained splice.

    Returns `(chained, interior)`: visits of a jumper exactly at the end of a running splice,
    and visits strictly inside a running splice (which must never happen).
    """
    r_of = {j.vertex: j.r for j in jumpers}
    chained = interior = 0
    for walk in walks.tolist():
        end = -1
        for t, v in enumerate(walk):
            if v in r_of:
                if t < end:
                    interior += 1
                    continue
                if t == end:
                    chained += 1
                end = t + r_of[v]
    return chained, interior


# ---------------------------------------------------------------------------------------------
# Graph


def test_graph_structure(small):
    config, graph, _ = small
    n, k = config.num_vertices, config.num_blocks
    size = n // k
    assert graph.num_vertices == n and graph.num_blocks == k
    np.testing.assert_array_equal(graph.blocks, np.arange(n) // size)
    np.testing.assert_allclose(graph.theta.reshape(k, size).sum(axis=1), size)
    # Zipf within each block: the sorted thetas are proportional to 1 / rank.
    for b in range(k):
        desc = np.sort(graph.theta[b * size : (b + 1) * size])[::-1]
        np.testing.assert_allclose(desc * np.arange(1, size + 1), desc[0])
    assert graph.indptr[0] == 0 and graph.indptr[-1] == graph.indices.size
    for v in range(n):
        row = graph.neighbors(v)
        assert row.size >= 1
        assert (np.diff(row) > 0).all(), f"row {v} not sorted"
        assert v not in row, f"self-loop at {v}"
    adj = dense_adjacency(graph)
    # Strongly connected: the transitive closure (by repeated squaring) is all True.
    reach = adj | np.eye(n, dtype=bool)
    for _ in range(int(np.ceil(np.log2(n))) + 1):
        reach = (reach.astype(np.int64) @ reach.astype(np.int64)) > 0
    assert reach.all()
    # Blocks are denser inside than across (p_in >> p_out).
    same = graph.blocks[:, None] == graph.blocks[None, :]
    assert adj[same].mean() > 3 * adj[~same].mean()


def test_graph_seed_retry_and_determinism():
    a = make_dcsbm_graph(100, 4, 0.5, 0.06, seed=3)
    b = make_dcsbm_graph(100, 4, 0.5, 0.06, seed=3)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.indptr, b.indptr)
    c = make_dcsbm_graph(100, 4, 0.5, 0.06, seed=a.seed + 1)
    assert c.seed != a.seed
    assert a.indices.size != c.indices.size or not np.array_equal(a.indices, c.indices)


def test_has_edges_and_neighbor_rank(small):
    _, graph, _ = small
    adj = dense_adjacency(graph)
    src, dst = np.meshgrid(np.arange(graph.num_vertices), np.arange(graph.num_vertices))
    np.testing.assert_array_equal(graph.has_edges(src, dst), adj[src, dst])
    rank, found = graph.neighbor_rank(src[adj[src, dst]], dst[adj[src, dst]])
    assert found.all()
    for s, d, k in zip(src[adj[src, dst]], dst[adj[src, dst]], rank):
        assert graph.neighbors(s)[k] == d


# ---------------------------------------------------------------------------------------------
# Jumpers


@pytest.mark.parametrize("which", ["small", "nested"])
def test_jumpers_are_valid_and_non_trivial(which, request):
    config, graph, jumpers = request.getfixturevalue(which)
    w = config.context_window
    assert len(jumpers) == config.jumpers_per_block * config.num_blocks
    assert len({j.vertex for j in jumpers}) == len(jumpers)
    expected_r = [round(s * w) for s in config.r_scales]
    for i, j in enumerate(jumpers):
        assert j.source_block == block_of(graph, j.vertex)
        assert j.target_block != j.source_block
        assert 0 <= j.target_block < config.num_blocks
        assert j.r == expected_r[i % len(expected_r)], "r values are not round-robin"
        blocks = exact_reach_blocks(graph, jumpers, j.vertex, j.r)
        assert j.target_block in blocks, f"{j}: target not reachable in exactly r steps"
        assert len(blocks - {j.target_block}) >= 1, f"{j}: trivial rule"
    # Per block, in block order.
    per = config.jumpers_per_block
    for b in range(config.num_blocks):
        assert {j.source_block for j in jumpers[b * per : (b + 1) * per]} == {b}


@pytest.mark.parametrize("which", ["small", "nested"])
def test_splice_paths(which, request):
    _, graph, jumpers = request.getfixturevalue(which)
    pool = 32
    paths = sample_jumper_paths(graph, jumpers, pool=pool, seed=5)
    is_jumper = np.zeros(graph.num_vertices, dtype=bool)
    is_jumper[[j.vertex for j in jumpers]] = True
    for i, j in enumerate(jumpers):
        assert paths.jumper_index[j.vertex] == i
        rows = paths.paths[i * pool : (i + 1) * pool]
        assert (paths.path_r[i * pool : (i + 1) * pool] == j.r).all()
        assert (rows[:, 0] == j.vertex).all()
        path = rows[:, : j.r + 1]
        assert_edges(graph, path)
        assert not is_jumper[path[:, 1:-1]].any(), f"{j}: jumper inside a splice path"
        assert (block_of(graph, path[:, -1]) == j.target_block).all()
        assert len({tuple(p) for p in path.tolist()}) > 1, "all splice paths identical"
    assert (paths.jumper_index[~is_jumper] == -1).all()


# ---------------------------------------------------------------------------------------------
# Walks


def test_walks_obey_edges_and_rules(small):
    config, graph, jumpers = small
    walks = generate_walks(graph, jumpers, 2000, config.walk_length, seed=11)
    assert walks.shape == (2000, config.walk_length) and walks.dtype == np.int32
    assert_edges(graph, walks)
    assert assert_rules(graph, jumpers, walks) > 1000
    chained, interior = scan_splices(jumpers, walks)
    assert interior == 0
    assert chained > 0
    # Walks that start on a jumper are spliced from t = 0.
    starts = np.isin(walks[:, 0], [j.vertex for j in jumpers])
    assert starts.any()


def test_nested_splices_chain_and_obey(nested):
    config, graph, jumpers = nested
    walks = generate_walks(graph, jumpers, 1000, config.walk_length, seed=12)
    assert_edges(graph, walks)
    checks = assert_rules(graph, jumpers, walks)
    chained, interior = scan_splices(jumpers, walks)
    assert interior == 0
    # Splice paths end on a jumper often here: chains must be common, and obeyed (above).
    assert chained > 0.1 * checks, (chained, checks)


def test_free_steps_are_uniform_over_out_edges(small):
    config, graph, jumpers = small
    walks = generate_walks(graph, jumpers, 3000, config.walk_length, seed=13)
    r_of = {j.vertex: j.r for j in jumpers}
    free = np.ones(walks.shape, dtype=bool)  # free[i, t]: step t -> t + 1 is a uniform step
    for i, walk in enumerate(walks.tolist()):
        end = -1
        for t, v in enumerate(walk):
            if t < end:
                free[i, t] = False
            elif v in r_of:
                free[i, t] = False
                end = t + r_of[v]
    src, dst = walks[:, :-1][free[:, :-1]], walks[:, 1:][free[:, :-1]]
    rank, found = graph.neighbor_rank(src, dst)
    assert found.all()
    deg = graph.out_degree
    counts = np.zeros((graph.num_vertices, deg.max()))
    np.add.at(counts, (src, rank), 1)
    visits = counts.sum(axis=1)
    stat, dof = 0.0, 0
    for v in np.flatnonzero(visits >= 5 * deg):
        expected = visits[v] / deg[v]
        stat += float(((counts[v, : deg[v]] - expected) ** 2 / expected).sum())
        dof += int(deg[v]) - 1
    assert dof > 200
    assert chi2.sf(stat, dof) > 1e-4, f"free steps not uniform: chi2={stat:.0f}, dof={dof}"


# ---------------------------------------------------------------------------------------------
# Corpus: LM rows, splits, metadata


def test_corpus_rows_and_splits(small_corpus):
    config, _, dsd = small_corpus
    w, length = config.context_window, config.walk_length
    assert set(dsd) == {"train", "validation", "validation_walks"}
    for split in dsd.values():
        assert split.cache_files, "split is not memory-mapped Arrow"
    rows_per_walk = (length - (w + 1)) // (w + 1) + 1
    train = as_array(dsd["train"], "input_ids")
    valid = as_array(dsd["validation"], "input_ids")
    held_out = as_array(dsd["validation_walks"], "walk")
    assert train.shape == (CORPUS_SIZE * rows_per_walk, w + 1)
    assert valid.shape == (EVAL_SIZE * rows_per_walk, w + 1)
    assert held_out.shape == (EVAL_SIZE, length)
    # Validation rows are consecutive non-overlapping slices of the held-out walks.
    expected = [
        walk[s * (w + 1) : (s + 1) * (w + 1)] for walk in held_out for s in range(rows_per_walk)
    ]
    np.testing.assert_array_equal(valid, np.stack(expected))
    meta = load_walk_metadata(dsd)
    assert_edges(meta.graph, train)
    assert_edges(meta.graph, held_out)
    assert_rules(meta.graph, meta.jumpers, held_out)
    assert int(train.max()) < config.num_vertices and int(train.min()) >= 0


def test_chunk_stride(tmp_path):
    config = small_config(chunk_stride=8)
    dsd = build_walk_corpus(config, tmp_path)
    w, length = config.context_window, config.walk_length
    rows_per_walk = (length - (w + 1)) // 8 + 1
    assert rows_per_walk == 6
    valid = as_array(dsd["validation"], "input_ids")
    held_out = as_array(dsd["validation_walks"], "walk")
    assert as_array(dsd["train"], "input_ids").shape == (CORPUS_SIZE * rows_per_walk, w + 1)
    # Validation rows never overlap, whatever the training stride.
    held_out_rows = length // (w + 1)
    expected = [
        walk[s * (w + 1) : (s + 1) * (w + 1)] for walk in held_out for s in range(held_out_rows)
    ]
    np.testing.assert_array_equal(valid, np.stack(expected))


def test_metadata_matches_config(small_corpus, small):
    config, _, dsd = small_corpus
    _, graph, jumpers = small
    meta = load_walk_metadata(dsd)
    assert meta.config == config
    assert meta.jumpers == jumpers
    for name in ("indptr", "indices", "blocks", "theta"):
        np.testing.assert_array_equal(getattr(meta.graph, name), getattr(graph, name))
    assert meta.graph.num_blocks == graph.num_blocks
    assert (meta.folder / corpus_cache.COMPLETE_MARKER).is_file()
    assert load_walk_metadata(meta.folder).jumpers == jumpers


# ---------------------------------------------------------------------------------------------
# Determinism and the cache

_BUILD_IN_SUBPROCESS = textwrap.dedent(
    """
    import sys
    from lewm_hf.data.walks import WalkCorpusConfig, build_walk_corpus
    config = WalkCorpusConfig.preset("small", corpus_size={corpus_size}, eval_size={eval_size})
    build_walk_corpus(config, sys.argv[1])
    """
)


def test_same_seed_same_corpus_across_processes(small_corpus, tmp_path):
    config, _, dsd = small_corpus
    script = _BUILD_IN_SUBPROCESS.format(corpus_size=CORPUS_SIZE, eval_size=EVAL_SIZE)
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env, cwd=REPO)
    other_folder = tmp_path / load_walk_metadata(dsd).folder.name
    assert (other_folder / corpus_cache.COMPLETE_MARKER).is_file()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(walks_mod, "generate_walks", CallCounter(forbid=True))
        other = build_walk_corpus(config, tmp_path)  # loads what the subprocess wrote
    for split, column in (("train", "input_ids"), ("validation_walks", "walk")):
        np.testing.assert_array_equal(as_array(dsd[split], column), as_array(other[split], column))
    a, b = load_walk_metadata(dsd), load_walk_metadata(other)
    assert a.jumpers == b.jumpers
    np.testing.assert_array_equal(a.graph.indices, b.graph.indices)


def test_different_seed_differs(small_corpus, tmp_path):
    _, _, dsd = small_corpus
    other = build_walk_corpus(small_config(seed=1), tmp_path)
    assert not np.array_equal(
        as_array(dsd["train"], "input_ids"), as_array(other["train"], "input_ids")
    )
    assert derive_seed(0, "train") != derive_seed(1, "train")
    assert derive_seed(0, "train") != derive_seed(0, "eval")
    # Held-out rows are not training rows (distinct seeds; collisions of 17 tokens are rare).
    train_rows = {tuple(r) for r in as_array(dsd["train"], "input_ids").tolist()}
    valid_rows = [tuple(r) for r in as_array(dsd["validation"], "input_ids").tolist()]
    assert sum(r in train_rows for r in valid_rows) == 0


def test_cache_hit_skips_generator_and_config_change_misses(tmp_path, monkeypatch):
    config = small_config()
    counter = CallCounter()
    monkeypatch.setattr(walks_mod, "generate_walks", counter)
    first = build_walk_corpus(config, tmp_path)
    assert counter.calls == 2  # train + held-out
    folder = load_walk_metadata(first).folder
    monkeypatch.setattr(walks_mod, "generate_walks", CallCounter(forbid=True))
    again = build_walk_corpus(small_config(), tmp_path)
    assert load_walk_metadata(again).folder == folder
    np.testing.assert_array_equal(
        as_array(first["train"], "input_ids"), as_array(again["train"], "input_ids")
    )
    counter = CallCounter()
    monkeypatch.setattr(walks_mod, "generate_walks", counter)
    changed = build_walk_corpus(small_config(eval_size=EVAL_SIZE + 1), tmp_path)
    assert counter.calls == 2
    assert load_walk_metadata(changed).folder != folder
    assert len(changed["validation_walks"]) == EVAL_SIZE + 1
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("walks-")]) == 2


_KILLED_BUILD = textwrap.dedent(
    """
    import os, signal, sys
    import lewm_hf.data.walks as walks_mod
    from lewm_hf.data.walks import WalkCorpusConfig, build_walk_corpus

    def write_part_then_die(config, folder):
        graph, jumpers = walks_mod.build_graph_and_jumpers(config)
        walks = walks_mod.generate_walks(graph, jumpers, config.corpus_size, config.walk_length)
        rows = walks_mod.chunk_walks(walks, config.context_window + 1, config.stride)
        data = walks_mod.fixed_length_dataset(dict(input_ids=rows))
        data.save_to_disk(str(folder / "data" / "train"))
        (folder / "COMPLETE").write_text("not really")  # even a marker in the temp is ignored
        os.kill(os.getpid(), signal.SIGKILL)

    walks_mod._write_walk_corpus = write_part_then_die
    config = WalkCorpusConfig.preset("small", corpus_size={corpus_size}, eval_size={eval_size})
    build_walk_corpus(config, sys.argv[1])
    """
)


def test_killed_build_is_ignored_and_rebuilt(tmp_path, monkeypatch):
    script = _KILLED_BUILD.format(corpus_size=CORPUS_SIZE, eval_size=EVAL_SIZE)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO)
    assert proc.returncode == -signal.SIGKILL
    leftovers = list(tmp_path.iterdir())
    assert leftovers and all(p.name.startswith(".tmp-walks-") for p in leftovers), leftovers
    assert any((p / "data" / "train").is_dir() for p in leftovers)

    counter = CallCounter()
    monkeypatch.setattr(walks_mod, "generate_walks", counter)
    dsd = build_walk_corpus(small_config(), tmp_path)
    assert counter.calls == 2, "a killed build was taken as a cache hit"
    assert set(dsd) == {"train", "validation", "validation_walks"}
    assert len(dsd["validation_walks"]) == EVAL_SIZE
    folder = load_walk_metadata(dsd).folder
    assert (folder / corpus_cache.COMPLETE_MARKER).is_file()
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir()), "stale temp kept"
    meta = json.loads((folder / K.CORPUS_META_FILE).read_text())
    assert meta["config"]["corpus_size"] == CORPUS_SIZE


def test_final_folder_without_marker_is_rebuilt(tmp_path, monkeypatch):
    config = small_config()
    key = corpus_cache.config_fingerprint("walks", config)
    final = tmp_path / f"walks-{key}"
    (final / corpus_cache.DATA_SUBDIR).mkdir(parents=True)
    (final / corpus_cache.DATA_SUBDIR / "dataset_dict.json").write_text('{"splits": ["train"]}')
    (final / K.JUMPERS_FILE).write_text("[]")
    counter = CallCounter()
    monkeypatch.setattr(walks_mod, "generate_walks", counter)
    dsd = build_walk_corpus(config, tmp_path)
    assert counter.calls == 2, "a folder without the COMPLETE marker was trusted"
    assert load_walk_metadata(dsd).folder == final
    assert (final / corpus_cache.COMPLETE_MARKER).read_text() == key
    assert set(dsd) == {"train", "validation", "validation_walks"}
    assert load_walk_metadata(dsd).jumpers


# ---------------------------------------------------------------------------------------------
# Move trajectories


def test_move_trajectories(tmp_path, monkeypatch):
    corpus = small_config()
    config = MoveTrajectoryConfig(corpus=corpus, history_length=3, num_clips=210, eval_clips=50)
    dsd = build_move_trajectories(config, tmp_path)
    w, h = corpus.context_window, config.history_length
    meta = load_walk_metadata(dsd)
    assert meta.config == corpus
    tokens = as_array(dsd["train"], "tokens")
    actions = as_array(dsd["train"], "actions")
    assert tokens.shape == (210, w + h) and actions.shape == (210, h)
    assert as_array(dsd["validation"], "tokens").shape == (50, w + h)
    for split in dsd.values():
        assert split.cache_files
    for span, acts in zip(tokens, actions):
        for k in range(h):
            neighbors = meta.graph.neighbors(int(span[w - 1 + k]))
            assert 0 <= acts[k] < neighbors.size
            assert neighbors[acts[k]] == span[w + k]
    assert_edges(meta.graph, tokens)
    # Clips are not the corpus's training walks, and differ across clips.
    assert len({tuple(t) for t in tokens.tolist()}) > 200
    # Cached like the corpus: a second call loads without generating, a change rebuilds.
    monkeypatch.setattr(walks_mod, "generate_walks", CallCounter(forbid=True))
    again = build_move_trajectories(
        MoveTrajectoryConfig(corpus=small_config(), history_length=3, num_clips=210, eval_clips=50),
        tmp_path,
    )
    assert load_walk_metadata(again).folder == meta.folder
    np.testing.assert_array_equal(as_array(again["train"], "actions"), actions)
    counter = CallCounter()
    monkeypatch.setattr(walks_mod, "generate_walks", counter)
    changed = build_move_trajectories(
        MoveTrajectoryConfig(corpus=corpus, history_length=2, num_clips=210, eval_clips=50),
        tmp_path,
    )
    assert counter.calls == 2  # train + validation clips; the walk corpus itself is cached
    assert load_walk_metadata(changed).folder != meta.folder


def test_all_clips_per_walk_cut_every_start_in_order(tmp_path):
    corpus = small_config()
    w, h = corpus.context_window, 3
    config = MoveTrajectoryConfig(
        corpus=corpus, history_length=h, num_clips=100, eval_clips=20, clips_per_walk="all"
    )
    starts = corpus.walk_length - w - h + 1
    assert config.clips_from_each_walk == starts == 46
    dsd = build_move_trajectories(config, tmp_path)
    tokens = as_array(dsd["train"], "tokens")
    assert tokens.shape == (100, w + h)
    # Consecutive clips of one walk are one step apart: clip i + 1 is clip i shifted by one.
    np.testing.assert_array_equal(tokens[1:starts, :-1], tokens[: starts - 1, 1:])
    # The next walk starts at clip `starts` (another walk, not a continuation).
    assert not np.array_equal(tokens[starts, :-1], tokens[starts - 1, 1:])
    # Each window serves up to H + 1 clips: the train split holds few distinct windows.
    windows = {tuple(t[k : k + w]) for t in tokens.tolist() for k in range(h + 1)}
    assert len(windows) == 2 * (starts + h) + (100 - 2 * starts) + h
    random_clips = MoveTrajectoryConfig(corpus=corpus, history_length=h, num_clips=100)
    assert random_clips.clips_from_each_walk == 4


@pytest.mark.parametrize("value", [0, -1, "some", True, 2.5])
def test_bad_clips_per_walk_names_the_field(value):
    with pytest.raises(LeWMConfigError, match=r"^clips_per_walk=") as info:
        MoveTrajectoryConfig(corpus=small_config(), clips_per_walk=value)
    assert info.value.field == "clips_per_walk"


def test_chunk_length_rows_cover_the_walk(tmp_path):
    config = small_config(chunk_length=64, chunk_stride=16)
    assert config.row_length == 64 and config.walk_length == 64
    dsd = build_walk_corpus(config, tmp_path)
    train = as_array(dsd["train"], "input_ids")
    valid = as_array(dsd["validation"], "input_ids")
    held_out = as_array(dsd["validation_walks"], "walk")
    assert train.shape == (CORPUS_SIZE, 64)  # one row per walk: a stride of 16 fits no second
    np.testing.assert_array_equal(valid, held_out)  # validation rows never overlap
    # The default stride is the row length.
    shorter = small_config(chunk_length=32)
    assert shorter.stride == 32
    assert as_array(build_walk_corpus(shorter, tmp_path)["train"], "input_ids").shape == (
        CORPUS_SIZE * 2,
        32,
    )


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"num_blocks": 3}, "num_blocks"),
        ({"p_in": 1.5}, "p_in"),
        ({"p_out": -0.1}, "p_out"),
        ({"walk_length": 31}, "walk_length"),
        ({"corpus_size": 0}, "corpus_size"),
        ({"eval_size": -1}, "eval_size"),
        ({"num_vertices": 0}, "num_vertices"),
        ({"context_window": 0}, "context_window"),
        ({"paths_per_jumper": 0}, "paths_per_jumper"),
        ({"jumpers_per_block": -1}, "jumpers_per_block"),
        ({"r_scales": [0.5, 1.5]}, "r_scales"),
        ({"chunk_stride": 0}, "chunk_stride"),
        ({"chunk_length": 1}, "chunk_length"),
        ({"chunk_length": 65}, "chunk_length"),
        ({"chunk_length": True}, "chunk_length"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(LeWMConfigError, match=f"^{field}=") as info:
        small_config(**overrides)
    assert info.value.field == field


def test_unknown_preset():
    with pytest.raises(LeWMConfigError, match=r"^preset="):
        WalkCorpusConfig.preset("huge")


def test_bad_graph_arguments():
    with pytest.raises(LeWMConfigError, match=r"^num_blocks="):
        make_dcsbm_graph(100, 3)
    with pytest.raises(LeWMConfigError, match=r"^p_in="):
        make_dcsbm_graph(100, 4, p_in=2.0)
    with pytest.raises(LeWMGraphError, match="in 10 attempts"):
        make_dcsbm_graph(40, 4, p_in=0.0, p_out=0.0)
    # No edges across blocks: every vertex may have out-edges, but the graph is never strongly
    # connected, which must be rejected too.
    with pytest.raises(LeWMGraphError, match="2 strongly connected components"):
        make_dcsbm_graph(20, 2, p_in=1.0, p_out=0.0)


def two_block_graph() -> Graph:
    """Block 0 = {0..3} (a 4-cycle), block 1 = {4..7}; all edges across the blocks.

    From block 1 one step reaches only block 0 (every r = 1 rule is trivial there); two steps
    reach both blocks. From block 0 one step reaches both blocks.
    """
    adj = np.zeros((8, 8), dtype=bool)
    adj[:4, 4:] = True
    adj[4:, :4] = True
    for v in range(4):
        adj[v, (v + 1) % 4] = True
    mat = csr_matrix(adj)
    mat.sort_indices()
    return Graph(
        indptr=mat.indptr.astype(np.int64),
        indices=mat.indices.astype(np.int32),
        blocks=np.arange(8, dtype=np.int32) // 4,
        theta=np.ones(8),
        num_blocks=2,
        seed=0,
    )


def test_unmeetable_r_raises():
    graph = two_block_graph()
    assert exact_reach_blocks(graph, [], 5, 1) == {0}
    with pytest.raises(LeWMConfigError, match=r"^r_scales=.*r=1 cannot be met.*block 1"):
        make_jumpers(graph, context_window=2, per_block=1, r_scales=(0.5,))
    jumpers = make_jumpers(graph, context_window=2, per_block=1, r_scales=(1.0,))
    assert [j.r for j in jumpers] == [2, 2]
    assert all(j.target_block != j.source_block for j in jumpers)
    walks = generate_walks(graph, jumpers, 200, 16, seed=1)
    assert_edges(graph, walks)
    assert assert_rules(graph, jumpers, walks) > 0


def test_bad_jumper_arguments(small):
    _, graph, _ = small
    with pytest.raises(LeWMConfigError, match=r"^jumpers_per_block="):
        make_jumpers(graph, per_block=25)
    with pytest.raises(LeWMConfigError, match=r"^context_window="):
        make_jumpers(graph, context_window=0)
    with pytest.raises(LeWMConfigError, match=r"^r_scales="):
        make_jumpers(graph, context_window=4, r_scales=(0.1,))
    with pytest.raises(LeWMConfigError, match=r"^num_walks="):
        generate_walks(graph, [], 0, 10)
    with pytest.raises(LeWMConfigError, match=r"^walk_length="):
        generate_walks(graph, [], 10, 0)


def test_unsatisfiable_jumper_rule_is_a_typed_error():
    # Blocks {0, 1} and {2, 3}; from vertex 0 the only edge stays in block 0, so "be in block 1
    # one step after visiting 0" has no viable path (the old sampler silently picked an edge).
    indptr = np.array([0, 1, 3, 4, 6])
    indices = np.array([1, 0, 2, 3, 0, 2], dtype=np.int32)
    graph = Graph(indptr, indices, np.array([0, 0, 1, 1], np.int32), np.ones(4), 2, 0)
    rule = Jumper(vertex=0, source_block=0, target_block=1, r=1)
    with pytest.raises(LeWMGraphError, match=r"vertex=0.*target_block=1.*r=1.*zero viable paths"):
        sample_jumper_paths(graph, [rule], pool=8)
    # The same rule with r = 2 can be met (0 -> 1 -> 2): paths are drawn and all obey it.
    ok = Jumper(vertex=0, source_block=0, target_block=1, r=2)
    paths = sample_jumper_paths(graph, [ok], pool=8)
    assert (paths.paths[:, 2] == 2).all()


def test_clips_with_a_non_edge_are_a_typed_error(small):
    _, graph, _ = small
    walks = np.zeros((1, 40), dtype=np.int64)  # vertex 0 -> 0 is no edge (no self-loops)
    with pytest.raises(LeWMInputError, match=r"walks.*not a graph edge"):
        move_clips(graph, walks, window=8, history=3, per_walk=1, seed=0)
