"""Edits on token windows, synthetic edit samplers, edit trajectories and the edit corpus.

An edit is `Edit(op, pos, tokens)` with `op` one of `EditOp.SUB` (SNV/MNV: `tokens` overwrite
`window[pos:pos + len(tokens)]`), `EditOp.INS` (`tokens` are inserted before `window[pos]`;
`pos == len(window)` appends) and `EditOp.DEL` (`tokens` are the deleted reference
`window[pos:pos + len(tokens)]`, so a deletion carries its length and what it removed). An
edit's position is in the coordinates of the window left by the previous edits. Everything works
on any integer token sequence (bases or vertex ids); DNA defaults (pad with N, edit bases ACGT)
come from `dna.py`.

Length preservation: with `preserve_length=True` a target window keeps the source length; an
insertion trims and a deletion pads (with `pad_token`) on the side away from the edit: the right
end when the edit's midpoint is in the left half (`2 * pos + span <= L`, `span` the deleted
length, 0 for an insertion), else the left end.

Locus: `pooling="centered"` pools each state around one locus, and a middle state is both the
target of edit k and the input to edit k + 1. So a trajectory has one locus, a site drawn in
`s_0` and followed through the edits (`map_locus`), and each of its edits is drawn so that the
tokens it touches meet the pooling window `[locus - cluster_radius, locus + cluster_radius]`
both in the state it edits and in the state it makes (see `footprints`). Set `cluster_radius`
to at most the model's `pool_radius`. A fraction of the edits may be drawn anywhere instead
(`free_edit_fraction`), so that a model also sees edits that miss the pooled tokens.

Actions: `edits_to_actions` turns edits into model action tensors (window positions);
`code_edit_actions` then codes them as an edit model reads them (positions relative to the
locus, `SUB` reference tokens), for training batches and evaluation candidates alike.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, DatasetDict

from .. import metric_keys as K
from ..errors import LeWMConfigError, LeWMInputError
from ..fields import IupacPolicy, PositionOrigin, option, validate_fields
from . import corpus as corpus_cache
from .dna import (
    DNA_EDIT_ALPHABET,
    DNA_END_ID,
    N_ID,
    FastaRecord,
    packaged_genome_path,
    read_fasta,
    split_region,
    split_windows,
    synthetic_records,
)
from .walks import derive_seed

DEFAULT_MAX_EDIT_LEN = 16
# Columns of an edit-corpus row that `DataCollatorForLeWM` reads (`record` and `start` are
# provenance only).
EDIT_COLUMNS = ("input_ids", "edit_ops", "edit_positions", "edit_tokens", "locus")


class EditOp(enum.IntEnum):
    """Edit operations; the values are the model's action op ids (`num_action_ops=3`)."""

    SUB = 0
    INS = 1
    DEL = 2


@dataclass(frozen=True)
class Edit:
    """One edit of a token window.

    Args:
        op (`EditOp`): `SUB`, `INS` or `DEL` (an `int` 0-2 or a name is accepted).
        pos (`int`): Position in the window the edit applies to (for `INS`, the gap before
            `window[pos]`).
        tokens (`tuple[int, ...]`): The new tokens (`SUB`, `INS`) or the deleted reference tokens
            (`DEL`).
    """

    op: EditOp
    pos: int
    tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        try:
            op = EditOp[self.op] if isinstance(self.op, str) else EditOp(int(self.op))
        except (KeyError, ValueError, TypeError) as err:
            raise LeWMInputError("op", self.op, "must be SUB (0), INS (1) or DEL (2)") from err
        if isinstance(self.pos, bool) or not isinstance(self.pos, (int, np.integer)):
            raise LeWMInputError("pos", self.pos, "must be an integer")
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "pos", int(self.pos))
        object.__setattr__(self, "tokens", tuple(int(t) for t in self.tokens))

    @property
    def length(self) -> int:
        """Tokens written (`SUB`, `INS`) or removed (`DEL`)."""
        return len(self.tokens)

    @classmethod
    def deletion(cls, window: Sequence[int] | np.ndarray, pos: int, length: int) -> Edit:
        """The deletion of `window[pos:pos + length]` (its tokens read from the window)."""
        return cls(EditOp.DEL, pos, tuple(np.asarray(window)[pos : pos + length].tolist()))


def validate_edit(
    edit: Edit,
    window: np.ndarray,
    max_edit_len: int = DEFAULT_MAX_EDIT_LEN,
    field: str = "edit",
) -> None:
    """Check that an edit applies to a window.

    Args:
        edit (`Edit`): The edit.
        window (`np.ndarray`): The window it applies to.
        max_edit_len (`int`, defaults to 16): Longest edit.
        field (`str`, defaults to `"edit"`): Named in errors (e.g. `"edits[2]"`).

    Raises:
        `LeWMInputError`: naming the field and the value: a position outside the window, a
        `SUB`/`INS` without tokens, an edit longer than `max_edit_len`, or a `DEL` whose tokens
        are not the reference at its position.
    """
    length = len(window)
    n = edit.length
    if n == 0:
        what = "the deleted reference tokens" if edit.op == EditOp.DEL else "tokens"
        raise LeWMInputError(f"{field}.tokens", edit.tokens, f"{edit.op.name} needs {what}")
    if n > max_edit_len:
        raise LeWMInputError(
            f"{field}.tokens",
            n,
            f"{edit.op.name} of {n} tokens exceeds max_edit_len={max_edit_len}",
        )
    if min(edit.tokens) < 0:
        raise LeWMInputError(f"{field}.tokens", edit.tokens, "tokens must be non-negative")
    last = length if edit.op == EditOp.INS else length - n
    if not 0 <= edit.pos <= last:
        where = f"[0, {last}]" if last >= 0 else "nowhere (edit longer than the window)"
        raise LeWMInputError(
            f"{field}.pos",
            edit.pos,
            f"{edit.op.name} of {n} tokens in a window of {length} must start in {where}",
        )
    if edit.op == EditOp.DEL:
        reference = tuple(window[edit.pos : edit.pos + n].tolist())
        if reference != edit.tokens:
            raise LeWMInputError(
                f"{field}.tokens",
                edit.tokens,
                f"DEL tokens must be the reference {reference} at position {edit.pos}",
            )


