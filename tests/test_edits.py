"""Edits: apply, validation, samplers, trajectories, locus clusters, actions and the edit corpus."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from lewm_hf import (
    ActionInputs,
    DataCollatorForLeWM,
    LeWMConfigError,
    LeWMInputError,
    LeWMModel,
)
from lewm_hf import metric_keys as K
from lewm_hf.data import corpus as corpus_cache
from lewm_hf.data.dna import (
    DNA_END_ID,
    DNA_VOCAB_SIZE,
    N_ID,
    decode_dna,
    encode_dna,
    synthetic_records,
    write_fasta,
)
from lewm_hf.data.edits import (
    EDIT_COLUMNS,
    Edit,
    EditBatch,
    EditCorpusConfig,
    EditOp,
    EditSampler,
    apply_edit,
    apply_edit_batch,
    apply_edits,
    build_edit_corpus,
    code_edit_actions,
    edits_from_row,
    edits_to_actions,
    sample_indels,
    sample_mnvs,
    sample_snvs,
    sample_trajectories,
    truncated_geometric,
    with_reference_tokens,
)
from lewm_hf.data.edits import corpus as edit_corpus
from lewm_hf.determinism import derive_seed

WINDOW = "ACGTTGCAAC"  # indices 0..9


# The tiny models here run 50x slower with two OpenMP threads on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def _dna(text: str) -> np.ndarray:
    return encode_dna(text).astype(np.int64)


def _edit(op: EditOp, pos: int, text: str) -> Edit:
    if op == EditOp.DEL:
        return Edit.deletion(_dna(WINDOW), pos, len(text))
    return Edit(op, pos, tuple(_dna(text).tolist()))


# Hand-computed: (op, pos, tokens or deleted text, result without / with length preservation).
APPLY_CASES = [
    (EditOp.SUB, 0, "GG", "GGGTTGCAAC", "GGGTTGCAAC"),
    (EditOp.SUB, 4, "GG", "ACGTGGCAAC", "ACGTGGCAAC"),
    (EditOp.SUB, 8, "GG", "ACGTTGCAGG", "ACGTTGCAGG"),
    (EditOp.INS, 0, "GG", "GGACGTTGCAAC", "GGACGTTGCA"),  # left half: trim the right end
    (EditOp.INS, 5, "GG", "ACGTTGGGCAAC", "ACGTTGGGCA"),  # midpoint exactly L / 2: right end
    (EditOp.INS, 6, "GG", "ACGTTGGGCAAC", "GTTGGGCAAC"),  # right half: trim the left end
    (EditOp.INS, 10, "GG", "ACGTTGCAACGG", "GTTGCAACGG"),  # append
    (EditOp.DEL, 0, "AC", "GTTGCAAC", "GTTGCAACNN"),  # pad on the right
    (EditOp.DEL, 4, "TG", "ACGTCAAC", "ACGTCAACNN"),  # midpoint 5 = L / 2: right
    (EditOp.DEL, 5, "GC", "ACGTTAAC", "NNACGTTAAC"),  # midpoint 6: pad on the left
    (EditOp.DEL, 8, "AC", "ACGTTGCA", "NNACGTTGCA"),
]


@pytest.mark.parametrize(("op", "pos", "text", "free", "kept"), APPLY_CASES)
def test_apply_edits_every_op_at_start_middle_end(op, pos, text, free, kept):
    edit = _edit(op, pos, text)
    assert decode_dna(apply_edits(_dna(WINDOW), [edit], preserve_length=False)) == free
    out = apply_edits(_dna(WINDOW), [edit], preserve_length=True)
    assert decode_dna(out) == kept
    # The vectorised kernel (used by the corpus) agrees with the reference.
    batch = EditBatch(
        np.array([op]), np.array([pos]), np.array([len(text)]), np.array([edit.tokens])
    )
    assert decode_dna(apply_edit_batch(_dna(WINDOW)[None], batch)[0]) == kept


def test_apply_edits_on_vertex_ids_with_a_pad_token():
    window = np.arange(100, 110)
    out = apply_edits(window, [Edit.deletion(window, 7, 3)], pad_token=-1)
    assert out.tolist() == [-1, -1, -1, 100, 101, 102, 103, 104, 105, 106]
    # Positions are in the coordinates of the window left by the previous edit.
    out = apply_edits(window, [Edit(EditOp.INS, 0, (7,)), Edit(EditOp.SUB, 0, (8, 9))])
    assert out.tolist() == [8, 9, 101, 102, 103, 104, 105, 106, 107, 108]


@pytest.mark.parametrize(
    ("edit", "field", "reason"),
    [
        (Edit(EditOp.SUB, 9, (0, 0)), "edits[0].pos", "must start in"),
        (Edit(EditOp.SUB, -1, (0,)), "edits[0].pos", "must start in"),
        (Edit(EditOp.INS, 11, (0,)), "edits[0].pos", "must start in"),
        (Edit(EditOp.DEL, 9, (2, 1)), "edits[0].pos", "must start in"),
        (Edit(EditOp.SUB, 3, ()), "edits[0].tokens", "SUB needs tokens"),
        (Edit(EditOp.INS, 3, ()), "edits[0].tokens", "INS needs tokens"),
        (Edit(EditOp.DEL, 3, ()), "edits[0].tokens", "DEL needs"),
        (Edit(EditOp.INS, 3, (1,) * 17), "edits[0].tokens", "max_edit_len=16"),
        (Edit(EditOp.DEL, 0, (1, 1)), "edits[0].tokens", "must be the reference"),
    ],
)
def test_apply_edits_validation_errors(edit, field, reason):
    with pytest.raises(LeWMInputError, match=reason) as info:
        apply_edits(_dna(WINDOW), [edit])
    assert info.value.field == field


def test_edit_validation_names_the_failing_edit():
    ok = Edit(EditOp.SUB, 0, (1,))
    with pytest.raises(LeWMInputError) as info:
        apply_edits(_dna(WINDOW), [ok, Edit(EditOp.INS, 99, (1,))])
    assert info.value.field == "edits[1].pos"
    assert info.value.value == 99
    with pytest.raises(LeWMInputError, match="SUB"):
        Edit(7, 0, (1,))
    assert apply_edits(_dna(WINDOW), [Edit(EditOp.INS, 0, (1,) * 17)], max_edit_len=17).size == 10


def _slice_oracle(window: list[int], edit: Edit, length: int, pad: int) -> list[int]:
    """Apply one edit by list slicing (an independent reference of the trim/pad rule)."""
    p, toks, n = edit.pos, list(edit.tokens), edit.length
    if edit.op == EditOp.SUB:
        return window[:p] + toks + window[p + n :]
    if edit.op == EditOp.INS:
        out = window[:p] + toks + window[p:]
        return out[n:] if p > length / 2 else out[:length]
    out = window[:p] + window[p + n :]
    return [pad] * n + out if p + n / 2 > length / 2 else out + [pad] * n


def test_edit_trajectories_at_once_equal_one_by_one_on_10k():
    rng = np.random.default_rng(7)
    length, steps = 40, 4
    windows = rng.integers(0, 5, size=(10_000, length))
    sampler = EditSampler(margin=0)  # edits at the very edges too
    half = len(windows) // 2
    trajs = [
        sample_trajectories(windows[:half], steps, rng, sampler, cluster_radius=3),
        sample_trajectories(windows[half:], steps, rng, sampler, cluster_radius=None),
    ]
    ops = np.concatenate([t.ops for t in trajs])
    assert set(np.unique(ops)) == {0, 1, 2}
    checked = 0
    for t, offset in zip(trajs, (0, half)):
        assert t.states.shape == (len(t), steps + 1, length)  # lengths preserved
        for i in range(len(t)):
            edits = t.edits(i)
            source = windows[offset + i]
            at_once = apply_edits(source, edits)
            assert np.array_equal(at_once, t.states[i, -1])
            if i % 10 == 0:  # one by one, against the slicing oracle
                state = source.tolist()
                for k, edit in enumerate(edits):
                    state = _slice_oracle(state, edit, length, N_ID)
                    assert state == t.states[i, k + 1].tolist()
                    assert apply_edit(t.states[i, k], edit).tolist() == state
                checked += 1
    assert checked == 1000


def test_truncated_geometric_edit_lengths_chi_square():
    lengths = truncated_geometric(np.random.default_rng(0), 200_000, p=0.5, max_len=15)
    counts = np.bincount(lengths, minlength=16)
    assert counts[0] == 0 and lengths.max() == 15
    n = np.arange(1, 16)
    pmf = 0.5**n / (1 - 0.5**15)  # p (1 - p)^(n - 1) with p = 1/2
    # Pool the tail so every expected count is >= 5.
    expected = pmf * len(lengths)
    obs = np.append(counts[1:12], counts[12:].sum())
    exp = np.append(expected[:11], expected[11:].sum())
    assert stats.chisquare(obs, exp).pvalue > 1e-3
    # A plain (untruncated) geometric would put 2^-15 of its mass beyond 15: never drawn here.
    assert truncated_geometric(np.random.default_rng(1), 1000, p=1.0).tolist() == [1] * 1000


def test_snv_edit_sampler_is_uniform_with_alt_different_from_ref():
    rng = np.random.default_rng(1)
    length, margin, num = 30, 3, 60_000
    windows = rng.integers(0, 4, size=(num, length))
    windows[::7, :] = N_ID  # some all-N windows: any of the 4 bases is an alternative
    batch = sample_snvs(windows, rng, margin=margin)
    assert np.all(batch.ops == EditOp.SUB) and np.all(batch.lengths == 1)
    pos = batch.positions
    assert pos.min() == margin and pos.max() == length - 1 - margin
    assert stats.chisquare(np.bincount(pos - margin)).pvalue > 1e-3
    ref = windows[np.arange(num), pos]
    alt = batch.tokens[:, 0]
    assert np.all(alt != ref) and set(np.unique(alt)) == {0, 1, 2, 3}
    for r in range(4):  # alternative uniform over the three other bases
        counts = np.bincount(alt[ref == r], minlength=4)
        assert counts[r] == 0
        assert stats.chisquare(np.delete(counts, r)).pvalue > 1e-3
    counts = np.bincount(alt[ref == N_ID], minlength=4)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_indel_edit_sampler_distribution():
    rng = np.random.default_rng(2)
    length, margin, num = 48, 4, 80_000
    windows = rng.integers(0, 4, size=(num, length))
    batch = sample_indels(windows, rng, margin=margin)
    ins, dele = batch.ops == EditOp.INS, batch.ops == EditOp.DEL
    assert np.all(ins | dele)
    assert abs(ins.sum() - num / 2) < 4 * np.sqrt(num / 4)  # 50/50 within 4 sigma
    n = np.arange(1, 16)
    pmf = 0.5**n / (1 - 0.5**15)
    for mask in (ins, dele):
        counts = np.bincount(batch.lengths[mask], minlength=16)[1:]
        exp = pmf * mask.sum()
        obs = np.append(counts[:10], counts[10:].sum())
        assert stats.chisquare(obs, np.append(exp[:10], exp[10:].sum())).pvalue > 1e-3
    pos, lens = batch.positions, batch.lengths
    assert np.all(pos >= margin)
    assert np.all(pos[ins] <= length - margin) and np.all(pos[dele] <= length - margin - lens[dele])
    # Positions uniform given the length: single-base deletions over [margin, L - margin - 1].
    one = dele & (lens == 1)
    counts = np.bincount(pos[one] - margin)
    assert len(counts) == length - 2 * margin
    assert stats.chisquare(counts).pvalue > 1e-3
    counts = np.bincount(pos[ins & (lens == 1)] - margin)
    assert len(counts) == length - 2 * margin + 1  # gaps margin..L - margin
    assert stats.chisquare(counts).pvalue > 1e-3
    # Deletions carry the reference; insertions write uniform bases.
    for i in np.flatnonzero(dele)[:2000]:
        assert batch.tokens[i, : lens[i]].tolist() == windows[i, pos[i] : pos[i] + lens[i]].tolist()
    inserted = batch.tokens[ins][batch.tokens[ins] >= 0]
    assert stats.chisquare(np.bincount(inserted, minlength=4)).pvalue > 1e-3


def test_mnv_edit_sampler_changes_every_base():
    rng = np.random.default_rng(3)
    length, margin, num = 32, 2, 30_000
    windows = rng.integers(0, 4, size=(num, length))
    batch = sample_mnvs(windows, rng, margin=margin)
    assert np.all(batch.ops == EditOp.SUB)
    counts = np.bincount(batch.lengths, minlength=9)
    assert counts[:2].sum() == 0 and len(counts) == 9
    assert stats.chisquare(counts[2:]).pvalue > 1e-3
    assert np.all(batch.positions + batch.lengths <= length - margin)
    for i in range(2000):
        n, p = batch.lengths[i], batch.positions[i]
        assert np.all(batch.tokens[i, :n] != windows[i, p : p + n])
        assert np.all(batch.tokens[i, n:] == -1)


def test_edit_sampler_mixture_follows_weights():
    rng = np.random.default_rng(4)
    windows = rng.integers(0, 4, size=(50_000, 64))
    sampler = EditSampler(margin=8, snv_weight=0.2, mnv_weight=0.3, indel_weight=0.5)
    batch = sampler.sample(windows, rng)
    snv = (batch.ops == EditOp.SUB) & (batch.lengths == 1)
    mnv = (batch.ops == EditOp.SUB) & (batch.lengths > 1)
    obs = [snv.sum(), mnv.sum(), (batch.ops == EditOp.INS).sum(), (batch.ops == EditOp.DEL).sum()]
    exp = np.array([0.2, 0.3, 0.25, 0.25]) * len(windows)
    assert stats.chisquare(obs, exp).pvalue > 1e-3
    with pytest.raises(LeWMConfigError, match="margin"):
        EditSampler(margin=30).sample(windows, rng)  # 64 < 2 * 30 + 15 + 1


# The shared tiny model on DNA: the default backbone over the DNA vocabulary, edit actions (three
# operations, a token per base), centered pooling.
DNA_MODEL = {
    "encoder_config": None,
    "vocab_size": DNA_VOCAB_SIZE,
    "num_action_ops": 3,
    "action_vocab_size": DNA_VOCAB_SIZE,
    "pooling": "centered",
    "pool_radius": 3,
    "predictor_heads": 4,
    "action_hidden": 32,
    "dropout": 0.0,
    "history_length": 4,
    "sigreg_num_slices": 32,
}


@pytest.fixture
def dna_model(tiny_lewm_model):
    """`dna_model(**overrides)`: the tiny model with `DNA_MODEL`'s keys, seed 0."""
    return functools.partial(tiny_lewm_model, **DNA_MODEL)


