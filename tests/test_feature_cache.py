"""The frozen-encoder feature cache: same losses and weights as encoding at every step."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _builders import ACTIONS, VOCAB, W
from datasets import Dataset, Features, List, Value, concatenate_datasets

from lewm_hf import LeWMTrainer
from lewm_hf import metric_keys as K
from lewm_hf.data.collators import DataCollatorForLeWM
from lewm_hf.errors import LeWMConfigError, LeWMInputError
from lewm_hf.trainer.feature_cache import (
    FeatureCache,
    FeatureCacheCollator,
    FeatureFile,
    default_build_batch_size,
)


def test_cached_batch_loss_and_gradients_equal_encoding(tiny_lewm_model, tiny_clips):
    model = tiny_lewm_model(encoder_mode="frozen", dropout=0.0)
    data = tiny_clips(32)
    collator = DataCollatorForLeWM(window=W)
    cache, (indexed,) = FeatureCache.build(model, [data], collator, batch_size=7)
    model.train()
    rows = list(indexed.select(range(16)))
    plain = collator([{k: v for k, v in r.items() if k != "feature_index"} for r in rows])
    cached = FeatureCacheCollator(collator, cache)(rows)
    assert "input_ids" not in cached and cached["state_features"].shape[:2] == (16, 4)
    out_plain = model(**plain, step=3)
    grads_plain = torch.autograd.grad(
        out_plain.loss, [p for p in model.parameters() if p.requires_grad]
    )
    out_cached = model(**cached, step=3)
    grads_cached = torch.autograd.grad(
        out_cached.loss, [p for p in model.parameters() if p.requires_grad]
    )
    torch.testing.assert_close(out_cached.loss, out_plain.loss, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_cached, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_short_run_with_cache_matches_run_without(
    tmp_path, tiny_lewm_model, tiny_clips, tiny_training_args
):
    data, held_out = tiny_clips(64), tiny_clips(32, seed=1)
    weights = []
    for cache in (True, False):
        args = tiny_training_args(
            tmp_path / str(cache) / "out",
            max_steps=6,
            frozen_feature_cache=cache,
            eval_strategy="steps",
            eval_steps=6,
        )
        model = tiny_lewm_model(encoder_mode="frozen", dropout=0.0)
        trainer = LeWMTrainer(model, args, train_dataset=data, eval_dataset=held_out, window=W)
        assert (trainer.feature_cache is not None) == cache
        trainer.train()
        evals = [e for e in trainer.state.log_history if K.EVAL_PRED_MSE in e]
        weights.append(({k: v.clone() for k, v in model.state_dict().items()}, evals[-1]))
    (cached, eval_cached), (plain, eval_plain) = weights
    for key in plain:
        torch.testing.assert_close(cached[key], plain[key], rtol=1e-4, atol=1e-5, msg=key)
    assert eval_cached[K.EVAL_PRED_MSE] == pytest.approx(eval_plain[K.EVAL_PRED_MSE], rel=1e-4)


def test_cache_for_other_weights_is_refused(tiny_lewm_model, tiny_clips, tiny_training_args):
    model = tiny_lewm_model(encoder_mode="frozen")
    trainer = LeWMTrainer(
        model, tiny_training_args(max_steps=1), train_dataset=tiny_clips(32), window=W
    )
    with torch.no_grad():
        next(model.encoder.parameters()).add_(1.0)
    with pytest.raises(LeWMConfigError, match="frozen_feature_cache"):
        trainer.train()


def test_cache_needs_a_frozen_encoder(tiny_lewm_model, tiny_clips):
    with pytest.raises(LeWMConfigError, match="encoder_mode"):
        FeatureCache.build(tiny_lewm_model(), [tiny_clips(8)], DataCollatorForLeWM(window=W))


def _windows(dataset) -> np.ndarray:
    """Every state window of every move clip, `(rows, H + 1, W)`."""
    tokens = np.asarray(dataset["tokens"])
    return np.lib.stride_tricks.sliding_window_view(tokens, W, axis=1)


def test_each_distinct_state_is_encoded_once(tiny_lewm_model, tiny_clips):
    model = tiny_lewm_model(encoder_mode="frozen")
    data, other = tiny_clips(24), tiny_clips(8, seed=1)
    # Rows repeated within one dataset and across datasets, and clips sharing windows.
    train = concatenate_datasets([data, data.select(range(5)), other.select([2, 3])])
    held_out = concatenate_datasets([other, data.select([7])])
    encoded = []
    hook = model.encoder.register_forward_hook(
        lambda module, args, kwargs, out: encoded.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True,
    )
    try:
        cache, (train_idx, held_idx) = FeatureCache.build(
            model, [train, held_out], DataCollatorForLeWM(window=W), batch_size=5
        )
    finally:
        hook.remove()
    windows = np.concatenate([_windows(train).reshape(-1, W), _windows(held_out).reshape(-1, W)])
    distinct = {tuple(w) for w in windows.tolist()}
    assert cache.num_states == len(distinct) < len(windows)
    assert sum(encoded) == len(distinct)  # the encoder saw each distinct window once
    # Every row points at the features of its own windows (oracle: one window per call).
    model.eval()
    for dataset, indexed in ((train, train_idx), (held_out, held_idx)):
        for row_windows, slots in zip(_windows(dataset), indexed["feature_index"]):
            assert len(slots) == row_windows.shape[0]
            with torch.no_grad():
                expected = torch.cat(
                    [model.pooled_features(torch.tensor(w[None])) for w in row_windows]
                )
            torch.testing.assert_close(cache.features[slots], expected, rtol=1e-5, atol=1e-6)
    # Equal windows share one slot, different windows never do.
    slot_of = {}
    for dataset, indexed in ((train, train_idx), (held_out, held_idx)):
        for row_windows, slots in zip(_windows(dataset), indexed["feature_index"]):
            for w, slot in zip(row_windows.tolist(), slots):
                assert slot_of.setdefault(tuple(w), slot) == slot
    assert len(set(slot_of.values())) == len(slot_of)


def test_build_batch_size_does_not_change_features(tiny_lewm_model, tiny_clips):
    model = tiny_lewm_model(encoder_mode="frozen")
    data = tiny_clips(20)
    collator = DataCollatorForLeWM(window=W)
    one, (a,) = FeatureCache.build(model, [data], collator, batch_size=1)
    many, (b,) = FeatureCache.build(model, [data], collator, batch_size=64)
    assert a["feature_index"] == b["feature_index"]
    torch.testing.assert_close(one.features, many.features, rtol=1e-5, atol=1e-6)
    assert one.fingerprint == many.fingerprint


def _ragged_dataset(n: int = 12, seed: int = 0) -> Dataset:
    """Explicit trajectories with 1 to 3 actions (rows 0 and 3 are the same trajectory)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = 1 + i % 3
        rows.append(
            {
                "input_ids": rng.integers(0, VOCAB, size=(k + 1, W)).tolist(),
                "actions": rng.integers(0, ACTIONS, size=k).tolist(),
            }
        )
    rows[3] = {"input_ids": rows[0]["input_ids"], "actions": rows[0]["actions"]}
    return Dataset.from_list(rows)