def pads_left(op: Any, pos: Any, length: Any, window_length: int) -> Any:
    """Whether a length-changing edit trims or pads the left end (else the right end).

    The side away from the edit: left when the edit's midpoint is in the right half,
    `2 * pos + span > window_length`, with `span` the deleted length (0 for an insertion).
    `SUB` never changes the length (False). Works elementwise on arrays.
    """
    op = np.asarray(op)
    span = np.where(op == EditOp.DEL, length, 0)
    return (op != EditOp.SUB) & (2 * np.asarray(pos) + span > window_length)


def apply_edit(
    window: Sequence[int] | np.ndarray,
    edit: Edit,
    preserve_length: bool = True,
    pad_token: int = N_ID,
    max_edit_len: int = DEFAULT_MAX_EDIT_LEN,
) -> np.ndarray:
    """Apply one edit (see `apply_edits`)."""
    return apply_edits(window, [edit], preserve_length, pad_token, max_edit_len)


def apply_edits(
    window: Sequence[int] | np.ndarray,
    edits: Sequence[Edit],
    preserve_length: bool = True,
    pad_token: int = N_ID,
    max_edit_len: int = DEFAULT_MAX_EDIT_LEN,
) -> np.ndarray:
    """Apply edits one after the other; each edit's position is in the previous result.

    Args:
        window (`Sequence[int]` or `np.ndarray`): The source window (any integer tokens).
        edits (`Sequence[Edit]`): The edits, in order.
        preserve_length (`bool`, defaults to `True`): Trim (insertions) or pad (deletions) on the
            side away from each edit so that every window keeps the source length.
        pad_token (`int`, defaults to `N_ID`): Token that fills after a deletion (N for DNA).
        max_edit_len (`int`, defaults to 16): Longest edit accepted.

    Returns:
        `np.ndarray`: The final window (int64).

    Raises:
        `LeWMInputError`: for an edit that does not apply (see `validate_edit`), naming
        `edits[i]`.
    """
    current = np.asarray(window, dtype=np.int64)
    if current.ndim != 1:
        raise LeWMInputError("window", tuple(current.shape), "must be one sequence of tokens")
    length = len(current)
    for i, edit in enumerate(edits):
        validate_edit(edit, current, max_edit_len, f"edits[{i}]")
        new = np.asarray(edit.tokens, dtype=np.int64)
        p, n = edit.pos, edit.length
        if edit.op == EditOp.SUB:
            current = np.concatenate([current[:p], new, current[p + n :]])
            continue
        if edit.op == EditOp.INS:
            current = np.concatenate([current[:p], new, current[p:]])
        else:
            current = np.concatenate([current[:p], current[p + n :]])
        if not preserve_length:
            continue
        left = bool(pads_left(edit.op, p, n, length))
        if edit.op == EditOp.DEL:
            fill = np.full(n, pad_token, dtype=np.int64)
            current = np.concatenate([fill, current] if left else [current, fill])
        else:
            current = current[n:] if left else current[:length]
    return current


# ---- batches of edits ----------------------------------------------------------------------
@dataclass
class EditBatch:
    """One edit per row of a batch of windows, as arrays.

    Args:
        ops (`np.ndarray`): `(N,)` `EditOp` values.
        positions (`np.ndarray`): `(N,)` positions.
        lengths (`np.ndarray`): `(N,)` tokens per edit (>= 1).
        tokens (`np.ndarray`): `(N, M)` tokens, row `i` valid up to `lengths[i]`, then -1.
    """

    ops: np.ndarray
    positions: np.ndarray
    lengths: np.ndarray
    tokens: np.ndarray

    def __len__(self) -> int:
        return int(self.ops.shape[0])

    def edit(self, i: int) -> Edit:
        """Row `i` as an `Edit`."""
        n = int(self.lengths[i])
        return Edit(int(self.ops[i]), int(self.positions[i]), self.tokens[i, :n].tolist())

    def to_edits(self) -> list[Edit]:
        """Every row as an `Edit`."""
        return [self.edit(i) for i in range(len(self))]