def _embed(model: LeWMModel, edits: list[Edit], end_token: int | None) -> torch.Tensor:
    actions = edits_to_actions([[e] for e in edits], end_token=end_token)
    actions.pop("action_mask")
    with torch.no_grad():
        return model.encode_actions(ActionInputs.from_batch(actions))[:, 0].double()  # (E, C)


def _min_pairwise_distance(emb: torch.Tensor) -> float:
    dist = torch.cdist(emb, emb)
    dist.fill_diagonal_(float("inf"))
    return float(dist.min())


def test_edit_actions_identify_every_snv_and_deletion(dna_model):
    rng = np.random.default_rng(5)
    window = rng.integers(0, 4, size=128)
    window[30:50] = 0  # a homopolymer: deletions of 1..15 A there differ only in length
    edits = [
        Edit(EditOp.SUB, p, (alt,)) for p in range(128) for alt in range(4) if alt != window[p]
    ]
    assert len(edits) == 3 * 128
    for p in np.linspace(0, 128 - 15, 50).astype(int):
        edits += [Edit.deletion(window, int(p), n) for n in range(1, 16)]
    assert len(edits) == 3 * 128 + 50 * 15
    assert len({(e.op, e.pos, e.tokens) for e in edits}) == len(edits)
    model = dna_model().eval()
    assert _min_pairwise_distance(_embed(model, edits, DNA_END_ID)) > 1e-4
    # Insertions of A, AA, ... at one gap too.
    ins = [Edit(EditOp.INS, 40, (0,) * n) for n in range(1, 16)]
    assert _min_pairwise_distance(_embed(model, ins, DNA_END_ID)) > 1e-4


