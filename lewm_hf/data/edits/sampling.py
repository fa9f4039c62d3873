"""Synthetic edit samplers: SNVs, MNVs and indels (`EditSampler` and one-kind shortcuts).

Positions are uniform over the window, or restricted to those whose footprints meet a locus's
cluster (see `EditSampler.sample`); the edits come back as an `EditBatch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...errors import LeWMConfigError, LeWMInputError
from ..dna import DNA_EDIT_ALPHABET
from .batched import EditBatch
from .ops import EditOp, footprints, map_locus

# Edit kinds drawn by `EditSampler` (SNV and MNV are both `EditOp.SUB`).
KIND_SNV, KIND_MNV, KIND_INS, KIND_DEL = range(4)
_KIND_OPS = np.array([EditOp.SUB, EditOp.SUB, EditOp.INS, EditOp.DEL], dtype=np.int64)


def truncated_geometric(
    rng: np.random.Generator, size: int | tuple[int, ...], p: float = 0.5, max_len: int = 15
) -> np.ndarray:
    """Lengths `n` in `1..max_len` with `P(n) = p (1 - p)^(n - 1) / (1 - (1 - p)^max_len)`.

    Drawn by inverting the truncated CDF.

    Args:
        rng (`np.random.Generator`): Random source.
        size (`int` or `tuple[int, ...]`): Output shape.
        p (`float`, defaults to 0.5): Success probability, in `(0, 1]`.
        max_len (`int`, defaults to 15): Largest length.

    Returns:
        `np.ndarray`: int64 lengths.
    """
    if not 0.0 < p <= 1.0:
        raise LeWMConfigError("indel_p", p, "must lie in (0, 1]")
    if not isinstance(max_len, int) or max_len < 1:
        raise LeWMConfigError("max_indel_len", max_len, "must be a positive integer")
    if p == 1.0:
        return np.ones(size, dtype=np.int64)
    q = 1.0 - p
    u = rng.random(size)
    n = np.ceil(np.log1p(-u * (1.0 - q**max_len)) / np.log(q))
    return np.clip(n, 1, max_len).astype(np.int64)


def _position_bounds(
    ops: np.ndarray, lengths: np.ndarray, window_length: int, margin: int
) -> tuple[np.ndarray, np.ndarray]:
    """Valid start positions `[lo, hi]` at least `margin` from the edges."""
    lo = np.full(ops.shape, margin, dtype=np.int64)
    hi = np.where(ops == EditOp.INS, window_length - margin, window_length - margin - lengths)
    return lo, hi


def _draw_tokens(
    rng: np.random.Generator,
    windows: np.ndarray,
    ops: np.ndarray,
    positions: np.ndarray,
    lengths: np.ndarray,
    alphabet: np.ndarray,
    width: int,
) -> np.ndarray:
    """`(N, width)` tokens: alternatives different from the reference for `SUB`, uniform
    `alphabet` tokens for `INS`, the reference for `DEL`; -1 past each edit's length."""
    num, length = windows.shape
    j = np.arange(width)[None, :]
    valid = j < lengths[:, None]
    at = np.clip(positions[:, None] + j, 0, length - 1)
    ref = np.take_along_axis(windows, at, axis=1)  # (N, width)
    k = len(alphabet)
    # Index of the reference in the alphabet (-1 if absent, e.g. N): the alternative is uniform
    # over the other k - 1 symbols, or over all k when the reference is not one of them.
    match = ref[..., None] == alphabet[None, None, :]
    ref_idx = np.where(match.any(-1), match.argmax(-1), -1)
    draw = (rng.random((num, width)) * np.where(ref_idx >= 0, k - 1, k)).astype(np.int64)
    alt = alphabet[draw + ((ref_idx >= 0) & (draw >= ref_idx))]
    uniform = alphabet[rng.integers(0, k, size=(num, width))]
    op = ops[:, None]
    tokens = np.where(op == EditOp.SUB, alt, np.where(op == EditOp.INS, uniform, ref))
    return np.where(valid, tokens, -1)


