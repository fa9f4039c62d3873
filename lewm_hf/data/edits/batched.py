"""Batches of edits as arrays (`EditBatch`, one edit per window) and their vectorised
application (`apply_edit_batch`), which the samplers and the corpus writer use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..dna import N_ID
from .ops import Edit, EditOp, pads_left


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


__all__ = [
    "EditBatch",
    "apply_edit_batch",
]