def test_ragged_trajectories_cache_real_states_and_keep_the_loss(tiny_lewm_model):
    model = tiny_lewm_model(encoder_mode="frozen", dropout=0.0)
    data = _ragged_dataset()
    collator = DataCollatorForLeWM()
    cache, (indexed,) = FeatureCache.build(model, [data], collator, batch_size=4)
    lengths = [len(s) for s in indexed["feature_index"]]
    assert lengths == [len(a) + 1 for a in data["actions"]]
    assert indexed[3]["feature_index"] == indexed[0]["feature_index"]
    assert cache.num_states == sum(lengths) - lengths[0]  # only row 3 repeats states
    rows = list(indexed)
    plain = collator([{k: v for k, v in r.items() if k != "feature_index"} for r in rows])
    cached = FeatureCacheCollator(collator, cache)(rows)
    assert cached["state_features"].shape[:2] == plain["input_ids"].shape[:2]
    # Padded states repeat the last real one, as the token collator pads them.
    first = cached["state_features"][0]  # one action: states 2 and 3 are padding
    torch.testing.assert_close(first[2], first[1])
    torch.testing.assert_close(first[3], first[1])
    model.train()
    out_plain = model(**plain, step=1)
    out_cached = model(**cached, step=1)
    torch.testing.assert_close(out_cached.loss, out_plain.loss, rtol=1e-6, atol=1e-6)


