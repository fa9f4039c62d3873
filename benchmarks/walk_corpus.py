"""Benchmark the walk corpus: compiled walk generation against a pure-Python reference.

Builds the anchor corpus setting (`WalkCorpusConfig()`: n=500, K=4, w=64, 256-step walks). Each
of `--rounds` interleaved rounds (`_timing.interleave`: alternating order, after one untimed
warm-up call each, which also loads the compiled kernel) times `generate_walks` on `--walks`
walks and a one-walk-one-step-at-a-time pure-Python reference of the same process (uniform
out-edge steps from `random.Random`, jumper splices drawn from the same precomputed
`JumperPaths`, chained splices, a splice from t = 0) on `--reference_walks` walks; both outputs
are checked against every edge and rule. Then, interleaved the same way, the corpus is built
through `build_walk_corpus` into a fresh temporary cache (cache miss) and reloaded from the
first one (cache hit).

The clock is per-process CPU time by default (`--clock process`: the time of all this process's
threads, so the compiled kernel's threads count in full and other processes' load does not);
`--clock wall` times elapsed time. Rates and times are printed as min / median / max over the
rounds, ratios as the median of the per-round ratios (with their min and max). The last line
printed is `speedup: X.X` (compiled walks/s over reference walks/s, the median over rounds).

    .venv/bin/python benchmarks/walk_corpus.py [--walks 200000] [--reference_walks 5000]
        [--rounds 5] [--clock process]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import CLOCKS, MIN_ROUNDS, Timings, interleave, ratio_line
from datasets import disable_progress_bars

from lewm_hf.data.graphs import Graph, Jumper
from lewm_hf.data.walks import (
    JumperPaths,
    WalkCorpusConfig,
    build_graph_and_jumpers,
    build_walk_corpus,
    generate_walks,
    sample_jumper_paths,
)
from lewm_hf.determinism import derive_seed


def reference_walks(
    graph: Graph, paths: JumperPaths, num_walks: int, walk_length: int, seed: int
) -> np.ndarray:
    """The walk process one walk and one step at a time, in plain Python.

    Args:
        graph (`Graph`): The graph.
        paths (`JumperPaths`): The precomputed splice paths (shared with the compiled run).
        num_walks (`int`): Number of walks.
        walk_length (`int`): Vertices per walk.
        seed (`int`): Seed of the `random.Random` generator.

    Returns:
        `np.ndarray`: `(num_walks, walk_length)` walks.
    """
    rng = random.Random(seed)
    n = graph.num_vertices
    neighbors = [graph.neighbors(v).tolist() for v in range(n)]
    jumper_of = paths.jumper_index.tolist()
    splice_paths = paths.paths.tolist()
    path_r = paths.path_r.tolist()
    pool = paths.pool
    walks = []
    for _ in range(num_walks):
        cur = rng.randrange(n)
        walk = [cur]
        path, off, r = None, 0, 0
        j = jumper_of[cur]
        if j >= 0:  # a walk that starts on a jumper is spliced from t = 0
            k = j * pool + rng.randrange(pool)
            path, off, r = splice_paths[k], 0, path_r[k]
        for _t in range(1, walk_length):
            if path is not None:
                off += 1
                cur = path[off]
                if off >= r:
                    path = None
            else:
                nb = neighbors[cur]
                cur = nb[int(rng.random() * len(nb))]
            walk.append(cur)
            if path is None:
                j = jumper_of[cur]
                if j >= 0:  # also when a splice just ended on a jumper (a chained splice)
                    k = j * pool + rng.randrange(pool)
                    path, off, r = splice_paths[k], 0, path_r[k]
        walks.append(walk)
    return np.asarray(walks, dtype=np.int32)


def check_walks(graph: Graph, jumpers: list[Jumper], walks: np.ndarray, name: str) -> int:
    """Assert every step is an edge and every rule holds; return the number of rule checks."""
    bad_edges = int((~graph.has_edges(walks[:, :-1], walks[:, 1:])).sum())
    if bad_edges:
        raise AssertionError(f"{name}: {bad_edges} steps are not edges")
    size = graph.num_vertices // graph.num_blocks
    length = walks.shape[1]
    checks = 0
    for j in jumpers:
        w_idx, t_idx = np.nonzero(walks[:, : max(length - j.r, 0)] == j.vertex)
        broken = int((walks[w_idx, t_idx + j.r] // size != j.target_block).sum())
        if broken:
            raise AssertionError(f"{name}: {broken} visits break the rule of {j}")
        checks += t_idx.size
    return checks


def spliced_fraction(jumpers: list[Jumper], walks: np.ndarray) -> float:
    """Fraction of steps taken inside a splice (a statistic both generators should share)."""
    r_of = np.zeros(int(walks.max()) + 1, dtype=np.int64)
    for j in jumpers:
        r_of[j.vertex] = j.r
    spliced = 0
    for walk in walks.tolist():
        end = 0
        for t, v in enumerate(walk):
            if t >= end and r_of[v]:
                end = t + int(r_of[v])
                spliced += min(end, len(walk) - 1) - t
    return spliced / (walks.shape[0] * (walks.shape[1] - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--walks", type=int, default=200000, help="walks for the compiled run")
    parser.add_argument("--reference_walks", type=int, default=5000, help="walks for the reference")
    parser.add_argument(
        "--rounds", type=int, default=MIN_ROUNDS, help="interleaved rounds (at least 5)"
    )
    parser.add_argument(
        "--clock",
        default="process",
        choices=sorted(CLOCKS),
        help="process: CPU time of this process (all its threads); wall: elapsed time",
    )
    parser.add_argument(
        "--cache_dir",
        default=None,
        help="where to make the temporary corpus caches (removed afterwards); system temp if unset",
    )
    args = parser.parse_args()
    disable_progress_bars()

    config = dataclasses.replace(WalkCorpusConfig(), corpus_size=args.walks)
    print(
        f"config: n={config.num_vertices} K={config.num_blocks} w={config.context_window} "
        f"walk_length={config.walk_length} walks={args.walks} "
        f"reference_walks={args.reference_walks}"
    )
    start = time.perf_counter()
    graph, jumpers = build_graph_and_jumpers(config)
    paths = sample_jumper_paths(
        graph, jumpers, config.paths_per_jumper, seed=derive_seed(config.seed, "paths")
    )
    print(
        f"graph + jumpers + splice paths: {time.perf_counter() - start:.2f} s "
        f"({graph.num_edges} edges, {len(jumpers)} jumpers, r={sorted({j.r for j in jumpers})})"
    )

    out: dict[str, np.ndarray] = {}

    def compiled() -> None:
        out.pop("compiled", None)  # free the previous run's walks first
        out["compiled"] = generate_walks(
            graph, jumpers, args.walks, config.walk_length,
            seed=derive_seed(config.seed, "train"), paths=paths,
        )  # fmt: skip

    def reference() -> None:
        out["reference"] = reference_walks(
            graph, paths, args.reference_walks, config.walk_length, seed=1
        )

    # The warm-up call loads the compiled kernel (JIT cache) before the timed rounds.
    stats = interleave({"compiled": compiled, "reference": reference}, args.rounds, args.clock)
    fast, ref = out["compiled"], out["reference"]
    fast_checks = check_walks(graph, jumpers, fast, "compiled")
    ref_checks = check_walks(graph, jumpers, ref, "reference")
    # Seconds per walk, so that the per-round ratio is the ratio of the walks/s rates.
    per_walk = {
        "compiled": Timings(
            "compiled generate_walks", [s / args.walks for s in stats["compiled"].seconds],
            args.clock,
        ),
        "reference": Timings(
            "pure-Python reference", [s / args.reference_walks for s in stats["reference"].seconds],
            args.clock,
        ),
    }  # fmt: skip
    for timings in per_walk.values():
        rates = sorted(1.0 / s for s in timings.seconds)
        print(
            f"{timings.summary('us per walk', 1e6)}; {1.0 / timings.median:,.0f} walks/s "
            f"(min {rates[0]:,.0f}, max {rates[-1]:,.0f})"
        )
    sub = fast[: args.reference_walks]
    print(
        f"every edge and rule obeyed (rule checks: compiled {fast_checks}, "
        f"reference {ref_checks}); spliced-step fraction: compiled "
        f"{spliced_fraction(jumpers, sub):.3f}, reference {spliced_fraction(jumpers, ref):.3f}"
    )

    root = Path(tempfile.mkdtemp(prefix="walk-corpus-bench-", dir=args.cache_dir))
    try:
        builds = iter(range(1 + args.rounds))
        rows: dict[str, int] = {}

        def build() -> None:  # a cache miss: a fresh cache root every call
            corpus = build_walk_corpus(config, root / f"build-{next(builds)}")
            rows.update({name: len(split) for name, split in corpus.items()})

        def reload() -> None:  # a cache hit: the corpus built by the first call
            build_walk_corpus(config, root / "build-0")

        corpus_stats = interleave({"build": build, "reload": reload}, args.rounds, args.clock)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{corpus_stats['build'].summary()}; rows {rows}")
    print(corpus_stats["reload"].summary())
    print(ratio_line("build / reload", corpus_stats["build"], corpus_stats["reload"]))
    print(ratio_line("speedup (per round)", per_walk["reference"], per_walk["compiled"]))
    ratios = [r / c for r, c in zip(per_walk["reference"].seconds, per_walk["compiled"].seconds)]
    print(f"speedup: {statistics.median(ratios):.1f}")


if __name__ == "__main__":
    main()
