"""The frozen-encoder feature cache.

With `encoder_mode="frozen"` the encoder's pooled features of a state never change, yet a
training step would recompute them for every state of every clip, epoch after epoch (nearly all
of a world-model step's time with the walk-LM encoder). `FeatureCache.build` computes them once
for every distinct state of the training and evaluation datasets; `FeatureCacheCollator` then
feeds `state_features` to the model instead of `input_ids`, and the projector, action encoder and
predictor train as before.

The build is compute-bound (the default recipe's 22000 clips hold 88000 windows of 16 tokens:
about 3 TFLOP through its 1M-parameter Llama), so it does as little encoder work as it can:

- each distinct state (token window, with its attention mask and locus) is encoded once; clips
  of one walk graph share windows (the default recipe's 88000 are 76263 distinct ones);
- the encoder runs under `torch.inference_mode`, on batches of states sized for the device
  (`default_build_batch_size`): one CPU thread runs a batch of 128 states, whose activations
  stay in the CPU's cache, 1.2-1.8x faster per state than one of 2048; several threads (and
  accelerators) run 2048, because each operator's fork and join across threads costs more than
  the cache saves (on a shared 2-core machine, 4x less wall time than batches of 128).

The cache is one `(S, E)` tensor over the S distinct states (the default recipe's 76263 at
E = 128 take 39 MB); each cached dataset row gets a `feature_index` column with the positions of
its states in it. It stays in memory while small. Once the features computed so far exceed
`max_memory_bytes` (`LeWMTrainingArguments.feature_cache_memory_mb`), they are written to a file
and every later chunk is appended to it as it is computed; the finished cache then reads the
rows each batch asks for from that file (`FeatureFile`, one `os.pread` a row), so the process
holds only one batch's features. The file is not memory-mapped: the pages of a mapping count in
the process's resident memory once touched, and training touches nearly all of them. Both forms
hold the same bytes at the same positions, so training reads bitwise the same features either
way. States are told apart by a 16-byte BLAKE2b digest of their tokens, mask and locus, not by
the tokens themselves, and the table of distinct states keeps the digests in one sorted numpy
array (`_StateTable`, 24 bytes a state where a dict took ~140), so it does not grow with the
window length; the rows' cache positions are kept as flat arrays until they become the
`feature_index` column.

The cache records a fingerprint of the encoder's weights; `LeWMTrainer` refuses a cache whose
fingerprint does not match its model's encoder, so features computed for other weights are never
used.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset
from torch import nn

from ..data.corpus import release_mapped_pages
from ..errors import LeWMConfigError, LeWMInputError
from ..progress import progress

# Column that maps a dataset row to its cached features: one index per (real) state.
FEATURE_INDEX = "feature_index"
# States per encoder call during the build: on one CPU thread, and otherwise (measured optima on a
# 2-core CPU; see `default_build_batch_size`).
SINGLE_THREAD_BATCH_SIZE = 128
MULTI_THREAD_BATCH_SIZE = 2048
# Dataset rows collated at a time during the build.
BUILD_ROWS_PER_CHUNK = 1024
# A state's key: a 16-byte digest (see `_state_keys`).
KEY_DTYPE = np.dtype("S16")


def encoder_fingerprint(encoder: nn.Module) -> str:
    """SHA-256 over the encoder's parameter and buffer names, shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def default_build_batch_size(device: torch.device) -> int:
    """States per encoder call of `FeatureCache.build` on `device`: 128 on a CPU with one torch
    thread (small batches stay in the CPU's cache), 2048 with several threads or on an
    accelerator (fewer, larger operators)."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return SINGLE_THREAD_BATCH_SIZE
    return MULTI_THREAD_BATCH_SIZE


def release_free_memory() -> None:
    """Return the C heap's free pages to the system (glibc's `malloc_trim(0)`; a no-op where
    there is none). The build's temporary activations, freed between small long-lived
    allocations, would otherwise stay resident."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _state_keys(
    ids: torch.Tensor, mask: torch.Tensor | None, locus: torch.Tensor | None
) -> np.ndarray:
    """One key per state `(N, L)`, `(N,)` of dtype `S16`: a 128-bit BLAKE2b digest of its
    tokens, attention mask and locus (everything its pooled features depend on). The build keeps
    one key per distinct state, so a digest (16 bytes, against 8 bytes a token for the raw row)
    keeps the table small on large corpora; two distinct states share one with probability
    ~2^-128."""
    parts = [ids.long()]
    if mask is not None:
        parts.append(mask.long())
    if locus is not None:
        parts.append(locus.long().unsqueeze(1))
    rows = np.ascontiguousarray(torch.cat(parts, dim=1).numpy())  # (N, L + ...)
    digests = b"".join(hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows)
    return np.frombuffer(digests, dtype=KEY_DTYPE)