def test_centered_pooling_keys_states_by_locus(tiny_lewm_model):
    model = tiny_lewm_model(encoder_mode="frozen", pooling="centered", pool_radius=1)
    window = list(range(W))
    row = {
        "input_ids": [window, window],
        "edit_ops": [0],
        "edit_positions": [2],
        "edit_tokens": [[1]],
    }
    data = Dataset.from_list(
        [{**row, "locus": [2, 2]}, {**row, "locus": [2, 5]}, {**row, "locus": [5, 5]}]
    )
    collator = DataCollatorForLeWM(edit_end_token=None)
    cache, (indexed,) = FeatureCache.build(model, [data], collator)
    # The same window at loci 2 and 5: two states, because centered pooling reads the locus.
    assert cache.num_states == 2
    assert indexed["feature_index"] == [[0, 0], [0, 1], [1, 1]]
    model.eval()
    ids = torch.as_tensor([window, window])
    with torch.no_grad():
        expected = model.pooled_features(ids, locus=torch.as_tensor([2, 5]))
    torch.testing.assert_close(cache.features, expected, rtol=1e-5, atol=1e-6)


def test_empty_datasets_are_refused(tiny_lewm_model, tiny_clips):
    model = tiny_lewm_model(encoder_mode="frozen")
    empty = tiny_clips(4).select([])
    with pytest.raises(LeWMInputError, match="datasets"):
        FeatureCache.build(model, [empty], DataCollatorForLeWM(window=W))


def test_default_build_batch_size_follows_the_threads():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert default_build_batch_size(torch.device("cpu")) == 128
        torch.set_num_threads(2)
        assert default_build_batch_size(torch.device("cpu")) == 2048
    finally:
        torch.set_num_threads(threads)
    assert default_build_batch_size(torch.device("cuda")) == 2048


def _mappings_of(path) -> list[str]:
    """The lines of `/proc/self/maps` that map file `path`."""
    target = os.path.realpath(path)
    return [
        line
        for line in Path("/proc/self/maps").read_text().splitlines()
        if len(line.split()) == 6 and line.split()[5] == target
    ]


