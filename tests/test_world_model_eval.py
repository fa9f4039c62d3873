"""Tests of the world-model evaluation (hand-made latents and models with known answers)."""

from __future__ import annotations

import importlib
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _builders import TINY_ENCODER
from torch import nn

from lewm_hf import metric_keys as K
from lewm_hf.data.graphs import Graph, make_dcsbm_graph
from lewm_hf.data.walks import WalkCorpusConfig, WalkMetadata, generate_walks
from lewm_hf.determinism import derive_seed
from lewm_hf.errors import LeWMConfigError, LeWMInputError
from lewm_hf.evaluation.discrimination import (
    ActionCandidates,
    action_discrimination,
    move_action_candidates,
    shuffled_actions,
)
from lewm_hf.evaluation.held_out import (
    HeldOutWalks,
    held_out_walks,
    move_actions,
    neighbor_table,
    sample_spans,
)
from lewm_hf.evaluation.inference import imagine_latents
from lewm_hf.evaluation.latents import effective_rank, representation_health
from lewm_hf.evaluation.retrieval import chance_metrics, retrieval_metrics, retrieval_ranks
from lewm_hf.evaluation.rollouts import latent_rollout
from lewm_hf.evaluation.surprise import (
    auroc,
    hard_negative_vertices,
    surprise,
    surprise_separation,
    teleport_vertices,
)
from lewm_hf.evaluation.world_model import WorldModelEvalConfig, evaluate_world_model
from lewm_hf.modeling_lewm import ActionInputs
from lewm_hf.testing_utils import MoveOracle

W, H = 5, 3


@pytest.fixture(scope="module")
def graph() -> Graph:
    return make_dcsbm_graph(24, 2, p_in=0.6, p_out=0.15, seed=3)


@pytest.fixture(scope="module")
def walks(graph) -> np.ndarray:
    return generate_walks(graph, [], 200, 24, seed=11)


def spans_and_states(graph, walks, length, num, seed=0):
    spans = sample_spans(walks, length, num, np.random.default_rng(seed))
    return spans, torch.from_numpy(spans).unfold(1, W, 1)


class BlindOracle(MoveOracle):
    """A perfect encoder whose predictor ignores the action and always takes rank 0."""

    def predict(self, z_hist, actions):
        return super().predict(z_hist, ActionInputs(ids=torch.zeros_like(actions.ids)))


class NeighbourhoodModel(MoveOracle):
    """Ignores the action and predicts the unit-norm indicator of the current vertex's
    out-neighbours: a true move's surprise is `2 - 2 / sqrt(deg) < 2`, a teleport's exactly 2."""

    def predict(self, z_hist, actions):
        vertex = self.decode(z_hist)  # (B, T)
        table = self.table[vertex]  # (B, T, A)
        hot = torch.zeros(*vertex.shape, self.embedding.shape[0])
        hot.scatter_add_(-1, table.clamp(min=0), (table >= 0).float())  # padding adds 0
        return hot / self.degree[vertex].unsqueeze(-1).float().sqrt()


class HistoryModel(nn.Module):
    """A predictor that depends on every history step and every action: for the sliding test.

    `out[:, t] = 0.5 * mean(z_{<=t}) + 0.25 * z_0_in_window + (a_t + 1) * e` with `e` the ones
    vector; refuses more than `history_length` steps, like `LeWMModel.predict`.
    """

    def __init__(self, dim: int, history: int):
        super().__init__()
        self.config = SimpleNamespace(history_length=history, d_state=dim)
        self.calls: list[int] = []

    def predict(self, z_hist, actions):
        steps = z_hist.shape[1]
        if steps > self.config.history_length:
            raise LeWMInputError("z_hist", steps, "too long")
        self.calls.append(steps)
        counts = torch.arange(1, steps + 1, dtype=z_hist.dtype).view(1, -1, 1)
        means = z_hist.cumsum(1) / counts
        return 0.5 * means + 0.25 * z_hist[:, :1] + (actions.ids.unsqueeze(-1) + 1.0)


# ---- helpers ---------------------------------------------------------------------------------


