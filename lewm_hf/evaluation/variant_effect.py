"""A variant-effect benchmark on gene calls nobody here wrote: nonsense against synonymous SNVs.

Genes are called with pyrodigal (single-genome mode, trained on the whole record: the
annotation is an input here, not something our models learn). Every single-base substitution
inside a complete coding sequence of the *held-out* region (the last `holdout_fraction` of the
record, which no model of the DNA recipe trained on) is classified in its gene's reading frame:
*nonsense* when a sense codon becomes a stop codon (`TAA`, `TAG`, `TGA`; translation table 11),
*synonymous* when the amino acid is unchanged; missense changes and the start and stop codons
are left out. Each SNV is shown in a window of `window_length` forward-strand bases lying wholly
inside the held-out region, the SNV at `offset`, and scored:

- by a causal DNA LM: the log-likelihood ratio `log p(ref) - log p(alt)` over the positions the
  SNV can influence (`offset .. L - 1`; the earlier ones are identical), higher meaning "less
  likely, so more damaging", summed over both strands (the window and its reverse complement:
  a causal LM sees on one strand the context the other strand puts after the SNV);
- by an edit world model: its surprise at the edited window under the SNV action,
  `||predict(z_ref, SUB) - encode(alt)||^2`, with the state pooled around the SNV;
- by the baseline, a k-mer Markov model (order `k`, add-one smoothing) fit on the training
  region's forward strand, scored like the LM (both strands). The baseline reported is the best
  order of 1 to 8 on the benchmark itself, an optimistic baseline, so that beating it cannot
  come from a poorly chosen order; every order's AUROC is reported too.

Each score's AUROC (nonsense as positives) comes with a percentile bootstrap interval over SNVs,
resampled within each class.

The LM of `recipes/configs/dna_lewm.yaml` attends through a sliding window of 8 tokens a layer,
so it sees about 16 bases before a position: a few codons, usually not the gene's start, so the
reading frame has to be guessed from the codon statistics nearby. [`kmer_context_curve`]
measures what context buys the Markov baseline (order 1 to 8), [`lm_context_curve`] what it buys
the LM (the SNV shown with 1 to 32 bases on each side).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from .. import metric_keys as K
from ..data.dna import DNA_EDIT_ALPHABET, DNA_END_ID, N_ID, FastaRecord, encode_dna, split_region
from ..data.edits.actions import code_edit_actions
from ..data.edits.ops import EditOp
from ..determinism import derive_seed
from ..errors import LeWMConfigError, LeWMInputError
from ..fields import option, validate_fields
from ..modeling_actions import ActionInputs
from .inference import evaluating, model_device

# Translation table 11 (bacteria) in TCAG order: codon `xyz` -> AMINO[16 i(x) + 4 i(y) + i(z)].
_TCAG = "TCAG"
AMINO = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
_COMPLEMENT = np.array([3, 2, 1, 0, N_ID], dtype=np.int64)  # A C G T N -> T G C A N


def translate_codon(codon: str) -> str:
    """The amino acid (one letter, `*` for stop) of a codon of `ACGT`, table 11."""
    if len(codon) != 3 or any(base not in _TCAG for base in codon):
        raise LeWMInputError("codon", codon, "must be three of A, C, G, T")
    i, j, k = (_TCAG.index(base) for base in codon)
    return AMINO[16 * i + 4 * j + k]


@dataclass
class Gene:
    """A called coding sequence: 0-based half-open `[start, end)` on the record, and its strand
    (`+1` forward, `-1` reverse)."""

    start: int
    end: int
    strand: int


def call_genes(sequence: bytes) -> list[Gene]:
    """Complete genes called by pyrodigal in single-genome mode (partial genes left out);
    records under 100 kb, short for training (pyrodigal warns), in metagenomic mode.

    Args:
        sequence (`bytes`): The record, `ACGTN`.

    Returns:
        `list[Gene]`: The genes, in pyrodigal's order.
    """
    try:
        import pyrodigal
    except ImportError as err:  # pragma: no cover - pyrodigal ships with the `genome` extra
        raise LeWMConfigError(
            "variant_effect", True, "needs pyrodigal (pip install lewm_hf[genome])"
        ) from err
    meta = len(sequence) < 100_000
    finder = pyrodigal.GeneFinder(meta=meta)
    if not meta:
        finder.train(sequence)
    return [
        Gene(gene.begin - 1, gene.end, int(gene.strand))
        for gene in finder.find_genes(sequence)
        if not (gene.partial_begin or gene.partial_end) and (gene.end - gene.begin + 1) % 3 == 0
    ]


@dataclass
class CodingSNVs:
    """SNVs in coding sequences, each in a window of the forward strand.

    Args:
        ref (`np.ndarray`): `(N, L)` reference windows (token ids), the SNV at `offset`.
        alt (`np.ndarray`): `(N,)` the alternative base at `offset`.
        position (`np.ndarray`): `(N,)` record coordinate of the SNV.
        nonsense (`np.ndarray`): `(N,)` True for nonsense, False for synonymous.
        offset (`int`): Where the SNV sits in its window.
    """

    ref: np.ndarray
    alt: np.ndarray
    position: np.ndarray
    nonsense: np.ndarray
    offset: int

    @property
    def alt_windows(self) -> np.ndarray:
        """`(N, L)` the windows with the SNV applied."""
        out = self.ref.copy()
        out[:, self.offset] = self.alt
        return out


def coding_snvs(
    sequence: bytes,
    genes: list[Gene],
    region: tuple[int, int],
    window_length: int,
    offset: int,
    max_per_class: int,
    seed: int = 0,
) -> CodingSNVs:
    """Nonsense and synonymous SNVs of the genes' codons whose windows lie inside `region`.

    Args:
        sequence (`bytes`): The record.
        genes (`list[Gene]`): Its genes ([`call_genes`]).
        region (`tuple[int, int]`): `[lo, hi)`: every window lies inside it.
        window_length (`int`): L.
        offset (`int`): SNV position in its window, `0 <= offset < L`.
        max_per_class (`int`): At most this many SNVs of each class (a seeded uniform draw).
        seed (`int`, defaults to 0): Seed of the draw.

    Returns:
        `CodingSNVs`: The SNVs, nonsense first.
    """
    if not 0 <= offset < window_length:
        raise LeWMConfigError("offset", offset, f"must lie in [0, {window_length})")
    ids = encode_dna(sequence)
    lo, hi = region
    found: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
    letters = "ACGT"
    for gene in genes:
        codons = range(gene.start + 3, gene.end - 3, 3)  # not the start or the stop codon
        for first in codons:
            for k in range(3):
                pos = first + k
                if pos - offset < lo or pos - offset + window_length > hi:
                    continue
                forward = ids[first : first + 3]
                if (forward > 3).any():
                    continue
                strand_ids = forward if gene.strand > 0 else _COMPLEMENT[forward[::-1]]
                codon = "".join(letters[i] for i in strand_ids)
                amino = translate_codon(codon)
                if amino == "*":
                    continue
                for alt in DNA_EDIT_ALPHABET:
                    if alt == ids[pos]:
                        continue
                    changed = forward.copy()
                    changed[k] = alt
                    strand_alt = changed if gene.strand > 0 else _COMPLEMENT[changed[::-1]]
                    new = translate_codon("".join(letters[i] for i in strand_alt))
                    if new == "*" or new == amino:
                        found[new == "*"].append((pos, int(alt)))
    rng = np.random.default_rng(derive_seed(seed, "coding-snvs"))
    chosen = []
    for cls in (True, False):
        items = sorted(set(found[cls]))
        if not items:
            kind = "nonsense" if cls else "synonymous"
            raise LeWMInputError("genes", len(genes), f"give no {kind} SNV in the region")
        pick = rng.permutation(len(items))[:max_per_class]
        chosen.append([items[i] for i in sorted(pick)])
    pos = np.asarray([p for group in chosen for p, _ in group], dtype=np.int64)
    alt = np.asarray([a for group in chosen for _, a in group], dtype=np.int64)
    labels = np.asarray([True] * len(chosen[0]) + [False] * len(chosen[1]))
    ref = ids[(pos - offset)[:, None] + np.arange(window_length)].astype(np.int64)
    return CodingSNVs(ref=ref, alt=alt, position=pos, nonsense=labels, offset=offset)


def held_out_region(length: int, holdout_fraction: float) -> tuple[int, int]:
    """The held-out region `[cut, length)` of a record (as `dna.split_region`)."""
    _, cut, end = split_region(length, holdout_fraction)
    return cut, end


# ----------------------------------------------------------------------------------------------
# Scores


# Bases counted at a time by the k-mer baseline's fit (its temporaries take about 16 (k + 1)
# bytes a base: ~10 MB for k = 8).
FIT_CHUNK_BASES = 1 << 16
# SNV windows per encoder call of `world_model_surprise` (the edit evaluation's
# `ENCODE_BATCH_SIZE`: the attention scores of 1024 windows took ~70 MB per tensor).
SURPRISE_BATCH_SIZE = 256


class KmerMarkov:
    """An order-`k` Markov model of bases with add-one smoothing.

    Args:
        order (`int`): Bases of context.
        ids (`np.ndarray`): Token ids it is fit on (N and other tokens break the context).
    """

    def __init__(self, order: int, ids: np.ndarray):
        if order < 0:
            raise LeWMConfigError("order", order, "must be >= 0")
        self.order = order
        ids = np.asarray(ids)
        counts = np.ones((4**order, 4))
        # The (k + 1)-mers are counted `FIT_CHUNK_BASES` at a time (chunks overlapping by k
        # bases), so the fit's temporaries do not grow with the genome; the counts are sums of
        # ones, exact in float64, so they do not depend on the chunking.
        for first in range(0, max(ids.size - order, 0), FIT_CHUNK_BASES):
            part = ids[first : first + FIT_CHUNK_BASES + order].astype(np.int64)
            frames = np.lib.stride_tricks.sliding_window_view(part, order + 1)
            frames = frames[(frames < 4).all(1)]
            context = self._index(frames[:, :order])
            np.add.at(counts, (context, frames[:, order]), 1.0)
        self.log_probs = np.log(counts / counts.sum(1, keepdims=True))

    def _index(self, contexts: np.ndarray) -> np.ndarray:
        weights = 4 ** np.arange(self.order - 1, -1, -1, dtype=np.int64)
        return (contexts * weights).sum(-1) if self.order else np.zeros(len(contexts), np.int64)

    def log_likelihood(self, windows: np.ndarray, start: int) -> np.ndarray:
        """`sum_{t >= start} log p(x_t | x_{t-k} .. x_{t-1})` per window, `(N,)`; needs
        `start >= order`."""
        if start < self.order:
            raise LeWMConfigError("offset", start, f"must be >= the Markov order {self.order}")
        windows = np.clip(np.asarray(windows, dtype=np.int64), 0, 3)
        total = np.zeros(windows.shape[0])
        for t in range(start, windows.shape[1]):
            context = self._index(windows[:, t - self.order : t])
            total += self.log_probs[context, windows[:, t]]
        return total


def lm_log_likelihood(
    lm: Any, windows: np.ndarray, start: int, batch_size: int = 256
) -> np.ndarray:
    """`sum_{t >= start} log p(x_t | x_{<t})` of each window under a causal LM, `(N,)`.

    Args:
        lm: A `transformers` causal LM over the DNA vocabulary.
        windows (`np.ndarray`): `(N, L)` token ids.
        start (`int`): First position summed (`>= 1`).
        batch_size (`int`, defaults to 256): Windows per forward pass.

    Returns:
        `np.ndarray`: `(N,)` float64 log-likelihoods.
    """
    if start < 1:
        raise LeWMConfigError("offset", start, "must be >= 1 (position 0 has no context)")
    device = model_device(lm)
    out = []
    with evaluating(lm):
        for i in range(0, len(windows), batch_size):
            ids = torch.from_numpy(np.asarray(windows[i : i + batch_size])).to(device)
            logits = lm(input_ids=ids).logits.float()  # (B, L, V)
            logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
            out.append(logp[:, start - 1 :].sum(1).double().cpu())
    return torch.cat(out).numpy()


def world_model_surprise(
    model: Any, snvs: CodingSNVs, batch_size: int = SURPRISE_BATCH_SIZE
) -> np.ndarray:
    """The edit world model's surprise at each SNV, `(N,)`: `||predict(z_ref, a) - z_alt||^2`
    with both states pooled around the SNV and the action coded as the model was trained."""
    from .edits import action_coding  # the edit evaluation's reading of a model's coding

    device = model_device(model)
    num = len(snvs.alt)
    ref = torch.from_numpy(snvs.ref)
    locus = torch.full((num,), snvs.offset, dtype=torch.long)
    tokens = torch.stack([torch.from_numpy(snvs.alt), torch.full((num,), DNA_END_ID)], -1)[:, None]
    actions = {
        "action_ops": torch.full((num, 1), int(EditOp.SUB), dtype=torch.long),
        "action_positions": torch.full((num, 1), snvs.offset, dtype=torch.long),
        "action_tokens": tokens,
        "action_token_mask": torch.ones_like(tokens, dtype=torch.bool),
    }
    actions = code_edit_actions(actions, ref[:, None], locus[:, None], *action_coding(model))
    actions = ActionInputs.from_batch(actions).to(device)
    out = []
    with evaluating(model):
        for i in range(0, num, batch_size):
            rows = slice(i, i + batch_size)
            loc = locus[rows].to(device)
            z_ref = model.encode(ref[rows].to(device), locus=loc).float()
            z_alt = model.encode(torch.from_numpy(snvs.alt_windows[rows]).to(device), locus=loc)
            z_hat = model.predict(z_ref[:, None], actions.select(rows))[:, -1].float()
            out.append((z_hat - z_alt.float()).pow(2).sum(-1).double().cpu())
    return torch.cat(out).numpy()


def reverse_complement(windows: np.ndarray) -> np.ndarray:
    """The reverse complement of `(N, L)` token windows (N stays N)."""
    return _COMPLEMENT[np.clip(np.asarray(windows, dtype=np.int64), 0, N_ID)[:, ::-1]]


def two_strand_llr(log_likelihood: Any, snvs: CodingSNVs) -> np.ndarray:
    """`log p(ref) - log p(alt)` summed over both strands, `(N,)`.

    Args:
        log_likelihood: `f(windows, start) -> (N,)` log-likelihood of positions `start ..`.
        snvs (`CodingSNVs`): The SNVs.
    """
    ref, alt, off = snvs.ref, snvs.alt_windows, snvs.offset
    mirrored = ref.shape[1] - 1 - off
    forward = log_likelihood(ref, off) - log_likelihood(alt, off)
    backward = log_likelihood(reverse_complement(ref), mirrored) - log_likelihood(
        reverse_complement(alt), mirrored
    )
    return forward + backward


def bootstrap_auroc(
    scores: np.ndarray, labels: np.ndarray, num_resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """AUROC of `scores` for `labels` and its 95% percentile bootstrap interval (items resampled
    with replacement within each class).

    Returns:
        `tuple[float, float, float]`: `(auroc, low, high)`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    if pos.size == 0 or neg.size == 0:
        raise LeWMInputError("labels", f"{pos.size} positives, {neg.size} negatives", "need both")

    def area(p: np.ndarray, n: np.ndarray) -> np.ndarray:
        both = np.concatenate([scores[p], scores[n]], axis=-1)
        ranks = rankdata(both, axis=-1)
        m, q = p.shape[-1], n.shape[-1]
        return (ranks[..., :m].sum(-1) - m * (m + 1) / 2) / (m * q)

    rng = np.random.default_rng(derive_seed(seed, "bootstrap-auroc"))
    p_idx = pos[rng.integers(0, pos.size, size=(num_resamples, pos.size))]
    n_idx = neg[rng.integers(0, neg.size, size=(num_resamples, neg.size))]
    samples = area(p_idx, n_idx)
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(area(pos, neg)), float(low), float(high)