def test_edit_actions_without_end_token_confuse_deletion_lengths(dna_model):
    # The end token is what makes lengths visible: mean pooling alone maps DEL "A" and DEL "AA"
    # to one embedding.
    window = np.zeros(32, dtype=np.int64)
    dels = [Edit.deletion(window, 10, 1), Edit.deletion(window, 10, 2)]
    model = dna_model().eval()
    assert _min_pairwise_distance(_embed(model, dels, None)) < 1e-6
    assert _min_pairwise_distance(_embed(model, dels, DNA_END_ID)) > 1e-4


def test_edits_to_actions_layout():
    window = _dna(WINDOW)
    batch = edits_to_actions(
        [[Edit(EditOp.SUB, 2, (3,)), Edit.deletion(window, 4, 3)], [Edit(EditOp.INS, 5, (1, 2))]]
    )
    assert batch["action_ops"].tolist() == [[0, 2], [1, 0]]
    assert batch["action_positions"].tolist() == [[2, 4], [5, 0]]
    end = DNA_END_ID
    assert batch["action_tokens"].tolist() == [
        [[3, end, 0, 0], [3, 2, 1, end]],  # DEL "TGC"
        [[1, 2, end, 0], [0] * 4],
    ]
    assert batch["action_token_mask"].sum(-1).tolist() == [[2, 4], [3, 0]]
    assert batch["action_mask"].tolist() == [[True, True], [True, False]]


