"""Benchmark: batched compliance generation against the one-sequence-at-a-time reference.

For each context rule (`window`, `chunked`) the batched `generate_walk_sequences` is timed
against `reference_generate` (lewm_hf.testing_utils: ONE sequence at a time, no cache,
the whole context recomputed every step, under the same rule and decoding) on the same randomly
initialised Llama and the same prompts (the first token of walks on the `small` preset graph).
The reference is slow, so it runs on the first `--reference-prompts` prompts only and both are
normalised per sequence; its sequences must equal the batched run's first rows. The default
decoding is `sample` (every sequence its own generation; with `greedy` the batched run also
generates each distinct prompt only once, which the per-sequence ratio then includes).

The four runs are interleaved (`_timing.interleave`, at least 5 rounds after a warm-up, process
CPU time) and each ratio is the median of the per-round ratios, printed with their min and max.

    .venv/bin/python benchmarks/compliance_eval.py [--prompts 32] [--reference-prompts 4]
        [--length 64] [--window 16] [--decoding sample] [--rounds 5] [--threads 2]

Prints `speedup_window: X.XX (...)` and, last, `speedup: X.XX (...)` (chunked: batched + KV cache
against the no-cache reference), both per sequence.
"""

from __future__ import annotations

import argparse
import platform

import torch
from _timing import Timings, interleave, ratio_line, set_threads
from transformers import LlamaConfig, LlamaForCausalLM

from lewm_hf.data.walks import WalkCorpusConfig, build_graph_and_jumpers, generate_walks
from lewm_hf.evaluation.compliance import generate_walk_sequences
from lewm_hf.testing_utils import reference_generate


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def per_sequence(timings: Timings, sequences: int) -> Timings:
    """The same rounds, in seconds per generated sequence."""
    return Timings(timings.name, [s / sequences for s in timings.seconds], timings.clock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="sequences of the batched run")
    parser.add_argument(
        "--reference-prompts", type=int, default=4, help="sequences of the reference run"
    )
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--decoding", choices=["greedy", "sample"], default="sample")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=100)
    parser.add_argument("--max-positions", type=int, default=64)
    parser.add_argument("--rules", nargs="+", default=["window", "chunked"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clock", choices=["process", "wall"], default="process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS)"
    )
    args = parser.parse_args()
    threads = set_threads(args.threads)
    num_ref = min(args.reference_prompts, args.prompts)

    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=args.max_positions,
    )
    model = LlamaForCausalLM(config).eval()
    graph, jumpers = build_graph_and_jumpers(WalkCorpusConfig.preset("small"))
    walks = generate_walks(graph, jumpers, args.prompts, 2, seed=args.seed)
    prompts = torch.from_numpy(walks[:, :1].astype("int64")) % args.vocab
    decode = {"decoding": args.decoding, "temperature": args.temperature, "seed": args.seed}

    print(f"cpu: {cpu_name()}, torch threads: {threads}, torch {torch.__version__}")
    print(
        f"model: Llama hidden {args.hidden}, {args.layers} layers, {args.heads} heads, "
        f"intermediate {args.intermediate}, vocab {args.vocab}; w={args.window}, "
        f"length={args.length}, decoding={args.decoding}, batched: {args.prompts} prompts "
        f"(batch_size {args.batch_size}), reference: {num_ref} prompts"
    )
    outputs: dict[str, torch.Tensor] = {}

    def batched(rule: str) -> None:
        outputs[f"batched_{rule}"] = generate_walk_sequences(
            model, prompts, args.length, args.window, rule=rule,
            batch_size=args.batch_size, **decode,
        )  # fmt: skip

    def reference(rule: str) -> None:
        outputs[f"reference_{rule}"] = reference_generate(
            model, prompts[:num_ref], args.length, args.window, rule, **decode
        )

    fns = {}
    for rule in args.rules:
        fns[f"batched_{rule}"] = lambda rule=rule: batched(rule)
        fns[f"reference_{rule}"] = lambda rule=rule: reference(rule)
    stats = interleave(fns, rounds=args.rounds, clock=args.clock)

    speedups = {}
    for rule in args.rules:
        fast = per_sequence(stats[f"batched_{rule}"], args.prompts)
        slow = per_sequence(stats[f"reference_{rule}"], num_ref)
        got, ref = outputs[f"batched_{rule}"], outputs[f"reference_{rule}"]
        mismatched = int((got[:num_ref] != ref).any(dim=1).sum())
        distinct = len({tuple(r) for r in got.tolist()})
        print(f"{rule}: {fast.summary('ms per sequence', 1000)}")
        print(f"{rule}: {slow.summary('ms per sequence', 1000)}")
        print(
            f"{rule}: identical {mismatched == 0} ({mismatched} of {num_ref} sequences differ), "
            f"distinct {distinct}/{args.prompts}"
        )
        speedups[rule] = ratio_line(f"speedup_{rule}", slow, fast)
    if "window" in speedups:
        print(speedups["window"])
    if "chunked" in speedups:
        print(speedups["chunked"].replace("speedup_chunked", "speedup", 1))


if __name__ == "__main__":
    main()