def test_neighbor_table_matches_graph(graph):
    table = neighbor_table(graph)
    assert table.shape == (graph.num_vertices, graph.max_out_degree)
    for v in range(graph.num_vertices):
        deg = graph.out_degree[v]
        np.testing.assert_array_equal(table[v, :deg], graph.neighbors(v))
        assert (table[v, deg:] == -1).all()


def test_move_actions_are_neighbor_ranks(graph, walks):
    spans, _ = spans_and_states(graph, walks, W + 4, 50)
    actions = move_actions(graph, spans, W)
    table = neighbor_table(graph)
    np.testing.assert_array_equal(table[spans[:, W - 1 : -1], actions], spans[:, W:])
    bad = spans.copy()
    bad[0, W] = bad[0, W - 1]  # a self-loop is never an edge
    with pytest.raises(LeWMInputError):
        move_actions(graph, bad, W)


# ---- retrieval metrics -----------------------------------------------------------------------


def brute_force_retrieval(dist, mask, target, ks):
    """Average over every ordering of the real candidates, ties broken by the ordering."""
    recalls = {k: [] for k in ks}
    rr = []
    for n in range(dist.shape[0]):
        real = [c for c in range(dist.shape[1]) if mask[n, c]]
        hits = {k: 0.0 for k in ks}
        inv = 0.0
        perms = list(itertools.permutations(real))
        for perm in perms:
            order = sorted(real, key=lambda c: (dist[n, c], perm.index(c)))
            rank = order.index(int(target[n])) + 1
            for k in ks:
                hits[k] += rank <= k
            inv += 1.0 / rank
        for k in ks:
            recalls[k].append(hits[k] / len(perms))
        rr.append(inv / len(perms))
    out = {f"r{k}": float(np.mean(v)) for k, v in recalls.items()}
    out["mrr"] = float(np.mean(rr))
    return out


def test_retrieval_metrics_with_ties_match_brute_force():
    g = torch.Generator().manual_seed(0)
    num, width, dim = 40, 5, 1
    # Integer latents on a line: many exact distance ties.
    candidates = torch.randint(-2, 3, (num, width, dim), generator=g).float()
    query = torch.randint(-2, 3, (num, dim), generator=g).float()
    mask = torch.rand(num, width, generator=g) < 0.8
    mask[:, 0] = True
    target = torch.zeros(num, dtype=torch.long)
    closer, ties = retrieval_ranks(query, candidates, mask, target)
    got = retrieval_metrics(closer, ties, ks=(1, 2, 5))
    dist = (candidates - query[:, None]).pow(2).sum(-1).numpy()
    want = brute_force_retrieval(dist, mask.numpy(), target.numpy(), (1, 2, 5))
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    # All candidates tied: exactly the analytic chance.
    all_tied = retrieval_metrics(*retrieval_ranks(query, candidates * 0, mask, target), (1, 2, 5))
    chance = chance_metrics(mask.sum(1), (1, 2, 5))
    for key in chance:
        assert all_tied[key] == pytest.approx(chance[key], abs=1e-12)
    assert chance["r1"] == pytest.approx((1.0 / mask.sum(1).double()).mean().item())


# ---- action discrimination -------------------------------------------------------------------


def test_perfect_oracle_discrimination_is_one_and_copy_is_chance(graph, walks):
    oracle = MoveOracle(graph, history_length=H)
    spans, _ = spans_and_states(graph, walks, W + H, 500)
    cand = move_action_candidates(oracle, graph, spans, W)
    out = action_discrimination(oracle, cand)
    assert out["r1"] == 1.0
    assert out["r5"] == 1.0
    assert out["mrr"] == pytest.approx(1.0)
    degree = graph.out_degree[spans[:, W + H - 2]]
    assert out["chance"] == pytest.approx(np.mean(1.0 / degree))
    # One-hot latents: every candidate is equidistant from z_t, so copy is exactly chance.
    assert out["r1_copy"] == pytest.approx(out["chance"])
    assert out["mrr_copy"] == pytest.approx(out["chance_mrr"])


