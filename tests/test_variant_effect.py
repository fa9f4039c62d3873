"""Tests of the variant-effect benchmark: codons, SNV classes on hand-made genes, the k-mer
Markov baseline, LM log-likelihoods, the bootstrap, and the whole benchmark on the packaged
genome."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lewm_hf import metric_keys as K
from lewm_hf.data.dna import DNA_VOCAB_SIZE, FastaRecord, encode_dna
from lewm_hf.errors import LeWMConfigError, LeWMInputError
from lewm_hf.evaluation.variant_effect import (
    Gene,
    KmerMarkov,
    VariantEffectArguments,
    around,
    bootstrap_auroc,
    coding_snvs,
    evaluate_variant_effect,
    lm_log_likelihood,
    reverse_complement,
    translate_codon,
    two_strand_llr,
)


def test_translation_table_11():
    assert translate_codon("ATG") == "M"
    assert translate_codon("TGG") == "W"
    assert {translate_codon(c) for c in ("TAA", "TAG", "TGA")} == {"*"}
    assert translate_codon("GCT") == translate_codon("GCG") == "A"
    with pytest.raises(LeWMInputError):
        translate_codon("ANG")


# Flank + ATG AAA TGG GGG TAA + flank: the codons AAA, TGG, GGG are scored.
FLANK = "C" * 12
GENE = "ATGAAATGGGGGTAA"


def expected_snvs(gene: str, start: int) -> tuple[set, set]:
    """Brute force on the forward strand: every SNV of the inner codons, by class."""
    nonsense, synonymous = set(), set()
    for c in range(3, len(gene) - 3, 3):
        codon = gene[c : c + 3]
        for k in range(3):
            for base in "ACGT":
                if base == codon[k]:
                    continue
                new = translate_codon(codon[:k] + base + codon[k + 1 :])
                entry = (start + c + k, "ACGT".index(base))
                if new == "*":
                    nonsense.add(entry)
                elif new == translate_codon(codon):
                    synonymous.add(entry)
    return nonsense, synonymous


def as_set(snvs, labels) -> set:
    return {(int(p), int(a)) for p, a in zip(snvs.position[labels], snvs.alt[labels], strict=True)}


def test_coding_snvs_on_a_forward_gene():
    seq = (FLANK + GENE + FLANK).encode()
    gene = Gene(len(FLANK), len(FLANK) + len(GENE), +1)
    snvs = coding_snvs(seq, [gene], (0, len(seq)), 8, 4, max_per_class=100)
    nonsense, synonymous = expected_snvs(GENE, len(FLANK))
    # AAA -> TAA, TGG -> TAG and TGA; GGG -> GGx synonymous; AAA -> AAG synonymous.
    assert (len(FLANK) + 5, 0) not in nonsense
    assert as_set(snvs, snvs.nonsense) == nonsense == {(15, 3), (19, 0), (20, 0)}
    assert as_set(snvs, ~snvs.nonsense) == synonymous
    # Windows: the reference around each SNV, the SNV at the offset.
    ids = encode_dna(seq)
    for w, p in zip(snvs.ref, snvs.position, strict=True):
        np.testing.assert_array_equal(w, ids[p - 4 : p + 4])
    assert (snvs.alt_windows[:, 4] == snvs.alt).all()


def test_coding_snvs_on_the_reverse_strand_are_the_same_changes():
    rc = {"A": "T", "C": "G", "G": "C", "T": "A"}
    flip = "".join(rc[b] for b in reversed(GENE))
    seq = (FLANK + flip + FLANK).encode()
    gene = Gene(len(FLANK), len(FLANK) + len(GENE), -1)
    snvs = coding_snvs(seq, [gene], (0, len(seq)), 8, 4, max_per_class=100)
    nonsense, synonymous = expected_snvs(GENE, 0)
    end = len(FLANK) + len(GENE) - 1
    mirror = lambda s: {(end - p, 3 - a) for p, a in s}  # noqa: E731  (complement: 3 - id)
    assert as_set(snvs, snvs.nonsense) == mirror(nonsense)
    assert as_set(snvs, ~snvs.nonsense) == mirror(synonymous)


def test_coding_snvs_keep_windows_inside_the_region_and_draw_per_class():
    seq = (FLANK + GENE + FLANK).encode()
    gene = Gene(len(FLANK), len(FLANK) + len(GENE), +1)
    inside = coding_snvs(seq, [gene], (12, len(seq)), 8, 4, max_per_class=100)
    assert (inside.position - 4 >= 12).all()  # the window starts inside the region
    one = coding_snvs(seq, [gene], (0, len(seq)), 8, 4, max_per_class=1, seed=3)
    assert one.nonsense.tolist() == [True, False]
    with pytest.raises(LeWMInputError):  # no codon with a window inside the region
        coding_snvs(seq, [gene], (30, len(seq)), 8, 4, max_per_class=1)
    with pytest.raises(LeWMConfigError):
        coding_snvs(seq, [gene], (0, len(seq)), 8, 8, max_per_class=1)


def test_kmer_markov_probabilities_and_likelihood():
    ids = encode_dna("ACACACAG")
    markov = KmerMarkov(1, ids)
    # After A: C three times, G once; add-one smoothing over four bases.
    np.testing.assert_allclose(np.exp(markov.log_probs[0]), [1 / 8, 4 / 8, 2 / 8, 1 / 8])
    windows = encode_dna("ACG")[None]
    want = markov.log_probs[0, 1] + markov.log_probs[1, 2]
    assert markov.log_likelihood(windows, 1)[0] == pytest.approx(want)
    assert markov.log_likelihood(windows, 2)[0] == pytest.approx(markov.log_probs[1, 2])
    with pytest.raises(LeWMConfigError):
        KmerMarkov(2, ids).log_likelihood(windows, 1)


@pytest.mark.parametrize("order", [0, 1, 3, 8])
def test_kmer_markov_fit_in_chunks_is_bitwise_the_whole_fit(monkeypatch, order):
    from lewm_hf.evaluation import variant_effect

    ids = np.random.default_rng(order).integers(0, 5, size=5000)  # N (4) breaks contexts
    whole = KmerMarkov(order, ids).log_probs
    for chunk in (1, 7, 1000):
        monkeypatch.setattr(variant_effect, "FIT_CHUNK_BASES", chunk)
        assert np.array_equal(KmerMarkov(order, ids).log_probs, whole)
    # The unchunked count, written out.
    frames = np.lib.stride_tricks.sliding_window_view(ids, order + 1)
    frames = frames[(frames < 4).all(1)]
    counts = np.ones((4**order, 4))
    context = (frames[:, :order] * 4 ** np.arange(order - 1, -1, -1)).sum(-1).astype(np.int64)
    np.add.at(counts, (context, frames[:, order]), 1.0)
    assert np.array_equal(np.log(counts / counts.sum(1, keepdims=True)), whole)


def test_two_strand_llr_adds_the_reverse_complement():
    seq = (FLANK + GENE + FLANK).encode()
    gene = Gene(len(FLANK), len(FLANK) + len(GENE), +1)
    snvs = coding_snvs(seq, [gene], (0, len(seq)), 8, 4, max_per_class=100)
    markov = KmerMarkov(2, encode_dna(seq))
    got = two_strand_llr(markov.log_likelihood, snvs)
    fwd = markov.log_likelihood(snvs.ref, 4) - markov.log_likelihood(snvs.alt_windows, 4)
    back = markov.log_likelihood(reverse_complement(snvs.ref), 3) - markov.log_likelihood(
        reverse_complement(snvs.alt_windows), 3
    )
    np.testing.assert_allclose(got, fwd + back)
    np.testing.assert_array_equal(reverse_complement(encode_dna("AACGN")[None])[0], [4, 1, 2, 3, 3])


def tiny_lm(positions: int = 16) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=DNA_VOCAB_SIZE, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=32, max_position_embeddings=positions,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_around_keeps_the_snv_centred():
    seq = (FLANK + GENE + FLANK).encode()
    gene = Gene(len(FLANK), len(FLANK) + len(GENE), +1)
    snvs = coding_snvs(seq, [gene], (0, len(seq)), 8, 4, max_per_class=100)
    near = around(snvs, 2)
    assert near.offset == 2 and near.ref.shape[1] == 5
    np.testing.assert_array_equal(near.ref, snvs.ref[:, 2:7])
    np.testing.assert_array_equal(near.alt_windows[:, 2], snvs.alt)
    with pytest.raises(LeWMConfigError):
        around(snvs, 4)  # only 3 bases after the SNV


def test_lm_log_likelihood_matches_a_position_loop():
    lm = tiny_lm()
    windows = np.random.default_rng(0).integers(0, 4, size=(5, 10))
    got = lm_log_likelihood(lm, windows, 4, batch_size=2)
    with torch.no_grad():
        logits = lm(input_ids=torch.from_numpy(windows)).logits.log_softmax(-1)
    want = [sum(logits[n, t - 1, windows[n, t]].item() for t in range(4, 10)) for n in range(5)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    with pytest.raises(LeWMConfigError):
        lm_log_likelihood(lm, windows, 0)


def test_bootstrap_auroc():
    labels = np.array([True] * 20 + [False] * 30)
    perfect = bootstrap_auroc(np.r_[np.ones(20), np.zeros(30)], labels, 200)
    assert perfect == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    scores = rng.normal(size=50) + labels
    value, low, high = bootstrap_auroc(scores, labels, 500, seed=1)
    pos, neg = scores[labels], scores[~labels]
    assert value == pytest.approx((pos[:, None] > neg[None]).mean())
    assert low < value < high and high - low < 0.5
    assert bootstrap_auroc(scores, labels, 500, seed=1) == (value, low, high)  # seeded


def test_benchmark_on_the_packaged_genome():
    pytest.importorskip("pyrodigal")
    from lewm_hf.data.dna import packaged_genome_path, read_fasta

    records = list(read_fasta(packaged_genome_path("c_diphtheriae_100kb")))
    args = VariantEffectArguments(variant_max_per_class=60, variant_bootstrap=100)
    out = evaluate_variant_effect(records, 0.1, 32, args)
    assert out[K.EVAL_VARIANT_NUM_NONSENSE] == out[K.EVAL_VARIANT_NUM_SYNONYMOUS] == 60
    by_order = out[K.EVAL_VARIANT_AUROC_KMER_BY_ORDER]
    assert sorted(by_order) == [str(k) for k in range(1, 9)]
    best = out[K.EVAL_VARIANT_KMER_ORDER]
    assert out[K.EVAL_VARIANT_AUROC_KMER] == max(by_order.values()) == by_order[str(best)]
    low, high = out[K.EVAL_VARIANT_AUROC_KMER + K.CI_SUFFIX]
    assert low <= out[K.EVAL_VARIANT_AUROC_KMER] <= high
    assert K.EVAL_VARIANT_AUROC_LM not in out  # no LM given
    small = VariantEffectArguments(variant_max_per_class=10, variant_bootstrap=20)
    with_lm = evaluate_variant_effect(records, 0.1, 32, small, lm=tiny_lm(32))
    low, high = with_lm[K.EVAL_VARIANT_AUROC_LM + K.CI_SUFFIX]
    assert low <= with_lm[K.EVAL_VARIANT_AUROC_LM] <= high
    # Context curve: 1 .. 15 bases fit around offset 16 of a 32-base window.
    assert sorted(with_lm[K.EVAL_VARIANT_AUROC_LM_BY_CONTEXT], key=int) == ["1", "2", "4", "8"]
    with pytest.raises(LeWMInputError):  # a record without genes in its held-out region
        evaluate_variant_effect([FastaRecord("r", "r", b"ACGT" * 10_000)], 0.1, 32, args)
