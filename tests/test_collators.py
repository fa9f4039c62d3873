"""Collators: move clips unfold into windows; ragged trajectories pad with a mask."""

from __future__ import annotations

import pytest
import torch

from lewm_hf import DataCollatorForLeWM, DataCollatorForWalkLM, LeWMInputError


def test_walk_lm_rows_are_their_own_labels():
    batch = DataCollatorForWalkLM()([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5, 6]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert torch.equal(batch["labels"], batch["input_ids"])


def test_move_clips_unfold_into_windows():
    window, horizon = 4, 3
    tokens = list(range(10, 10 + window + horizon))
    batch = DataCollatorForLeWM(window=window)([{"tokens": tokens, "actions": [0, 2, 1]}])
    states = batch["input_ids"][0]
    assert states.shape == (horizon + 1, window)
    for k in range(horizon + 1):
        assert states[k].tolist() == tokens[k : k + window]  # state k ends at token w - 1 + k
    assert batch["actions"].ids.tolist() == [[0, 2, 1]]
    assert batch["actions"].mask is None  # clips are never padded


def test_ragged_trajectories_pad_with_mask():
    rows = [
        {"input_ids": [[1, 1], [2, 2], [3, 3]], "actions": [5, 6]},
        {"input_ids": [[7, 7], [8, 8]], "actions": [9]},
    ]
    batch = DataCollatorForLeWM()(rows)
    assert batch["input_ids"].shape == (2, 3, 2)
    assert batch["actions"].mask.tolist() == [[True, True], [True, False]]
    assert batch["actions"].ids.tolist() == [[5, 6], [9, 0]]
    assert batch["input_ids"][1, 2].tolist() == [8, 8]  # padded state repeats the last one


def test_bad_batches_are_typed_errors():
    with pytest.raises(LeWMInputError, match="window"):
        DataCollatorForLeWM()([{"tokens": [1, 2, 3], "actions": [0]}])
    with pytest.raises(LeWMInputError, match="input_ids"):
        DataCollatorForLeWM()([{"input_ids": [[1], [2]], "actions": [0, 1]}])
    with pytest.raises(LeWMInputError, match="features"):
        DataCollatorForLeWM()([])