def test_blind_predictor_scores_the_rank_zero_fraction(graph, walks):
    oracle = BlindOracle(graph, history_length=H)
    spans, _ = spans_and_states(graph, walks, W + H, 500)
    cand = move_action_candidates(oracle, graph, spans, W)
    out = action_discrimination(oracle, cand)
    true_rank = move_actions(graph, spans, W)[:, -1]
    assert out["r1"] == pytest.approx(np.mean(true_rank == 0))
    # Blind to its action: the shuffled-action control scores exactly what the model does.
    for key in ("r1", "r5", "mrr"):
        assert out[f"{key}_shuffled"] == out[key], key


def test_shuffled_baseline_is_chance_for_a_perfect_predictor(graph, walks):
    oracle = MoveOracle(graph, history_length=H)
    spans, _ = spans_and_states(graph, walks, W + H, 10_000, seed=1)
    cand = move_action_candidates(oracle, graph, spans, W, batch_size=4096)
    out = action_discrimination(oracle, cand, seed=4)
    assert out["num_items"] == 10_000
    assert abs(out["r1_shuffled"] - out["chance"]) <= 0.02
    assert out["r1"] == 1.0


def test_candidates_are_the_true_next_windows(graph, walks):
    oracle = MoveOracle(graph, history_length=H)
    spans, states = spans_and_states(graph, walks, W + H, 30)
    cand = move_action_candidates(oracle, graph, spans, W)
    rows = torch.arange(30)
    # The true candidate is the encoding of the true next window s_H.
    torch.testing.assert_close(
        cand.candidate_latents[rows, cand.target], oracle.encode(states[:, H])
    )
    torch.testing.assert_close(
        cand.z_hist, oracle.encode(states[:, :H].reshape(-1, W)).view(30, H, -1)
    )
    degree = torch.from_numpy(graph.out_degree[spans[:, W + H - 2]])
    assert (cand.candidate_mask.sum(1) == degree).all()
    assert (cand.candidate_latents[~cand.candidate_mask] == 0).all()


def test_candidates_validate_their_target(graph, walks):
    oracle = MoveOracle(graph, history_length=H)
    spans, _ = spans_and_states(graph, walks, W + H, 10)
    cand = move_action_candidates(oracle, graph, spans, W)
    cand.candidate_mask[0, cand.target[0]] = False
    with pytest.raises(LeWMInputError) as err:
        action_discrimination(oracle, cand)
    assert err.value.field == "target"


def test_generic_candidates_accept_multi_tensor_actions():
    """An edit-style candidate set: ops, positions and tokens, the last step replaced per
    candidate."""

    class EditModel(nn.Module):
        config = SimpleNamespace(history_length=2, d_state=2)

        def predict(self, z_hist, actions):
            return z_hist + torch.stack([actions.ops, actions.positions], -1).float()

    num, width = 6, 3
    z_hist = torch.zeros(num, 2, 2)
    ops = torch.arange(width).expand(num, width)
    pos = torch.tensor([2, 0, 1]).expand(num, width)
    tokens = torch.zeros(num, width, 2, dtype=torch.long)
    cand = ActionCandidates(
        z_hist=z_hist,
        actions=ActionInputs(ops=torch.zeros(num, 2, dtype=torch.long) + 1,
                             positions=torch.zeros(num, 2, dtype=torch.long),
                             tokens=tokens[:, :2]),
        candidate_latents=torch.stack([ops, pos], -1).float(),
        candidate_actions=ActionInputs(ops=ops, positions=pos, tokens=tokens),
        candidate_mask=torch.ones(num, width, dtype=torch.bool),
        target=torch.ones(num, dtype=torch.long),
    )  # fmt: skip
    out = action_discrimination(EditModel(), cand)
    assert out["r1"] == 1.0  # true action (op 1, position 0) predicts candidate 1 exactly
    assert out["chance"] == pytest.approx(1 / 3)


# ---- rollouts --------------------------------------------------------------------------------


