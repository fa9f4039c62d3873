"""Benchmark: batched compliance generation against a one-sequence-at-a-time loop.

For each context rule (`window`, `chunked`) the batched `generate_walk_sequences` (greedy) is
timed against a plain reference loop that generates ONE sequence at a time with no cache under
the same rule, on the same randomly initialised Llama and the same prompts (the first token of
walks on the `small` preset graph); both must produce identical sequences.

    .venv/bin/python benchmarks/compliance_eval.py [--prompts 256] [--length 64] [--window 16]

Prints `speedup_window: X.X` and, last, `speedup: X.X` (chunked: batched + KV cache against the
no-cache loop).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lewm_hf.data.walks import WalkCorpusConfig, build_graph_and_jumpers, generate_walks
from lewm_hf.evaluation.compliance import generate_walk_sequences


def reference_generate(
    model: LlamaForCausalLM, prompts: torch.Tensor, length: int, window: int, rule: str
) -> torch.Tensor:
    """Greedy, one sequence at a time, recomputing the whole current context every step."""
    num, prompt_length = prompts.shape
    out = []
    with torch.no_grad():
        for n in range(num):
            seq = prompts[n].tolist()
            start = max(0, prompt_length - window)
            for i in range(prompt_length, length):
                if rule == "window":
                    context = seq[max(0, i - window) : i]
                else:
                    if i - start > window:  # chunked: restart from the last window // 2 tokens
                        start = i - window // 2
                    context = seq[start:i]
                logits = model(input_ids=torch.tensor([context])).logits[0, -1]
                seq.append(int(logits.argmax()))
            out.append(seq)
    return torch.tensor(out)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=100)
    parser.add_argument("--max-positions", type=int, default=64)
    parser.add_argument("--rules", nargs="+", default=["window", "chunked"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

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

    print(f"cpu: {cpu_name()}, torch threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print(
        f"model: Llama hidden {args.hidden}, {args.layers} layers, {args.heads} heads, "
        f"intermediate {args.intermediate}, vocab {args.vocab}; w={args.window}, "
        f"length={args.length}, prompts={args.prompts}, batch_size={args.batch_size}"
    )
    speedups = {}
    for rule in args.rules:
        generate_walk_sequences(model, prompts[:2], args.window + 4, args.window, rule=rule)  # warm
        started = time.perf_counter()
        batched = generate_walk_sequences(
            model, prompts, args.length, args.window, rule=rule, batch_size=args.batch_size
        )
        batched_s = time.perf_counter() - started
        started = time.perf_counter()
        reference = reference_generate(model, prompts, args.length, args.window, rule)
        reference_s = time.perf_counter() - started
        identical = torch.equal(batched, reference)
        mismatched = int((batched != reference).any(dim=1).sum())
        speedups[rule] = reference_s / batched_s
        print(
            f"{rule}: batched {batched_s:.2f} s, one-at-a-time reference {reference_s:.2f} s, "
            f"identical {identical} ({mismatched} sequences differ), "
            f"distinct {len({tuple(r) for r in batched.tolist()})}/{args.prompts}"
        )
    if "window" in speedups:
        print(f"speedup_window: {speedups['window']:.1f}")
    if "chunked" in speedups:
        print(f"speedup: {speedups['chunked']:.1f}")


if __name__ == "__main__":
    main()
