"""Streaming the training split (`dataset_streaming: true`): the stream's order, exact resume of
the LM and world-model trainers after a checkpoint, and the settings that cannot combine with it.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from _builders import TINY_ENCODER, TINY_TRAINING_ARGS, VOCAB, W
from datasets import Dataset
from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback

from lewm_hf import LeWMTrainer
from lewm_hf.data.collators import DataCollatorForWalkLM
from lewm_hf.data.streaming import StreamingDataset
from lewm_hf.errors import LeWMConfigError
from lewm_hf.trainer.lewm_config import CausalLMTrainingArguments, LeWMTrainingArguments
from lewm_hf.trainer.lewm_trainer import CausalLMTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _values(stream: StreamingDataset, n: int) -> list[int]:
    return [row["x"] for row in itertools.islice(iter(stream), n)]


@pytest.mark.parametrize("buffer_size", [1, 7, 80])
def test_stream_is_seeded_endless_and_skip_continues_it(buffer_size):
    data = Dataset.from_dict({"x": list(range(50))})
    stream = StreamingDataset(data, buffer_size, seed=3, block_size=8)
    first = _values(stream, 160)  # more than three passes
    assert first == _values(StreamingDataset(data, buffer_size, seed=3, block_size=8), 160)
    assert first != _values(StreamingDataset(data, buffer_size, seed=4, block_size=8), 160)
    assert _values(stream.skip(37), 123) == first[37:]
    assert _values(stream.skip(20).skip(17), 123) == first[37:]
    if buffer_size == 1:  # no buffer: each pass is a permutation of the rows
        assert sorted(first[:50]) == list(range(50)) and first[:50] != list(range(50))


def test_stream_reads_only_blocks_it_needs():
    """The stream reads contiguous blocks (never the whole table), and its skip reads nothing
    but the rows left in the buffer."""
    data = Dataset.from_dict({"x": list(range(1000))})
    reads: list[object] = []

    class Counting(Dataset):
        def __getitem__(self, key):
            reads.append(key)
            return super().__getitem__(key)

    counted = Counting(data.data, info=data.info, split=data.split)
    stream = StreamingDataset(counted, buffer_size=16, seed=0, block_size=64)
    _values(stream, 40)
    assert all(isinstance(k, slice) and k.stop - k.start <= 64 for k in reads)
    reads.clear()
    _values(stream.skip(900), 1)
    assert isinstance(reads[0], list) and len(reads[0]) <= 16  # the buffer's rows, one take
    assert all(isinstance(k, slice) for k in reads[1:])


def _loader_batches(stream: StreamingDataset, workers: int, n: int) -> list[list[int]]:
    loader = torch.utils.data.DataLoader(
        stream, batch_size=3, num_workers=workers, collate_fn=lambda rows: [r["x"] for r in rows]
    )
    return list(itertools.islice(iter(loader), n))


def test_workers_split_the_stream_by_batch_and_keep_its_order():
    data = Dataset.from_dict({"x": list(range(40))})
    stream = StreamingDataset(data, buffer_size=6, seed=1, block_size=8, rows_per_batch=3)
    alone = _loader_batches(stream, 0, 20)
    assert [x for batch in alone for x in batch] == _values(stream, 60)
    assert _loader_batches(stream, 2, 20) == alone
    assert _loader_batches(stream.skip(15), 2, 15) == alone[5:]
    with pytest.raises(Exception, match="rows_per_batch"):
        _loader_batches(StreamingDataset(data, buffer_size=6, seed=1), 2, 1)


# ---- exact resume -----------------------------------------------------------------------
class _StopAfterSave(TrainerCallback):
    """Ends a run right after the Trainer saved checkpoint-`step` (as a kill would)."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def _recording(base: type) -> type:
    class Recording(base):
        seen: list[list[list[int]]]

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.seen.append(inputs["input_ids"].tolist())
            return super().training_step(model, inputs, num_items_in_batch)

    return Recording


def _lm_trainer(output_dir, **overrides):
    torch.manual_seed(0)
    config = AutoConfig.for_model(**{**TINY_ENCODER, "max_position_embeddings": 16})
    model = AutoModelForCausalLM.from_config(config)
    rows = torch.randint(0, VOCAB, (20, 9), generator=torch.Generator().manual_seed(1))
    args = CausalLMTrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=6,
        save_steps=3,
        logging_steps=1,
        learning_rate=1e-3,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        dataloader_pin_memory=False,
        dataset_streaming=True,
        streaming_buffer_size=8,
        **overrides,
    )
    trainer = _recording(CausalLMTrainer)(
        model=model,
        args=args,
        data_collator=DataCollatorForWalkLM(),
        train_dataset=Dataset.from_dict({"input_ids": rows.tolist()}),
    )
    trainer.seen = []
    return trainer


def _world_model_trainer(output_dir, tiny_lewm_model, tiny_clips, **overrides):
    args = LeWMTrainingArguments(
        **{
            **TINY_TRAINING_ARGS,
            "output_dir": str(output_dir),
            "per_device_train_batch_size": 4,
            "max_steps": 6,
            "save_strategy": "steps",
            "save_steps": 3,
            "dataset_streaming": True,
            "streaming_buffer_size": 8,
            **overrides,
        }
    )
    trainer = _recording(LeWMTrainer)(
        tiny_lewm_model(), args, train_dataset=tiny_clips(20), window=W
    )
    trainer.seen = []
    return trainer


