"""LeWMTrainer against a hand-written PyTorch loop, and the fused SIGReg against plain autograd.

Every comparison interleaves its variants with `_timing.interleave` (alternating order, one
untimed warm-up call each, at least 5 rounds), times per-process CPU time (`time.process_time`:
the time this process's threads spent on a core, so a neighbour's load does not count as ours)
at a fixed thread count, and prints min / median / max over the rounds beside each ratio, which
is the median of the per-round ratios. The SIGReg speedup runs at `--threads` (default
`OMP_NUM_THREADS` or every core: the main job's count); the share and the trainer-loop ratio at
`--step_threads` (default 1): on a shared machine two threads that wait for each other at every
small op make a step's CPU time swing by 2x from round to round, which one thread does not.
Three parts, printed in this order:

1. `sigreg_speedup: X`: the fused SIGReg (`lewm_hf.losses.sigreg`, one autograd node) over a
   plain-autograd evaluation of the same formula (`sigreg_reference`), forward + backward with
   1024 slices drawn from a seeded generator as in training, at the default step's latents
   (T, B, D) = (4, 64, 64) and at (4, 64, 128); a round is `--sigreg_calls` calls of each. The
   values and gradients of both are checked equal first. The line reports the smaller of the
   two shapes' medians. The speedup at (4, 64, 64) at `--step_threads` follows, for reference.
2. `sigreg_share: X`: the fused SIGReg at (4, 64, 64) over one training step of the default
   world model (forward, backward, fused AdamW step) on a batch of 64 move clips, with the frozen
   encoder in the step (`frozen_feature_cache=False`) and, as `LeWMTrainer` runs it by default,
   with the encoder's cached features (`frozen_feature_cache=True`: the step no longer runs the
   encoder, so SIGReg's share grows). The line reports the cached step.
3. `ratio: X` (last line): `LeWMTrainer` steps/s over the loop's. Same model (frozen 4-layer
   Llama encoder of hidden 128, d_state 64, 2-layer predictor), clips, batch size, steps, the
   trainer's own optimizer class and arguments (fused AdamW) with its parameter groups, clipping
   and WSD schedule. The trainer logs every step (`logging_steps=1`, as the recipes do) and the
   loop reads its loss every step. For a like-for-like comparison the trainer runs without the
   features the loop lacks: `frozen_feature_cache=False` (the loop runs the frozen encoder at
   every step too) and `collapse_monitor_steps=0`; its per-log console line is off. A round
   builds both afresh and times `--steps` steps after `WARMUP_STEPS` untimed ones.

    python benchmarks/trainer_overhead.py [--steps 40] [--rounds 15] [--sigreg_rounds 9]
        [--sigreg_calls 20] [--threads N] [--step_threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from _timing import MIN_ROUNDS, Timings, interleave, ratio_line, set_threads
from _world_model import StepClock, default_model
from datasets import disable_progress_bars
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback

from lewm_hf import LeWMTrainer, LeWMTrainingArguments
from lewm_hf.data.collators import DataCollatorForLeWM
from lewm_hf.data.walks import MoveTrajectoryConfig, WalkCorpusConfig, build_move_trajectories
from lewm_hf.losses import sigreg, sigreg_generator
from lewm_hf.testing_utils import sigreg_reference
from lewm_hf.trainer.lewm_trainer import parameter_groups
from lewm_hf.trainer.schedules import get_wsd_scheduler

# Steps run before the clock starts in both runs: one-time set-up (Trainer preparation, the
# first batches, optimizer state, allocator warm-up) is not per-step overhead.
WARMUP_STEPS = 5
SIGREG_SHAPES = ((4, 64, 64), (4, 64, 128))  # the default step's latents, and d = 128
WINDOW = WalkCorpusConfig.preset("small").context_window


def training_args(out: str, batch_size: int, steps: int, **kwargs) -> LeWMTrainingArguments:
    defaults = dict(
        output_dir=out,
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        collapse_monitor_steps=0,
        frozen_feature_cache=False,
        use_cpu=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    defaults.update(kwargs)
    return LeWMTrainingArguments(**defaults)


def median_ratio(numerator: Timings, denominator: Timings) -> float:
    """The median of the per-round ratios, as `ratio_line` prints it."""
    return statistics.median(n / d for n, d in zip(numerator.seconds, denominator.seconds))


# ---------------------------------------------------------------------------------------------
# 1. SIGReg, fused against plain autograd


def sigreg_call(fn, z: torch.Tensor, step: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward + backward of `fn` on a fresh leaf copy of `z`: `(value, gradient)`."""
    x = z.clone().requires_grad_(True)
    value = fn(x, num_slices=1024, generator=sigreg_generator(step))
    value.backward()
    return value.detach(), x.grad