def test_perfect_rollout_has_zero_error_and_copy_does_not(graph, walks):
    oracle = MoveOracle(graph, history_length=H)
    horizon = 8
    spans, states = spans_and_states(graph, walks, W + horizon, 100)
    actions = torch.from_numpy(move_actions(graph, spans, W))
    out = latent_rollout(oracle, states, actions)
    assert len(out["l2"]) == horizon
    assert out["l2"] == [0.0] * horizon
    assert out["cos"] == pytest.approx([1.0] * horizon)
    # No self-loops: the last vertex always changes after one step.
    assert out["l2_copy"][0] == pytest.approx(np.sqrt(2.0), rel=1e-6)
    assert all(value > 0 for value in out["l2_copy"])
    # Copy L2 at horizon k: sqrt(2) times the fraction of trajectories away from their start.
    moved = spans[:, W - 1 :][:, 1:] != spans[:, W - 1 : W]
    np.testing.assert_allclose(out["l2_copy"], np.sqrt(2.0) * moved.mean(0), rtol=1e-5)


def test_rollout_slides_the_history_window_beyond_h():
    dim, history, horizon = 3, 3, 7
    model = HistoryModel(dim, history)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(4, 1, dim, generator=g)
    actions = torch.randint(0, 5, (4, horizon), generator=g)
    got = imagine_latents(model, z0, actions)
    # Step-by-step reference with explicit lists.
    for n in range(4):
        latents = [z0[n, 0]]
        for k in range(horizon):
            window = latents[-history:]
            acts = actions[n, : k + 1][-history:]
            mean = torch.stack(window).mean(0)
            expected = 0.5 * mean + 0.25 * window[0] + (acts[-1] + 1.0)
            latents.append(expected)
            torch.testing.assert_close(got[n, k], expected)
    assert max(model.calls) == history
    assert model.calls == [1, 2, 3, 3, 3, 3, 3]


def test_rollout_from_a_longer_true_history():
    model = HistoryModel(2, 3)
    z_hist = torch.randn(2, 3, 2)
    actions = torch.randint(0, 3, (2, 2 + 4))
    got = imagine_latents(model, z_hist, actions)
    first = model.predict(z_hist, ActionInputs(ids=actions[:, :3]))[:, -1]
    torch.testing.assert_close(got[:, 0], first)
    with pytest.raises(LeWMInputError):
        imagine_latents(model, z_hist, actions[:, :2])  # no action left to imagine


# ---- surprise and AUROC ----------------------------------------------------------------------


def brute_force_auroc(scores, labels):
    pos = scores[labels]
    neg = scores[~labels]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_pairwise_oracle_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=300).astype(float)
    labels = rng.random(300) < 0.3 + 0.1 * (scores > 2)
    assert auroc(scores, labels) == pytest.approx(brute_force_auroc(scores, labels), abs=1e-12)
    assert auroc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(
        brute_force_auroc(scores, labels), abs=1e-12
    )


def test_auroc_edge_cases():
    assert auroc([0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1]) == 0.0
    assert auroc([1.0, 1.0, 1.0], [0, 1, 1]) == 0.5
    with pytest.raises(LeWMInputError):
        auroc([0.1, 0.2], [1, 1])


def test_teleports_are_never_moves(graph):
    rng = np.random.default_rng(0)
    sources = rng.integers(0, graph.num_vertices, size=2000)
    targets = teleport_vertices(graph, sources, rng)
    assert not graph.has_edges(sources, targets).any()
    assert (targets != sources).all()
    # Uniform over the allowed vertices of one source (chi-square-free sanity: all appear).
    v = int(sources[0])
    allowed = set(range(graph.num_vertices)) - set(graph.neighbors(v).tolist()) - {v}
    many = teleport_vertices(graph, np.full(3000, v), rng)
    assert set(many.tolist()) == allowed


def test_surprise_separates_moves_from_teleports(graph, walks):
    oracle = MoveOracle(graph, history_length=H)
    spans, states = spans_and_states(graph, walks, W + H, 200)
    actions = torch.from_numpy(move_actions(graph, spans, W))
    true_next = states[:, H]
    rng = np.random.default_rng(0)
    tele = teleport_vertices(graph, spans[:, W + H - 2], rng)
    tele_next = torch.cat([states[:, H - 1, 1:], torch.from_numpy(tele)[:, None]], 1)
    s_true = surprise(oracle, states[:, :H], actions, true_next)
    s_tele = surprise(oracle, states[:, :H], actions, tele_next)
    assert s_true.shape == (200,)
    assert (s_true == 0).all()
    assert (s_tele == 2).all()  # two distinct one-hot latents
    scores = torch.cat([s_true, s_tele])
    labels = torch.cat([torch.zeros(200), torch.ones(200)]).bool()
    assert auroc(scores, labels) == 1.0


