"""Corpora written in chunks and read memory-mapped: the same rows as building them whole."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk

from lewm_hf.data import corpus as corpus_cache
from lewm_hf.data.dna import extract_windows
from lewm_hf.data.edits import corpus as edit_corpus
from lewm_hf.data.edits.corpus import (
    DNASourceConfig,
    EditCorpusConfig,
    build_edit_corpus,
    build_window_corpus,
    load_source_windows,
)
from lewm_hf.data.edits.trajectories import sample_trajectories
from lewm_hf.determinism import derive_seed
from lewm_hf.evaluation.edits import snv_recovery

SOURCE = {"synthetic_records": 2, "synthetic_length": 6000, "window_length": 48}


def test_extract_windows_equals_fancy_indexing():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, size=1000).astype(np.uint8)
    starts = np.sort(rng.choice(1000 - 32, size=50, replace=False)).astype(np.int64)
    got = extract_windows(ids, starts, 32)
    want = ids[starts[:, None] + np.arange(32)[None, :]]
    assert got.dtype == np.uint8 and got.flags.writeable
    np.testing.assert_array_equal(got, want)
    assert extract_windows(ids, starts[:0], 32).shape == (0, 32)


def test_write_split_tables_equals_save_to_disk(tmp_path):
    rng = np.random.default_rng(1)
    tables = []
    for n in (3, 5, 1):
        values = rng.integers(0, 7, size=(n, 4)).astype(np.int64)
        offsets = pa.array(np.arange(0, values.size + 1, 4, dtype=np.int32))
        tables.append(
            pa.table(
                {
                    "input_ids": pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1))),
                    "start": pa.array(rng.integers(0, 100, size=n)),
                }
            )
        )
    whole = Dataset(pa.concat_tables(tables))
    DatasetDict({"train": whole, "validation": whole}).save_to_disk(str(tmp_path / "whole"))
    corpus_cache.write_split_tables(
        tmp_path / "chunked", {"train": iter(tables), "validation": iter(tables)}
    )
    want, got = load_from_disk(str(tmp_path / "whole")), load_from_disk(str(tmp_path / "chunked"))
    assert list(got) == list(want)
    for split in want:
        assert got[split].features == want[split].features
        assert got[split].to_dict() == want[split].to_dict()
        assert got[split].cache_files  # memory-mapped, not in memory


def test_window_corpus_equals_lists(tmp_path, monkeypatch):
    monkeypatch.setattr(edit_corpus, "WINDOW_CHUNK", 7)  # several chunks per split
    config = DNASourceConfig(**SOURCE, window_stride=24)
    got = build_window_corpus(config, tmp_path)
    _, _, windows = load_source_windows(config)
    for split, win in windows.items():
        want = Dataset.from_dict({"input_ids": win.ids.astype("int64").tolist()})
        assert got[split].features == want.features
        assert got[split]["input_ids"] == want["input_ids"]
        assert got[split].cache_files
    again = build_window_corpus(config, tmp_path)  # loaded from the cache
    assert again["train"].cache_files == got["train"].cache_files


def _edit_corpus_whole(config: EditCorpusConfig) -> dict[str, Dataset]:
    """The edit corpus as it was built before it was written in chunks: every chunk's table
    concatenated in memory, then the provenance columns."""
    _, _, windows = load_source_windows(config)
    sampler = config.sampler()
    caps = {"train": config.max_train_rows, "validation": config.max_validation_rows}
    out = {}
    for split, win in windows.items():
        rng = np.random.default_rng(derive_seed(config.seed, f"edits-{split}"))
        rows = np.repeat(np.arange(len(win)), config.trajectories_per_window)
        if caps[split] is not None and caps[split] < len(rows):
            rows = rows[np.sort(rng.choice(len(rows), size=caps[split], replace=False))]
        num_steps = rng.integers(config.min_actions, config.max_actions + 1, size=len(rows))
        parts = []
        for at in range(0, len(rows), edit_corpus.TRAJECTORY_CHUNK):
            chunk = rows[at : at + edit_corpus.TRAJECTORY_CHUNK]
            traj = sample_trajectories(
                win.ids[chunk],
                config.max_actions,
                rng,
                sampler,
                config.cluster_radius,
                4,
                config.free_edit_fraction,
            )
            parts.append(
                edit_corpus._trajectory_table(
                    traj, num_steps[at : at + edit_corpus.TRAJECTORY_CHUNK]
                )
            )
        table = pa.concat_tables(parts)
        table = table.append_column("record", pa.array(win.record[rows].astype(np.int32)))
        table = table.append_column("start", pa.array(win.start[rows].astype(np.int64)))
        out[split] = Dataset(table)
    return out


@pytest.mark.parametrize("extra", [{}, {"trajectories_per_window": 2, "max_validation_rows": 9}])
def test_edit_corpus_in_chunks_equals_whole(tmp_path, monkeypatch, extra):
    monkeypatch.setattr(edit_corpus, "TRAJECTORY_CHUNK", 16)  # several chunks per split
    config = EditCorpusConfig(**SOURCE, window_stride=24, margin=6, free_edit_fraction=0.3, **extra)
    got = build_edit_corpus(config, tmp_path)
    want = _edit_corpus_whole(config)
    for split in ("train", "validation"):
        assert got[split].features == want[split].features
        assert got[split].to_dict() == want[split].to_dict()
        assert got[split].cache_files


def test_feature_cache_keys_are_compact_and_distinct():
    from lewm_hf.trainer.feature_cache import _state_keys

    ids = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 4]])
    mask = torch.ones_like(ids)
    locus = torch.tensor([1, 2, 1])
    keys = _state_keys(ids, mask, locus)
    assert (
        keys.dtype.itemsize == 16 and len(set(keys.tobytes()[i : i + 16] for i in (0, 16, 32))) == 3
    )
    assert np.array_equal(keys, _state_keys(ids.clone(), mask.clone(), locus.clone()))


class _RandomSNVModel(torch.nn.Module):
    """Latent = a fixed random projection of the one-hot window; `predict` adds a per-action
    shift. Records the largest encoder batch."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(24 * 7, 8, generator=gen))
        self.shift = torch.nn.Parameter(torch.randn(64, 8, generator=gen))
        self.config = SimpleNamespace(action_position_origin="window", action_reference_offset=None)
        self.largest = 0

    def encode(self, input_ids, locus=None):
        self.largest = max(self.largest, input_ids.shape[0])
        return torch.nn.functional.one_hot(input_ids, 7).flatten(1).float() @ self.proj

    def predict(self, z_hist, actions):
        step = actions.positions[:, -1] * 2 + actions.tokens[:, -1, 0] % 2
        return z_hist + self.shift[step % 64].unsqueeze(1)


