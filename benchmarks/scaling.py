"""How time and peak memory grow with the data: the DNA recipe's stages at 1x, 2x, 4x, 8x genome.

The DNA recipe (`recipes/configs/dna_lewm.yaml`: the encoder and the edit world model, with
their sizes, batches and corpus keys) on a synthetic genome of one record of `k x --base_bases`
bases, for each size factor `k`. Each size runs in its own process (fresh corpus cache, so its
peak resident memory is its own) through these stages, each timed on the wall clock:

- `corpus`: the encoder's window corpus and the edit corpus, built into the corpus cache;
- `lm_steps`: `--steps` training steps of the encoder LM;
- `cache`: the frozen-feature cache of the world model (`LeWMTrainer` construction);
- `wm_steps`: `--steps` training steps of the world model.

The evaluation is off (its size is the recipe's `eval_items`, not the genome's). Prints one
row per size (wall and CPU seconds per stage, peak RSS from `getrusage`), then the exponents of
a least-squares fit of `log(value)` on `log(k)`: the builds' time (`corpus + cache`, goal
<= 1.05: linear), the steps' time (goal ~0: a step does not depend on the data), and the
peak RSS (goal <= 0.1). The time exponents are fitted on CPU seconds (`time.process_time`),
which other jobs on a shared machine do not stretch as they stretch the wall clock (with one
thread, CPU seconds are the wall time of an idle machine); the wall-clock exponents are printed
above them. The last two lines are `time_exponent:` and `rss_exponent:`.

    OMP_NUM_THREADS=1 python benchmarks/scaling.py [--base_bases 100000] [--sizes 1 2 4 8]
        [--steps 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "dna_lewm.yaml"
STAGES = ("corpus", "lm_steps", "cache", "wm_steps")


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Clock:
    """Wall-clock and CPU seconds (`time.process_time`: every thread of this process) since
    construction."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def run_size(bases: int, steps: int, threads: int, folder: str) -> dict:
    """Run every stage on a genome of `bases` bases in this process; return times and RSS."""
    import torch
    from datasets import disable_progress_bars

    from lewm_hf.data.collators import DataCollatorForWalkLM
    from lewm_hf.data.dna import DNA_VOCAB_SIZE, build_dna_tokenizer
    from lewm_hf.tasks.dna_lm import build_dna_windows
    from lewm_hf.tasks.domains.edits import EDITS
    from lewm_hf.tasks.runner import validate_recipe
    from lewm_hf.tasks.walk_lm import build_walk_lm
    from lewm_hf.tasks.world_model import build_world_model
    from lewm_hf.trainer.lewm_trainer import CausalLMTrainer, LeWMTrainer

    torch.set_num_threads(threads)
    disable_progress_bars()
    overrides = [
        ("output_dir", folder),
        ("genome", None),
        ("synthetic_records", 1),
        ("synthetic_length", bases),
        ("corpus_cache_dir", os.path.join(folder, "cache")),
        ("max_steps", steps),
        ("logging_steps", steps),
        ("disable_tqdm", True),
        ("run_evaluation", False),
    ]
    encoder, world = validate_recipe(RECIPE, overrides)
    out: dict = {"bases": bases, "rss_mb": {}, "cpu": {}}
    clock = _Clock()
    windows = build_dna_windows(encoder.args.data, encoder.args.cache.corpus_cache_dir)
    data = EDITS.build_data(world.args.domain)
    out["corpus"], out["cpu"]["corpus"] = clock.lap()
    out["rss_mb"]["corpus"] = _rss_mb()
    out["lm_rows"], out["wm_rows"] = len(windows["train"]), len(data.train)

    model = build_walk_lm(
        encoder.args.model, DNA_VOCAB_SIZE, max_positions=encoder.args.data.window_length
    )
    trainer = CausalLMTrainer(
        model=model,
        args=encoder.args.training,
        data_collator=DataCollatorForWalkLM(),
        train_dataset=windows["train"],
        processing_class=build_dna_tokenizer(),
    )
    clock = _Clock()
    trainer.train()
    out["lm_steps"], out["cpu"]["lm_steps"] = clock.lap()
    out["rss_mb"]["lm_steps"] = _rss_mb()
    trainer.save_model()
    encoder_path = encoder.args.training.output_dir
    del trainer, model

    model = build_world_model(EDITS, world.args, data, encoder_path, None)
    clock = _Clock()
    trainer = LeWMTrainer(
        model=model,
        args=world.args.training,
        train_dataset=data.train,
        eval_dataset=data.validation,
        **EDITS.trainer_kwargs(model, world.args.domain, data),
    )
    out["cache"], out["cpu"]["cache"] = clock.lap()
    out["rss_mb"]["cache"] = _rss_mb()
    out["cached_states"] = trainer.feature_cache.num_states if trainer.feature_cache else 0
    clock = _Clock()
    trainer.train()
    out["wm_steps"], out["cpu"]["wm_steps"] = clock.lap()
    out["rss_mb"]["wm_steps"] = _rss_mb()
    out["peak_rss_mb"] = _rss_mb()
    return out