def test_hard_negatives_are_the_other_valid_neighbours(graph):
    rng = np.random.default_rng(0)
    sources = rng.integers(0, graph.num_vertices, size=2000)
    table = neighbor_table(graph)
    taken = table[sources, (rng.random(2000) * graph.out_degree[sources]).astype(np.int64)]
    hard = hard_negative_vertices(graph, sources, taken, rng)
    single = graph.out_degree[sources] == 1
    assert (hard[single] == -1).all()
    assert graph.has_edges(sources[~single], hard[~single]).all()
    assert (hard[~single] != taken[~single]).all()
    # Uniform over the other neighbours of one source: each appears.
    v = int(np.flatnonzero(graph.out_degree >= 3)[0])
    first = table[v, 0]
    many = hard_negative_vertices(graph, np.full(3000, v), np.full(3000, first), rng)
    assert set(many.tolist()) == set(graph.neighbors(v).tolist()) - {first}
    counts = np.bincount(many, minlength=graph.num_vertices)[many[:1]]
    assert abs(counts[0] / 3000 - 1 / (graph.out_degree[v] - 1)) < 0.05
    with pytest.raises(LeWMInputError):
        hard_negative_vertices(graph, sources[:1], sources[:1], rng)  # no self-loops


def test_surprise_separation_of_hard_negatives_needs_the_action(graph, walks):
    """A perfect model tells the true next window from another neighbour's; the copy score
    (one-hot latents: every other vertex is at distance 2) and an action-blind model cannot."""
    spans, states = spans_and_states(graph, walks, W + H, 3000, seed=5)
    oracle = MoveOracle(graph, history_length=H)
    cand = move_action_candidates(oracle, graph, spans, W, batch_size=4096)
    source, taken = spans[:, W + H - 2], spans[:, W + H - 1]
    hard = hard_negative_vertices(graph, source, taken, np.random.default_rng(1))
    keep = torch.from_numpy(np.flatnonzero(hard >= 0))
    z_true = oracle.encode(states[:, H])[keep]
    z_hard = oracle.embedding[torch.from_numpy(hard)[keep]]
    shuffled = shuffled_actions(cand, seed=3)
    args = (cand.z_hist[keep], cand.actions.select(keep), shuffled.select(keep), z_true, z_hard)
    out = surprise_separation(oracle, *args)
    assert out["auroc"] == 1.0 and out["true"] == 0.0 and out["negative"] == 2.0
    assert out["auroc_copy"] == 0.5  # all tied
    assert out["num_items"] == keep.numel()
    assert abs(out["auroc_shuffled"] - 0.5) < 0.03
    blind = surprise_separation(NeighbourhoodModel(graph, history_length=H), *args)
    assert blind["auroc"] == pytest.approx(0.5, abs=1e-3)  # both neighbours: same surprise
    with pytest.raises(LeWMInputError):
        surprise_separation(oracle, *args[:3], z_true[:-1], z_hard)


# ---- health ----------------------------------------------------------------------------------


def test_representation_health_contrasts_gaussian_and_collapsed():
    g = torch.Generator().manual_seed(0)
    gauss = representation_health(torch.randn(256, 16, generator=g), num_slices=256)
    collapsed = representation_health(torch.randn(1, 16).expand(256, 16) + 0.0, num_slices=256)
    assert gauss["effective_rank"] > 12
    assert gauss["var_per_dim"] == pytest.approx(1.0, abs=0.15)
    assert gauss["sigreg"] < 3.0
    assert collapsed["effective_rank"] == 0.0
    assert collapsed["var_per_dim"] == 0.0
    assert collapsed["sigreg"] > 20 * gauss["sigreg"]


# ---- the whole evaluation --------------------------------------------------------------------

