"""Compliance metrics, batched generation under both context rules, and the gate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lewm_hf import metric_keys as K
from lewm_hf.data.graphs import Graph, Jumper
from lewm_hf.data.walks import WalkCorpusConfig, build_graph_and_jumpers, generate_walks
from lewm_hf.errors import LeWMConfigError, LeWMInputError
from lewm_hf.evaluation.compliance import (
    STEP_CLASSES,
    ComplianceGate,
    ComplianceResult,
    compliance_metrics,
    evaluate_compliance,
    generate_walk_sequences,
)
from lewm_hf.testing_utils import reference_generate

# ---------------------------------------------------------------------------------------------
# A hand-built graph: blocks {0, 1, 2} and {3, 4, 5}.
#   0 -> 1;  1 -> 2, 4;  2 -> 0, 3;  3 -> 4;  4 -> 5;  5 -> 0, 3
# Jumper: visiting 1 at t means block 1 at t + 2.
# ---------------------------------------------------------------------------------------------


def tiny_graph() -> Graph:
    return Graph(
        indptr=np.array([0, 1, 3, 5, 6, 7, 9], dtype=np.int64),
        indices=np.array([1, 2, 4, 0, 3, 4, 5, 0, 3], dtype=np.int32),
        blocks=np.array([0, 0, 0, 1, 1, 1], dtype=np.int32),
        theta=np.ones(6),
        num_blocks=2,
        seed=0,
    )


JUMPER = Jumper(vertex=1, source_block=0, target_block=1, r=2)


def classes(**counts: int) -> dict[str, int]:
    return {name: counts.get(name, 0) for name in STEP_CLASSES}


def test_all_valid_rule_followed():
    res = compliance_metrics(np.array([[0, 1, 4, 5, 3]]), tiny_graph(), [JUMPER])
    assert res.edge_compliance == 1.0
    assert res.edge_steps == 4
    assert res.rule_checks == 1
    assert res.rule_compliance == 1.0
    # The jumper at t = 1 targets step 3 (seq[3] = 5, block 1).
    assert res.step_classes == classes(valid_followed=1, valid_na=3)


def test_rule_violated():
    res = compliance_metrics(np.array([[0, 1, 2, 0, 1]]), tiny_graph(), [JUMPER])
    assert res.edge_compliance == 1.0
    # t = 1 checks seq[3] = 0 (block 0): violated; t = 4 has t + r = 6 > 4: not checked.
    assert res.rule_checks == 1
    assert res.rule_compliance == 0.0
    assert res.step_classes == classes(valid_violated=1, valid_na=3)


def test_invalid_edge_and_no_rule_check():
    res = compliance_metrics(np.array([[0, 2, 3, 4, 5]]), tiny_graph(), [JUMPER])
    assert res.edge_compliance == 0.75  # 0 -> 2 is not an edge
    assert res.rule_checks == 0
    assert res.rule_compliance == 1.0
    assert res.step_classes == classes(invalid_na=1, valid_na=3)


def test_jumper_too_close_to_the_end_is_not_checked():
    res = compliance_metrics(np.array([[3, 4, 5, 0, 1]]), tiny_graph(), [JUMPER])
    assert (res.rule_checks, res.rule_compliance) == (0, 1.0)
    res = compliance_metrics(np.array([[2, 0, 1, 4, 5]]), tiny_graph(), [JUMPER])
    assert (res.rule_checks, res.rule_compliance) == (1, 1.0)  # t + r = 4 = L - 1


def test_invalid_edges_with_rules_followed_and_violated():
    seqs = np.array(
        [
            [0, 1, 0, 3, 4],  # 1 -> 0, 0 -> 3 invalid; rule at t=1 met at step 3 (invalid edge)
            [1, 0, 0, 3, 4],  # 1 -> 0, 0 -> 0, 0 -> 3 invalid; rule at t=0 fails at step 2
        ]
    )
    res = compliance_metrics(seqs, tiny_graph(), [JUMPER])
    assert res.edge_steps == 8
    assert res.edge_compliance == pytest.approx(3 / 8)
    assert res.rule_checks == 2
    assert res.rule_compliance == 0.5
    assert res.step_classes == classes(
        invalid_followed=1, invalid_violated=1, invalid_na=3, valid_na=3
    )
    assert sum(res.step_classes.values()) == res.edge_steps


def test_two_rules_on_one_step_any_failure_violates():
    other = Jumper(vertex=4, source_block=1, target_block=0, r=1)
    # t=1 (vertex 1) checks step 3: block(5) = 1, met; t=2 (vertex 4) checks step 3: block 1 != 0.
    res = compliance_metrics(np.array([[0, 1, 4, 5, 3]]), tiny_graph(), [JUMPER, other])
    assert res.rule_checks == 2
    assert res.rule_compliance == 0.5
    assert res.step_classes == classes(valid_violated=1, valid_na=3)


def test_distinct_fraction_and_to_dict():
    seqs = np.array([[0, 1, 4, 5, 3], [0, 1, 4, 5, 3], [3, 4, 5, 0, 1], [0, 1, 4, 5, 3]])
    res = compliance_metrics(seqs, tiny_graph(), [JUMPER])
    assert res.distinct_fraction == 0.5
    assert res.num_sequences == 4 and res.length == 5
    d = res.to_dict()
    assert d[K.DISTINCT_FRACTION] == 0.5
    assert d["steps_valid_followed"] == 3
    assert sum(d[f"steps_{name}"] for name in STEP_CLASSES) == d["edge_steps"] == 16


def loop_reference(
    seqs: np.ndarray, graph: Graph, jumpers: list[Jumper], prompt_length: int = 1
) -> dict:
    """One step at a time, straight from the definitions; steps before `prompt_length` unscored."""
    n = graph.num_vertices

    def block(v: int) -> int:
        return int(graph.blocks[v]) if 0 <= v < n else -1

    edges = checks = met = 0
    counts = dict.fromkeys(STEP_CLASSES, 0)
    for row in seqs.tolist():
        status = {}  # step -> all rules met so far
        for t, v in enumerate(row):
            for j in jumpers:
                if v == j.vertex and prompt_length <= t + j.r <= len(row) - 1:
                    checks += 1
                    ok = block(row[t + j.r]) == j.target_block
                    met += ok
                    status[t + j.r] = status.get(t + j.r, True) and ok
        for s in range(prompt_length, len(row)):
            u, v = row[s - 1], row[s]
            valid = 0 <= u < n and 0 <= v < n and v in graph.neighbors(u).tolist()
            edges += valid
            rule = "na" if s not in status else ("followed" if status[s] else "violated")
            counts[f"{'valid' if valid else 'invalid'}_{rule}"] += 1
    return {"edges": edges, "checks": checks, "met": met, "classes": counts}


@pytest.mark.parametrize("prompt_length", [1, 2, 3, 5, 8])
def test_vectorised_metrics_match_a_loop_on_random_sequences(prompt_length):
    graph = tiny_graph()
    jumpers = [JUMPER, Jumper(4, 1, 0, 1), Jumper(2, 0, 1, 3)]
    rng = np.random.default_rng(0)
    seqs = rng.integers(-1, 8, size=(50, 9))  # includes tokens outside the graph
    res = compliance_metrics(seqs, graph, jumpers, prompt_length=prompt_length)
    ref = loop_reference(seqs, graph, jumpers, prompt_length)
    assert res.edge_steps == 50 * (9 - prompt_length) == sum(res.step_classes.values())
    assert res.edge_compliance == pytest.approx(ref["edges"] / res.edge_steps)
    assert res.rule_checks == ref["checks"] > 0
    assert res.rule_compliance == pytest.approx(ref["met"] / ref["checks"])
    assert res.step_classes == ref["classes"]
    assert res.prompt_length == prompt_length


def test_invalid_prompt_edges_do_not_lower_edge_compliance():
    # 0 -> 0 is no edge: the prompt [0, 0, 0] has two invalid transitions, the generated
    # steps 3 ... 5 (0 -> 1, 1 -> 4, 4 -> 5) are all edges.
    seqs = np.array([[0, 0, 0, 1, 4, 5]])
    assert compliance_metrics(seqs, tiny_graph(), [JUMPER]).edge_compliance == 0.6
    res = compliance_metrics(seqs, tiny_graph(), [JUMPER], prompt_length=3)
    assert (res.edge_compliance, res.edge_steps) == (1.0, 3)
    # The jumper at t = 3 (generated) targets step 5: block(5) = 1, met.
    assert (res.rule_checks, res.rule_compliance) == (1, 1.0)
    assert res.step_classes == classes(valid_followed=1, valid_na=2)


def test_rule_inside_the_prompt_is_not_counted():
    # The jumper at t = 0 targets step 2 (vertex 0, block 0): violated, but inside the prompt.
    seqs = np.array([[1, 2, 0, 1, 4, 5]])
    full = compliance_metrics(seqs, tiny_graph(), [JUMPER])
    assert (full.rule_checks, full.rule_compliance) == (2, 0.5)
    res = compliance_metrics(seqs, tiny_graph(), [JUMPER], prompt_length=3)
    assert (res.rule_checks, res.rule_compliance) == (1, 1.0)
    assert res.step_classes == classes(valid_followed=1, valid_na=2)
    assert sum(res.step_classes.values()) == res.edge_steps == 3


def test_jumper_in_the_prompt_with_a_generated_target_is_counted():
    # Prompt [0, 1]: the visit at t = 1 targets step 3 (vertex 5, block 1), which was generated.
    res = compliance_metrics(np.array([[0, 1, 4, 5, 3]]), tiny_graph(), [JUMPER], prompt_length=2)
    assert (res.rule_checks, res.rule_compliance) == (1, 1.0)
    assert res.step_classes == classes(valid_followed=1, valid_na=2)
    assert res.edge_steps == 3


def test_prompt_as_long_as_the_sequence_scores_nothing():
    res = compliance_metrics(np.array([[0, 0, 1, 0]]), tiny_graph(), [JUMPER], prompt_length=4)
    assert (res.edge_compliance, res.edge_steps, res.rule_checks) == (1.0, 0, 0)
    assert res.step_classes == classes()
    for bad in (0, 5, 1.5):
        with pytest.raises(LeWMConfigError) as info:
            compliance_metrics(np.array([[0, 1, 2, 0]]), tiny_graph(), [JUMPER], prompt_length=bad)
        assert info.value.field == "prompt_length"


def test_corpus_walks_are_fully_compliant():
    config = WalkCorpusConfig.preset("small")
    graph, jumpers = build_graph_and_jumpers(config)
    walks = generate_walks(graph, jumpers, num_walks=200, walk_length=64, seed=1)
    res = compliance_metrics(walks, graph, jumpers)
    assert res.edge_compliance == 1.0
    assert res.rule_checks > 50
    assert res.rule_compliance == 1.0
    assert res.step_classes["valid_violated"] == 0


def test_metrics_input_errors():
    with pytest.raises(LeWMInputError, match="sequences"):
        compliance_metrics(np.array([0, 1, 2]), tiny_graph(), [JUMPER])
    with pytest.raises(LeWMInputError, match="sequences"):
        compliance_metrics(np.zeros((2, 3)), tiny_graph(), [JUMPER])


@pytest.mark.parametrize("shape", [(0, 3), (2, 0), (0, 0)])
def test_empty_sequences_are_rejected_either_way(shape):
    with pytest.raises(LeWMInputError, match=rf"shape \({shape[0]}, {shape[1]}\)") as info:
        compliance_metrics(np.zeros(shape, dtype=np.int64), tiny_graph(), [JUMPER])
    assert info.value.field == "sequences"


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------

W = 6


# Tiny models run fastest on one thread (and do not fight parallel test workers).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=20,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        max_position_embeddings=W + 1,
    )
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("rule", ["window", "chunked"])
@pytest.mark.parametrize(
    ("decoding", "temperature", "seed"),
    [("greedy", 1.0, 0), ("sample", 1.0, 3), ("sample", 0.5, 7)],
)
def test_generation_matches_step_by_step_reference(model, rule, decoding, temperature, seed):
    prompts = torch.randint(0, 20, (5, 1), generator=torch.Generator().manual_seed(1))
    kwargs = {"decoding": decoding, "temperature": temperature, "seed": seed, "batch_size": 2}
    got = generate_walk_sequences(model, prompts, 20, W, rule=rule, **kwargs)
    ref = reference_generate(model, prompts, 20, W, rule, decoding, temperature, seed)
    assert got.dtype == torch.long and got.shape == (5, 20)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("decoding", ["greedy", "sample"])
@pytest.mark.parametrize("rule", ["window", "chunked"])
@pytest.mark.parametrize("prompt_length", [3, W, W + 3])
def test_longer_prompts_match_reference(model, rule, prompt_length, decoding):
    prompts = torch.randint(0, 20, (3, prompt_length), generator=torch.Generator().manual_seed(2))
    got = generate_walk_sequences(model, prompts, 18, W, rule=rule, decoding=decoding, seed=4)
    assert torch.equal(got[:, :prompt_length], prompts)
    ref = reference_generate(model, prompts, 18, W, rule, decoding=decoding, seed=4)
    assert torch.equal(got, ref)


def test_greedy_generates_each_distinct_prompt_once(model):
    prompts = torch.tensor([[4, 1], [2, 2], [4, 1], [4, 1], [2, 2], [4, 3]])
    rows = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda mod, args, out: rows.append(args[0].shape[0])
    )
    try:
        got = generate_walk_sequences(model, prompts, 12, W, rule="window")
    finally:
        hook.remove()
    assert set(rows) == {3}  # three distinct prompts, one batch
    assert torch.equal(got, reference_generate(model, prompts, 12, W, "window"))
    assert torch.equal(got[0], got[2]) and torch.equal(got[0], got[3])


def test_odd_window_and_vocab_restriction(model):
    prompts = torch.tensor([[0], [5], [9]])
    for rule in ("window", "chunked"):
        got = generate_walk_sequences(model, prompts, 16, 5, rule=rule, vocab_size=6)
        assert int(got[:, 1:].max()) < 6
        assert torch.equal(got, reference_generate(model, prompts, 16, 5, rule, vocab_size=6))


def test_chunked_uses_the_cache_with_half_window_refills(model):
    lengths = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda mod, args, out: lengths.append(args[0].shape[1])
    )
    try:
        generate_walk_sequences(model, torch.tensor([[1], [2]]), 14, W, rule="chunked")
    finally:
        hook.remove()
    # Prefill 1 token, then single tokens until the context holds W; then refill W // 2, ...
    # Contexts before predicting positions 1..13: 1,2,3,4,5,6 | 3,4,5,6 | 3,4,5,6.
    assert lengths == [1, 1, 1, 1, 1, 1, 3, 1, 1, 1, 3, 1, 1]


def test_window_caches_only_while_the_window_is_the_prefix(model):
    lengths = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda mod, args, out: lengths.append(args[0].shape[1])
    )
    try:
        generate_walk_sequences(model, torch.tensor([[1], [2]]), 14, W, rule="window")
        cached = lengths[:]
        lengths.clear()
        generate_walk_sequences(model, torch.tensor([[1] * W, [2] * W]), 9, W, rule="window")
    finally:
        hook.remove()
    # Prefill 1 token, single tokens up to position W, then the whole window at every step.
    assert cached == [1] * W + [W] * (13 - W)
    assert lengths == [W] * (9 - W)  # a prompt of W tokens: the window slides from the start


def test_rules_agree_while_the_context_fits(model):
    prompts = torch.tensor([[3], [4], [7]])
    window = generate_walk_sequences(model, prompts, W + 1, W, rule="window")
    chunked = generate_walk_sequences(model, prompts, W + 1, W, rule="chunked")
    assert torch.equal(window, chunked)


def test_sampling_is_seeded_and_batch_independent(model):
    prompts = torch.tensor([[1]] * 6)
    kw = {"length": 12, "context_window": W, "rule": "chunked", "decoding": "sample"}
    a = generate_walk_sequences(model, prompts, seed=5, batch_size=4, **kw)
    b = generate_walk_sequences(model, prompts, seed=5, batch_size=6, **kw)
    c = generate_walk_sequences(model, prompts, seed=6, batch_size=6, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(row) for row in a.tolist()}) > 1  # same prompt, different draws


def test_training_mode_is_restored(model):
    model.train()
    generate_walk_sequences(model, torch.tensor([[1]]), 4, W)
    assert model.training
    model.eval()
    generate_walk_sequences(model, torch.tensor([[1]]), 4, W, rule="chunked")
    assert not model.training


def test_length_edge_cases(model):
    prompts = torch.tensor([[1, 2], [3, 4]])
    same = generate_walk_sequences(model, prompts, 2, W)
    assert torch.equal(same, prompts)
    one_more = generate_walk_sequences(model, prompts, 3, W, rule="chunked")
    assert one_more.shape == (2, 3)
    with pytest.raises(LeWMConfigError, match="length"):
        generate_walk_sequences(model, prompts, 1, W)
    with pytest.raises(LeWMInputError, match="prompts"):
        generate_walk_sequences(model, torch.tensor([1, 2]), 4, W)
    with pytest.raises(LeWMInputError, match="prompts"):
        generate_walk_sequences(model, torch.zeros((0, 1), dtype=torch.long), 4, W)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rule": "sliding"}, "rule"),
        ({"decoding": "beam"}, "decoding"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"context_window": 1}, "context_window"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_generation_config_errors_name_the_field(model, kwargs, field):
    args = {"length": 5, "context_window": W, **kwargs}
    with pytest.raises(LeWMConfigError) as info:
        generate_walk_sequences(model, torch.tensor([[1]]), **args)
    assert info.value.field == field


def test_evaluate_compliance_scores_only_generated_steps(model):
    graph = tiny_graph()
    # Prompts of 4 tokens full of non-edges (0 -> 0, 3 -> 3) and with a jumper visit at t = 0
    # whose target step 2 lies in the prompt (block(0) = 0: violated).
    walks = np.array([[1, 0, 0, 0, 1, 4, 5, 3, 4, 5], [3, 3, 3, 3, 4, 5, 0, 1, 4, 5]] * 3)
    res = evaluate_compliance(model, graph, [JUMPER], walks, W, prompt_length=4, batch_size=2)
    seqs = generate_walk_sequences(model, torch.from_numpy(walks[:, :4]), 10, W, vocab_size=6)
    assert torch.equal(seqs[:, :4], torch.from_numpy(walks[:, :4]))
    ref = loop_reference(seqs.numpy(), graph, [JUMPER], prompt_length=4)
    assert res.edge_steps == 6 * 6 == sum(res.step_classes.values())
    assert res.edge_compliance == pytest.approx(ref["edges"] / res.edge_steps)
    assert res.rule_checks == ref["checks"]
    assert res.step_classes == ref["classes"]
    assert res.prompt_length == 4
    # Scoring the copied prompt as generated would count its 3 non-edges and its violated rule.
    full = loop_reference(seqs.numpy(), graph, [JUMPER])
    assert full["classes"] != ref["classes"]
    assert full["checks"] == ref["checks"] + 3


def test_evaluate_compliance(model):
    graph = tiny_graph()
    walks = np.array([[0, 1, 4, 5, 3, 4, 5, 0]] * 3 + [[3, 4, 5, 3, 4, 5, 0, 1]] * 2)
    res = evaluate_compliance(
        model, graph, [JUMPER], walks, W, num_sequences=4, rule="chunked", batch_size=3
    )
    prompts = torch.from_numpy(walks[:4, :1])
    seqs = generate_walk_sequences(model, prompts, 8, W, "chunked", vocab_size=6)
    expected = compliance_metrics(seqs.numpy(), graph, [JUMPER])
    assert isinstance(res, ComplianceResult)
    assert (res.rule, res.decoding, res.temperature) == ("chunked", "greedy", None)
    assert (res.num_sequences, res.length) == (4, 8)
    assert res.seconds is not None and res.seconds > 0
    assert res.edge_compliance == expected.edge_compliance
    assert res.step_classes == expected.step_classes
    sampled = evaluate_compliance(
        model, graph, [JUMPER], walks, W, length=12, decoding="sample", temperature=2.0
    )
    assert (sampled.num_sequences, sampled.length, sampled.temperature) == (5, 12, 2.0)
    with pytest.raises(LeWMConfigError, match="num_sequences"):
        evaluate_compliance(model, graph, [JUMPER], walks, W, num_sequences=0)
    with pytest.raises(LeWMConfigError, match="length"):
        evaluate_compliance(model, graph, [JUMPER], walks, W, length=1, prompt_length=2)


# ---------------------------------------------------------------------------------------------
# Gate
# ---------------------------------------------------------------------------------------------


def result(edge: float, rule: float, checks: int) -> ComplianceResult:
    return ComplianceResult(edge, rule, checks, edge_steps=1000, distinct_fraction=1.0)


def test_gate_pass_and_fail_reasons():
    gate = ComplianceGate()
    assert gate.check(result(0.99, 0.9, 500)) == (True, None)
    assert gate.check(result(0.91, 0.9, 500)) == (False, "edge compliance 0.91 <= 0.95")
    assert gate.check(result(0.95, 0.9, 500)) == (False, "edge compliance 0.95 <= 0.95")
    assert gate.check(result(0.99, 0.75, 500)) == (False, "rule compliance 0.75 <= 0.8")
    assert gate.check(result(0.99, 1.0, 37)) == (False, "too few rule checks (37 < 100)")
    passed, reason = gate.check(result(0.5, 1.0, 0))
    assert not passed
    assert reason == "edge compliance 0.5 <= 0.95; too few rule checks (0 < 100)"
    assert ComplianceGate(min_rule_checks=0).check(result(0.99, 1.0, 0)) == (True, None)


def test_gate_config_errors():
    with pytest.raises(LeWMConfigError, match="edge_threshold"):
        ComplianceGate(edge_threshold=1.5)
    with pytest.raises(LeWMConfigError, match="min_rule_checks"):
        ComplianceGate(min_rule_checks=-1)
