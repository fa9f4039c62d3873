"""The edit evaluation with models whose answers are known: the candidates of edit-action
discrimination, and the references of SNV recovery (chance under the draw's prior, the
action-shuffled control)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn.functional import one_hot

from lewm_hf import metric_keys as K
from lewm_hf.data.dna import DNA_END_ID, DNA_VOCAB_SIZE
from lewm_hf.data.edits.corpus import EditCorpusConfig, build_edit_corpus, edits_from_row
from lewm_hf.data.edits.ops import Edit, EditOp, apply_edit, map_locus
from lewm_hf.evaluation.discrimination import action_discrimination
from lewm_hf.evaluation.edits import (
    EditEvaluationArguments,
    edit_action_candidates,
    evaluate_edit_model,
    perfect_predictor_r1,
    snv_recovery,
)
from lewm_hf.evaluation.retrieval import retrieval_metrics, retrieval_ranks

L = 32


class EditOracle(torch.nn.Module):
    """A perfect edit world model: the latent is the one-hot window and its locus; `predict`
    decodes the action as the model's config codes it (locus-relative positions, `SUB`
    reference tokens shifted by `DNA_VOCAB_SIZE`), applies the edit and encodes the result. It
    counts the `SUB` actions whose reference tokens are not the bases they replace."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(
            action_position_origin="locus", action_reference_offset=DNA_VOCAB_SIZE
        )
        self.wrong_references = 0

    def encode(self, input_ids, locus=None):
        window = one_hot(input_ids.long(), DNA_VOCAB_SIZE).flatten(1).float()
        return torch.cat([window, one_hot(locus.long(), L + 1).float()], 1)

    def decode(self, z):
        window = z[:, : L * DNA_VOCAB_SIZE].view(-1, L, DNA_VOCAB_SIZE).argmax(-1)
        return window, z[:, L * DNA_VOCAB_SIZE :].argmax(-1)

    def predict(self, z_hist, actions):
        window, locus = self.decode(z_hist[:, -1])
        out = []
        for n in range(window.shape[0]):
            tokens = actions.tokens[n, -1][actions.token_mask[n, -1]].tolist()
            written = tuple(tokens[: tokens.index(DNA_END_ID)])
            refs = [t - DNA_VOCAB_SIZE for t in tokens if t >= DNA_VOCAB_SIZE]
            op = int(actions.ops[n, -1])
            pos = int(actions.positions[n, -1]) - L + int(locus[n])  # locus-relative -> window
            source = window[n].numpy()
            if op == EditOp.SUB and refs != source[pos : pos + len(written)].tolist():
                self.wrong_references += 1
            edit = Edit(EditOp(op), pos, written)
            state = torch.from_numpy(apply_edit(source, edit))
            new_locus = map_locus(int(locus[n]), op, pos, edit.length, L)
            out.append(self.encode(state[None], torch.tensor([new_locus])))
        return torch.cat(out).unsqueeze(1)


class CopyModel(EditOracle):
    """Predicts no change: every candidate ranks as the copy baseline ranks it."""

    def predict(self, z_hist, actions):
        return z_hist[:, -1:].clone()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    config = EditCorpusConfig(
        synthetic_records=1, synthetic_length=3000, window_length=L, window_stride=8, margin=6,
        max_actions=2, max_indel_len=3, mnv_max_len=3, cluster_radius=4,
    )  # fmt: skip
    rows = build_edit_corpus(config, tmp_path_factory.mktemp("edits"))["validation"]
    return config, [rows[i] for i in range(24)]


def test_edit_candidates_are_the_true_edit_its_other_bases_and_distinct_next_states(corpus):
    config, rows = corpus
    oracle = EditOracle()
    cands = edit_action_candidates(oracle, rows, config.sampler(), 4, num_random=6, seed=2)
    num = cands.candidate_mask.shape[0]
    assert num == len(rows) and (cands.target == 0).all()
    for i, row in enumerate(rows):
        source = np.asarray(row["input_ids"][0])
        locus = int(row["locus"][0])
        true = edits_from_row(row)[0]
        # The source state, and the true edit first with its true next state.
        src = oracle.encode(torch.from_numpy(source)[None], torch.tensor([locus]))
        torch.testing.assert_close(cands.z_hist[i, 0], src[0])
        next_state = apply_edit(source, true)
        next_locus = map_locus(locus, int(true.op), true.pos, true.length, L)
        want = oracle.encode(torch.from_numpy(next_state)[None], torch.tensor([next_locus]))
        torch.testing.assert_close(cands.candidate_latents[i, 0], want[0])
        # The other bases at the true edit's position follow, as single-base SUBs.
        ref = int(source[true.pos])
        others = [b for b in range(4) if b != ref and Edit(EditOp.SUB, true.pos, (b,)) != true]
        window, _ = oracle.decode(cands.candidate_latents[i, 1 : 1 + len(others)])
        for k, base in enumerate(others):
            if cands.candidate_mask[i, 1 + k]:
                assert window[k, true.pos] == base
        # Real candidates lead to distinct next states (the latent holds window and locus).
        real = cands.candidate_latents[i][cands.candidate_mask[i]]
        assert torch.unique(real, dim=0).shape[0] == real.shape[0]
    # A perfect model finds the true edit every time; the copy model only as copy does.
    out = action_discrimination(oracle, cands, seed=0)
    assert out["r1"] == 1.0 and out["mrr"] == pytest.approx(1.0)
    assert oracle.wrong_references == 0
    assert out["chance"] == pytest.approx((1 / cands.candidate_mask.sum(1).double()).mean())
    copy = action_discrimination(CopyModel(), cands, seed=0)
    assert copy["r1"] == copy["r1_copy"] and copy["r1_shuffled"] == copy["r1"]


