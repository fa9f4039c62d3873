"""Training step time, tokens/s and MFU of a LeWM world model, tiny by default, scalable by flags.

One training step is what `LeWMTrainer` runs for a world model: `LeWMModel` forward (a Llama
encoder over the `B (H + 1)` state windows of `L` tokens, BatchNorm projector, action encoder,
AdaLN predictor over `H` steps, prediction loss and SIGReg with `M` slices), backward, gradient
clipping and a fused AdamW step, optionally under bf16 autocast. Inputs are random token ids and
actions of the configured sizes (step time does not depend on their values).

Timing: `--rounds` rounds (`_timing`, at least 5) of `--steps` steps after `--warmup` untimed
ones, wall time (`time.perf_counter`, the only clock that sees a GPU's work), with
`torch.cuda.synchronize()` before reading it, so one round measures its own steps and no
per-step host synchronisation is added. Printed: min / median / max seconds per step over the
rounds, encoder tokens/s (`B (H + 1) L` per step) and MFU at the median step time.

MFU = (model FLOPs per step) / (step time * `--peak_tflops` * 1e12). Model FLOPs are counted
analytically: `2 m n k` for every matmul of the step (every `nn.Linear`, counted from its
shape and the rows it sees in one forward pass; attention scores and values
`4 L^2 d` per sequence and layer, causal masking not discounted, as in the usual MFU
convention; SIGReg's projection `2 T B D M`), times 3 for forward + backward where the weights
train, times 1 for a frozen encoder (no backward through it). Elementwise work (norms,
activations, softmax, SIGReg's cosines) is not counted, so MFU is a lower bound of the
hardware's use. `--peak_tflops` is the accelerator's dense peak for the step's dtype (e.g. 989
for an H100 / H200 SXM in bf16); MFU is left out without it.

    python benchmarks/gpu_step.py                  # tiny, on the CPU: checks the script runs
    python benchmarks/gpu_step.py --device cuda --bf16 --hidden 1024 --layers 12 \\
        --d_model 1024 --predictor_layers 12 --batch 256 --window 64 --peak_tflops 989
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

import torch
from _timing import MIN_ROUNDS, interleave, set_threads
from torch import nn

from lewm_hf import ActionInputs, LeWMConfig, LeWMModel


def build_model(opts: argparse.Namespace) -> LeWMModel:
    encoder = {
        "model_type": "llama",
        "vocab_size": opts.vocab,
        "hidden_size": opts.hidden,
        "num_hidden_layers": opts.layers,
        "num_attention_heads": opts.heads,
        "intermediate_size": 4 * opts.hidden,
        "max_position_embeddings": max(64, opts.window),
    }
    config = LeWMConfig(
        encoder_config=encoder,
        encoder_mode=opts.encoder_mode,
        d_state=opts.d_state,
        projector_hidden=2 * opts.d_state,
        d_model=opts.d_model,
        predictor_layers=opts.predictor_layers,
        predictor_heads=opts.predictor_heads,
        history_length=opts.history,
        action_vocab_size=opts.actions,
        sigreg_num_slices=opts.slices,
    )
    return LeWMModel(config)


def random_batch(opts: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    shape = (opts.batch, opts.history + 1, opts.window)
    input_ids = torch.randint(0, opts.vocab, shape, generator=generator)
    action_ids = torch.randint(0, opts.actions, (opts.batch, opts.history), generator=generator)
    return {"input_ids": input_ids.to(device), "actions": ActionInputs(ids=action_ids.to(device))}


def matmul_flops(model: LeWMModel, batch: dict[str, Any], opts) -> dict[str, float]:
    """Forward matmul FLOPs of one step, split into the encoder's and the rest's.

    Every `nn.Linear` is counted from one hooked forward pass (`2 * rows * in * out`); the
    attention products and SIGReg's projection are added from the configuration.
    """
    flops = {"encoder": 0.0, "rest": 0.0}
    names = {module: name for name, module in model.named_modules()}

    def hook(module, inputs, output):
        rows = inputs[0].numel() // module.in_features
        part = "encoder" if names[module].startswith("encoder.") else "rest"
        flops[part] += 2.0 * rows * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(**batch)
    for handle in handles:
        handle.remove()
    sequences, steps = opts.batch * (opts.history + 1), opts.history
    # QK^T and attention-weighted values: 2 * 2 * L^2 * d per sequence and layer.
    flops["encoder"] += 4.0 * sequences * opts.window**2 * opts.hidden * opts.layers
    flops["rest"] += 4.0 * opts.batch * steps**2 * opts.d_model * opts.predictor_layers
    flops["rest"] += 2.0 * sequences * opts.d_state * opts.slices  # SIGReg's z A
    return flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_argument_group("model and batch (defaults: tiny)")
    size.add_argument("--hidden", type=int, default=64, help="encoder hidden size")
    size.add_argument("--layers", type=int, default=2, help="encoder layers")
    size.add_argument("--heads", type=int, default=4, help="encoder attention heads")
    size.add_argument("--vocab", type=int, default=100, help="encoder vocabulary")
    size.add_argument("--window", type=int, default=16, help="tokens per state window L")
    size.add_argument("--encoder_mode", choices=("train", "frozen"), default="train")
    size.add_argument("--d_state", type=int, default=32, help="latent size D")
    size.add_argument("--d_model", type=int, default=64, help="predictor width")
    size.add_argument("--predictor_layers", type=int, default=2)
    size.add_argument("--predictor_heads", type=int, default=4)
    size.add_argument("--history", type=int, default=3, help="actions per clip H")
    size.add_argument("--actions", type=int, default=64, help="action vocabulary")
    size.add_argument("--slices", type=int, default=1024, help="SIGReg slices M")
    size.add_argument("--batch", type=int, default=16, help="clips per step B")
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    run.add_argument("--bf16", action="store_true", help="bf16 autocast (the Trainer's bf16)")
    run.add_argument("--steps", type=int, default=5, help="timed steps per round")
    run.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    run.add_argument("--rounds", type=int, default=MIN_ROUNDS, help="rounds (at least 5)")
    run.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    run.add_argument("--peak_tflops", type=float, default=None, help="dense peak, for MFU")
    opts = parser.parse_args()
    if opts.rounds < MIN_ROUNDS:
        parser.error(f"--rounds must be at least {MIN_ROUNDS}")
    threads = set_threads(opts.threads)
    device = torch.device(opts.device)
    torch.manual_seed(0)

    model = build_model(opts).to(device).train()
    batch = random_batch(opts, device)
    flops = matmul_flops(model, batch, opts)
    backward = 1.0 if opts.encoder_mode == "frozen" else 3.0
    step_flops = backward * flops["encoder"] + 3.0 * flops["rest"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = device.type in ("cuda", "cpu")
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=fused)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if opts.bf16 else contextlib.nullcontext()
    )

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    state = {"step": 0}

    def steps(count: int):
        def run_steps() -> None:
            for _ in range(count):
                with autocast:
                    loss = model(**batch, step=state["step"], check_values=False).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
            synchronize()

        return run_steps

    steps(opts.warmup)()
    timings = interleave({"step": steps(opts.steps)}, rounds=opts.rounds, clock="wall")["step"]
    timings.seconds = [s / opts.steps for s in timings.seconds]
    seconds = timings.median
    tokens = opts.batch * (opts.history + 1) * opts.window
    params = sum(p.numel() for p in model.parameters())
    name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} threads"
    )
    print(f"device: {name}; dtype: {'bf16 autocast' if opts.bf16 else 'float32'}")
    print(
        f"model: {params / 1e6:.1f} M parameters ({sum(p.numel() for p in trainable) / 1e6:.1f} M "
        f"trained), encoder {opts.layers} x {opts.hidden} ({opts.encoder_mode}), predictor "
        f"{opts.predictor_layers} x {opts.d_model}, D = {opts.d_state}, M = {opts.slices}"
    )
    print(f"batch: {opts.batch} clips x {opts.history + 1} states x {opts.window} tokens")
    print(
        f"model FLOPs per step: {step_flops / 1e12:.4g} TFLOP (forward matmuls: encoder "
        f"{flops['encoder'] / 1e9:.4g} GFLOP, rest {flops['rest'] / 1e9:.4g} GFLOP)"
    )
    print(timings.summary("ms per step", 1e3))
    print(f"tokens/s: {tokens / seconds:.4g} (encoder tokens, at the median step)")
    print(f"achieved: {step_flops / seconds / 1e12:.4g} TFLOP/s")
    if opts.peak_tflops:
        print(
            f"MFU: {step_flops / seconds / (opts.peak_tflops * 1e12):.3f} of {opts.peak_tflops} TFLOP/s"
        )
    if device.type == "cpu":
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"load average {load}")


if __name__ == "__main__":
    main()