def apply_edit_batch(windows: np.ndarray, batch: EditBatch, pad_token: int = N_ID) -> np.ndarray:
    """Apply one edit to each window at once, preserving the length (vectorised `apply_edit`).

    The edits are not validated (the samplers make valid ones; `apply_edits` validates).

    Args:
        windows (`np.ndarray`): `(N, L)` windows.
        batch (`EditBatch`): `N` edits.
        pad_token (`int`, defaults to `N_ID`): Fill after a deletion.

    Returns:
        `np.ndarray`: `(N, L)` edited windows (int64).
    """
    windows = np.asarray(windows, dtype=np.int64)
    num, length = windows.shape
    width = batch.tokens.shape[1]
    new_at, pad_at = length, length + width  # indices into `ext`
    new = np.where(batch.tokens >= 0, batch.tokens, pad_token)
    ext = np.concatenate([windows, new, np.full((num, 1), pad_token, np.int64)], axis=1)
    i = np.arange(length)[None, :]  # (1, L)
    p = batch.positions[:, None].astype(np.int64)
    n = batch.lengths[:, None].astype(np.int64)
    op = batch.ops[:, None]
    left = pads_left(op, p, n, length)  # (N, 1)

    def inserted(j: np.ndarray) -> np.ndarray:
        # Index of u[j], u = window[:p] + new + window[p:] (before trimming).
        return np.where(j < p, j, np.where(j < p + n, new_at + j - p, j - n))

    sub = np.where((i >= p) & (i < p + n), new_at + i - p, i)
    ins = np.where(left, inserted(i + n), inserted(i))
    dele = np.where(
        left,
        np.where(i < n, pad_at, np.where(i < p + n, i - n, i)),
        np.where(i < p, i, np.where(i < length - n, i + n, pad_at)),
    )
    src = np.where(op == EditOp.SUB, sub, np.where(op == EditOp.INS, ins, dele))  # (N, L)
    return np.take_along_axis(ext, src, axis=1)


def map_locus(
    locus: np.ndarray, ops: Any, positions: Any, lengths: Any, window_length: int
) -> np.ndarray:
    """Where a site of the edited window lies after a length-preserving edit.

    A token that survives keeps pointing at itself (shifted by the insertion or deletion, or by
    the trim or pad); a deleted site moves to the first token after the deletion. The result is
    clipped to the window. Works elementwise (broadcasting).

    Args:
        locus (`np.ndarray`): Sites in the window before the edit.
        ops, positions, lengths (`np.ndarray`): The edits.
        window_length (`int`): L.

    Returns:
        `np.ndarray`: The sites in the edited window.
    """
    c = np.asarray(locus, dtype=np.int64)
    op, p, n = np.asarray(ops), np.asarray(positions), np.asarray(lengths)
    left = pads_left(op, p, n, window_length)
    ins = np.where(left, np.where(c < p, c - n, c), np.where(c < p, c, c + n))
    dele = np.where(
        left,
        np.where(c < p, c + n, np.where(c < p + n, p + n, c)),
        np.where(c < p, c, np.where(c < p + n, p, c - n)),
    )
    out = np.where(op == EditOp.SUB, c, np.where(op == EditOp.INS, ins, dele))
    return np.clip(out, 0, window_length - 1)