def test_edit_evaluation_reports_the_perfect_predictor_ceiling(corpus):
    config, rows = corpus
    args = EditEvaluationArguments(eval_items=8, eval_copy_items=0, eval_random_edits=4)
    out = evaluate_edit_model(EditOracle(), rows, config.sampler(), 4, args)
    assert out[K.EVAL_EDIT_ACTION_R1] == 1.0
    assert out[K.EVAL_EDIT_ACTION_R1_CEILING] == 1.0  # every next state has its own latent
    assert out[K.EVAL_SNV_RECOVERY_R1] == 1.0


def test_snv_recovery_chance_under_the_draws_prior_and_the_shuffled_control(corpus):
    _, rows = corpus
    windows = np.stack([np.asarray(r["input_ids"][0]) for r in rows])
    loci = np.array([2] + [16] * (len(rows) - 1))  # the first item's prior is clipped: 0..6
    out = snv_recovery(EditOracle(), windows, loci, radius=4, seed=1, copy_items=0)
    assert out[K.EVAL_SNV_RECOVERY_R1] == 1.0
    prior = [1 / (3 * 7)] + [1 / (3 * 9)] * (len(rows) - 1)  # ACGT windows: 3 bases a position
    assert out[K.EVAL_SNV_RECOVERY_CHANCE_PRIOR] == pytest.approx(np.mean(prior))
    assert out[K.EVAL_SNV_RECOVERY_CHANCE] == pytest.approx(1 / (3 * L))
    # With every candidate scored by a random candidate's prediction, a perfect model is at
    # chance, far below its own Recall@1.
    assert out[K.EVAL_SNV_RECOVERY_R1_SHUFFLED] < 5 * out[K.EVAL_SNV_RECOVERY_CHANCE]
    copy = snv_recovery(CopyModel(), windows, loci, radius=4, seed=1, copy_items=0)
    assert copy[K.EVAL_SNV_RECOVERY_R1] == pytest.approx(out[K.EVAL_SNV_RECOVERY_CHANCE])


class RoundingOracle(EditOracle):
    """`EditOracle` that sees only the locus and the bases at and left of it, plus a rounding-
    sized term of the whole window: next states that differ only right of the locus get latents
    that differ by rounding alone (as a causal encoder at shifted positions gives them)."""

    def encode(self, input_ids, locus=None):
        ids = input_ids.long()
        seen = torch.arange(L).unsqueeze(0) <= locus.long().unsqueeze(1)
        window = one_hot(torch.where(seen, ids, 0), DNA_VOCAB_SIZE).flatten(1).float()
        rounding = 1e-7 * (ids * torch.arange(1, L + 1)).sum(1, keepdim=True).float() / L
        return torch.cat([window, one_hot(locus.long(), L + 1).float(), rounding], 1)

    def decode(self, z):
        return super().decode(z[:, :-1])


def test_the_ceiling_counts_latents_equal_up_to_rounding_as_ties(corpus):
    config, rows = corpus
    model = RoundingOracle()
    cands = edit_action_candidates(model, rows, config.sampler(), 4, num_random=4)
    latents, mask = cands.candidate_latents, cands.candidate_mask
    dist = (latents - latents[:, :1]).pow(2).sum(-1)[:, 1:][mask[:, 1:]]
    assert bool(((dist > 0) & (dist < 1e-10)).any())  # distinct states, rounding-equal latents
    exact = retrieval_metrics(*retrieval_ranks(latents[:, 0], latents, mask, cands.target))["r1"]
    assert exact == 1.0  # exact ties only: the rounding decides every such item
    assert perfect_predictor_r1(cands) < 1.0
    assert perfect_predictor_r1(cands, rtol=0.0) == 1.0
    assert perfect_predictor_r1(edit_action_candidates(
        EditOracle(), rows, config.sampler(), 4, num_random=4
    )) == 1.0  # fmt: skip