def _reference_keys(datasets, collator) -> list[list[list[int]]]:
    """Each row's cache positions as a plain dict over the states' raw tokens, masks and loci
    gives them: positions in the order states are first seen."""
    slot_of: dict[tuple, int] = {}
    out = []
    for dataset in datasets:
        rows = []
        for row in dataset:
            batch = collator([row])
            ids, mask = batch["input_ids"][0], batch.get("attention_mask")
            locus = batch.get("locus")
            steps = batch["actions"].mask
            real = 1 + (ids.shape[0] - 1 if steps is None else int(steps[0].sum()))
            slots = []
            for t in range(real):
                key = (
                    tuple(ids[t].tolist()),
                    None if mask is None else tuple(mask[0, t].tolist()),
                    None if locus is None else int(locus[0, t]),
                )
                slots.append(slot_of.setdefault(key, len(slot_of)))
            rows.append(slots)
        out.append(rows)
    return out


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc")
def test_cache_on_disk_is_bitwise_the_cache_in_memory_and_read_without_mapping(
    tmp_path, tiny_lewm_model, tiny_clips
):
    model = tiny_lewm_model(encoder_mode="frozen")
    train, held_out = tiny_clips(64), tiny_clips(24, seed=1)
    collator = DataCollatorForLeWM(window=W)
    memory, memory_idx = FeatureCache.build(model, [train, held_out], collator, batch_size=16)
    assert memory.path is None
    # The positions are those a dict over the raw states hands out, first seen first.
    reference = _reference_keys([train, held_out], collator)
    for got, want in zip(memory_idx, reference):
        assert got["feature_index"] == want
    assert (
        memory_idx[0].features["feature_index"]
        == Features({"feature_index": List(Value("int64"))})["feature_index"]
    )
    size = memory.features.numel() * memory.features.element_size()
    # Spilled from the first chunk on (0 bytes), and part-way through the build.
    for limit in (0, size // 3):
        path = tmp_path / f"features-{limit}.bin"
        disk, disk_idx = FeatureCache.build(
            model, [train, held_out], collator, batch_size=16, max_memory_bytes=limit, path=path
        )
        assert disk.path == path and path.stat().st_size == size
        assert (
            isinstance(disk.features, FeatureFile) and disk.features.shape == memory.features.shape
        )
        everything = disk.features.tensor()
        assert torch.equal(everything.view(torch.uint8), memory.features.view(torch.uint8))
        for a, b in zip(disk_idx, memory_idx):
            assert a["feature_index"] == b["feature_index"]
        rows = list(disk_idx[0].select(range(8)))
        batch = FeatureCacheCollator(collator, disk)(rows)
        expected = FeatureCacheCollator(collator, memory)(rows)
        assert torch.equal(batch["state_features"], expected["state_features"])
        # Read with explicit reads: no page of the file is mapped into the process.
        assert _mappings_of(path) == []
        # Any shape of positions, repeated ones included; out of range is refused.
        index = torch.as_tensor([[3, 0, 3], [size // 1000, 1, 0]]) % memory.num_states
        assert torch.equal(disk.features[index], memory.features[index])
        with pytest.raises(LeWMInputError, match="index"):
            disk.features[torch.as_tensor([memory.num_states])]
        # A data-loader worker gets the file's path, not its open handle.
        copy = pickle.loads(pickle.dumps(disk.features))
        assert torch.equal(copy[index], memory.features[index])
    # A threshold above the cache's size keeps it in memory.
    kept, _ = FeatureCache.build(
        model, [train], collator, max_memory_bytes=size, path=tmp_path / "unused.bin"
    )
    assert kept.path is None and not (tmp_path / "unused.bin").exists()


def test_state_table_hands_out_positions_as_first_seen():
    from lewm_hf.trainer.feature_cache import KEY_DTYPE, _StateTable

    table = _StateTable()
    keys = np.array([b"c" * 16, b"a" * 16, b"c" * 16, b"b" + b"\0" * 15], dtype=KEY_DTYPE)
    slots, new = table.assign(keys)
    assert slots.tolist() == [0, 1, 0, 2] and new.tolist() == [0, 1, 3]
    more = np.array([b"b" + b"\0" * 14 + b"\1", b"a" * 16, b"b" + b"\0" * 15], dtype=KEY_DTYPE)
    slots, new = table.assign(more)
    assert slots.tolist() == [3, 1, 2] and new.tolist() == [0]
    assert len(table) == 4 and list(table.keys) == sorted(table.keys)
    slots, new = table.assign(np.empty(0, dtype=KEY_DTYPE))
    assert slots.tolist() == [] and new.tolist() == []


def test_trainer_with_cache_on_disk_trains_bitwise_alike(
    tmp_path, tiny_lewm_model, tiny_clips, tiny_training_args
):
    data, held_out = tiny_clips(64), tiny_clips(32, seed=1)
    weights = []
    for megabytes in (1024.0, 0.0):
        args = tiny_training_args(
            tmp_path / str(megabytes), max_steps=4, feature_cache_memory_mb=megabytes
        )
        model = tiny_lewm_model(encoder_mode="frozen")
        trainer = LeWMTrainer(model, args, train_dataset=data, eval_dataset=held_out, window=W)
        assert (trainer.feature_cache.path is not None) == (megabytes == 0.0)
        trainer.train()
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    for key, value in weights[0].items():
        assert torch.equal(weights[1][key], value), key
    with pytest.raises(LeWMConfigError, match="feature_cache_memory_mb"):
        tiny_training_args(tmp_path, feature_cache_memory_mb=-1.0)