def fit_exponent(sizes: list[float], values: list[float]) -> float:
    """Least-squares slope of `log(value)` on `log(size)`."""
    xs = [math.log(s) for s in sizes]
    ys = [math.log(max(v, 1e-9)) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base_bases", type=int, default=100_000, help="bases at size 1x")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8], help="factors")
    parser.add_argument("--steps", type=int, default=200, help="LM and world-model steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child is not None:
        result = run_size(opts.child, opts.steps, opts.threads, opts.folder)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if len(opts.sizes) < 2:
        parser.error("--sizes needs at least two factors to fit an exponent")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"threads {opts.threads}, {opts.steps} steps per phase, sizes "
        f"{[k * opts.base_bases for k in opts.sizes]} bases; load average at start {load}"
    )
    rows = []
    for k in opts.sizes:
        with tempfile.TemporaryDirectory(prefix="lewm-scaling-") as folder:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(k * opts.base_bases),
                "--steps",
                str(opts.steps),
                "--threads",
                str(opts.threads),
                "--folder",
                folder,
            ]
            env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads)}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                raise SystemExit(f"size {k}x failed (exit {proc.returncode})")
            row = json.loads(lines[-1][len("RESULT ") :])
            row["factor"] = k
            rows.append(row)
            print(
                f"{k}x {row['bases']:>9} bases  lm rows {row['lm_rows']:>7}  wm rows "
                f"{row['wm_rows']:>7}  cached states {row['cached_states']:>7}  "
                + "  ".join(f"{s} {row[s]:6.1f} s ({row['cpu'][s]:6.1f} cpu)" for s in STAGES)
                + f"  peak RSS {row['peak_rss_mb']:5.0f} MB",
                flush=True,
            )
    sizes = [r["factor"] for r in rows]

    def exponents(seconds) -> tuple[float, float]:
        return (
            fit_exponent(sizes, [seconds(r, "corpus") + seconds(r, "cache") for r in rows]),
            fit_exponent(sizes, [seconds(r, "lm_steps") + seconds(r, "wm_steps") for r in rows]),
        )

    # The fitted times are CPU seconds: with one thread they equal the wall time of an idle
    # machine, and other jobs on a shared one stretch the wall clock, not them.
    builds, step_times = exponents(lambda r, s: r["cpu"][s])
    wall_builds, wall_steps = exponents(lambda r, s: r[s])
    rss = fit_exponent(sizes, [r["peak_rss_mb"] for r in rows])
    per_mb = (rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]) / max(
        (rows[-1]["bases"] - rows[0]["bases"]) / 1e6, 1e-9
    )
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"peak RSS growth {per_mb:.0f} MB per Mb of genome; load average at end {load}")
    print(
        f"wall-clock exponents (load-sensitive): builds {wall_builds:.3f}, steps {wall_steps:.3f}"
    )
    print(
        f"time_exponent: builds {builds:.3f} (goal <= 1.05), steps {step_times:.3f} (goal ~0)"
        " [CPU seconds]"
    )
    print(f"rss_exponent: {rss:.3f} (goal <= 0.1)")


if __name__ == "__main__":
    main()