def footprints(
    ops: Any, positions: Any, lengths: Any, window_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The tokens an edit touches, before and after (inclusive intervals, clipped to the window).

    Before: the replaced or deleted tokens, or the two tokens around an insertion's gap. After:
    the written tokens (`SUB`, `INS`, where the trim put them), or the two tokens around a
    deletion's junction. Works elementwise.

    Returns:
        `tuple[np.ndarray, ...]`: `(in_start, in_end, out_start, out_end)`.
    """
    op, p, n = np.asarray(ops), np.asarray(positions), np.asarray(lengths)
    left = pads_left(op, p, n, window_length)
    is_ins, is_del = op == EditOp.INS, op == EditOp.DEL
    in_a = np.where(is_ins, p - 1, p)
    in_b = np.where(is_ins, p, p + n - 1)
    junction = np.where(left, p + n, p)  # first token after a deletion
    written = np.where(is_ins & left, p - n, p)
    out_a = np.where(is_del, junction - 1, written)
    out_b = np.where(is_del, junction, written + n - 1)
    hi = window_length - 1
    return (
        np.clip(in_a, 0, hi),
        np.clip(in_b, 0, hi),
        np.clip(out_a, 0, hi),
        np.clip(out_b, 0, hi),
    )


# ---- samplers -------------------------------------------------------------------------------
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


# ---- trajectories ---------------------------------------------------------------------------
@dataclass
class EditTrajectories:
    """`N` trajectories of `K` edits each: `s_0 .. s_K` with `s_k = apply(a_1 .. a_k, s_0)`.

    Args:
        states (`np.ndarray`): `(N, K + 1, L)` windows.
        ops (`np.ndarray`): `(N, K)`.
        positions (`np.ndarray`): `(N, K)`, edit `k` in the coordinates of state `k`.
        lengths (`np.ndarray`): `(N, K)`.
        tokens (`np.ndarray`): `(N, K, M)`, -1 past each edit's length.
        locus (`np.ndarray`): `(N, K + 1)` the trajectory's site in each state.
    """

    states: np.ndarray
    ops: np.ndarray
    positions: np.ndarray
    lengths: np.ndarray
    tokens: np.ndarray
    locus: np.ndarray

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def edits(self, i: int, num_steps: int | None = None) -> list[Edit]:
        """The first `num_steps` (all if None) edits of trajectory `i`."""
        steps = self.ops.shape[1] if num_steps is None else num_steps
        return [
            Edit(
                int(self.ops[i, k]),
                int(self.positions[i, k]),
                self.tokens[i, k, : self.lengths[i, k]].tolist(),
            )
            for k in range(steps)
        ]


def sample_trajectories(
    windows: np.ndarray,
    num_edits: int,
    rng: np.random.Generator,
    sampler: EditSampler | None = None,
    cluster_radius: int | None = 4,
    pad_token: int = N_ID,
    free_fraction: float = 0.0,
) -> EditTrajectories:
    """Draw a trajectory of `num_edits` edits from each window (vectorised over windows).

    The locus is uniform over the positions `sampler.margin` from the edges of `s_0`, followed
    through the edits with `map_locus`; with `cluster_radius` every edit's footprints meet the
    locus's cluster (see `EditSampler.sample`), so one `"centered"` pooling window per state sees
    both the edit that made it and the edit applied to it. With `free_fraction > 0` each edit is,
    with that probability, drawn anywhere instead (among the positions that keep the locus
    `margin` from the edges): such edits may miss the pooled tokens, as most of the candidates
    of `evaluation.edits.snv_recovery` do, and show the model what they do to a state.

    Args:
        windows (`np.ndarray`): `(N, L)` source windows.
        num_edits (`int`): K.
        rng (`np.random.Generator`): Random source.
        sampler (`EditSampler`, *optional*): The edit mixture (DNA defaults if None).
        cluster_radius (`int`, *optional*, defaults to 4): Cluster radius (at most the model's
            `pool_radius`); None draws positions uniformly (the locus is then only followed).
        pad_token (`int`, defaults to `N_ID`): Fill after deletions.
        free_fraction (`float`, defaults to 0.0): Probability that an edit ignores the cluster
            (needs `cluster_radius`; 0 draws no extra random numbers).

    Returns:
        `EditTrajectories`: States, edits and loci.
    """
    sampler = sampler if sampler is not None else EditSampler()
    if not isinstance(num_edits, int) or num_edits < 1:
        raise LeWMConfigError("max_actions", num_edits, "must be a positive integer")
    if cluster_radius is not None and (not isinstance(cluster_radius, int) or cluster_radius < 1):
        raise LeWMConfigError(
            "cluster_radius", cluster_radius, "must be a positive integer or None"
        )
    if not 0.0 <= free_fraction <= 1.0:
        raise LeWMConfigError("free_edit_fraction", free_fraction, "must lie in [0, 1]")
    state = np.asarray(windows, dtype=np.int64)
    num, length = state.shape
    sampler._check_window(length, sampler.longest)
    locus = rng.integers(sampler.margin, length - sampler.margin, size=num)
    states, loci, batches = [state], [locus], []
    for _ in range(num_edits):
        near = None if cluster_radius is None else locus
        radius: int | np.ndarray | None = cluster_radius
        if near is not None and free_fraction > 0:
            # A radius of the window length leaves only the margins to respect.
            radius = np.where(rng.random(num) < free_fraction, length, cluster_radius)
        batch = sampler.sample(state, rng, near, radius)
        state = apply_edit_batch(state, batch, pad_token)
        locus = map_locus(locus, batch.ops, batch.positions, batch.lengths, length)
        states.append(state)
        loci.append(locus)
        batches.append(batch)
    width = max(b.tokens.shape[1] for b in batches)
    tokens = np.full((num, num_edits, width), -1, dtype=np.int64)
    for k, b in enumerate(batches):
        tokens[:, k, : b.tokens.shape[1]] = b.tokens
    return EditTrajectories(
        states=np.stack(states, axis=1),
        ops=np.stack([b.ops for b in batches], axis=1),
        positions=np.stack([b.positions for b in batches], axis=1),
        lengths=np.stack([b.lengths for b in batches], axis=1),
        tokens=tokens,
        locus=np.stack(loci, axis=1),
    )


# ---- actions --------------------------------------------------------------------------------
def edits_to_actions(
    trajectories: Sequence[Sequence[Edit]],
    end_token: int | None = DNA_END_ID,
    max_edit_len: int = DEFAULT_MAX_EDIT_LEN,
) -> dict[str, torch.Tensor]:
    """Model action tensors of a batch of ragged edit trajectories (the one such conversion).

    An action is `(op, pos, tokens)`: the alternative tokens for `SUB` and `INS`, the deleted
    reference tokens for `DEL`, followed by `end_token`. The action encoder mean-pools token
    embeddings, which would make `DEL` of `A` and of `AA` (or any two edits whose tokens have
    the same composition) identical; the end token's share, `1 / (n + 1)`, makes the length
    visible, so every edit of a window is identifiable from its action.

    Args:
        trajectories (`Sequence[Sequence[Edit]]`): `B` trajectories of `K_b` edits.
        end_token (`int`, *optional*, defaults to `DNA_END_ID`): Appended to every action's
            tokens; None appends nothing.
        max_edit_len (`int`, defaults to 16): Longest edit accepted.

    Returns:
        `dict[str, torch.Tensor]`: `action_ops`, `action_positions` `(B, K)` long;
        `action_tokens` `(B, K, L_a)` long; `action_token_mask` `(B, K, L_a)` bool;
        `action_mask` `(B, K)` bool, with `K = max K_b` and `L_a` the longest action's tokens.
        Padded steps and tokens are 0 and masked.
    """
    batch = len(trajectories)
    steps = max((len(t) for t in trajectories), default=0)
    extra = 0 if end_token is None else 1
    width = extra + max((e.length for t in trajectories for e in t), default=0)
    ops = torch.zeros(batch, steps, dtype=torch.long)
    positions = torch.zeros(batch, steps, dtype=torch.long)
    tokens = torch.zeros(batch, steps, max(width, 1), dtype=torch.long)
    token_mask = torch.zeros(batch, steps, max(width, 1), dtype=torch.bool)
    action_mask = torch.zeros(batch, steps, dtype=torch.bool)
    for b, trajectory in enumerate(trajectories):
        for k, edit in enumerate(trajectory):
            if not isinstance(edit, Edit):
                raise LeWMInputError(f"trajectories[{b}][{k}]", type(edit).__name__, "not an Edit")
            if not 1 <= edit.length <= max_edit_len:
                raise LeWMInputError(
                    f"trajectories[{b}][{k}].tokens",
                    edit.length,
                    f"an edit has 1..max_edit_len={max_edit_len} tokens",
                )
            row = list(edit.tokens) + ([] if end_token is None else [end_token])
            ops[b, k] = int(edit.op)
            positions[b, k] = edit.pos
            tokens[b, k, : len(row)] = torch.tensor(row, dtype=torch.long)
            token_mask[b, k, : len(row)] = True
            action_mask[b, k] = True
    return {
        "action_ops": ops,
        "action_positions": positions,
        "action_tokens": tokens,
        "action_token_mask": token_mask,
        "action_mask": action_mask,
    }


def locus_relative_positions(positions: Any, locus: Any, window_length: int) -> Any:
    """Action positions as seen from the state's locus: `pos - locus + window_length`.

    A `"centered"` state is the encoder's view of the tokens around its locus, and the predictor
    is given the state but not the locus, so a window position alone does not tell it where an
    edit falls in what the state sees. Relative to the locus it does: offset `d = pos - locus`
    (`-L < d <= L`, an insertion may sit at `pos = L`), shifted by `L` so that every position
    lies in `[1, 2L]` (the model's `max_action_position` must exceed `2L`). Works elementwise on
    arrays and tensors.

    Args:
        positions (`np.ndarray` or `torch.Tensor`): Edit positions in the window.
        locus (`np.ndarray` or `torch.Tensor`): The locus of the state each edit applies to
            (broadcast against `positions`).
        window_length (`int`): L.

    Returns:
        The same type as `positions`: the shifted offsets.
    """
    return positions - locus + window_length


def with_reference_tokens(
    actions: dict[str, torch.Tensor],
    states: torch.Tensor,
    offset: int,
    end_token: int | None = DNA_END_ID,
) -> dict[str, torch.Tensor]:
    """Actions whose `SUB` tokens also name the tokens they replace (`ref + offset`).

    A `DEL` action carries its deleted reference and an `INS` replaces nothing, but a `SUB`
    action names only what it writes, so the predictor would have to read the replaced base
    back from the state, which a pooled state keeps poorly. Here every `SUB` action also gets
    its reference tokens `state[pos:pos + n]`, shifted by `offset` (at least the vocabulary
    size) so that the mean-pooling action encoder tells them from the written ones. The other
    actions are unchanged.

    Args:
        actions (`dict[str, torch.Tensor]`): `edits_to_actions` tensors: `action_ops`,
            `action_positions` (window positions) `(B, K)`, `action_tokens`,
            `action_token_mask` `(B, K, L_a)`, and optionally `action_mask` `(B, K)`.
        states (`torch.Tensor` of shape `(B, K, L)`): The state each action edits (action `k`
            edits state `k`).
        offset (`int`): Shift of the reference tokens.
        end_token (`int`, *optional*, defaults to `DNA_END_ID`): The token that closes each
            action (not a written token); None if the actions have none.

    Returns:
        `dict[str, torch.Tensor]`: The same keys, with `L_a` reference entries appended to
        `action_tokens` and `action_token_mask` (`(B, K, 2 L_a)`; unused ones masked).
    """
    ops, positions = actions["action_ops"], actions["action_positions"]
    tokens, token_mask = actions["action_tokens"], actions["action_token_mask"].bool()
    if states.dim() != 3 or states.shape[:2] != ops.shape:
        raise LeWMInputError(
            "states", tuple(states.shape), f"must have shape {tuple(ops.shape)} + (L,)"
        )
    is_sub = ops == EditOp.SUB
    if "action_mask" in actions:
        is_sub = is_sub & actions["action_mask"].bool()
    written = token_mask if end_token is None else token_mask & (tokens != end_token)
    n = written.sum(-1, keepdim=True)  # (B, K, 1) tokens a SUB writes (and replaces)
    j = torch.arange(tokens.shape[-1], device=tokens.device)  # (L_a,)
    at = (positions.unsqueeze(-1) + j).clamp(0, states.shape[-1] - 1)  # (B, K, L_a)
    ref = states.to(tokens.device).gather(-1, at) + offset
    ref_mask = (j < n) & is_sub.unsqueeze(-1)
    return {
        **actions,
        "action_tokens": torch.cat([tokens, torch.where(ref_mask, ref, 0)], dim=-1),
        "action_token_mask": torch.cat([token_mask, ref_mask], dim=-1),
    }


def code_edit_actions(
    actions: dict[str, torch.Tensor],
    states: torch.Tensor,
    locus: torch.Tensor,
    position_origin: PositionOrigin = "window",
    reference_offset: int | None = None,
    end_token: int | None = DNA_END_ID,
) -> dict[str, torch.Tensor]:
    """Edit actions in the coding a model reads: `SUB` reference tokens, then locus-relative
    positions, each when asked for. The one place both training batches and evaluation
    candidates go through, so that the two always agree.

    Args:
        actions (`dict[str, torch.Tensor]`): `edits_to_actions` tensors (window positions).
        states (`torch.Tensor` of shape `(B, K, L)`): The state each action edits.
        locus (`torch.Tensor` of shape `(B, K)`): Those states' loci.
        position_origin (`str`, defaults to `"window"`): `"locus"`: positions become
            `locus_relative_positions`.
        reference_offset (`int`, *optional*): With a value, `with_reference_tokens` by it.
        end_token (`int`, *optional*, defaults to `DNA_END_ID`): The actions' end token.

    Returns:
        `dict[str, torch.Tensor]`: The coded actions (the input when nothing is asked for).
    """
    if reference_offset is not None:
        actions = with_reference_tokens(actions, states, reference_offset, end_token)
    if position_origin == "locus":
        positions = locus_relative_positions(
            actions["action_positions"],
            locus.to(actions["action_positions"].device),
            states.shape[-1],
        )
        actions = {**actions, "action_positions": positions}
    return actions


def edits_from_row(row: dict[str, Any]) -> list[Edit]:
    """The edits of an edit-corpus row (`edit_ops`, `edit_positions`, `edit_tokens`)."""
    ops, positions, tokens = row["edit_ops"], row["edit_positions"], row["edit_tokens"]
    if not len(ops) == len(positions) == len(tokens):
        raise LeWMInputError(
            "edit_ops", (len(ops), len(positions), len(tokens)), "edit columns differ in length"
        )
    return [Edit(int(o), int(p), t) for o, p, t in zip(ops, positions, tokens)]


# ---- corpus ---------------------------------------------------------------------------------
@dataclass
class EditCorpusConfig:
    """Everything that defines an edit corpus; every field is part of the cache key (with the
    SHA-256 of the FASTA file, so a changed file is a new corpus).

    Rows: a source window `s_0` (a region-split DNA window), `K` edits (`min_actions..
    max_actions`, uniform) drawn by an `EditSampler` clustered around one locus, and the windows
    `s_1 .. s_K` after each edit.

    Args:
        fasta_path (`str`, *optional*): FASTA file (plain or gzip) of the source genome.
        genome (`str`, *optional*): A genome shipped by an installed package
            (`dna.PACKAGED_GENOMES`, e.g. `"c_diphtheriae_100kb"`), instead of `fasta_path`.
            With neither, the synthetic genome of `dna.synthetic_genome` is used.
        synthetic_records (`int`, defaults to 4): Records of the synthetic genome.
        synthetic_length (`int`, defaults to 50000): Bases per synthetic record.
        iupac (`str`, defaults to `"error"`): IUPAC codes in the FASTA: `"error"` or `"n"`.
        window_length (`int`, defaults to 128): Window L.
        window_stride (`int`, defaults to 64): Offset between source windows.
        holdout_fraction (`float`, defaults to 0.1): Last fraction of each record held out for
            `validation`.
        max_n_fraction (`float`, defaults to 0.1): Windows with more N are dropped.
        min_actions (`int`, defaults to 1): Fewest edits per row.
        max_actions (`int`, defaults to 3): Most edits per row (at most the model's
            `history_length`).
        trajectories_per_window (`int`, defaults to 1): Trajectories drawn from each window.
        max_train_rows (`int`, *optional*): Cap on training rows (a random subset of windows).
        max_validation_rows (`int`, *optional*): Cap on validation rows.
        margin (`int`, defaults to 16): Edits and loci stay this far from the window edges.
            Edit positions lie in `[margin, window_length - margin]`, so the model's
            `max_action_position` must exceed `window_length`.
        cluster_radius (`int`, *optional*, defaults to 4): Edits meet `[locus - r, locus + r]`;
            at most the model's `pool_radius`. None: uniform positions.
        free_edit_fraction (`float`, defaults to 0.0): Fraction of edits drawn anywhere in the
            window (the locus kept `margin` from the edges) instead of near the locus, so that
            the model also sees edits that miss the pooled tokens. Needs `cluster_radius`.
        snv_weight, mnv_weight, indel_weight (`float`, defaults to 0.5, 0.1, 0.4): Edit mixture.
        indel_p (`float`, defaults to 0.5): Geometric parameter of indel lengths.
        max_indel_len (`int`, defaults to 15): Longest indel.
        mnv_min_len, mnv_max_len (`int`, defaults to 2, 8): MNV lengths.
        max_edit_len (`int`, defaults to 16): Longest edit accepted anywhere.
        seed (`int`, defaults to 0): Base seed (phases, subsets, edits; per split).
    """

    # Parameters that control the source genome
    fasta_path: str | None = option(None, help="FASTA file (plain or gzip) of the genome.")
    genome: str | None = option(None, help="Genome shipped by an installed package.")
    synthetic_records: int = option(4, help="Synthetic genome: records.", low=1)
    synthetic_length: int = option(50_000, help="Synthetic genome: bases per record.", low=1)
    iupac: IupacPolicy = option("error", help="IUPAC codes: error, or n to read them as N.")

    # Parameters that control the windows
    window_length: int = option(128, help="Window length L.", low=1)
    window_stride: int = option(64, help="Offset between source windows.", low=1)
    holdout_fraction: float = option(
        0.1,
        help="Held-out fraction at each record's end.",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    max_n_fraction: float = option(0.1, help="Drop windows with more N.", low=0, high=1)

    # Parameters that control the trajectories
    min_actions: int = option(1, help="Fewest edits per row.", low=1)
    max_actions: int = option(3, help="Most edits per row (<= history_length).", low=1)
    trajectories_per_window: int = option(1, help="Trajectories per window.", low=1)
    max_train_rows: int | None = option(None, help="Cap on training rows.", low=1)
    max_validation_rows: int | None = option(None, help="Cap on validation rows.", low=1)
    margin: int = option(16, help="Distance of edits and loci from the edges.", low=0)
    cluster_radius: int | None = option(4, help="Edits meet locus +- r (<= pool_radius).", low=1)
    free_edit_fraction: float = option(
        0.0, help="Fraction of edits drawn anywhere, not near the locus (0: none).", low=0, high=1
    )

    # Parameters that control the edits
    snv_weight: float = option(0.5, help="Weight of SNVs.", low=0)
    mnv_weight: float = option(0.1, help="Weight of MNVs.", low=0)
    indel_weight: float = option(0.4, help="Weight of indels.", low=0)
    indel_p: float = option(
        0.5, help="Geometric parameter of indel lengths.", low=0, high=1, low_open=True
    )
    max_indel_len: int = option(15, help="Longest indel.", low=1)
    mnv_min_len: int = option(2, help="Shortest MNV.", low=2)
    mnv_max_len: int = option(8, help="Longest MNV.", low=2)
    max_edit_len: int = option(DEFAULT_MAX_EDIT_LEN, help="Longest edit accepted.", low=1)
    seed: int = option(0, help="Base seed.", low=0)

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.fasta_path is not None and self.genome is not None:
            raise LeWMConfigError("genome", self.genome, "give fasta_path or genome, not both")
        if self.fasta_path is not None:
            self.fasta_path = str(self.fasta_path)
        if self.min_actions > self.max_actions:
            raise LeWMConfigError(
                "min_actions", self.min_actions, f"must be <= max_actions={self.max_actions}"
            )
        if self.free_edit_fraction > 0 and self.cluster_radius is None:
            raise LeWMConfigError(
                "free_edit_fraction",
                self.free_edit_fraction,
                "needs cluster_radius (without it every edit is drawn anywhere already)",
            )
        sampler = self.sampler()
        if sampler.longest > self.max_edit_len:
            raise LeWMConfigError(
                "max_edit_len",
                self.max_edit_len,
                f"is shorter than the longest sampled edit ({sampler.longest})",
            )
        sampler._check_window(self.window_length, sampler.longest)

    def sampler(self) -> EditSampler:
        """The `EditSampler` these fields define (DNA alphabet ACGT)."""
        return EditSampler(
            alphabet=DNA_EDIT_ALPHABET,
            margin=self.margin,
            snv_weight=self.snv_weight,
            mnv_weight=self.mnv_weight,
            indel_weight=self.indel_weight,
            indel_p=self.indel_p,
            max_indel_len=self.max_indel_len,
            mnv_min_len=self.mnv_min_len,
            mnv_max_len=self.mnv_max_len,
        )

    def cache_key(self) -> dict[str, Any]:
        """The fingerprinted content: every field plus the SHA-256 of the source file."""
        key = corpus_cache.config_to_dict(self)
        source = self.source_path()
        key["source_sha256"] = None if source is None else _file_sha256(source)
        return key

    def source_path(self) -> Path | None:
        """The FASTA file (None for the synthetic genome)."""
        if self.genome is not None:
            return packaged_genome_path(self.genome)
        if self.fasta_path is not None:
            path = Path(self.fasta_path)
            if not path.is_file():
                raise LeWMConfigError("fasta_path", self.fasta_path, "no such file")
            return path
        return None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_source_records(config: EditCorpusConfig) -> tuple[list[FastaRecord], str]:
    """The records an edit corpus is cut from, and a name of their source for messages."""
    path = config.source_path()
    if path is None:
        records = synthetic_records(
            num_records=config.synthetic_records,
            record_length=config.synthetic_length,
            seed=derive_seed(config.seed, "synthetic-genome"),
        )
        return records, "synthetic genome"
    return list(read_fasta(path, iupac=config.iupac)), str(path)


def build_edit_corpus(
    config: EditCorpusConfig | None = None, cache_dir: str | Path | None = None
) -> DatasetDict:
    """Build (or load from the cache) an edit-trajectory corpus.

    Splits `train` and `validation` (by region: the last `holdout_fraction` of every record is
    validation, 0 bp shared). Columns per row, ragged in `K`:

    - `input_ids`: `(K + 1, L)` token ids of `s_0 .. s_K` (ids of `dna.DNA_VOCAB`);
    - `edit_ops`, `edit_positions`: `(K,)` (`EditOp` values; edit `k`'s position in `s_k`);
    - `edit_tokens`: `K` lists, the new tokens (`SUB`, `INS`) or deleted reference (`DEL`);
    - `locus`: `(K + 1,)` the trajectory's site in each state;
    - `record`, `start`: the source window's record index and 0-based offset.

    `regions.json` beside the data lists every record with its training and validation regions.
    Collate with `DataCollatorForLeWM` (edit-row form).

    Args:
        config (`EditCorpusConfig`, *optional*): Defaults (synthetic genome) if None.
        cache_dir (`str` or `Path`, *optional*): Cache root (see `corpus.default_cache_dir`).

    Returns:
        `DatasetDict`: Memory-mapped splits.
    """
    config = config if config is not None else EditCorpusConfig()
    key = config.cache_key()
    folder = corpus_cache.cached_build(
        "edits", key, functools.partial(_write_edit_corpus, config), cache_dir
    )
    return corpus_cache.load_corpus(folder)


# Windows per vectorised trajectory batch (bounds the (N, K + 1, L) int64 states).
TRAJECTORY_CHUNK = 4096


def _write_edit_corpus(config: EditCorpusConfig, folder: Path) -> None:
    """Generate an edit corpus into `folder` (called by the cache inside a temporary folder)."""
    records, source = load_source_records(config)
    windows = split_windows(
        records,
        config.window_length,
        config.window_stride,
        config.holdout_fraction,
        seed=derive_seed(config.seed, "phases"),
        max_n_fraction=config.max_n_fraction,
        source=source,
    )
    sampler = config.sampler()
    splits = {}
    caps = {"train": config.max_train_rows, "validation": config.max_validation_rows}
    for split, win in windows.items():
        rng = np.random.default_rng(derive_seed(config.seed, f"edits-{split}"))
        rows = np.repeat(np.arange(len(win)), config.trajectories_per_window)
        if caps[split] is not None and caps[split] < len(rows):
            rows = rows[np.sort(rng.choice(len(rows), size=caps[split], replace=False))]
        num_steps = rng.integers(config.min_actions, config.max_actions + 1, size=len(rows))
        parts = []
        for at in range(0, len(rows), TRAJECTORY_CHUNK):
            chunk = rows[at : at + TRAJECTORY_CHUNK]
            traj = sample_trajectories(
                win.ids[chunk],
                config.max_actions,
                rng,
                sampler,
                config.cluster_radius,
                N_ID,
                config.free_edit_fraction,
            )
            parts.append(_trajectory_table(traj, num_steps[at : at + TRAJECTORY_CHUNK]))
        table = pa.concat_tables(parts)
        table = table.append_column("record", pa.array(win.record[rows].astype(np.int32)))
        table = table.append_column("start", pa.array(win.start[rows].astype(np.int64)))
        splits[split] = Dataset(table)
    DatasetDict(splits).save_to_disk(str(folder / corpus_cache.DATA_SUBDIR))
    regions = []
    for record in records:
        _, cut, end = split_region(len(record), config.holdout_fraction)
        regions.append(
            {
                "name": record.name,
                "description": record.description,
                "length": end,
                "train": [0, cut],
                "validation": [cut, end],
            }
        )
    (folder / K.REGIONS_FILE).write_text(json.dumps({"source": source, "records": regions}))


def _ragged(values: np.ndarray, counts: np.ndarray) -> pa.Array:
    """A list array whose row `i` holds `values[i, :counts[i]]` (values `(N, T, ...)`)."""
    keep = np.arange(values.shape[1])[None, :] < counts[:, None]  # (N, T)
    flat = values[keep]  # (sum counts, ...)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    if flat.ndim == 1:
        inner: pa.Array = pa.array(flat.astype(np.int32))
    else:
        inner = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(flat, dtype=np.int32).reshape(-1)), flat.shape[1]
        )
    return pa.ListArray.from_arrays(pa.array(offsets), inner)


def _trajectory_table(traj: EditTrajectories, num_steps: np.ndarray) -> pa.Table:
    """Arrow columns of trajectories truncated to `num_steps` edits each."""
    steps = num_steps.astype(np.int64)
    # edit_tokens: list (per row) of list (per edit) of tokens.
    keep = np.arange(traj.ops.shape[1])[None, :] < steps[:, None]  # (N, K)
    lengths = traj.lengths[keep]  # (E,)
    tokens = traj.tokens[keep]  # (E, M)
    flat = tokens[np.arange(tokens.shape[1])[None, :] < lengths[:, None]]
    inner = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)),
        pa.array(flat.astype(np.int32)),
    )
    edit_tokens = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(steps)]).astype(np.int32)), inner
    )
    return pa.table(
        {
            "input_ids": _ragged(traj.states, steps + 1),
            "edit_ops": _ragged(traj.ops, steps),
            "edit_positions": _ragged(traj.positions, steps),
            "edit_tokens": edit_tokens,
            "locus": _ragged(traj.locus, steps + 1),
        }
    )


__all__ = [
    "DEFAULT_MAX_EDIT_LEN",
    "EDIT_COLUMNS",
    "Edit",
    "EditBatch",
    "EditCorpusConfig",
    "EditOp",
    "EditSampler",
    "EditTrajectories",
    "apply_edit",
    "apply_edit_batch",
    "apply_edits",
    "build_edit_corpus",
    "code_edit_actions",
    "edits_from_row",
    "edits_to_actions",
    "footprints",
    "load_source_records",
    "locus_relative_positions",
    "map_locus",
    "pads_left",
    "sample_indels",
    "sample_mnvs",
    "sample_snvs",
    "sample_trajectories",
    "truncated_geometric",
    "validate_edit",
    "with_reference_tokens",
]