def _label_violations(traj, radius: int, length: int) -> tuple[int, int, int]:
    """Replay each trajectory on unique labels and check, independently of the library's
    footprint arithmetic, that every edit is seen by the pooling window of both states it
    touches, and that the locus follows its site. Returns (edits, unseen edits, locus errors)."""
    unseen = locus_errors = total = 0
    for i in range(len(traj)):
        labels = np.arange(length)
        for k, edit in enumerate(traj.edits(i)):
            p, n = edit.pos, edit.length
            fresh = tuple(10_000 + 100 * k + j for j in range(n))
            if edit.op == EditOp.DEL:
                relabelled = Edit(EditOp.DEL, p, tuple(labels[p : p + n].tolist()))
            else:
                relabelled = Edit(edit.op, p, fresh)
            new = apply_edits(labels, [relabelled], pad_token=-1)
            c_in, c_out = int(traj.locus[i, k]), int(traj.locus[i, k + 1])
            window_in = set(range(c_in - radius, c_in + radius + 1))
            window_out = set(range(c_out - radius, c_out + radius + 1))
            old_pos = {int(v): j for j, v in enumerate(labels)}
            if edit.op == EditOp.INS:
                block = [j for j, v in enumerate(new) if v in fresh]
                neighbours = [new[j] for j in (block[0] - 1, block[-1] + 1) if 0 <= j < length]
                touched_in = {old_pos[int(v)] for v in neighbours if int(v) in old_pos}
                touched_out = set(block)
            elif edit.op == EditOp.SUB:
                touched_in = touched_out = set(range(p, p + n))
            else:
                touched_in = set(range(p, p + n))
                touched_out = set()
                for j in range(length - 1):
                    a, b = int(new[j]), int(new[j + 1])
                    if a >= 0 and b >= 0 and old_pos[b] != old_pos[a] + 1:
                        touched_out |= {j, j + 1}
            total += 1
            unseen += not (touched_in & window_in and touched_out & window_out)
            # The locus follows its site.
            site = int(labels[c_in])
            where = np.flatnonzero(new == site)
            survivors = [int(v) for v in labels[c_in + 1 :] if v >= 0 and v in set(new.tolist())]
            if site >= 0 and len(where):
                locus_errors += int(where[0]) != c_out
            elif edit.op == EditOp.SUB:
                locus_errors += c_in != c_out
            elif site >= 0 and survivors:  # deleted: the first surviving label to its right
                locus_errors += int(np.flatnonzero(new == survivors[0])[0]) != c_out
            labels = new
    return total, unseen, locus_errors


