"""The edit type: `Edit` and `EditOp`, applying edits to a token window, and where an edit
moves a site of the window.

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
length, 0 for an insertion), else the left end. `map_locus` follows a site through such an
edit and `footprints` gives the tokens it touches before and after (elementwise on arrays).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import LeWMInputError
from ..dna import N_ID

DEFAULT_MAX_EDIT_LEN = 16


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


__all__ = [
    "DEFAULT_MAX_EDIT_LEN",
    "Edit",
    "EditOp",
    "apply_edit",
    "apply_edits",
    "footprints",
    "map_locus",
    "pads_left",
    "validate_edit",
]