def sigreg_timings(shape: tuple[int, ...], rounds: int, calls: int) -> dict[str, Timings]:
    """Seconds per call of the fused and the plain SIGReg, per round; values checked equal."""
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    (fused_value, fused_grad), (plain_value, plain_grad) = (
        sigreg_call(sigreg, z),
        sigreg_call(sigreg_reference, z),
    )
    torch.testing.assert_close(fused_value, plain_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-4, atol=1e-7)

    def repeat(fn):
        return lambda: [sigreg_call(fn, z) for _ in range(calls)]

    stats = interleave({"fused": repeat(sigreg), "plain": repeat(sigreg_reference)}, rounds)
    for timings in stats.values():
        timings.seconds = [s / calls for s in timings.seconds]
    return stats


# ---------------------------------------------------------------------------------------------
# 2. SIGReg's share of a training step


def share_timings(dataset, collator, batch_size: int, rounds: int, calls: int) -> dict:
    """Seconds per training step with and without the encoder, and per fused SIGReg call at the
    step's latent shape, per round."""
    model = default_model()
    model.train()
    batch = collator([dataset[i] for i in range(batch_size)])
    with torch.no_grad():  # what `FeatureCache` feeds the step instead of the token ids
        num_states = batch["input_ids"].shape[1]
        features = model.pooled_features(batch["input_ids"].flatten(0, 1))
    cached = {"state_features": features.view(batch_size, num_states, -1)}
    cached["actions"] = batch["actions"]
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True
    )
    latents = torch.randn(num_states, batch_size, model.config.d_state)

    def step(inputs):
        def run():
            for _ in range(calls):
                model(**inputs, check_values=False).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        return run

    def fused():
        for _ in range(calls):
            sigreg_call(sigreg, latents)

    stats = interleave(
        {"step (encoder)": step(batch), "step (cached features)": step(cached), "sigreg": fused},
        rounds,
    )
    for timings in stats.values():
        timings.seconds = [s / calls for s in timings.seconds]
    return stats


# ---------------------------------------------------------------------------------------------
# 3. LeWMTrainer against a hand-written loop


class _Run:
    """One timed variant of the trainer-overhead comparison: its data, sizes and timings."""

    name = ""

    def __init__(self, dataset, collator, batch_size: int, steps: int, out: str):
        self.dataset, self.collator = dataset, collator
        self.batch_size, self.steps, self.out = batch_size, steps, out
        self.timings = Timings(self.name, clock="process")


class TrainerRun(_Run):
    """Each call builds a `LeWMTrainer` and records its seconds per timed step."""

    name = "trainer"

    def __call__(self) -> None:
        args = training_args(self.out, self.batch_size, WARMUP_STEPS + self.steps)
        clock = StepClock(WARMUP_STEPS)
        trainer = LeWMTrainer(
            default_model(),
            args,
            train_dataset=self.dataset,
            data_collator=self.collator,
            callbacks=[clock],
        )
        trainer.remove_callback(PrinterCallback)  # no console line per log
        if trainer.feature_cache is not None:
            raise RuntimeError("the trainer must run the encoder at every step, as the loop")
        trainer.train()
        self.timings.seconds.append(clock.seconds_per_step(self.steps))