def test_edit_locus_clusters_every_edit_within_pool_radius():
    rng = np.random.default_rng(6)
    length, radius = 48, 3
    windows = rng.integers(0, 4, size=(400, length))
    sampler = EditSampler(margin=6)
    traj = sample_trajectories(windows, 4, rng, sampler, cluster_radius=radius)
    total, unseen, locus_errors = _label_violations(traj, radius, length)
    assert total == 1600 and unseen == 0 and locus_errors == 0
    # Loci stay `margin` from the edges, so the next edit always has room.
    assert traj.locus.min() >= 6 and traj.locus.max() <= length - 1 - 6
    # The oracle does detect unclustered edits: without a cluster most are unseen.
    free = sample_trajectories(windows, 4, rng, sampler, cluster_radius=None)
    total, unseen, _ = _label_violations(free, radius, length)
    assert unseen > total / 2


def test_free_edits_may_miss_the_cluster_and_keep_the_locus_inside():
    rng = np.random.default_rng(7)
    length, radius, margin = 48, 3, 6
    windows = rng.integers(0, 4, size=(400, length))
    sampler = EditSampler(margin=margin)
    free = sample_trajectories(
        windows, 4, np.random.default_rng(1), sampler, radius, free_fraction=1.0
    )
    total, unseen, locus_errors = _label_violations(free, radius, length)
    # Drawn anywhere: most edits miss the cluster, the locus still follows its site and stays
    # `margin` from the edges.
    assert unseen > total / 2 and locus_errors == 0
    assert free.locus.min() >= margin and free.locus.max() <= length - 1 - margin
    assert (free.positions >= margin).all() and (free.positions <= length - margin).all()
    half = sample_trajectories(
        windows, 4, np.random.default_rng(1), sampler, radius, free_fraction=0.5
    )
    _, unseen_half, _ = _label_violations(half, radius, length)
    assert 0 < unseen_half < unseen
    # 0 draws nothing extra: the trajectories of the default.
    none = sample_trajectories(windows, 4, np.random.default_rng(1), sampler, radius)
    zero = sample_trajectories(
        windows, 4, np.random.default_rng(1), sampler, radius, free_fraction=0.0
    )
    assert np.array_equal(none.states, zero.states) and np.array_equal(none.locus, zero.locus)
    with pytest.raises(LeWMConfigError, match="free_edit_fraction"):
        sample_trajectories(windows, 1, rng, sampler, radius, free_fraction=1.5)


