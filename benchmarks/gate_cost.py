"""What the encoder phase's compliance gate costs, and how well the chunked rule agrees with window.

The model is the `walk_lm.yaml` encoder (Llama, hidden 128, 4 layers, 4 heads, intermediate 512,
vocabulary = the 100 vertices of the `small` preset, w = 16); the prompts are the first tokens of
1000 held-out walks of 64 tokens, as the gate's. Times are process CPU time (`time.process_time`,
all of torch's threads), one run per setting.

1. Cost: `evaluate_compliance` for every decoding x context rule x batch size asked for, then one
   whole gate evaluation (the gate's decoding plus the other one, as `ComplianceGateCallback`
   runs them with `gate_log_other_decoding`) at `WalkLMTrainingArguments`' defaults.
2. Agreement (`--train-steps N`, N > 0): trains the model N steps (AdamW, lr 2e-3, cosine with 10%
   warmup, batch 128, rows of w + 1 tokens at stride 4 from 8000 walks, as the recipe), then
   compares `chunked` with `window` on the same prompts and, for sampling, the same uniforms:
   edge and rule compliance of each, their difference, the difference's standard error
   (independent binomials) and the fraction of sequences that came out identical. With
   `--eval-every K` the comparison also runs every K steps.

    .venv/bin/python benchmarks/gate_cost.py [--threads 2] [--batch-sizes 256 512 1000]
    .venv/bin/python benchmarks/gate_cost.py --skip-cost --train-steps 600 --eval-every 300
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import numpy as np
import torch
from _timing import set_threads
from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

from lewm_hf.data.walks import (
    WalkCorpusConfig,
    build_graph_and_jumpers,
    chunk_walks,
    generate_walks,
)
from lewm_hf.determinism import derive_seed
from lewm_hf.evaluation.compliance import (
    ComplianceResult,
    compliance_metrics,
    evaluate_compliance,
    generate_walk_sequences,
)
from lewm_hf.trainer.lewm_config import WalkLMTrainingArguments


def walk_lm(vocab: int, window: int, seed: int) -> LlamaForCausalLM:
    """The recipe's encoder-phase LM, randomly initialised."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=512,
        max_position_embeddings=2 * window + 2,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


def timed(fn, *args, **kwargs) -> tuple[ComplianceResult, float]:
    started = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - started


def describe(res: ComplianceResult) -> str:
    return (
        f"edge {res.edge_compliance:.4f} rule {res.rule_compliance:.4f} "
        f"(checks {res.rule_checks}, distinct {res.distinct_fraction:.3f})"
    )


def cost(model, graph, jumpers, walks, window, args) -> None:
    """Part 1: seconds per `evaluate_compliance` and per gate evaluation."""
    seconds: dict[tuple[str, str, int], float] = {}
    for rule in args.rules:
        for decoding in args.decodings:
            for batch_size in args.batch_sizes:
                res, sec = timed(
                    evaluate_compliance, model, graph, jumpers, walks, window,
                    num_sequences=args.num_sequences, rule=rule, decoding=decoding,
                    temperature=1.0, seed=0, batch_size=batch_size,
                )  # fmt: skip
                seconds[rule, decoding, batch_size] = sec
                print(
                    f"cost {rule:7s} {decoding:6s} batch {batch_size:4d}: {sec:7.2f} s | "
                    f"{describe(res)}",
                    flush=True,
                )
    for rule in args.rules:
        for batch_size in args.batch_sizes:
            if all((rule, d, batch_size) in seconds for d in ("greedy", "sample")):
                total = seconds[rule, "greedy", batch_size] + seconds[rule, "sample", batch_size]
                print(f"gate evaluation {rule} batch {batch_size}: {total:.2f} s (greedy + sample)")

    with tempfile.TemporaryDirectory() as out:
        gate_args = WalkLMTrainingArguments(output_dir=out, gate_decoding="sample")
    total = 0.0
    for decoding in ["sample", gate_args.other_decoding]:
        if decoding is None:
            continue
        kwargs = {**gate_args.compliance_kwargs(decoding), "num_sequences": args.num_sequences}
        key = (kwargs["rule"], decoding, kwargs["batch_size"])
        if key in seconds:  # the cost does not depend on the seed
            sec, res = seconds[key], None
        else:
            res, sec = timed(evaluate_compliance, model, graph, jumpers, walks, window, **kwargs)
        total += sec
        print(
            f"defaults {decoding:6s} ({kwargs['rule']}, batch {kwargs['batch_size']}): "
            f"{sec:.2f} s | {describe(res) if res is not None else 'as measured above'}",
            flush=True,
        )
    print(f"gate evaluation at the defaults: {total:.2f} s")