@pytest.mark.parametrize("phase", ["lm", "lm_two_workers", "world_model"])
def test_resumed_stream_sees_the_uninterrupted_runs_batches(
    tmp_path, phase, tiny_lewm_model, tiny_clips
):
    def build(folder, **overrides):
        if phase == "lm":
            return _lm_trainer(tmp_path / folder, **overrides)
        if phase == "lm_two_workers":
            return _lm_trainer(tmp_path / folder, dataloader_num_workers=2, **overrides)
        return _world_model_trainer(tmp_path / folder, tiny_lewm_model, tiny_clips, **overrides)

    whole = build("whole")
    whole.train()
    assert len(whole.seen) == 6  # 24 rows of a 20-row split: the stream went into a second pass

    stopped = build("stopped")
    stopped.add_callback(_StopAfterSave(3))
    with pytest.raises(KeyboardInterrupt):
        stopped.train()
    assert stopped.seen == whole.seen[:3]
    checkpoint = str(tmp_path / "stopped" / "checkpoint-3")

    resumed = build("stopped")
    resumed.train(resume_from_checkpoint=checkpoint)
    assert stopped.seen + resumed.seen == whole.seen
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key

    # Controls: a stream that restarts (from scratch, or resumed without the skip of the
    # consumed batches) sees other batches than the uninterrupted run after the checkpoint.
    assert whole.seen[:3] != whole.seen[3:]
    unskipped = build("stopped", ignore_data_skip=True)
    unskipped.train(resume_from_checkpoint=checkpoint)
    assert unskipped.seen == whole.seen[:3] != whole.seen[3:]


# ---- what cannot combine with streaming --------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"max_steps": -1}, "max_steps"),
        ({"dataloader_num_workers": 2, "dataloader_in_order": False}, "dataloader_in_order"),
        ({"train_sampling_strategy": "group_by_length"}, "train_sampling_strategy"),
        ({"streaming_buffer_size": 0}, "streaming_buffer_size"),
        ({"auto_find_batch_size": True}, "auto_find_batch_size"),
    ],
)
def test_settings_that_cannot_stream_are_errors(tmp_path, overrides, field):
    for cls in (CausalLMTrainingArguments, LeWMTrainingArguments):
        kwargs = {"output_dir": str(tmp_path), "max_steps": 5, "dataset_streaming": True}
        with pytest.raises(LeWMConfigError) as info:
            cls(**{**kwargs, **overrides})
        assert info.value.field == field


def test_frozen_feature_cache_cannot_stream(tmp_path, tiny_lewm_model, tiny_clips):
    args = LeWMTrainingArguments(
        **{**TINY_TRAINING_ARGS, "output_dir": str(tmp_path), "dataset_streaming": True}
    )
    with pytest.raises(LeWMConfigError) as info:
        LeWMTrainer(
            tiny_lewm_model(encoder_mode="frozen"), args, train_dataset=tiny_clips(8), window=W
        )
    assert info.value.field == "frozen_feature_cache"
    args.frozen_feature_cache = False  # the frozen encoder then runs at every step
    trainer = LeWMTrainer(
        tiny_lewm_model(encoder_mode="frozen"), args, train_dataset=tiny_clips(8), window=W
    )
    assert isinstance(trainer.train_dataset, StreamingDataset)


def test_ranks_share_the_global_batches_of_one_process():
    """Under DDP accelerate wraps the stream in `IterableDatasetShard` (dispatch off): rank r
    keeps rows `[r b, (r + 1) b)` of every `N b` rows, so the ranks' batches together are those
    of one process at batch `N b`, also after a resume's skip."""
    from accelerate.data_loader import IterableDatasetShard

    data = Dataset.from_dict({"x": list(range(30))})
    stream = StreamingDataset(data, buffer_size=5, seed=2, block_size=4)
    single = _values(stream, 48)
    for skip in (0, 12):
        ranks = [
            [
                row["x"]
                for row in itertools.islice(
                    iter(
                        IterableDatasetShard(stream.skip(skip), 3, num_processes=2, process_index=r)
                    ),
                    (48 - skip) // 2,
                )
            ]
            for r in range(2)
        ]
        merged = [
            x
            for step in range(len(ranks[0]) // 3)
            for r in ranks
            for x in r[3 * step : 3 * step + 3]
        ]
        assert merged == single[skip:]


def test_recipe_keys_reach_every_phase_and_the_cache_conflict_fails_at_parse(
    tmp_path, write_walk_recipe, cache_dir
):
    from lewm_hf.tasks.runner import validate_recipe

    phases = [
        {"name": "encoder", "task": "lm", "max_steps": 4},
        {"name": "world", "task": "world_model", "max_steps": 4, "encoder_mode": "train"},
    ]
    recipe = write_walk_recipe(
        tmp_path / "ok", cache_dir, phases, dataset_streaming=True, streaming_buffer_size=64
    )
    for parsed in validate_recipe(recipe):
        training = parsed.args.training
        assert training.dataset_streaming and training.streaming_buffer_size == 64
    phases[1]["encoder_mode"] = "frozen"
    recipe = write_walk_recipe(tmp_path / "frozen", cache_dir, phases, dataset_streaming=True)
    with pytest.raises(LeWMConfigError) as info:
        validate_recipe(recipe)
    assert info.value.field == "frozen_feature_cache"