def test_reference_tokens_name_what_a_sub_replaces(dna_model):
    window = _dna(WINDOW)  # ACGTTGCAAC
    edits = [
        [Edit(EditOp.SUB, 2, (3,)), Edit(EditOp.SUB, 5, (0, 1))],  # G>T, then GC>AC
        [Edit.deletion(window, 4, 3), Edit(EditOp.INS, 5, (1, 2))],
        [Edit(EditOp.SUB, 8, (2,))],  # A>G; its second step is padding
    ]
    actions = edits_to_actions(edits)
    states = torch.from_numpy(window).expand(3, 2, -1)  # every edit reads this window
    coded = with_reference_tokens(actions, states, offset=DNA_VOCAB_SIZE)
    end, shift = DNA_END_ID, DNA_VOCAB_SIZE
    tokens = coded["action_tokens"].masked_fill(~coded["action_token_mask"], -1).tolist()
    blank = [-1] * 4
    assert tokens[0] == [
        [3, end, -1, -1, 2 + shift, *blank[:3]],
        [0, 1, end, -1, 2 + shift, 1 + shift, -1, -1],
    ]
    # DEL and INS are unchanged (a deletion names its reference already); padding stays masked.
    assert tokens[1] == [[3, 2, 1, end, *blank], [1, 2, end, -1, *blank]]
    assert tokens[2] == [[2, end, -1, -1, 0 + shift, -1, -1, -1], [-1] * 8]
    for key in ("action_ops", "action_positions", "action_mask"):
        assert torch.equal(coded[key], actions[key])
    # A model reading reference tokens tells apart substitutions of different references.
    model = dna_model(action_vocab_size=2 * DNA_VOCAB_SIZE).eval()
    same_alt = edits_to_actions([[Edit(EditOp.SUB, 4, (0,))], [Edit(EditOp.SUB, 4, (0,))]])
    refs = torch.tensor([[1], [2]])[..., None].expand(-1, -1, 10)  # C>A vs G>A at 4
    with torch.no_grad():
        coded = ActionInputs.from_batch(with_reference_tokens(same_alt, refs, shift))
        emb = model.encode_actions(coded)
    assert (emb[0] - emb[1]).abs().max() > 1e-4
    with pytest.raises(LeWMInputError, match="states"):
        with_reference_tokens(actions, states[:, :1], shift)


def test_code_edit_actions_counts_positions_from_the_locus():
    window = _dna(WINDOW)
    actions = edits_to_actions([[Edit(EditOp.SUB, 2, (3,)), Edit(EditOp.INS, 10, (1,))]])
    states = torch.from_numpy(window).expand(1, 2, -1)
    locus = torch.tensor([[4, 6]])
    assert code_edit_actions(actions, states, locus) is actions  # window coding: unchanged
    coded = code_edit_actions(actions, states, locus, "locus", DNA_VOCAB_SIZE)
    # pos - locus + L: 2 - 4 + 10 and, for an append at L, 10 - 6 + 10.
    assert coded["action_positions"].tolist() == [[8, 14]]
    # References are read at the window position, before the positions are made relative.
    assert coded["action_tokens"][0, 0, 2] == window[2] + DNA_VOCAB_SIZE


