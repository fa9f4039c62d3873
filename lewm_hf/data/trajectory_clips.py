"""Clips of long trajectory rows: a row with more actions than the model's history is cut into
clips of `history_length` actions at a stride, by a `(row, offset)` index; the rows stay in
their Arrow files and a batch's clips are read from them when the collator asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

from ..errors import LeWMConfigError
from .trajectories import STATE_COLUMN, _arrow_table, real_steps

# Columns of a clip index (`TrajectoryClips.as_dataset`): which split, which row, which offset.
CLIP_SPLIT = "clip_split"
CLIP_ROW = "clip_row"
CLIP_OFFSET = "clip_offset"
# Per-state columns (K + 1 values) and per-action columns (K values) of the format.
STATE_WISE = (STATE_COLUMN, "locus")
ACTION_WISE = ("actions", "edit_ops", "edit_positions", "edit_tokens")


def clip_offsets(
    steps: np.ndarray, history_length: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Where the clips of every row start: `(row, offset)` pairs, vectorised.

    A row of `k` real actions gives clips starting at `0, stride, 2 * stride, ...`, each of
    `min(history_length, k - offset)` actions, up to the first that reaches the row's end; a row
    of at most `history_length` actions is one clip (itself). With `stride <= history_length`
    every transition of a row lies in at least one clip.

    Args:
        steps (`np.ndarray`): `(N,)` real actions per row (>= 1).
        history_length (`int`): Most actions per clip.
        stride (`int`): Actions between the starts of two clips of a row.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: `rows` and `offsets`, `(num_clips,)` int64, row-major
        (the clips of row 0 first, by offset).
    """
    steps = np.asarray(steps, dtype=np.int64)
    extra = np.maximum(steps - history_length, 0)
    count = np.minimum(1 + -(-extra // stride), -(-steps // stride))
    rows = np.repeat(np.arange(len(steps), dtype=np.int64), count)
    first = np.repeat(np.cumsum(count) - count, count)
    offsets = (np.arange(int(count.sum()), dtype=np.int64) - first) * stride
    return rows, offsets


@dataclass
class TrajectoryClips:
    """The clips of a validated split: `(row, offset)` pairs over the Arrow-backed rows.

    Only the index is held (two int64 per clip, one per row); a clip's tokens are read from
    `source` when asked for (`read`, `read_at`), so a split of long episodes is never copied
    clip by clip.

    Args:
        source (`Dataset`): The split (padding allowed, see `action_mask`).
        steps (`np.ndarray`): `(N,)` real actions of every source row.
        rows (`np.ndarray`): `(C,)` source row of each clip.
        offsets (`np.ndarray`): `(C,)` first action of each clip in its row.
        history_length (`int`): Most actions per clip.
        split (`int`, defaults to 0): A tag written by `as_dataset` (train 0, held-out 1), so
            one collator serves both splits.
    """

    source: Dataset
    steps: np.ndarray
    rows: np.ndarray
    offsets: np.ndarray
    history_length: int
    split: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> np.ndarray:
        """`(C,)` actions of each clip."""
        return np.minimum(self.history_length, self.steps[self.rows] - self.offsets)

    @property
    def whole_rows(self) -> bool:
        """Whether the clips are the rows themselves (one clip per row, from its start)."""
        return len(self.rows) == len(self.source) and not self.offsets.any()

    def read(self, indices: np.ndarray | list[int]) -> list[dict[str, Any]]:
        """Clips by number as rows of the format (see `read_at`)."""
        indices = np.asarray(indices, dtype=np.int64)
        return self.read_at(self.rows[indices], self.offsets[indices])

    def read_at(self, rows: np.ndarray | list[int], offsets: np.ndarray | list[int]) -> list[dict]:
        """The clips starting at `offsets` of `rows` as rows of the format: `input_ids`, the
        action columns and `locus` where the source has them, without padding (`K` = the
        clip's length, at most `history_length`).

        Args:
            rows (`np.ndarray` or `list[int]`): Source rows.
            offsets (`np.ndarray` or `list[int]`): The first action of each clip.

        Returns:
            `list[dict[str, Any]]`: One row per clip, in the order asked.
        """
        rows = np.asarray(rows, dtype=np.int64)
        offsets = np.asarray(offsets, dtype=np.int64)
        lengths = np.minimum(self.history_length, self.steps[rows] - offsets)
        table = _arrow_table(self.source)
        names = [n for n in (*STATE_WISE, *ACTION_WISE) if n in table.column_names]
        # Only the rows asked for leave Arrow, and of them only the clips' items.
        picked = table.select(names).take(pa.array(rows))
        out: list[dict[str, Any]] = [{} for _ in range(len(rows))]
        for name in names:
            column = picked.column(name).combine_chunks()
            sizes = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
            starts = np.cumsum(sizes) - sizes + offsets  # the clip's first item
            widths = lengths + (name in STATE_WISE)
            ends = np.cumsum(widths)
            items = (
                np.repeat(starts, widths) + np.arange(ends[-1]) - np.repeat(ends - widths, widths)
            )
            taken = column.flatten().take(pa.array(items)).to_pylist()
            for row, first, last in zip(out, ends - widths, ends, strict=True):
                row[name] = taken[first:last]
        return out

    def as_dataset(self) -> Dataset:
        """The clip index as a `Dataset` (`clip_split`, `clip_row`, `clip_offset`): what a
        trainer samples from; the trajectory task's collator reads the clips it names."""
        return Dataset(
            pa.table(
                {
                    CLIP_SPLIT: pa.array(np.full(len(self.rows), self.split, dtype=np.int8)),
                    CLIP_ROW: pa.array(self.rows),
                    CLIP_OFFSET: pa.array(self.offsets),
                }
            )
        )


def trajectory_clips(
    dataset: Dataset, history_length: int, stride: int | None = None, split: int = 0
) -> TrajectoryClips:
    """Cut every row of a validated split into clips of at most `history_length` actions.

    Rows of at most `history_length` real actions stay whole (one clip each, padded by the
    collator as any short row); longer rows give the clips of [`clip_offsets`]. Deterministic:
    the clips depend on the rows, `history_length` and `stride` only.

    Args:
        dataset (`Dataset`): The split.
        history_length (`int`): Most actions per clip (the model's `history_length`).
        stride (`int`, *optional*): Actions between clip starts; `history_length` if None
            (back-to-back clips: every transition is a prediction target once per epoch).
        split (`int`, defaults to 0): The tag of `TrajectoryClips.split`.

    Returns:
        `TrajectoryClips`: The index.

    Raises:
        `LeWMConfigError`: for a `history_length` below 1, or a `stride` below 1 or above
            `history_length` (transitions between clips would never be seen).
    """
    if not isinstance(history_length, int) or history_length < 1:
        raise LeWMConfigError("history_length", history_length, "an int >= 1")
    stride = history_length if stride is None else stride
    if not isinstance(stride, int) or isinstance(stride, bool) or not 1 <= stride <= history_length:
        raise LeWMConfigError(
            "clip_stride",
            stride,
            f"an int in [1, history_length={history_length}] (a larger stride would skip "
            "transitions), or null for history_length",
        )
    steps = real_steps(dataset)
    rows, offsets = clip_offsets(steps, history_length, stride)
    return TrajectoryClips(dataset, steps, rows, offsets, history_length, split)


# ----------------------------------------------------------------------------------------------
# Reading


__all__ = [
    "ACTION_WISE",
    "CLIP_OFFSET",
    "CLIP_ROW",
    "CLIP_SPLIT",
    "STATE_WISE",
    "TrajectoryClips",
    "clip_offsets",
    "trajectory_clips",
]