class LoopRun(_Run):
    """Each call runs a minimal hand-written loop: the trainer's optimizer (class, arguments and
    parameter groups), clipping, the WSD schedule, the loss read every step."""

    name = "loop"

    def __call__(self) -> None:
        total = WARMUP_STEPS + self.steps
        args = training_args(self.out, self.batch_size, total)
        model = default_model()
        torch.manual_seed(args.seed)
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=self.collator,
            drop_last=True,
        )
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        optimizer_kwargs.pop("lr", None)
        groups = [
            {k: v for k, v in g.items() if k != "name"} for g in parameter_groups(model, args)
        ]
        optimizer = optimizer_cls(groups, lr=args.learning_rate, **optimizer_kwargs)
        scheduler = get_wsd_scheduler(optimizer, total, args.get_warmup_steps(total))
        model.train()
        done, start = 0, 0.0
        while done < total:
            for batch in loader:
                out = model(**batch, step=done)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                out.loss.item()
                done += 1
                if done == WARMUP_STEPS:
                    start = time.process_time()
                if done == total:
                    break
        self.timings.seconds.append((time.process_time() - start) / self.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=15, help="trainer/loop rounds (>= 5)")
    parser.add_argument("--sigreg_rounds", type=int, default=9, help="SIGReg rounds (>= 5)")
    parser.add_argument("--sigreg_calls", type=int, default=20, help="SIGReg calls per round")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=None, help="threads of the SIGReg speedup (default: all)"
    )
    parser.add_argument(
        "--step_threads", type=int, default=1, help="threads of the share and the ratio"
    )
    opts = parser.parse_args()
    for name in ("rounds", "sigreg_rounds"):
        if getattr(opts, name) < MIN_ROUNDS:
            parser.error(f"--{name} must be at least {MIN_ROUNDS}")
    threads = set_threads(opts.threads)
    disable_progress_bars()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, clock: per-process CPU time; load average at start {load}")
    print(f"SIGReg speedup at {threads} threads")

    by_shape = {}
    for shape in SIGREG_SHAPES:
        stats = sigreg_timings(shape, opts.sigreg_rounds, opts.sigreg_calls)
        print(f"SIGReg {shape}, 1024 slices, forward + backward, values and gradients equal:")
        for timings in stats.values():
            print(f"  {timings.summary('ms per call', 1e3)}")
        print(ratio_line(f"  speedup at {shape}", stats["plain"], stats["fused"]))
        by_shape[shape] = stats
    # The line reports the shape with the smaller median speedup.
    slowest = min(by_shape.values(), key=lambda s: median_ratio(s["plain"], s["fused"]))
    print(ratio_line("sigreg_speedup", slowest["plain"], slowest["fused"]))

    with tempfile.TemporaryDirectory() as tmp:
        clips = build_move_trajectories(
            MoveTrajectoryConfig(
                corpus=WalkCorpusConfig.preset("small"), num_clips=8192, eval_clips=64
            ),
            cache_dir=f"{tmp}/cache",
        )
        dataset = clips["train"].with_format(None)
        collator = DataCollatorForLeWM(window=WINDOW)
        step_threads = set_threads(opts.step_threads)
        print(f"share and ratio at {step_threads} threads")
        stats = sigreg_timings(SIGREG_SHAPES[0], opts.sigreg_rounds, opts.sigreg_calls)
        line = ratio_line(f"speedup at {SIGREG_SHAPES[0]}", stats["plain"], stats["fused"])
        print(f"  SIGReg {line} at {step_threads} threads")

        share = share_timings(dataset, collator, opts.batch_size, opts.sigreg_rounds, 5)
        print(f"SIGReg's share of a training step (batch {opts.batch_size}):")
        for timings in share.values():
            print(f"  {timings.summary('ms', 1e3)}")
        print(ratio_line("  sigreg_share_with_encoder", share["sigreg"], share["step (encoder)"]))
        print(ratio_line("sigreg_share", share["sigreg"], share["step (cached features)"]))

        runs = {
            "loop": LoopRun(dataset, collator, opts.batch_size, opts.steps, f"{tmp}/loop"),
            "trainer": TrainerRun(dataset, collator, opts.batch_size, opts.steps, f"{tmp}/trainer"),
        }
        interleave(runs, rounds=opts.rounds)
    for run in runs.values():  # the warm-up call recorded a round too: drop it
        del run.timings.seconds[0]
    print(f"LeWMTrainer against a hand-written loop, {opts.steps} timed steps per round:")
    for run in runs.values():
        print(f"  {run.timings.summary('ms per step', 1e3)}")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average at end {load}")
    # Trainer steps/s over loop steps/s = loop seconds per step over trainer seconds per step.
    print(ratio_line("ratio", runs["loop"].timings, runs["trainer"].timings))


if __name__ == "__main__":
    main()
