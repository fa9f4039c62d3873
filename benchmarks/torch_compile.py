"""`torch.compile` (inductor) against eager for the default world model's training step, on CPU.

`LeWMTrainingArguments(torch_compile=True)` is the Trainer's own option: it wraps the model in
`torch.compile` (backend `inductor`), which on the CPU generates C++/OpenMP kernels and so needs a
C++ compiler (`check_torch_compile` raises `LeWMConfigError` without one). This script measures
what that wrapping does to one training step of the default world model: the frozen 4-layer
Llama encoder of hidden 128 with its features cached (`frozen_feature_cache`, the trainer's
default with a frozen encoder; `--encoder` runs the encoder in the step instead), d_state 64,
2-layer predictor of width 128, SIGReg with 1024 slices (which runs eagerly inside the compiled
model: `LeWMModel._regularizer` is excluded from compilation), batch 64, fused AdamW.

1. Compilation: two identical models; the compiled one's first forward + backward (and a
   second, at another step value, which recompiles once with the step made dynamic) is timed,
   in process CPU time and wall time (inductor compiles in worker processes, which the CPU
   time leaves out); its loss and gradients are compared with eager's on the same weights,
   batch and dropout masks (`fallback_random`: compiled dropout draws eager's numbers).
2. Steps: `--rounds` interleaved rounds (`_timing.interleave`, alternating order, after one
   untimed warm-up call each) of `--steps` steps of each (forward, backward, optimizer step),
   per-process CPU time at a fixed thread count (`--threads`, default 1: see
   docs/benchmarks.md). The last line is `speedup: X`, the median over rounds of eager over
   compiled seconds per step.

    python benchmarks/torch_compile.py [--steps 20] [--rounds 7] [--threads 1] [--encoder]
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from typing import Any

import torch
import torch._inductor.config
from _timing import MIN_ROUNDS, interleave, ratio_line, set_threads
from _world_model import default_model
from datasets import disable_progress_bars

from lewm_hf import LeWMModel
from lewm_hf.data.collators import DataCollatorForLeWM
from lewm_hf.data.walks import MoveTrajectoryConfig, WalkCorpusConfig, build_move_trajectories


def training_batch(model: LeWMModel, batch_size: int, encoder: bool) -> dict[str, Any]:
    """A batch of move clips of the `small` preset, as the trainer feeds the model."""
    corpus = WalkCorpusConfig.preset("small")
    clips = build_move_trajectories(MoveTrajectoryConfig(corpus=corpus, num_clips=4 * batch_size))
    rows = clips["train"].with_format(None)
    batch = DataCollatorForLeWM(window=corpus.context_window)([rows[i] for i in range(batch_size)])
    if encoder:
        return batch
    with torch.no_grad():  # what `FeatureCache` feeds the step instead of the token ids
        states = batch["input_ids"].shape[1]
        features = model.pooled_features(batch["input_ids"].flatten(0, 1))
    return {
        "state_features": features.view(batch_size, states, -1),
        "actions": batch["actions"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (at least 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--encoder", action="store_true", help="run the encoder in the step")
    opts = parser.parse_args()
    if opts.rounds < MIN_ROUNDS:
        parser.error(f"--rounds must be at least {MIN_ROUNDS}")
    threads = set_threads(opts.threads)
    disable_progress_bars()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    path = "encoder in the step" if opts.encoder else "cached encoder features"
    print(f"torch {torch.__version__}, {threads} threads, {path}; load average at start {load}")

    eager = default_model().train()
    compiled_model = copy.deepcopy(eager)
    # Compiled dropout draws eager's random numbers (inductor's own generator would give other
    # masks), so that the first step compares exactly; it costs the compiled step a little.
    torch._inductor.config.fallback_random = True
    compiled = torch.compile(compiled_model)  # what `torch_compile=True` does
    inputs = training_batch(eager, opts.batch_size, opts.encoder)

    # 1. Compilation, and the compiled step against eager on the same weights.
    losses, grads = {}, {}
    for name, model, module in (("eager", eager, eager), ("compiled", compiled, compiled_model)):
        start, wall = time.process_time(), time.perf_counter()
        torch.manual_seed(1)  # the same dropout masks in both
        loss = model(**inputs, step=0, check_values=False).loss
        loss.backward()
        losses[name] = loss.item()
        grads[name] = [p.grad.clone() for p in module.parameters() if p.grad is not None]
        module.zero_grad(set_to_none=True)
        if name == "compiled":  # a second step value recompiles once, with `step` dynamic
            model(**inputs, step=1, check_values=False).loss.backward()
            module.zero_grad(set_to_none=True)
            seconds, wall = time.process_time() - start, time.perf_counter() - wall
            print(f"compilation (first two steps): {seconds:.1f} s CPU, {wall:.1f} s wall")
    loss_diff = abs(losses["compiled"] - losses["eager"]) / abs(losses["eager"])
    # Over all parameters: the biases just before a BatchNorm have rounding-level gradients,
    # which a per-tensor relative difference would blow up.
    grad_diff = max((c - e).abs().max().item() for c, e in zip(grads["compiled"], grads["eager"]))
    grad_scale = max(e.abs().max().item() for e in grads["eager"])
    print(
        f"first step: loss relative difference {loss_diff:.2e}, gradients' largest difference "
        f"{grad_diff:.2e} (largest gradient entry {grad_scale:.2e})"
    )

    # 2. Steps, interleaved.
    optimizers = {
        "eager": torch.optim.AdamW(eager.parameters(), lr=1e-4, fused=True),
        "compiled": torch.optim.AdamW(compiled_model.parameters(), lr=1e-4, fused=True),
    }
    counter = {"step": 2}

    def run(model, optimizer):
        def steps():
            for _ in range(opts.steps):
                counter["step"] += 1
                model(**inputs, step=counter["step"], check_values=False).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        return steps

    stats = interleave(
        {
            "eager": run(eager, optimizers["eager"]),
            "compiled": run(compiled, optimizers["compiled"]),
        },
        rounds=opts.rounds,
    )
    for timings in stats.values():
        timings.seconds = [s / opts.steps for s in timings.seconds]
        print(timings.summary("ms per step", 1e3))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average at end {load}")
    print(ratio_line("speedup", stats["eager"], stats["compiled"]))


if __name__ == "__main__":
    main()