def compare(model, graph, jumpers, walks, window, args, step: int) -> None:
    """Part 2, at one training step: chunked against window on the same prompts and uniforms."""
    for decoding in ("greedy", "sample"):
        kwargs = {
            "decoding": decoding,
            "temperature": 1.0,
            "seed": 0,
            "batch_size": max(args.batch_sizes),
        }
        prompts = torch.from_numpy(walks[: args.num_sequences, :1].astype(np.int64))
        seqs = {
            rule: generate_walk_sequences(
                model, prompts, walks.shape[1], window, rule=rule, **kwargs,
                vocab_size=graph.num_vertices,
            ).numpy()
            for rule in ("window", "chunked")
        }  # fmt: skip
        win, chk = (compliance_metrics(seqs[r], graph, jumpers) for r in ("window", "chunked"))
        d_rule = chk.rule_compliance - win.rule_compliance
        se_rule = math.sqrt(
            sum(
                r.rule_compliance * (1 - r.rule_compliance) / max(r.rule_checks, 1)
                for r in (win, chk)
            )
        )
        d_edge = chk.edge_compliance - win.edge_compliance
        se_edge = math.sqrt(
            sum(
                r.edge_compliance * (1 - r.edge_compliance) / max(r.edge_steps, 1)
                for r in (win, chk)
            )
        )
        same = float((seqs["window"] == seqs["chunked"]).all(axis=1).mean())
        print(f"agreement step {step} {decoding}: window {describe(win)}")
        print(f"agreement step {step} {decoding}: chunked {describe(chk)}")
        print(
            f"agreement step {step} {decoding}: chunked - window: rule {d_rule:+.4f} "
            f"(SE {se_rule:.4f}, {d_rule / se_rule if se_rule else 0.0:+.1f} SE), "
            f"edge {d_edge:+.4f} (SE {se_edge:.4f}); identical sequences {same:.3f}",
            flush=True,
        )


def train_and_compare(model, graph, jumpers, walks, window, args) -> None:
    """Part 2: a short training run of the recipe's LM, comparing the rules as it goes."""
    train = generate_walks(graph, jumpers, 8000, 64, seed=derive_seed(args.seed, "train"))
    rows = torch.from_numpy(chunk_walks(train, window + 1, 4).astype(np.int64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(
        optimizer, max(1, args.train_steps // 10), args.train_steps
    )
    generator = torch.Generator().manual_seed(args.seed)
    started = time.process_time()
    for step in range(1, args.train_steps + 1):
        model.train()
        batch = rows[torch.randint(0, len(rows), (128,), generator=generator)]
        logits = model(input_ids=batch[:, :-1]).logits  # (B, w, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0:
            print(f"train step {step}: loss {loss.item():.4f}", flush=True)
        if step == args.train_steps or (args.eval_every and step % args.eval_every == 0):
            print(f"trained {step} steps in {time.process_time() - started:.0f} s", flush=True)
            model.eval()
            compare(model, graph, jumpers, walks, window, args, step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-sequences", type=int, default=1000)
    parser.add_argument("--rules", nargs="+", default=["window", "chunked"])
    parser.add_argument("--decodings", nargs="+", default=["greedy", "sample"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 512, 1000])
    parser.add_argument("--skip-cost", action="store_true", help="only part 2")
    parser.add_argument("--train-steps", type=int, default=0, help="part 2 after N steps")
    parser.add_argument("--eval-every", type=int, default=0, help="part 2 every K steps too")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    threads = set_threads(args.threads)
    config = WalkCorpusConfig.preset("small")
    graph, jumpers = build_graph_and_jumpers(config)
    window = config.context_window
    walks = generate_walks(graph, jumpers, 1000, 64, seed=derive_seed(args.seed, "eval"))
    model = walk_lm(graph.num_vertices, window, args.seed)
    print(
        f"torch {torch.__version__}, {threads} threads; Llama hidden 128 x 4 layers, vocab "
        f"{graph.num_vertices}, w={window}, {args.num_sequences} sequences of {walks.shape[1]}"
    )
    if not args.skip_cost:
        cost(model, graph, jumpers, walks, window, args)
    if args.train_steps > 0:
        train_and_compare(model, graph, jumpers, walks, window, args)


if __name__ == "__main__":
    main()
