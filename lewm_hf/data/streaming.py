"""Streaming a built corpus: its rows read lazily, in a seeded shuffled order, without end.

`dataset_streaming: true` (a field of every training-arguments class) makes the trainers train
on a `StreamingDataset` over their training split instead of the split itself. The split is a
`datasets.Dataset` whose Arrow files are memory-mapped from the corpus cache (`data/corpus.py`);
the stream reads them in contiguous blocks of `block_size` rows and never holds more than its
shuffle buffer (`buffer_size` rows) and one block.

The order is a pure function of the number of rows, the block size, the buffer size and the
seed, and is computed on row indices alone:

- passes follow each other without end (the trainer's `max_steps` decides how much is read);
  pass `p` visits the blocks in the order of a permutation seeded by `(seed, 1, p)`, and each
  block's rows in order;
- that sequence flows through a shuffle buffer of `buffer_size` indices: once the buffer is
  full, every new index replaces a uniformly drawn slot (`(seed, 0)` seeds the draws) whose
  index is emitted.

Because the order needs no row data, `skip(n)` fast-forwards by running the index machinery
`n` steps and then reads only the rows left in the buffer (one Arrow `take`): a resumed run
continues exactly where the stream stopped, in time linear in integers, not in rows read and
collated. A stream has no length; the trainer therefore needs `max_steps`.

Under data-loader workers, torch's `DataLoader` takes batch `i` from worker `i mod W`; given
`rows_per_batch` (the rows one batch of the loader reads from the stream, which the trainers
set), worker `k` yields only the rows of batches `k, k + W, ...`, so the loader's batches are
those of a loader without workers (each worker runs the index machinery and reads the blocks
itself, collating only its own batches).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
from datasets import Dataset
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import LeWMConfigError, LeWMInputError

# Rows per contiguous Arrow read.
DEFAULT_BLOCK_SIZE = 1024
# Random slot draws made at once (numpy calls are cheap per batch, costly per element).
_DRAWS_PER_CALL = 4096


class ShuffledIndexStream:
    """The endless, seeded order of a `StreamingDataset`'s row indices (see the module doc).

    Args:
        num_rows (`int`): Rows of the dataset.
        buffer_size (`int`): Slots of the shuffle buffer (1: blocks in shuffled order, rows in
            order).
        block_size (`int`): Rows per block.
        seed (`int`): Seed of the block orders and the buffer's draws.
    """

    def __init__(self, num_rows: int, buffer_size: int, block_size: int, seed: int):
        self.num_rows = num_rows
        self.buffer_size = buffer_size
        self.block_size = block_size
        self.seed = seed
        self.num_blocks = -(-num_rows // block_size)
        self.buffer: list[int] = []
        # Indices that entered the buffer since the reader last looked (it reads their rows).
        self.entered: list[int] = []
        self.passes = -1
        self._order: np.ndarray | None = None
        self._order_pos = 0
        self._next_row = 0
        self._block_end = 0
        self._rng = np.random.default_rng((seed, 0))
        self._draws: list[int] = []

    def _incoming(self) -> int:
        """The next index of the block sequence (before the buffer)."""
        if self._next_row == self._block_end:
            if self._order is None or self._order_pos == len(self._order):
                self.passes += 1
                self._order = np.random.default_rng((self.seed, 1, self.passes)).permutation(
                    self.num_blocks
                )
                self._order_pos = 0
            block = int(self._order[self._order_pos])
            self._order_pos += 1
            self._next_row = block * self.block_size
            self._block_end = min(self.num_rows, self._next_row + self.block_size)
        index = self._next_row
        self._next_row += 1
        self.entered.append(index)
        return index

    def _draw(self) -> int:
        if not self._draws:
            self._draws = self._rng.integers(0, self.buffer_size, _DRAWS_PER_CALL).tolist()[::-1]
        return self._draws.pop()

    def __next__(self) -> int:
        while len(self.buffer) < self.buffer_size:
            self.buffer.append(self._incoming())
        slot = self._draw()
        index = self.buffer[slot]
        self.buffer[slot] = self._incoming()
        return index

    def __iter__(self) -> Iterator[int]:
        return self


class StreamingDataset(IterableDataset):
    """An endless, shuffled stream of a `datasets.Dataset`'s rows, read lazily in blocks.

    Rows come as the dataset's `__getitem__` gives them (dicts of column values), so the
    trainers' collators take them unchanged. Under several processes the trainers leave the
    sharding to the `Trainer` (accelerate's data-loader preparation: the main process reads each
    global batch of the stream and sends every rank its part), so `N` processes at batch `b`
    see the batches of one process at batch `N b`, the rule of docs/design.md, section 10.

    Args:
        dataset (`Dataset`): The rows (memory-mapped from the corpus cache).
        buffer_size (`int`): Shuffle-buffer slots (rows held in memory), at least 1.
        seed (`int`): Seed of the order.
        block_size (`int`, defaults to `DEFAULT_BLOCK_SIZE`): Rows per contiguous read.
        skip_rows (`int`, defaults to 0): Rows of the stream to pass over before the first one
            yielded (`skip`).
        rows_per_batch (`int`, *optional*): Rows of the stream per batch of the data loader;
            needed under several data-loader workers (see the module doc).
    """

    def __init__(
        self,
        dataset: Dataset,
        buffer_size: int,
        seed: int,
        block_size: int = DEFAULT_BLOCK_SIZE,
        skip_rows: int = 0,
        rows_per_batch: int | None = None,
    ):
        if not isinstance(dataset, Dataset):
            raise LeWMInputError(
                "train_dataset",
                type(dataset).__name__,
                "dataset_streaming streams a datasets.Dataset (a built corpus split)",
            )
        if len(dataset) == 0:
            raise LeWMInputError("train_dataset", 0, "no rows to stream")
        for name, value in (
            ("buffer_size", buffer_size),
            ("block_size", block_size),
            ("rows_per_batch", 1 if rows_per_batch is None else rows_per_batch),
        ):
            if not isinstance(value, int) or value < 1:
                raise LeWMConfigError(name, value, "must be an integer >= 1")
        if skip_rows < 0:
            raise LeWMConfigError("skip_rows", skip_rows, "must be >= 0")
        self.dataset = dataset
        self.buffer_size = buffer_size
        self.seed = seed
        self.block_size = block_size
        self.skip_rows = skip_rows
        self.rows_per_batch = rows_per_batch

    def skip(self, rows: int) -> StreamingDataset:
        """The same stream, `rows` further on (the rows passed over are never read)."""
        return StreamingDataset(
            self.dataset,
            self.buffer_size,
            self.seed,
            self.block_size,
            self.skip_rows + rows,
            self.rows_per_batch,
        )

    def indices(self) -> ShuffledIndexStream:
        """A fresh index stream of this dataset's order (from its start, not from `skip_rows`)."""
        return ShuffledIndexStream(len(self.dataset), self.buffer_size, self.block_size, self.seed)

    def _take(self, indices: list[int]) -> dict[int, dict[str, Any]]:
        if not indices:
            return {}
        columns = self.dataset[indices]
        return {i: {k: v[pos] for k, v in columns.items()} for pos, i in enumerate(indices)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        if workers > 1 and self.rows_per_batch is None:
            raise LeWMConfigError(
                "rows_per_batch",
                None,
                f"{workers} data-loader workers need the rows per batch to split the stream",
            )
        batch_rows = self.rows_per_batch or 1
        stream = self.indices()
        for _ in range(self.skip_rows):
            next(stream)
        stream.entered.clear()
        # The rows of the indices in the buffer, with how many times each is there (a buffer
        # larger than the dataset can hold one index of two passes).
        held = Counter(stream.buffer)
        rows = {i: [row, held[i]] for i, row in self._take(sorted(held)).items()}
        block: tuple[int, dict[str, list[Any]]] | None = None
        for position in itertools.count():
            index = next(stream)
            for entered in stream.entered:
                if entered in rows:
                    rows[entered][1] += 1
                    continue
                start = entered - entered % self.block_size
                if block is None or block[0] != start:
                    end = min(start + self.block_size, len(self.dataset))
                    block = (start, self.dataset[start:end])
                rows[entered] = [{k: v[entered - start] for k, v in block[1].items()}, 1]
            stream.entered.clear()
            entry = rows[index]
            entry[1] -= 1
            if entry[1] == 0:
                del rows[index]
            if (position // batch_rows) % workers == worker:
                yield entry[0]


__all__ = ["DEFAULT_BLOCK_SIZE", "ShuffledIndexStream", "StreamingDataset"]