def kmer_context_curve(
    train_ids: np.ndarray, snvs: CodingSNVs, orders: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
) -> dict[int, np.ndarray]:
    """The k-mer Markov baseline's scores (two-strand log-likelihood ratios) for each order
    (its context, in bases), `order -> (N,)`."""
    out = {}
    for order in orders:
        markov = KmerMarkov(order, train_ids)
        out[order] = two_strand_llr(markov.log_likelihood, snvs)
    return out


def around(snvs: CodingSNVs, context: int) -> CodingSNVs:
    """The same SNVs in windows of `2 context + 1` bases centred on them (`context` bases on
    each side), so that either strand sees exactly `context` bases before the SNV."""
    off = snvs.offset
    if not 0 <= context <= min(off, snvs.ref.shape[1] - 1 - off):
        raise LeWMConfigError("context", context, f"must fit around offset {off}")
    ref = snvs.ref[:, off - context : off + context + 1]
    return CodingSNVs(ref, snvs.alt, snvs.position, snvs.nonsense, context)


def lm_context_curve(
    lm: Any, snvs: CodingSNVs, contexts: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
) -> dict[str, float]:
    """AUROC of the LM's two-strand log-likelihood ratio when it sees only `c` bases on each
    side of the SNV, per `c` (those that fit the window): whether context is what limits it."""
    most = min(snvs.offset, snvs.ref.shape[1] - 1 - snvs.offset)
    out = {}
    for c in (c for c in contexts if 1 <= c <= most):
        llr = two_strand_llr(lambda w, t: lm_log_likelihood(lm, w, t), around(snvs, c))
        out[str(c)] = bootstrap_auroc(llr, snvs.nonsense, 1)[0]
    return out