KEYS = [
    K.EVAL_ACTION_R1, K.EVAL_ACTION_R5, K.EVAL_ACTION_MRR, K.EVAL_ACTION_R1_COPY,
    K.EVAL_ACTION_R1_SHUFFLED, K.EVAL_ACTION_CHANCE, K.EVAL_ROLLOUT_L2, K.EVAL_ROLLOUT_L2_COPY,
    K.EVAL_ROLLOUT_COS, K.EVAL_ROLLOUT_COS_COPY, K.EVAL_EFFECTIVE_RANK, K.EVAL_VAR_PER_DIM,
    K.EVAL_SIGREG, K.EVAL_SURPRISE_AUROC,
]  # fmt: skip


def test_evaluate_world_model_with_a_perfect_oracle(graph):
    config = WalkCorpusConfig(num_vertices=24, num_blocks=2, context_window=W, walk_length=24)
    meta = WalkMetadata(graph, [], config, None)
    oracle = MoveOracle(graph, history_length=H)
    settings = WorldModelEvalConfig(num_items=300, num_rollouts=50, num_walks=40, seed=2)
    out = evaluate_world_model(oracle, meta, settings)
    for key in KEYS:
        assert key in out, key
    assert out[K.EVAL_ACTION_R1] == 1.0
    assert out[K.EVAL_SURPRISE_AUROC] == 1.0
    assert out[K.EVAL_SURPRISE_AUROC_HARD] == 1.0
    assert out[K.EVAL_SURPRISE_AUROC_COPY] == 0.5  # one-hot latents: copy ties everything
    assert out[K.EVAL_SURPRISE_AUROC_HARD_COPY] == 0.5
    assert abs(out[K.EVAL_SURPRISE_AUROC_HARD_SHUFFLED] - 0.5) < 0.08
    assert out[K.EVAL_ROLLOUT_L2] == [0.0] * 8
    assert all(v > 0 for v in out[K.EVAL_ROLLOUT_L2_COPY])
    # The items: the source states and true next vertices the evaluation draws.
    data = held_out_walks(meta, settings.num_walks, None, settings.seed)
    rng = np.random.default_rng(derive_seed(settings.seed, "world-model-items"))
    spans = sample_spans(data.walks, W + H, settings.num_items, rng)
    multi = graph.out_degree[spans[:, W + H - 2]] > 1
    assert out[K.EVAL_SURPRISE_HARD_NUM_ITEMS] == multi.sum()
    # Health of the one-hot latents of the source vertices.
    want = effective_rank(torch.eye(graph.num_vertices)[torch.from_numpy(spans[:, W + H - 2])])
    assert out[K.EVAL_EFFECTIVE_RANK] == pytest.approx(want.item(), rel=1e-5)
    # Deterministic given the seed; a different seed draws other items.
    again = evaluate_world_model(oracle, meta, settings)
    assert again[K.EVAL_ACTION_R1_SHUFFLED] == out[K.EVAL_ACTION_R1_SHUFFLED]
    assert again[K.EVAL_ROLLOUT_L2_COPY] == out[K.EVAL_ROLLOUT_L2_COPY]
    other = evaluate_world_model(
        oracle, meta, WorldModelEvalConfig(num_items=300, num_rollouts=50, num_walks=40, seed=3)
    )
    assert other[K.EVAL_ROLLOUT_L2_COPY] != out[K.EVAL_ROLLOUT_L2_COPY]


def test_teleports_in_the_evaluation_leave_the_neighbourhood(graph, walks):
    model = NeighbourhoodModel(graph, history_length=H)
    settings = WorldModelEvalConfig(num_items=400, num_rollouts=8, max_horizon=2)
    out = evaluate_world_model(model, HeldOutWalks(graph, walks, W), settings)
    assert out[K.EVAL_SURPRISE_AUROC] == 1.0
    # Blind to the action: a hard negative (another neighbour) is exactly as unsurprising, and
    # shuffling the action changes nothing.
    assert out[K.EVAL_SURPRISE_AUROC_HARD] == pytest.approx(0.5, abs=1e-2)
    assert out[K.EVAL_SURPRISE_AUROC_HARD_SHUFFLED] == pytest.approx(0.5, abs=1e-2)
    assert out[K.EVAL_SURPRISE_AUROC_SHUFFLED] == out[K.EVAL_SURPRISE_AUROC]