class _StateTable:
    """The distinct states seen so far: their keys, sorted, and each one's cache position.

    Positions are handed out in the order states are first seen (as a dict filled state by
    state would), and the table takes 24 bytes a state (one `S16` key, one `int64` position)
    in two numpy arrays, against ~140 bytes a dict entry of a `bytes` key and an `int`.
    """

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=KEY_DTYPE)  # sorted
        self.slots = np.empty(0, dtype=np.int64)  # the position of each key

    def __len__(self) -> int:
        return len(self.keys)

    def assign(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cache positions of `keys` `(N,)`, new keys added.

        Returns:
            `tuple[np.ndarray, np.ndarray]`: Each key's position `(N,)`, and the indices into
            `keys` of the new distinct ones (their first occurrences, ascending): the states to
            encode, whose positions are `len(self)` (before the call) onwards, in that order.
        """
        at = np.searchsorted(self.keys, keys)
        known = at < len(self.keys)
        known[known] = self.keys[at[known]] == keys[known]
        slots = np.empty(len(keys), dtype=np.int64)
        slots[known] = self.slots[at[known]]
        missing = np.flatnonzero(~known)
        distinct, first, inverse = np.unique(keys[missing], return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # the distinct new keys as first seen
        new_slots = np.empty(len(distinct), dtype=np.int64)
        new_slots[order] = len(self.keys) + np.arange(len(distinct))
        slots[missing] = new_slots[inverse.reshape(-1)]
        where = np.searchsorted(self.keys, distinct)
        self.keys = np.insert(self.keys, where, distinct)
        self.slots = np.insert(self.slots, where, new_slots)
        return slots, missing[first[order]]


def _slot_lists(slots: list[np.ndarray], counts: list[np.ndarray]) -> pa.ListArray:
    """The `feature_index` column: row i's positions, the next `counts[i]` of `slots` (both
    concatenated over the chunks), as an Arrow list array of `int64` (the column a Python list
    of lists of ints gave)."""
    values = np.concatenate(slots) if slots else np.empty(0, dtype=np.int64)
    sizes = np.concatenate(counts) if counts else np.empty(0, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int64()))


def _rows(dataset: Dataset, first: int, last: int) -> list[dict[str, Any]]:
    """Rows `first:last` of `dataset` as dicts (one Arrow read for the whole slice)."""
    columns = dataset[first:last]
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


class _FeatureBuffer:
    """Rows `(n, E)` appended into one CPU tensor that doubles when full.

    Keeping each encoder call's small output tensor alive between the call's large temporary
    activations fragments the allocator's heap: on a 500 kb genome the build grew the process
    by about 10 kB per cached state (40 times the features themselves). One buffer, grown by
    copying, keeps the features in a single allocation (and `release_free_memory` after each
    chunk hands the heap's free pages back).
    """

    def __init__(self) -> None:
        self.data: torch.Tensor | None = None
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def append(self, rows: torch.Tensor) -> None:
        rows = rows.detach()
        if self.data is None:
            self.data = torch.empty((max(1024, rows.shape[0]), *rows.shape[1:]), dtype=rows.dtype)
        if self.size + rows.shape[0] > self.data.shape[0]:
            grown = torch.empty(
                (max(2 * self.data.shape[0], self.size + rows.shape[0]), *self.data.shape[1:]),
                dtype=self.data.dtype,
            )
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : self.size + rows.shape[0]] = rows.cpu()
        self.size += rows.shape[0]

    def tensor(self) -> torch.Tensor:
        """The rows appended, `(S, E)` (a copy of exactly S rows)."""
        return self.data[: self.size].clone()


class FeatureFile:
    """Features `(S, E)` stored in a file, read row by row when indexed.

    Indexing with positions reads each distinct row once (`os.pread`) into a new tensor: the
    process holds the rows asked for, and no mapping of the file whose touched pages would stay
    resident. The bytes are those the features had in memory, so a lookup is bitwise the
    in-memory tensor's.

    Args:
        path (`str` or `Path`): The file: S rows of E values of `dtype`, row after row.
        rows (`int`): S.
        width (`int`): E.
        dtype (`torch.dtype`): The values' type.
    """

    def __init__(self, path: str | Path, rows: int, width: int, dtype: torch.dtype):
        self.path = Path(path)
        self.shape = torch.Size((rows, width))
        self.dtype = dtype
        self.row_bytes = width * torch.empty((), dtype=dtype).element_size()
        size = self.path.stat().st_size
        if size != rows * self.row_bytes:
            raise LeWMInputError(
                "path", str(self.path), f"must hold {rows} rows of {self.row_bytes} bytes"
            )
        self._file: BinaryIO | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:  # data-loader workers reopen the file
        return {**self.__dict__, "_file": None}

    def __getitem__(self, index: Any) -> torch.Tensor:
        """The rows at `index` (positions, any shape), `(*index.shape, E)`."""
        index = torch.as_tensor(index, dtype=torch.long)
        rows, width = self.shape
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= rows):
            raise LeWMInputError("index", [int(index.min()), int(index.max())], f"< {rows}")
        if self._file is None:
            self._file = open(self.path, "rb")  # closed with the object
        distinct, inverse = torch.unique(index.reshape(-1), return_inverse=True)
        size, fd = self.row_bytes, self._file.fileno()
        data = bytearray(len(distinct) * size)
        for j, row in enumerate(distinct.tolist()):
            data[j * size : (j + 1) * size] = os.pread(fd, size, row * size)
        out = (
            torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        )
        out = out.view(self.dtype).reshape(len(distinct), width)
        return out[inverse].reshape(*index.shape, width)

    def tensor(self) -> torch.Tensor:
        """Every row, `(S, E)`, read into memory."""
        return self[torch.arange(self.shape[0])]


class FeatureWriter:
    """Collects the feature chunks of a build: in memory up to `max_memory_bytes`, then in a file.

    Args:
        max_memory_bytes (`int`, *optional*): Bytes of features kept in memory; past them every
            chunk so far and every later one is appended to `path`. None: always in memory.
        path (`str` or `Path`, *optional*): The file (its folder is created); required with
            `max_memory_bytes`.
    """

    def __init__(self, max_memory_bytes: int | None = None, path: str | Path | None = None):
        if max_memory_bytes is not None and path is None:
            raise LeWMConfigError("path", path, "a file is needed to spill the feature cache to")
        self.max_memory_bytes = max_memory_bytes
        self.path = None if path is None else Path(path)
        self.buffer = _FeatureBuffer()
        self.nbytes = 0
        self.rows = 0
        self._file: BinaryIO | None = None
        self._shape: tuple[int, torch.dtype] | None = None  # (E, dtype) of every chunk

    @staticmethod
    def _bytes(chunk: torch.Tensor) -> np.ndarray:
        return chunk.contiguous().view(torch.uint8).numpy()

    def add(self, chunk: torch.Tensor) -> None:
        """Append a chunk `(n, E)` of features (on the CPU)."""
        if self._shape is None:
            self._shape = (chunk.shape[1], chunk.dtype)
        self.rows += chunk.shape[0]
        self.nbytes += chunk.numel() * chunk.element_size()
        if self._file is not None:
            self._file.write(self._bytes(chunk).data)
            return
        self.buffer.append(chunk)
        if self.max_memory_bytes is not None and self.nbytes > self.max_memory_bytes:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "wb")  # closed by `finish`
            self._file.write(self._bytes(self.buffer.tensor()).data)
            self.buffer = _FeatureBuffer()

    @property
    def on_disk(self) -> bool:
        """Whether the features went to the file."""
        return self._file is not None

    def finish(self) -> torch.Tensor | FeatureFile:
        """The features `(S, E)`: one tensor in memory, or a `FeatureFile` reading the file."""
        if self._shape is None:
            raise LeWMInputError("features", 0, "no chunk was added")
        width, dtype = self._shape
        if self._file is None:
            return self.buffer.tensor()
        self._file.close()
        return FeatureFile(self.path, self.rows, width, dtype)


@dataclass
class FeatureCache:
    """Pooled encoder features of every distinct state of the cached datasets.

    Args:
        features (`torch.Tensor` or `FeatureFile` of shape `(S, E)`): The features of the S
            distinct states, in the encoder's dtype, on the CPU (a tensor in memory, or read
            from `path` when indexed); a row's `feature_index` column points into it.
        fingerprint (`str`): `encoder_fingerprint` of the encoder that computed them.
        path (`Path`, *optional*): The file the features are read from; None in memory.
    """

    features: torch.Tensor | FeatureFile
    fingerprint: str
    path: Path | None = None

    @property
    def num_states(self) -> int:
        """The number of distinct states cached."""
        return self.features.shape[0]

    @classmethod
    @torch.inference_mode()
    def build(
        cls,
        model: nn.Module,
        datasets: list[Dataset],
        collator: Any,
        batch_size: int | None = None,
        max_memory_bytes: int | None = None,
        path: str | Path | None = None,
        disable_progress: bool | None = None,
    ) -> tuple[FeatureCache, list[Dataset]]:
        """Compute the features of every distinct state of `datasets` with `model`'s encoder.

        A state shared by several rows (of one dataset or of several) is encoded once.

        Args:
            model (`LeWMModel`): A model with a frozen encoder.
            datasets (`list[Dataset]`): The datasets to cache (e.g. train and evaluation).
            collator (`DataCollatorForLeWM`): Turns rows into `input_ids` `(B, K + 1, L)` and
                `actions` (their `mask`, and `attention_mask`, `locus` where the rows have them).
            batch_size (`int`, *optional*): States per encoder call; defaults to
                `default_build_batch_size` of the model's device.
            max_memory_bytes (`int`, *optional*): Bytes of features held in memory; a larger
                cache is written to `path` while it is built and read from it a batch at a
                time (`FeatureFile`). None: always in memory.
            path (`str` or `Path`, *optional*): The file of a cache larger than
                `max_memory_bytes` (overwritten).
            disable_progress (`bool`, *optional*): Hide the progress bar (the trainer's
                `disable_tqdm`; see `lewm_hf.progress`).

        Returns:
            `tuple[FeatureCache, list[Dataset]]`: The cache, and each dataset with a
            `feature_index` column: per row, the cache positions of its real states (ragged
            rows keep their own number of states; the collator pads again per batch).
        """
        if model.config.encoder_mode != "frozen":
            raise LeWMConfigError(
                "encoder_mode",
                model.config.encoder_mode,
                "the feature cache needs a frozen encoder",
            )
        device = next(model.parameters()).device
        if batch_size is None:
            batch_size = default_build_batch_size(device)
        if batch_size < 1:
            raise LeWMConfigError("batch_size", batch_size, "must be at least 1")
        if max_memory_bytes is not None and max_memory_bytes < 0:
            raise LeWMConfigError("max_memory_bytes", max_memory_bytes, "must be >= 0")
        writer = FeatureWriter(max_memory_bytes, path)
        was_training = model.training
        model.eval()
        table = _StateTable()  # state key -> position in the cache
        indexed = []
        bar = progress(
            desc="feature cache",
            total=sum(len(d) for d in datasets),
            unit="row",
            disable=disable_progress,
        )
        for dataset in datasets:
            row_slots: list[np.ndarray] = []  # per chunk, its rows' positions, row after row
            row_counts: list[np.ndarray] = []  # per chunk, each row's number of states
            for first in range(0, len(dataset), BUILD_ROWS_PER_CHUNK):
                last = min(first + BUILD_ROWS_PER_CHUNK, len(dataset))
                batch = collator(_rows(dataset, first, last))
                ids = batch["input_ids"]  # (B, T + 1, L)
                b, states, length = ids.shape
                steps = batch["actions"].mask  # (B, T) or None
                real = torch.ones(b, states, dtype=torch.bool)
                if steps is not None:
                    real[:, 1:] = steps.bool().cpu()
                mask = batch.get("attention_mask")
                locus = batch.get("locus")
                flat_ids = ids.reshape(b * states, length)[real.reshape(-1)]  # (N, L)
                flat_mask = None
                if mask is not None:
                    flat_mask = mask.reshape(b * states, length)[real.reshape(-1)]
                flat_locus = None if locus is None else locus.reshape(-1)[real.reshape(-1)]
                slots, new = table.assign(_state_keys(flat_ids, flat_mask, flat_locus))
                row_slots.append(slots)
                row_counts.append(real.sum(dim=1).numpy())
                # Encode this chunk's new states, `batch_size` at a time.
                new_index = torch.from_numpy(new)
                for start in range(0, len(new), batch_size):
                    part = new_index[start : start + batch_size]
                    writer.add(
                        model.pooled_features(
                            flat_ids[part].to(device),
                            None if flat_mask is None else flat_mask[part].to(device),
                            None if flat_locus is None else flat_locus[part].to(device),
                        )  # (n, E)
                    )
                bar.update(b)
                release_free_memory()
                release_mapped_pages(dataset)  # the rows just read
            indexed.append(dataset.add_column(FEATURE_INDEX, _slot_lists(row_slots, row_counts)))
        bar.close()
        model.train(was_training)
        if writer.rows == 0:
            raise LeWMInputError("datasets", [len(d) for d in datasets], "no rows to cache")
        features = writer.finish()  # (S, E)
        mapped = writer.path if writer.on_disk else None
        return cls(features, encoder_fingerprint(model.encoder), mapped), indexed


@dataclass
class FeatureCacheCollator:
    """Collate rows with a `feature_index` column: the wrapped collator's actions and masks,
    with `state_features` `(B, T + 1, E)` gathered from the cache in place of `input_ids`.

    Args:
        collator (`Any`): The dataset's own collator (`DataCollatorForLeWM`).
        cache (`FeatureCache`): The features.
    """

    collator: Any
    cache: FeatureCache

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if FEATURE_INDEX not in features[0]:  # a dataset that was not cached: encode as usual
            return self.collator(features)
        rows = [{k: v for k, v in f.items() if k != FEATURE_INDEX} for f in features]
        batch = self.collator(rows)
        states = batch.pop("input_ids").shape[1]
        batch.pop("attention_mask", None)
        batch.pop("locus", None)  # only pooling reads it, and the features are pooled already
        # Padded states repeat the last real one, as the collator pads token states.
        index = []
        for f in features:
            slots = f[FEATURE_INDEX]
            index.append(slots + slots[-1:] * (states - len(slots)))
        batch["state_features"] = self.cache.features[torch.as_tensor(index)]  # (B, T + 1, E)
        return batch


__all__ = [
    "FEATURE_INDEX",
    "FeatureCache",
    "FeatureCacheCollator",
    "FeatureFile",
    "FeatureWriter",
    "default_build_batch_size",
    "encoder_fingerprint",
]