@dataclass
class VariantEffectArguments:
    """The variant-effect benchmark (`lewm_hf.evaluation.variant_effect`) of a DNA phase.

    Args:
        run_variant_effect (`bool`, defaults to `False`): Run it after training (needs
            pyrodigal, the `genome` extra).
        variant_max_per_class (`int`, defaults to 500): Nonsense and synonymous SNVs drawn.
        variant_offset (`int`, *optional*): SNV position in its window; `window_length // 2` if
            None.
        variant_bootstrap (`int`, defaults to 1000): Bootstrap resamples of each interval.
        variant_seed (`int`, defaults to 0): Seed of the SNV draw and the bootstrap.
    """

    run_variant_effect: bool = option(False, help="Nonsense vs synonymous SNV benchmark.")
    variant_max_per_class: int = option(500, help="SNVs of each class.", low=1)
    variant_offset: int | None = option(None, help="SNV position in its window.", low=1)
    variant_bootstrap: int = option(1000, help="Bootstrap resamples.", low=1)
    variant_seed: int = option(0, help="Seed of the SNV draw and bootstrap.", low=0)

    def __post_init__(self) -> None:
        validate_fields(self)


def variant_effect_snvs(
    records: list[FastaRecord],
    holdout_fraction: float,
    window_length: int,
    args: VariantEffectArguments,
) -> tuple[CodingSNVs, np.ndarray]:
    """The benchmark's SNVs (held-out regions of every record, pooled, then drawn per class) and
    the training regions' token ids (records separated by N, for the k-mer baseline)."""
    offset = window_length // 2 if args.variant_offset is None else args.variant_offset
    if offset >= window_length - 1:
        raise LeWMConfigError("variant_offset", offset, f"must be < {window_length - 1}")
    parts, train = [], []
    for record in records:
        lo, hi = held_out_region(len(record), holdout_fraction)
        train.extend([encode_dna(record.sequence)[:lo], np.array([N_ID])])
        genes = call_genes(record.sequence)
        try:
            parts.append(
                coding_snvs(
                    record.sequence,
                    genes,
                    (lo, hi),
                    window_length,
                    offset,
                    args.variant_max_per_class,
                    derive_seed(args.variant_seed, record.name),
                )
            )
        except LeWMInputError:
            continue  # a record whose held-out region has no coding SNV of a class
    if not parts:
        raise LeWMInputError("records", len(records), "have no coding SNVs in held-out regions")
    rng = np.random.default_rng(derive_seed(args.variant_seed, "variant-classes"))
    ref = np.concatenate([p.ref for p in parts])
    alt = np.concatenate([p.alt for p in parts])
    pos = np.concatenate([p.position for p in parts])
    labels = np.concatenate([p.nonsense for p in parts])
    keep = np.concatenate(
        [
            np.sort(rng.permutation(np.flatnonzero(labels == cls))[: args.variant_max_per_class])
            for cls in (True, False)
        ]
    )
    snvs = CodingSNVs(ref[keep], alt[keep], pos[keep], labels[keep], offset)
    return snvs, np.concatenate(train)


