"""The frozen-encoder feature cache: the default recipe's world-model phase with it over without.

The main job's world-model phase trains a `LeWMModel` around the frozen walk LM (4 layers,
hidden 128) on 20000 move clips of 4 windows for 939 steps of batch 64. Without the cache every
step runs the encoder over 256 windows; with it the encoder runs once over every clip before
training (`FeatureCache.build`) and each step reads the features.

Both variants train the same model on the same clips through `LeWMTrainer`, alternately, for
`--rounds` rounds of `--steps` timed steps each (after warm-up steps). Timing is per-process CPU
time (`time.process_time`) at a fixed thread count, which other processes on the machine do not
inflate the way they inflate wall time. The phase's time is estimated as
`build + 939 x step time` (with the cache) against `939 x step time` (without), so the cache
pays for its own build. Prints min / median / max of each variant's step time, the build time,
and last `speedup: X` (the phase's time without over with).

    python benchmarks/feature_cache.py [--steps 30] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import TrainerCallback

from lewm_hf import LeWMConfig, LeWMModel, LeWMTrainer, LeWMTrainingArguments
from lewm_hf.data.walks import MoveTrajectoryConfig, WalkCorpusConfig, build_move_trajectories

PHASE_STEPS = 939  # the main job's world-model phase: 3 epochs of 20000 clips at batch 64
WARMUP_STEPS = 3


def default_model() -> LeWMModel:
    """The default recipe's world model around a walk LM of the encoder phase's size."""
    torch.manual_seed(0)
    encoder = {
        "model_type": "llama",
        "vocab_size": 100,
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "max_position_embeddings": 64,
    }
    config = LeWMConfig(
        encoder_config=encoder,
        encoder_mode="frozen",
        d_state=64,
        d_model=128,
        history_length=3,
        action_vocab_size=64,
    )
    return LeWMModel(config)


class StepClock(TrainerCallback):
    """Process CPU time from the end of warm-up to the last step."""

    def __init__(self) -> None:
        self.start = self.stop = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == WARMUP_STEPS:
            self.start = time.process_time()
        self.stop = time.process_time()


def run(clips, cache: bool, steps: int, out: str) -> tuple[float, float]:
    """(seconds per step, cache build seconds) of one variant."""
    args = LeWMTrainingArguments(
        output_dir=out,
        max_steps=WARMUP_STEPS + steps,
        per_device_train_batch_size=64,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_pin_memory=False,
        collapse_monitor_steps=50,
        frozen_feature_cache=cache,
    )
    clock = StepClock()
    started = time.process_time()
    trainer = LeWMTrainer(
        default_model(), args, train_dataset=clips["train"], window=16, callbacks=[clock]
    )
    build = time.process_time() - started if cache else 0.0
    trainer.train()
    return (clock.stop - clock.start) / steps, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    clips = build_move_trajectories(
        MoveTrajectoryConfig(corpus=WalkCorpusConfig.preset("small"), num_clips=20000)
    )
    times: dict[bool, list[float]] = {True: [], False: []}
    builds: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(opts.rounds):
            for cache in (False, True):  # interleaved, so drifts hit both alike
                per_step, build = run(clips, cache, opts.steps, tmp)
                times[cache].append(per_step)
                if cache:
                    builds.append(build)
    for cache, label in ((False, "without cache"), (True, "with cache")):
        t = times[cache]
        print(
            f"{label}: s/step min {min(t):.4f} median {statistics.median(t):.4f} max {max(t):.4f}"
        )
    build = statistics.median(builds)
    print(
        f"cache build (20000 clips): median {build:.1f} s (min {min(builds):.1f}, max {max(builds):.1f})"
    )
    without = PHASE_STEPS * statistics.median(times[False])
    with_cache = build + PHASE_STEPS * statistics.median(times[True])
    print(f"phase estimate: {without:.1f} s without, {with_cache:.1f} s with")
    print(f"speedup: {without / with_cache:.2f}")


if __name__ == "__main__":
    main()