def test_tiny_lewm_untrained_equals_copy(graph, walks, tiny_lewm_model):
    model = tiny_lewm_model(
        encoder_config={**TINY_ENCODER, "vocab_size": graph.num_vertices, "num_attention_heads": 4},
        predictor_heads=4,
        history_length=H,
        action_vocab_size=32,
        action_hidden=16,
        sigreg_num_slices=32,
    )
    model.train()
    settings = WorldModelEvalConfig(num_items=64, num_rollouts=16, max_horizon=5, batch_size=128)
    out = evaluate_world_model(model, HeldOutWalks(graph, walks, W), settings)
    assert model.training  # restored
    assert set(KEYS) <= set(out)
    # An untrained predictor returns z exactly: every ranking equals the copy ranking.
    for key in ("r1", "r5", "mrr"):
        assert out[K.EVAL_ACTION_PREFIX + key] == out[K.EVAL_ACTION_PREFIX + key + "_copy"]
    assert out[K.EVAL_ROLLOUT_L2] == out[K.EVAL_ROLLOUT_L2_COPY]
    assert len(out[K.EVAL_ROLLOUT_L2]) == 5 and len(out[K.EVAL_ROLLOUT_COS_COPY]) == 5
    assert out[K.EVAL_SURPRISE_TRUE] > 0
    # Surprise is the copy score, whatever the action.
    for key in (K.EVAL_SURPRISE_AUROC, K.EVAL_SURPRISE_AUROC_HARD):
        assert out[key] == pytest.approx(out[key + "_copy"], abs=1e-12), key
        assert out[key] == out[key + "_shuffled"], key
    # The items are the model's business only through its latents: the chance level is the
    # perfect oracle's on the same settings.
    oracle = evaluate_world_model(
        MoveOracle(graph, history_length=H), HeldOutWalks(graph, walks, W), settings
    )
    assert out[K.EVAL_ACTION_CHANCE] == oracle[K.EVAL_ACTION_CHANCE]
    assert out[K.EVAL_SURPRISE_HARD_NUM_ITEMS] == oracle[K.EVAL_SURPRISE_HARD_NUM_ITEMS]


def test_settings_are_validated_in_one_place():
    with pytest.raises(LeWMConfigError) as err:
        WorldModelEvalConfig(num_items=1)
    assert err.value.field == "num_items"
    with pytest.raises(LeWMConfigError) as err:
        WorldModelEvalConfig(max_horizon=0)
    assert err.value.field == "max_horizon"
    with pytest.raises(LeWMConfigError) as err:
        WorldModelEvalConfig(batch_size=2.5)
    assert err.value.field == "batch_size"


def test_short_walks_are_refused(graph):
    oracle = MoveOracle(graph, history_length=H)
    short = HeldOutWalks(graph, generate_walks(graph, [], 10, W + 4, seed=0), W)
    with pytest.raises(LeWMConfigError) as err:
        evaluate_world_model(oracle, short, WorldModelEvalConfig(num_items=8, max_horizon=8))
    assert err.value.field == "walk_length"


def test_held_out_walks_from_metadata_are_seeded_and_valid(graph):
    config = WalkCorpusConfig(num_vertices=24, num_blocks=2, context_window=W, walk_length=20)
    meta = WalkMetadata(graph, [], config, None)
    a = held_out_walks(meta, num_walks=16, seed=1)
    b = held_out_walks(meta, num_walks=16, seed=1)
    np.testing.assert_array_equal(a.walks, b.walks)
    assert a.walks.shape == (16, 20) and a.window == W
    assert graph.has_edges(a.walks[:, :-1], a.walks[:, 1:]).all()


@pytest.mark.parametrize("entry", ["world_model", "planning"])
def test_entry_modules_re_export_the_parts(entry):
    # `lewm_hf.evaluation.world_model` and `.planning` keep every public name of the parts.
    module = importlib.import_module(f"lewm_hf.evaluation.{entry}")
    for name in module.__all__:
        home = getattr(module, name).__module__  # the concern module that defines it
        assert home.startswith("lewm_hf.evaluation."), (name, home)
        assert name in importlib.import_module(home).__all__, (name, home)