def _edit_rows(num: int, seed: int = 0, steps: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    windows = rng.integers(0, 4, size=(num, 40))
    traj = sample_trajectories(windows, steps, rng, EditSampler(margin=6), cluster_radius=3)
    rows = []
    for i in range(num):
        k = 1 + i % steps  # ragged: 1, 2, 3, 1, ...
        rows.append(
            {
                "input_ids": traj.states[i, : k + 1].tolist(),
                "edit_ops": traj.ops[i, :k].tolist(),
                "edit_positions": traj.positions[i, :k].tolist(),
                "edit_tokens": [traj.tokens[i, j, : traj.lengths[i, j]].tolist() for j in range(k)],
                "locus": traj.locus[i, : k + 1].tolist(),
            }
        )
    return rows


def test_edit_collator_pads_states_loci_and_actions():
    rows = _edit_rows(3)
    batch = DataCollatorForLeWM()(rows)
    assert batch["input_ids"].shape == (3, 4, 40)
    assert batch["actions"].mask.tolist() == [[True, False, False], [True, True, False], [True] * 3]
    assert batch["locus"].shape == (3, 4)
    # Padded states and loci repeat the last real one.
    assert torch.equal(batch["input_ids"][0, 1], batch["input_ids"][0, 3])
    assert batch["locus"][0].tolist() == [rows[0]["locus"][0]] + [rows[0]["locus"][1]] * 3
    expected = edits_to_actions([edits_from_row(r) for r in rows])
    assert expected.keys() == batch["actions"].to_batch().keys()
    for key, value in expected.items():
        assert torch.equal(batch["actions"].to_batch()[key], value)
    with pytest.raises(LeWMInputError, match="locus"):
        DataCollatorForLeWM()([{**rows[1], "locus": rows[1]["locus"][:2]}])


def _flat(batch: dict) -> dict:
    """A collated batch with its actions as flat `action_*` tensors, to edit one by one."""
    return {**{k: v for k, v in batch.items() if k != "actions"}, **batch["actions"].to_batch()}


def _model_inputs(flat: dict) -> dict:
    """The model's keyword arguments of a `_flat` batch."""
    rest = {k: v for k, v in flat.items() if not k.startswith("action_")}
    return {**rest, "actions": ActionInputs.from_batch(flat)}


def test_edit_collator_padded_steps_leave_loss_and_gradients_unchanged(dna_model):
    rows = _edit_rows(8, seed=1)
    batch = _flat(DataCollatorForLeWM()(rows))
    model = dna_model().train()
    # AdaLN-zero and the zero last layer of the head make an untrained predictor ignore its
    # actions; give those weights random values so that every input reaches the loss.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2 and not param.any():
                param.normal_(0.0, 0.2)

    def loss_and_grads(b):
        model.zero_grad(set_to_none=True)
        out = model(**_model_inputs(b))
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    out, grads = loss_and_grads(batch)
    g = torch.Generator().manual_seed(0)
    noisy = {k: v.clone() for k, v in batch.items()}
    step_pad = ~batch["action_mask"]  # (B, K)
    state_pad = torch.cat([torch.zeros_like(step_pad[:, :1]), step_pad], dim=1)  # (B, K + 1)
    token_pad = ~batch["action_token_mask"]  # (B, K, L_a), includes padded steps

    def scramble(key, where, low, high):
        values = torch.randint(low, high, noisy[key].shape, generator=g)
        noisy[key] = torch.where(where, values, noisy[key])

    scramble("input_ids", state_pad.unsqueeze(-1).expand_as(noisy["input_ids"]), 0, DNA_VOCAB_SIZE)
    scramble("locus", state_pad, 0, 40)
    scramble("action_ops", step_pad, -100, 100)
    scramble("action_positions", step_pad, -100, 2000)
    scramble("action_tokens", token_pad, -100, 100)
    assert int(step_pad.sum()) == 9 and not torch.equal(noisy["input_ids"], batch["input_ids"])
    out2, grads2 = loss_and_grads(noisy)
    for name in ("loss", "pred_loss", "reg_loss"):
        assert torch.equal(getattr(out, name), getattr(out2, name))
    assert grads.keys() == grads2.keys() and len(grads) == len(list(model.parameters()))
    for name, grad in grads.items():
        assert torch.equal(grad, grads2[name]), name
    # Changing a real step's action does change its prediction and the action encoder's
    # gradients, at the same exactness (the test can fail).
    real = {k: v.clone() for k, v in batch.items()}
    real["action_ops"][0, 0] = (real["action_ops"][0, 0] + 1) % 3
    real["action_positions"][0, 0] += 5
    changed, changed_grads = loss_and_grads(real)
    assert not torch.equal(changed.predictions[0, 0], out.predictions[0, 0])
    name = "action_encoder.op_embedding.weight"
    assert not torch.equal(changed_grads[name], grads[name])


SMALL = dict(
    synthetic_records=2, synthetic_length=6000, window_length=48, window_stride=24, margin=6
)


def test_edit_corpus_cache_hit_and_miss(tmp_path, monkeypatch):
    calls = []
    original = edit_corpus._write_edit_corpus

    def counting(config, folder):
        calls.append(config)
        original(config, folder)

    monkeypatch.setattr(edit_corpus, "_write_edit_corpus", counting)
    config = EditCorpusConfig(**SMALL)
    first = build_edit_corpus(config, tmp_path)
    second = build_edit_corpus(EditCorpusConfig(**SMALL), tmp_path)
    assert len(calls) == 1  # hit: not rebuilt
    assert corpus_cache.corpus_folder(first) == corpus_cache.corpus_folder(second)
    assert first["train"]["input_ids"] == second["train"]["input_ids"]
    third = build_edit_corpus(EditCorpusConfig(**{**SMALL, "seed": 1}), tmp_path)
    assert len(calls) == 2  # miss: another config
    assert corpus_cache.corpus_folder(third) != corpus_cache.corpus_folder(first)
    # A FASTA source is keyed by its content, not only its path.
    fasta = tmp_path / "genome.fa"
    write_fasta(fasta, [("r1", "ACGT" * 1500)])
    from_file = EditCorpusConfig(**{**SMALL, "fasta_path": str(fasta)})
    a = corpus_cache.corpus_folder(build_edit_corpus(from_file, tmp_path))
    write_fasta(fasta, [("r1", "TGCA" * 1500)])
    b = corpus_cache.corpus_folder(build_edit_corpus(from_file, tmp_path))
    assert len(calls) == 4 and a != b
    meta = json.loads((b / K.CORPUS_META_FILE).read_text())
    assert meta["kind"] == "edits" and len(meta["config"]["source_sha256"]) == 64


def test_edit_corpus_rows_are_region_split_trajectories(tmp_path):
    config = EditCorpusConfig(**SMALL, min_actions=2, max_actions=4, cluster_radius=3)
    corpus = build_edit_corpus(config, tmp_path)
    records = synthetic_records(
        num_records=2, record_length=6000, seed=derive_seed(0, "synthetic-genome")
    )
    regions = json.loads((corpus_cache.corpus_folder(corpus) / K.REGIONS_FILE).read_text())
    cut = {r["name"]: r["train"][1] for r in regions["records"]}
    assert list(cut.values()) == [5400, 5400]  # the last 10% held out
    seen_k = set()
    for split in ("train", "validation"):
        for row in corpus[split]:
            record = records[row["record"]]
            start, k = row["start"], len(row["edit_ops"])
            seen_k.add(k)
            source = encode_dna(record.sequence[start : start + 48]).tolist()
            assert row["input_ids"][0] == source
            if split == "train":
                assert start + 48 <= cut[record.name]
            else:
                assert start >= cut[record.name]
            assert len(row["input_ids"]) == k + 1 == len(row["locus"])
            edits = edits_from_row(row)
            for j, edit in enumerate(edits):
                assert apply_edit(row["input_ids"][j], edit).tolist() == row["input_ids"][j + 1]
                assert all(0 <= t <= 3 for t in edit.tokens) or edit.op == EditOp.DEL
    assert seen_k == {2, 3, 4}


def test_edit_corpus_from_fasta_path_and_row_caps(tmp_path, dna_model):
    fasta = tmp_path / "two.fa.gz"
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), size=n)) for n in (3000, 5000)]
    write_fasta(fasta, [("chrA first", seqs[0].lower()), ("chrB", seqs[1])], line_width=70)
    config = EditCorpusConfig(
        **{**SMALL, "fasta_path": str(fasta), "max_train_rows": 50, "max_validation_rows": 7}
    )
    corpus = build_edit_corpus(config, tmp_path)
    assert corpus["train"].num_rows == 50 and corpus["validation"].num_rows == 7
    assert set(EDIT_COLUMNS) < set(corpus["train"].column_names)
    regions = json.loads((corpus_cache.corpus_folder(corpus) / K.REGIONS_FILE).read_text())
    assert [r["name"] for r in regions["records"]] == ["chrA", "chrB"]
    assert regions["source"] == str(fasta)
    row = corpus["train"][0]
    start = row["start"]
    assert row["input_ids"][0] == encode_dna(seqs[row["record"]][start : start + 48]).tolist()
    batch = DataCollatorForLeWM()([corpus["train"][i] for i in range(4)])
    out = dna_model(history_length=3)(**batch)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"min_actions": 4, "max_actions": 3}, "min_actions"),
        ({"margin": 60}, "margin"),
        ({"max_edit_len": 8}, "max_edit_len"),
        ({"fasta_path": "x.fa", "genome": "c_diphtheriae_100kb"}, "genome"),
        ({"holdout_fraction": 1.0}, "holdout_fraction"),
        ({"cluster_radius": 0}, "cluster_radius"),
        ({"free_edit_fraction": 1.5}, "free_edit_fraction"),
        ({"free_edit_fraction": 0.3, "cluster_radius": None}, "free_edit_fraction"),
        ({"iupac": "drop"}, "iupac"),
        ({"window_length": 0}, "window_length"),
    ],
)
def test_edit_corpus_config_validation(overrides, field):
    with pytest.raises(LeWMConfigError) as info:
        EditCorpusConfig(**overrides)
    assert info.value.field == field


def test_edit_corpus_missing_fasta_is_a_config_error(tmp_path):
    config = EditCorpusConfig(fasta_path=str(Path(tmp_path) / "absent.fa"))
    with pytest.raises(LeWMConfigError, match="no such file"):
        build_edit_corpus(config, tmp_path)