@dataclass
class EditSampler:
    """A mixture of synthetic edits: SNVs, MNVs and indels.

    - SNV: one `SUB` at a uniform position, the alternative uniform over the alphabet without
      the reference;
    - MNV: `SUB` of `mnv_min_len..mnv_max_len` tokens (uniform length), each different from its
      reference;
    - indel: `INS` or `DEL` with probability 1/2 each, length truncated-geometric (`indel_p`)
      over `1..max_indel_len`; inserted tokens uniform over the alphabet.

    Positions are uniform over the starts that keep the edit `margin` from both edges (for
    `INS`, the gaps `margin..L - margin`), or, with a locus, over those whose footprints meet the
    locus's cluster (see `sample`).

    Args:
        alphabet (`tuple[int, ...]`, defaults to the DNA bases ACGT): Tokens an edit may write.
        margin (`int`, defaults to 0): Distance from the window edges.
        snv_weight (`float`, defaults to 0.5): Weight of SNVs.
        mnv_weight (`float`, defaults to 0.1): Weight of MNVs.
        indel_weight (`float`, defaults to 0.4): Weight of indels.
        indel_p (`float`, defaults to 0.5): Geometric parameter of indel lengths.
        max_indel_len (`int`, defaults to 15): Longest indel.
        mnv_min_len (`int`, defaults to 2): Shortest MNV.
        mnv_max_len (`int`, defaults to 8): Longest MNV.
    """

    alphabet: tuple[int, ...] = DNA_EDIT_ALPHABET
    margin: int = 0
    snv_weight: float = 0.5
    mnv_weight: float = 0.1
    indel_weight: float = 0.4
    indel_p: float = 0.5
    max_indel_len: int = 15
    mnv_min_len: int = 2
    mnv_max_len: int = 8

    def __post_init__(self) -> None:
        self.alphabet = tuple(int(t) for t in self.alphabet)
        if len(self.alphabet) < 2 or len(set(self.alphabet)) != len(self.alphabet):
            raise LeWMConfigError("alphabet", self.alphabet, "needs >= 2 distinct tokens")
        if min(self.alphabet) < 0:
            raise LeWMConfigError("alphabet", self.alphabet, "tokens must be non-negative")
        weights = (self.snv_weight, self.mnv_weight, self.indel_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            raise LeWMConfigError("snv_weight", weights, "weights must be >= 0 with a positive sum")
        if not 2 <= self.mnv_min_len <= self.mnv_max_len:
            raise LeWMConfigError(
                "mnv_min_len", (self.mnv_min_len, self.mnv_max_len), "need 2 <= min <= max"
            )
        if not 0.0 < self.indel_p <= 1.0:
            raise LeWMConfigError("indel_p", self.indel_p, "must lie in (0, 1]")
        if not isinstance(self.max_indel_len, int) or self.max_indel_len < 1:
            raise LeWMConfigError("max_indel_len", self.max_indel_len, "must be a positive integer")
        if not isinstance(self.margin, int) or self.margin < 0:
            raise LeWMConfigError("margin", self.margin, "must be >= 0")

    @property
    def longest(self) -> int:
        """The longest edit this sampler makes."""
        return max(self.max_indel_len, self.mnv_max_len if self.mnv_weight > 0 else 1)

    def kind_probabilities(self) -> np.ndarray:
        """Probabilities of SNV, MNV, INS, DEL."""
        w = np.array(
            [self.snv_weight, self.mnv_weight, self.indel_weight / 2, self.indel_weight / 2]
        )
        return w / w.sum()

    def _lengths(self, rng: np.random.Generator, kinds: np.ndarray) -> np.ndarray:
        mnv = rng.integers(self.mnv_min_len, self.mnv_max_len + 1, size=kinds.shape)
        indel = truncated_geometric(rng, kinds.shape, self.indel_p, self.max_indel_len)
        return np.where(kinds == KIND_SNV, 1, np.where(kinds == KIND_MNV, mnv, indel))

    def _check_window(self, length: int, longest: int) -> None:
        if length < 2 * self.margin + longest + 1:
            raise LeWMConfigError(
                "margin",
                self.margin,
                f"windows of {length} tokens leave no room for edits of {longest} tokens "
                f"{self.margin} from both edges",
            )

    def sample_kinds(
        self,
        windows: np.ndarray,
        kinds: np.ndarray,
        rng: np.random.Generator,
        locus: np.ndarray | None = None,
        radius: int | np.ndarray | None = None,
    ) -> EditBatch:
        """Draw one edit of the given kind per window (see `sample`)."""
        windows = np.asarray(windows, dtype=np.int64)
        if windows.ndim != 2:
            raise LeWMInputError("windows", tuple(windows.shape), "must have shape (N, L)")
        length = windows.shape[1]
        kinds = np.array(kinds, dtype=np.int64)  # a copy: redrawn in place below
        lengths = self._lengths(rng, kinds)
        self._check_window(length, int(lengths.max(initial=1)))
        ops = _KIND_OPS[kinds]
        if locus is None:
            lo, hi = _position_bounds(ops, lengths, length, self.margin)
            positions = rng.integers(lo, hi + 1)
        else:
            if radius is None or np.any(np.asarray(radius) < 1):
                raise LeWMConfigError("cluster_radius", radius, "must be a positive integer")
            locus = np.asarray(locus, dtype=np.int64)
            radius = np.broadcast_to(np.asarray(radius, dtype=np.int64), locus.shape)  # (N,)
            positions, found = self._positions_near(rng, ops, lengths, length, locus, radius)
            for _ in range(8):  # redraw kind and length where no position fits the cluster
                if found.all():
                    break
                redo = ~found
                kinds[redo] = rng.choice(4, size=int(redo.sum()), p=self.kind_probabilities())
                lengths[redo] = self._lengths(rng, kinds[redo])
                ops[redo] = _KIND_OPS[kinds[redo]]
                positions[redo], found[redo] = self._positions_near(
                    rng, ops[redo], lengths[redo], length, locus[redo], radius[redo]
                )
            # An SNV at the locus always fits (the locus stays `margin` from the edges).
            redo = ~found
            ops[redo], lengths[redo], positions[redo] = EditOp.SUB, 1, locus[redo]
        width = int(lengths.max(initial=1))
        alphabet = np.asarray(self.alphabet, dtype=np.int64)
        tokens = _draw_tokens(rng, windows, ops, positions, lengths, alphabet, width)
        return EditBatch(ops, positions.astype(np.int64), lengths.astype(np.int64), tokens)

    def _positions_near(
        self,
        rng: np.random.Generator,
        ops: np.ndarray,
        lengths: np.ndarray,
        length: int,
        locus: np.ndarray,
        radius: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Uniform positions among those whose footprints meet the cluster (`radius` `(N,)`)
        before and after, and that keep the locus `margin` from the edges; `found` False where
        there is none."""
        reach = int(radius.max(initial=1)) + int(lengths.max(initial=1)) + 1
        cand = locus[:, None] + np.arange(-reach, reach + 1)[None, :]  # (N, C)
        op, n, c = ops[:, None], lengths[:, None], locus[:, None]
        radius = radius[:, None]  # (N, 1)
        lo, hi = _position_bounds(op, n, length, self.margin)
        in_a, in_b, out_a, out_b = footprints(op, cand, n, length)
        moved = map_locus(c, op, cand, n, length)
        ok = (cand >= lo) & (cand <= hi)
        ok &= (in_a <= c + radius) & (in_b >= c - radius)
        ok &= (out_a <= moved + radius) & (out_b >= moved - radius)
        ok &= (moved >= self.margin) & (moved <= length - 1 - self.margin)
        keys = np.where(ok, rng.random(cand.shape), -1.0)
        pick = keys.argmax(axis=1)
        return cand[np.arange(len(cand)), pick], ok.any(axis=1)

    def sample(
        self,
        windows: np.ndarray,
        rng: np.random.Generator,
        locus: np.ndarray | None = None,
        radius: int | np.ndarray | None = None,
    ) -> EditBatch:
        """Draw one edit per window from the mixture.

        Args:
            windows (`np.ndarray`): `(N, L)` windows.
            rng (`np.random.Generator`): Random source.
            locus (`np.ndarray`, *optional*): `(N,)` sites; each edit's footprint must then meet
                `[locus - radius, locus + radius]` before the edit and around `map_locus(locus)`
                after it, and the moved locus must stay `margin` from the edges. Where the drawn
                kind has no such position it is redrawn (up to 8 times), then an SNV at the locus
                is used. Without a locus positions are uniform (see the class docstring).
            radius (`int` or `np.ndarray`, *optional*): The cluster radius, required with
                `locus`: one for all windows, or `(N,)` (a radius of at least the window length
                leaves only the margins to respect).

        Returns:
            `EditBatch`: `N` edits.
        """
        num = np.asarray(windows).shape[0]
        kinds = rng.choice(4, size=num, p=self.kind_probabilities())
        return self.sample_kinds(windows, kinds, rng, locus, radius)


def sample_snvs(
    windows: np.ndarray,
    rng: np.random.Generator,
    margin: int = 0,
    alphabet: Sequence[int] = DNA_EDIT_ALPHABET,
) -> EditBatch:
    """One SNV per window: a uniform position at least `margin` from the edges, an alternative
    uniform over `alphabet` without the reference. `windows` is `(N, L)`."""
    sampler = EditSampler(alphabet=tuple(alphabet), margin=margin)
    return sampler.sample_kinds(windows, np.full(len(windows), KIND_SNV), rng)


def sample_mnvs(
    windows: np.ndarray,
    rng: np.random.Generator,
    margin: int = 0,
    alphabet: Sequence[int] = DNA_EDIT_ALPHABET,
    min_len: int = 2,
    max_len: int = 8,
) -> EditBatch:
    """One MNV per window: `min_len..max_len` tokens (uniform length), each different from its
    reference, at a uniform start keeping it `margin` from the edges."""
    sampler = EditSampler(
        alphabet=tuple(alphabet), margin=margin, mnv_min_len=min_len, mnv_max_len=max_len
    )
    return sampler.sample_kinds(windows, np.full(len(windows), KIND_MNV), rng)


def sample_indels(
    windows: np.ndarray,
    rng: np.random.Generator,
    margin: int = 0,
    alphabet: Sequence[int] = DNA_EDIT_ALPHABET,
    p: float = 0.5,
    max_len: int = 15,
) -> EditBatch:
    """One indel per window: `INS` or `DEL` with probability 1/2, length truncated-geometric
    (`p`) over `1..max_len`, a uniform start keeping it `margin` from the edges."""
    sampler = EditSampler(alphabet=tuple(alphabet), margin=margin, indel_p=p, max_indel_len=max_len)
    kinds = np.where(rng.random(len(windows)) < 0.5, KIND_INS, KIND_DEL)
    return sampler.sample_kinds(windows, kinds, rng)


__all__ = [
    "KIND_DEL",
    "KIND_INS",
    "KIND_MNV",
    "KIND_SNV",
    "EditSampler",
    "sample_indels",
    "sample_mnvs",
    "sample_snvs",
    "truncated_geometric",
]
