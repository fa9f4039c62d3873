"""The frozen-encoder feature cache: the default recipe's world-model phase with it over without.

The default recipe's world-model phase (`recipes/configs/walk_lewm.yaml` with the encoder phase's
walk LM frozen; its clips, epochs and batch size are read from `recipes/configs/default.yaml`)
trains a `LeWMModel` around a 4-layer, hidden-128 Llama on 20000 move clips of 4 windows (w = 16)
for 939 steps of batch 64 (3 epochs), and evaluates on 2000 held-out clips after every epoch.
Without the cache every step runs the encoder over 256 windows and every evaluation over 8000;
with it `FeatureCache.build` encodes each distinct window of both splits once (when `LeWMTrainer`
is constructed) and the steps and evaluations read the features.

Each round, interleaved with `_timing.interleave` (alternating order, one untimed warm-up call
each), runs both variants through `LeWMTrainer` on the same clips and model: construct the
trainer (with the cache: the build), train `--steps` timed steps after 3 warm-up steps, and
evaluate once. A round's phase time is then

    construction + steps x (seconds per step) + epochs x (one evaluation)

per variant, so the cached variant pays for its own build. Timing is per-process CPU time
(`time.process_time`) at a fixed thread count, which other processes do not inflate the way they
inflate wall time. Prints min / median / max over the rounds of every part and of both phase
times; the last line is `speedup: X`, the median over rounds of (phase without) / (phase with).

    python benchmarks/feature_cache.py [--steps 30] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

from _timing import Timings, interleave, ratio_line, set_threads
from _world_model import StepClock, default_model
from datasets import disable_progress_bars
from transformers.trainer_callback import PrinterCallback

from lewm_hf import LeWMTrainer, LeWMTrainingArguments
from lewm_hf.data.walks import build_move_trajectories
from lewm_hf.tasks.runner import validate_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "default.yaml"
WARMUP_STEPS = 3


class Variant:
    """One variant of the phase; each call measures one round's parts and phase time.

    Args:
        clips (`DatasetDict`): `train` and `validation` move clips.
        cache (`bool`): `frozen_feature_cache`.
        steps (`int`): Timed training steps per round.
        out (`str`): Scratch output folder.
    """

    def __init__(self, clips, cache: bool, steps: int, out: str, phase_steps: int, evals: int):
        self.clips, self.cache, self.steps, self.out = clips, cache, steps, out
        self.phase_steps, self.evals = phase_steps, evals
        suffix = "with cache" if cache else "without cache"
        self.parts = {
            name: Timings(f"{name} ({suffix})")
            for name in ("construction", "step", "evaluation", "phase")
        }

    def __call__(self) -> None:
        args = LeWMTrainingArguments(
            output_dir=self.out,
            max_steps=WARMUP_STEPS + self.steps,
            per_device_train_batch_size=64,
            per_device_eval_batch_size=256,
            learning_rate=1e-3,
            weight_decay=0.01,
            max_grad_norm=1.0,
            lr_schedule="wsd",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            dataloader_pin_memory=False,
            collapse_monitor_steps=50,
            frozen_feature_cache=self.cache,
        )
        clock = StepClock(WARMUP_STEPS)
        model = default_model()
        start = time.process_time()
        trainer = LeWMTrainer(
            model,
            args,
            train_dataset=self.clips["train"],
            eval_dataset=self.clips["validation"],
            window=16,
            callbacks=[clock],
        )
        construction = time.process_time() - start
        trainer.remove_callback(PrinterCallback)  # no log line per step
        if (trainer.feature_cache is not None) != self.cache:
            raise RuntimeError(f"frozen_feature_cache={self.cache} was not honoured")
        trainer.train()
        step = clock.seconds_per_step(self.steps)
        start = time.process_time()
        trainer.evaluate()
        evaluation = time.process_time() - start
        phase = construction + self.phase_steps * step + self.evals * evaluation
        for name, value in (
            ("construction", construction),
            ("step", step),
            ("evaluation", evaluation),
            ("phase", phase),
        ):
            self.parts[name].seconds.append(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (at least 5)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: see docs/benchmarks.md)"
    )
    opts = parser.parse_args()
    threads = set_threads(opts.threads)
    disable_progress_bars()
    (phase,) = [p for p in validate_recipe(RECIPE) if p.task == "world_model"]
    clips = build_move_trajectories(phase.args.domain.clips)
    training = phase.args.training
    epochs = math.ceil(training.num_train_epochs)
    phase_steps = math.ceil(len(clips["train"]) / training.per_device_train_batch_size) * epochs
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"threads {threads}, {opts.rounds} rounds of {opts.steps} steps, "
        f"train {len(clips['train'])} clips (clips_per_walk {phase.args.domain.clips.clips_per_walk}), "
        f"validation {len(clips['validation'])}; phase {phase_steps} steps, {epochs} "
        f"evaluations; load average at start {load}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            name: Variant(clips, cache, opts.steps, os.path.join(tmp, name), phase_steps, epochs)
            for name, cache in (("without", False), ("with", True))
        }
        interleave(variants, rounds=opts.rounds)
    for variant in variants.values():  # the warm-up call recorded a round too: drop it
        for part in variant.parts.values():
            del part.seconds[0]
    for name in ("construction", "step", "evaluation", "phase"):
        for variant in variants.values():
            print(variant.parts[name].summary())
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average at end {load}")
    print(
        ratio_line("speedup", variants["without"].parts["phase"], variants["with"].parts["phase"])
    )


if __name__ == "__main__":
    main()