def test_snv_recovery_in_small_encoder_batches_is_unchanged():
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 4, size=(12, 24))
    loci = np.full(12, 12)
    whole, small = _RandomSNVModel(), _RandomSNVModel()
    want = snv_recovery(
        whole, windows, loci, radius=4, seed=1, copy_items=6, encode_batch_size=4096
    )
    got = snv_recovery(small, windows, loci, radius=4, seed=1, copy_items=6, encode_batch_size=5)
    assert got == want
    assert whole.largest == 6 * 24 * 4 and small.largest == 12  # the source windows


def test_feature_buffer_equals_cat():
    from lewm_hf.trainer.feature_cache import _FeatureBuffer, release_free_memory

    gen = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, 5, generator=gen) for n in (3, 1500, 7, 2048, 1)]
    buffer = _FeatureBuffer()
    for part in parts:
        buffer.append(part)
        release_free_memory()
    assert len(buffer) == sum(len(p) for p in parts)
    assert torch.equal(buffer.tensor(), torch.cat(parts))


def _resident_kb(path) -> int:
    """kB of file `path`'s mappings resident in this process (`/proc/self/smaps`)."""
    import os
    from pathlib import Path

    target, total, inside = os.path.realpath(path), 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            inside = len(head) == 6 and head[5] == target
        elif inside and head[0] == "Rss:":
            total += int(head[1])
    return total


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="Linux /proc")
def test_released_mapped_pages_leave_the_rows_unchanged(tmp_path):
    from lewm_hf.trainer.callbacks import MappedPagesCallback

    rng = np.random.default_rng(0)
    rows = {"input_ids": rng.integers(0, 5, size=(4096, 256)).astype(np.int32).tolist()}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "data"))
    data = load_from_disk(str(tmp_path / "data"))
    (arrow,) = [f["filename"] for f in data.cache_files]
    want = data[:]["input_ids"]
    assert want == rows["input_ids"] and _resident_kb(arrow) > 2048  # ~4 MB read
    assert corpus_cache.release_mapped_pages(data) >= 4096 * 256 * 4
    assert _resident_kb(arrow) == 0
    assert data[:]["input_ids"] == want  # read again from the page cache
    # The trainer's callback hands back its train and evaluation datasets' pages.
    trainer = SimpleNamespace(train_dataset=data, eval_dataset={"held_out": data})
    assert MappedPagesCallback(trainer).release() >= 2 * 4096 * 256 * 4
    assert _resident_kb(arrow) == 0
    # In-memory datasets and other objects have nothing to hand back.
    assert corpus_cache.release_mapped_pages(Dataset.from_dict({"a": [1]})) == 0
    assert corpus_cache.release_mapped_pages(None) == 0