def evaluate_variant_effect(
    records: list[FastaRecord],
    holdout_fraction: float,
    window_length: int,
    args: VariantEffectArguments,
    lm: Any | None = None,
    world_model: Any | None = None,
) -> dict[str, Any]:
    """Nonsense against synonymous SNVs: AUROCs with bootstrap intervals.

    Args:
        records (`list[FastaRecord]`): The genome (its held-out regions give the SNVs).
        holdout_fraction (`float`): The held-out share at the end of each record.
        window_length (`int`): Bases per window.
        args (`VariantEffectArguments`): Sizes and seeds.
        lm (*optional*): A causal DNA LM, scored by its two-strand log-likelihood ratio.
        world_model (*optional*): An edit world model, scored by its surprise.

    Returns:
        `dict[str, Any]`: `eval_variant_num_nonsense` / `_num_synonymous`; for the k-mer
        baseline (best order), and the LM and the world model when given, `eval_variant_auroc_*`
        with `_ci` (`[low, high]`); `eval_variant_kmer_order` and `eval_variant_auroc_kmer_by_order`
        (order -> AUROC); with an LM, `eval_variant_auroc_lm_by_context` (bases seen on each
        side of the SNV -> AUROC); `eval_variant_seconds`.
    """
    started = time.perf_counter()
    snvs, train = variant_effect_snvs(records, holdout_fraction, window_length, args)
    labels = snvs.nonsense
    out: dict[str, Any] = {
        K.EVAL_VARIANT_NUM_NONSENSE: int(labels.sum()),
        K.EVAL_VARIANT_NUM_SYNONYMOUS: int((~labels).sum()),
    }

    def report(key: str, scores: np.ndarray) -> None:
        value, low, high = bootstrap_auroc(
            scores, labels, args.variant_bootstrap, args.variant_seed
        )
        out[key] = value
        out[key + "_ci"] = [low, high]

    curve = kmer_context_curve(train, snvs)
    by_order = {str(k): bootstrap_auroc(v, labels, 1)[0] for k, v in curve.items()}
    best = max(curve, key=lambda k: by_order[str(k)])
    report(K.EVAL_VARIANT_AUROC_KMER, curve[best])
    out[K.EVAL_VARIANT_KMER_ORDER] = best
    out[K.EVAL_VARIANT_AUROC_KMER_BY_ORDER] = by_order
    if lm is not None:
        report(
            K.EVAL_VARIANT_AUROC_LM, two_strand_llr(lambda w, s: lm_log_likelihood(lm, w, s), snvs)
        )
        out[K.EVAL_VARIANT_AUROC_LM_BY_CONTEXT] = lm_context_curve(lm, snvs)
    if world_model is not None:
        report(K.EVAL_VARIANT_AUROC_SURPRISE, world_model_surprise(world_model, snvs))
    out[K.EVAL_VARIANT_SECONDS] = time.perf_counter() - started
    return out


__all__ = [
    "AMINO",
    "CodingSNVs",
    "Gene",
    "KmerMarkov",
    "VariantEffectArguments",
    "around",
    "bootstrap_auroc",
    "call_genes",
    "coding_snvs",
    "evaluate_variant_effect",
    "held_out_region",
    "kmer_context_curve",
    "lm_context_curve",
    "lm_log_likelihood",
    "reverse_complement",
    "translate_codon",
    "two_strand_llr",
    "variant_effect_snvs",
    "world_model_surprise",
]
