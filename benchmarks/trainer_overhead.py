"""LeWMTrainer against a hand-written PyTorch loop, and the fused SIGReg against plain autograd.

Same LeWMModel (the default recipe's world model: frozen 4-layer Llama encoder of hidden 128,
d_state 64, 2-layer predictor), same clips, batch size, steps, AdamW, clipping and WSD schedule.
The two are run alternately, several rounds, in one process; steps/s are timed from the end of
step 5 to the last step (set-up excluded in both) and the median over rounds is reported. The
trainer logs every step (`logging_steps=1`), as the recipes do. Prints, in order:

    sigreg_speedup: X.X   (fused autograd.Function over a plain-autograd evaluation of the same
                           formula, forward + backward, gradients checked equal)
    sigreg_share: 0.XX    (SIGReg's forward + backward time over one default training step)
    ratio: X.XX           (trainer steps/s over loop steps/s; last line)

    python benchmarks/trainer_overhead.py [--steps 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from lewm_hf import LeWMConfig, LeWMModel, LeWMTrainer, LeWMTrainingArguments
from lewm_hf.data.collators import DataCollatorForLeWM
from lewm_hf.data.walks import MoveTrajectoryConfig, WalkCorpusConfig, build_move_trajectories
from lewm_hf.losses import sigreg, sigreg_generator, sigreg_reference
from lewm_hf.trainer.lewm_trainer import parameter_groups
from lewm_hf.trainer.schedules import get_wsd_scheduler

# Steps run before the clock starts in both runs: one-time set-up (Trainer preparation, the
# first batches, allocator warm-up) is not per-step overhead.
WARMUP_STEPS = 5


def default_model(seed: int = 0, vocab: int = 100, actions: int = 64) -> LeWMModel:
    torch.manual_seed(seed)
    encoder = {
        "model_type": "llama",
        "vocab_size": vocab,
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
        projector_hidden=256,
        d_model=128,
        predictor_layers=2,
        predictor_heads=4,
        history_length=3,
        action_vocab_size=actions,
    )
    return LeWMModel(config)


def time_fn(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_sigreg(shape: tuple[int, int, int], repeats: int) -> tuple[float, float]:
    """Median forward+backward seconds of (fused, reference) SIGReg; checks equal gradients."""
    torch.manual_seed(0)
    z = torch.randn(*shape)
    grads = {}

    def run(fn, name):
        def step():
            x = z.clone().requires_grad_(True)
            value = fn(x, generator=sigreg_generator(7))
            value.backward()
            grads[name] = (value.detach(), x.grad)

        return step

    fused = time_fn(run(sigreg, "fused"), repeats)
    reference = time_fn(run(sigreg_reference, "reference"), repeats)
    torch.testing.assert_close(grads["fused"][0], grads["reference"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads["fused"][1], grads["reference"][1], rtol=1e-3, atol=1e-6)
    return fused, reference


def loop_steps_per_second(model, dataset, collator, args, steps: int) -> float:
    """A minimal hand-written loop: AdamW groups, clipping, WSD schedule."""
    torch.manual_seed(args.seed)
    loader = DataLoader(dataset, batch_size=args.per_device_train_batch_size, shuffle=True,
                        collate_fn=collator, drop_last=True)  # fmt: skip
    optimizer = torch.optim.AdamW(
        [{k: v for k, v in g.items() if k != "name"} for g in parameter_groups(model, args)],
        lr=args.learning_rate,
    )
    scheduler = get_wsd_scheduler(optimizer, steps, args.get_warmup_steps(steps))
    model.train()
    start = None
    done = 0
    while done < steps:
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
                start = time.perf_counter()
            if done == steps:
                break
    return (steps - WARMUP_STEPS) / (time.perf_counter() - start)


class _StepClock(TrainerCallback):
    """Time from the end of step `WARMUP_STEPS` to the end of the last step."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == WARMUP_STEPS:
            self.start = time.perf_counter()
        if state.global_step == state.max_steps:
            self.end = time.perf_counter()


def trainer_steps_per_second(model, dataset, collator, args, steps: int) -> float:
    clock = _StepClock()
    trainer = LeWMTrainer(
        model, args, train_dataset=dataset, data_collator=collator, callbacks=[clock]
    )
    trainer.train()
    return (steps - WARMUP_STEPS) / (clock.end - clock.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--sigreg_repeats", type=int, default=10)
    opts = parser.parse_args()

    fused, reference = bench_sigreg((4, 64, 128), opts.sigreg_repeats)
    print(f"sigreg (T, B, D) = (4, 64, 128), 1024 slices: fused {fused * 1e3:.1f} ms, "
          f"plain autograd {reference * 1e3:.1f} ms (forward + backward)")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        clips = build_move_trajectories(
            MoveTrajectoryConfig(
                corpus=WalkCorpusConfig.preset("small"), num_clips=8192, eval_clips=64
            ),
            cache_dir=f"{tmp}/cache",
        )
        dataset = clips["train"].with_format(None)
        window = WalkCorpusConfig.preset("small").context_window
        collator = DataCollatorForLeWM(window=window)
        args = LeWMTrainingArguments(
            output_dir=f"{tmp}/out",
            per_device_train_batch_size=opts.batch_size,
            max_steps=opts.steps,
            learning_rate=1e-3,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            collapse_monitor_steps=0,
            use_cpu=True,
            dataloader_num_workers=0,
        )
        # SIGReg's share of one default step, at the default step's latent shape.
        batch = collator([dataset[i] for i in range(opts.batch_size)])
        model = default_model()
        model.train()

        def one_step():
            out = model(**batch)
            out.loss.backward()
            model.zero_grad(set_to_none=True)

        step_time = time_fn(one_step, 5)
        shape = (4, opts.batch_size, model.config.d_state)
        sig_time, _ = bench_sigreg(shape, opts.sigreg_repeats)
        loop_rates, trainer_rates = [], []
        for r in range(opts.rounds):
            loop_rates.append(
                loop_steps_per_second(default_model(), dataset, collator, args, opts.steps)
            )
            trainer_rates.append(
                trainer_steps_per_second(default_model(), dataset, collator, args, opts.steps)
            )
            print(f"round {r}: loop {loop_rates[-1]:.2f} steps/s, "
                  f"trainer {trainer_rates[-1]:.2f} steps/s")  # fmt: skip
    loop = statistics.median(loop_rates)
    trainer = statistics.median(trainer_rates)
    print(f"default step {step_time * 1e3:.1f} ms, SIGReg at {shape} {sig_time * 1e3:.2f} ms")
    print(f"loop: {loop:.2f} steps/s  trainer: {trainer:.2f} steps/s")
    print(f"sigreg_speedup: {reference / fused:.1f}")
    print(f"sigreg_share: {sig_time / step_time:.2f}")
    print(f"ratio: {trainer / loop:.2f}")


if __name__ == "__main__":
    main()
