"""Trajectory datasets (`lewm_hf.data.trajectories`) and the `trajectory_world_model` task.

- the schema errors, as a table of bad inputs, each naming its column, row and expectation;
- the readers: parquet / json / arrow `data_files`, a folder, a `save_to_disk` folder;
- the export round trip: the walk move clips exported to the format train, through the runner,
  to the same numbers as the built-in path with the same seed, and a shuffled export does not;
- the Hub round trip, offline: a dataset repo laid out the way the Hub cache holds it is read
  as `dataset_name: owner/name`, the trained model and the dataset are pushed through the
  client boundary, and a fresh process loads both back from a Hub cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import huggingface_hub
import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml
from _builders import TINY_PHASE_MODEL, lay_out_hub_cache, write_walk_recipe
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file
from test_hub import RecordingHfApi, files_in, hub  # noqa: F401  (the offline Hub fixture)
from transformers import LlamaConfig, LlamaForCausalLM

from lewm_hf import LeWMModel
from lewm_hf import metric_keys as K
from lewm_hf.data.collators import DataCollatorForLeWM
from lewm_hf.data.edits import EditCorpusConfig, build_edit_corpus
from lewm_hf.data.trajectories import (
    TrajectoryInfo,
    export_trajectories,
    load_trajectories,
    load_trajectory_dataset,
    push_trajectories,
    validate_trajectories,
    write_trajectories,
)
from lewm_hf.data.trajectory_clips import (
    clip_offsets,
    trajectory_clips,
)
from lewm_hf.data.walks import build_move_trajectories, load_walk_metadata
from lewm_hf.errors import LeWMConfigError, LeWMDatasetError
from lewm_hf.evaluation.trajectories import TrajectoryEvalConfig, evaluate_trajectory_model
from lewm_hf.reporting import format_evaluation
from lewm_hf.tasks.domains.trajectories import TrajectoryCollator
from lewm_hf.tasks.runner import run_recipe, validate_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
INFO = TrajectoryInfo(vocab_size=10, num_actions=3, window_length=2)
EDIT_INFO = TrajectoryInfo(vocab_size=7, num_actions=3, window_length=4, action_type="edit")

# A world-model phase on the tiny walk corpus (the built-in path of the round trip).
WALK_PHASE = {
    "name": "world_model",
    "task": "world_model",
    "encoder_path": None,
    "encoder_mode": "frozen",
    "dropout": 0.0,
    **TINY_PHASE_MODEL,
    "num_clips": 128,
    "eval_clips": 32,
    "max_steps": 8,
    "learning_rate": 1e-2,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "save_strategy": "no",
    "logging_steps": 2,
    "run_evaluation": False,
}
# The same phase on a trajectory dataset: the clip keys are the walk task's, and the model's
# history length defaults to the dataset's longest row (the clips' H).
TRAJECTORY_PHASE = {
    **{
        k: v
        for k, v in WALK_PHASE.items()
        if k not in ("num_clips", "eval_clips", "history_length")
    },
    "task": "trajectory_world_model",
    "dataset_test_split": "validation",
}


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """`load_dataset` prepares its Arrow copy in a folder of the test's own."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")


def dataset(**columns) -> Dataset:
    return Dataset.from_dict(columns)


GOOD = {"input_ids": [[[1, 2], [3, 4]], [[1, 2], [3, 4], [5, 6]]], "actions": [[0], [1, 2]]}


def bad(**changes):
    return {**GOOD, **changes}


# (case, columns, info, column named, row named, words of the expectation)
BAD_INPUTS = [
    ("missing actions", {"input_ids": GOOD["input_ids"]}, INFO, "actions", None, "a column"),
    ("missing input_ids", {"actions": GOOD["actions"]}, INFO, "input_ids", None, "a column"),
    ("K+1 states, K-1 actions", bad(actions=[[0], [1]]), INFO, "actions", 1, "K actions"),
    ("K+1 states, K+1 actions", bad(actions=[[0, 1], [1, 2]]), INFO, "actions", 0, "K actions"),
    ("action id past num_actions", bad(actions=[[0], [1, 3]]), INFO, "actions", 1, "[0, 3)"),
    ("negative action id", bad(actions=[[-1], [1, 2]]), INFO, "actions", 0, "action ids"),
    (
        "windows of unequal length",
        bad(input_ids=[[[1, 2], [3, 4]], [[1, 2], [3, 4, 5], [5, 6]]]),
        INFO,
        "input_ids",
        1,
        "window_length",
    ),
    (
        "token id past the vocabulary",
        bad(input_ids=[[[1, 2], [3, 4]], [[1, 2], [3, 10], [5, 6]]]),
        INFO,
        "input_ids",
        1,
        "token ids in [0, 10)",
    ),
    (
        "negative token id",
        bad(input_ids=[[[1, -2], [3, 4]], [[1, 2], [3, 4], [5, 6]]]),
        INFO,
        "input_ids",
        0,
        "token ids",
    ),
    (
        "one state, no action",
        {"input_ids": [[[1, 2], [3, 4]], [[1, 2]]], "actions": [[0], []]},
        INFO,
        "input_ids",
        1,
        "K + 1 >= 2",
    ),
    ("empty split", {"input_ids": [], "actions": []}, INFO, "rows", None, "at least one"),
    ("actions of strings", bad(actions=[["up"], ["up", "down"]]), INFO, "actions", None, "int"),
    ("a null action", bad(actions=[[0], [1, None]]), INFO, "actions", 1, "no nulls"),
    ("a null state", bad(input_ids=[[[1, 2], [3, 4]], None]), INFO, "input_ids", 1, "no nulls"),
    ("mask of another length", bad(action_mask=[[1], [1]]), INFO, "action_mask", 1, "per action"),
    ("mask value 2", bad(action_mask=[[1], [1, 2]]), INFO, "action_mask", 1, "[0, 2)"),
    ("mask pads before", bad(action_mask=[[1], [0, 1]]), INFO, "action_mask", 1, "first action"),
    (
        "mask real after padding",
        {
            "input_ids": [[[1, 2]] * 4, [[1, 2]] * 4],
            "actions": [[0, 0, 0], [0, 0, 0]],
            "action_mask": [[1, 1, 1], [1, 0, 1]],
        },
        INFO,
        "action_mask",
        1,
        "only after the last real action",
    ),
    (
        "edit op out of range",
        {
            "input_ids": [[[0, 1, 2, 3], [0, 1, 2, 2]]],
            "edit_ops": [[3]],
            "edit_positions": [[3]],
            "edit_tokens": [[[2]]],
            "locus": [[3, 3]],
        },
        EDIT_INFO,
        "edit_ops",
        0,
        "edit operations",
    ),
    (
        "edit without a locus per state",
        {
            "input_ids": [[[0, 1, 2, 3], [0, 1, 2, 2]]],
            "edit_ops": [[0]],
            "edit_positions": [[3]],
            "edit_tokens": [[[2]]],
            "locus": [[3]],
        },
        EDIT_INFO,
        "locus",
        0,
        "a locus per state",
    ),
]


@pytest.mark.parametrize(
    ("columns", "info", "column", "row", "expected"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_every_schema_error_names_column_row_and_expectation(columns, info, column, row, expected):
    with pytest.raises(LeWMDatasetError) as caught:
        validate_trajectories(dataset(**columns), info, "train")
    err = caught.value
    assert (err.column, err.row, err.split) == (column, row, "train"), str(err)
    assert expected in err.expected, str(err)
    assert "split 'train'" in str(err) and (row is None or f"row {row}," in str(err))


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"num_actions": 3, "window_length": 2}', "vocab_size"),
        ('{"vocab_size": 0, "num_actions": 3, "window_length": 2}', "vocab_size"),
        ('{"format": "other", "vocab_size": 1, "num_actions": 1, "window_length": 1}', "format"),
        ('{"version": 9, "vocab_size": 1, "num_actions": 1, "window_length": 1}', "version"),
        ('{"vocab_size": 1, "num_actions": 1, "window_length": 1, "colour": 1}', "colour"),
        (
            '{"vocab_size": 1, "num_actions": 2, "window_length": 1, "action_names": ["a"]}',
            "action_names",
        ),
        (
            '{"vocab_size": 1, "num_actions": 1, "window_length": 1, "action_type": "x"}',
            "action_type",
        ),
        ("not json", "lewm_dataset"),
    ],
)
def test_bad_metadata_is_a_config_error_naming_the_field(text, field):
    with pytest.raises(LeWMConfigError) as caught:
        TrajectoryInfo.from_json(text)
    assert caught.value.field == field


def test_the_metadata_round_trips_and_a_valid_split_passes(tmp_path):
    info = TrajectoryInfo(5, 2, 3, action_names=["a", "b"], environment="toy")
    assert TrajectoryInfo.from_json(info.to_json()) == info
    assert json.loads(info.to_json())["format"] == "lewm-trajectories"
    validate_trajectories(dataset(**GOOD, action_mask=[[1], [1, 0]]), INFO)
    with pytest.raises(LeWMConfigError, match="differs from the metadata"):
        write_trajectories(GOOD, INFO, tmp_path, "train")
        write_trajectories(GOOD, TrajectoryInfo(11, 3, 2), tmp_path, "test")


def test_every_reader_gives_the_same_rows(tmp_path):
    rng = np.random.default_rng(0)
    rows = {"input_ids": rng.integers(0, 10, (6, 4, 2)), "actions": rng.integers(0, 3, (6, 3))}
    root = tmp_path / "folder"
    write_trajectories(rows, INFO, root, "train")
    write_trajectories(
        {"input_ids": GOOD["input_ids"], "actions": GOOD["actions"]}, INFO, root, "test"
    )
    expected = load_trajectories(str(root), split="train")[0].to_dict()
    assert np.array_equal(expected["input_ids"], rows["input_ids"])
    card = huggingface_hub.DatasetCard.load(root / "README.md")
    assert [c["split"] for c in card.data.configs[0]["data_files"]] == ["test", "train"]

    # parquet / json / arrow data_files, with lewm_dataset.json beside them.
    train = Dataset.from_dict(expected)
    files = tmp_path / "files"
    files.mkdir()
    (files / K.TRAJECTORY_INFO_FILE).write_text(INFO.to_json())
    train.to_parquet(str(files / "train.parquet"))
    train.to_json(str(files / "train.jsonl"))
    with pa.OSFile(str(files / "train.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, train.data.table.schema) as writer:
            writer.write_table(train.data.table)
    for builder, name in (
        ("parquet", "train.parquet"),
        ("json", "train.jsonl"),
        ("arrow", "train.arrow"),
    ):
        got, info = load_trajectories(builder, data_files={"train": str(files / name)})
        assert info == INFO and got.to_dict() == expected, builder

    # A save_to_disk folder carrying its metadata in info.description; keys it would ignore fail.
    train.info.description = INFO.to_json()
    DatasetDict({"train": train}).save_to_disk(str(tmp_path / "saved"))
    got, info = load_trajectories(str(tmp_path / "saved"))
    assert info == INFO and got.to_dict() == expected
    for key, value in (("dataset_config", "default"), ("data_files", "x.parquet")):
        with pytest.raises(LeWMConfigError) as caught:
            load_trajectory_dataset(str(tmp_path / "saved"), **{key: value})
        assert caught.value.field == key
    bare = tmp_path / "bare" / "files"
    bare.mkdir(parents=True)
    train.to_parquet(str(bare / "train.parquet"))
    with pytest.raises(LeWMConfigError, match=r"no lewm_dataset\.json"):
        load_trajectory_dataset("parquet", data_files=str(bare / "train.parquet"))
    with pytest.raises(LeWMConfigError) as caught:
        load_trajectories(str(root), split="validation")
    assert "splits ['test', 'train']" in str(caught.value)


def test_the_collator_drops_padding_and_an_all_real_mask():
    collate = TrajectoryCollator(DataCollatorForLeWM())
    rows = [
        {"input_ids": [[1, 2], [3, 4], [5, 6]], "actions": [1, 2], "action_mask": [1, 0]},
        {"input_ids": [[1, 2], [3, 4], [5, 6]], "actions": [0, 1], "action_mask": [1, 1]},
    ]
    batch = collate(rows)
    assert batch["actions"].mask.tolist() == [[True, False], [True, True]]
    assert batch["input_ids"][0, 2].tolist() == [3, 4]  # the padded state repeats the last real
    batch = collate(rows[1:])
    assert batch["actions"].mask is None and batch["actions"]["ids"].tolist() == [[0, 1]]


# ---- round trips through the runner ---------------------------------------------------------


@pytest.fixture(scope="module")
def walk_run(tmp_path_factory, cache_dir):
    """The built-in path: a world model on the tiny walk corpus's move clips, and their export."""
    root = tmp_path_factory.mktemp("builtin")
    recipe = write_walk_recipe(root, cache_dir, [WALK_PHASE])
    plan = validate_recipe(recipe)[0]
    clips = build_move_trajectories(plan.args.domain.clips, cache_dir)
    info = export_trajectories(clips, root / "export")
    torch.set_num_threads(1)
    run_recipe(recipe)
    return root, clips, info


def run_trajectory_phase(folder: Path, **keys) -> tuple[dict, Path]:
    recipe = {
        "output_dir": str(folder / "run"),
        "seed": 0,
        "disable_tqdm": True,
        "phases": [{**TRAJECTORY_PHASE, **keys}],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_recipe(folder / "recipe.yaml")
    out = folder / "run" / "world_model"
    return json.loads((out / K.RESULT_FILE).read_text()), out


def numbers(result: dict) -> np.ndarray:
    curves = result["curves"]
    return np.array(
        [
            result[K.EVAL_PRED_MSE],
            result[K.EVAL_COPY_MSE],
            result[K.EVAL_PRED_LOSS],
            result[K.EVAL_REG_LOSS],
            *curves[K.PRED_LOSS]["value"],
            *curves[K.REG_LOSS]["value"],
        ]
    )


def test_export_round_trip_trains_to_the_built_in_numbers(tmp_path, walk_run):
    root, clips, info = walk_run
    assert (info.vocab_size, info.window_length) == (100, 8)
    assert info.num_actions == load_walk_metadata(clips).graph.max_out_degree
    # The export is the clips, row for row: windows of the span, the same actions.
    exported, _ = load_trajectories(str(root / "export"), split="validation")
    span = np.asarray(clips["validation"][0]["tokens"])
    assert np.array_equal(exported[0]["input_ids"], [span[t : t + 8] for t in range(3)])
    assert exported[0]["actions"] == clips["validation"][0]["actions"]

    builtin = json.loads((root / "run" / "world_model" / K.RESULT_FILE).read_text())
    result, out = run_trajectory_phase(tmp_path / "export", dataset_name=str(root / "export"))
    assert np.abs(numbers(result) - numbers(builtin)).max() <= 1e-6
    ours = load_file(out / K.SAFE_WEIGHTS_FILE)
    theirs = load_file(root / "run" / "world_model" / K.SAFE_WEIGHTS_FILE)
    assert ours.keys() == theirs.keys()
    assert max((ours[k].float() - theirs[k].float()).abs().max().item() for k in ours) <= 1e-6

    # Control: the same rows in another order give other numbers under the same seed.
    shuffled = tmp_path / "shuffled"
    for split in ("train", "validation"):
        rows, _ = load_trajectories(str(root / "export"), split=split)
        order = np.random.default_rng(1).permutation(len(rows))
        write_trajectories(rows.select(order), info, shuffled, split)
    control, _ = run_trajectory_phase(tmp_path / "control", dataset_name=str(shuffled))
    assert np.abs(numbers(control) - numbers(builtin)).max() > 1e-3


def test_keys_without_effect_and_a_small_encoder_vocabulary_are_errors(tmp_path, walk_run):
    root, _, _ = walk_run
    export = str(root / "export")
    # Walk keys do nothing on a dataset: unknown keys of this task.
    with pytest.raises(LeWMConfigError, match="unknown key"):
        run_trajectory_phase(tmp_path / "a", dataset_name=export, num_clips=10)
    with pytest.raises(LeWMConfigError) as caught:
        run_trajectory_phase(tmp_path / "b", dataset_name=export, pooling="centered")
    assert caught.value.field == "pooling"
    with pytest.raises(LeWMConfigError) as caught:
        run_trajectory_phase(tmp_path / "c", dataset_name=export, dataset_test_split="test")
    assert caught.value.field == "dataset_test_split"
    with pytest.raises(LeWMConfigError) as caught:
        run_trajectory_phase(tmp_path / "d", dataset_name=export, history_length=1, clip_stride=2)
    assert caught.value.field == "clip_stride"
    # An encoder whose vocabulary does not cover the dataset's 100 tokens.
    small = tmp_path / "small_lm"
    config = LlamaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(small)
    with pytest.raises(LeWMConfigError) as caught:
        run_trajectory_phase(tmp_path / "e", dataset_name=export, encoder_path=str(small))
    assert caught.value.field == "vocab_size" and "encoder_path" in caught.value.reason


FRESH_PROCESS = """
import json, sys, torch
import lewm_hf
from datasets import load_dataset
from huggingface_hub import snapshot_download
from transformers import AutoModel
from lewm_hf.data.collators import DataCollatorForLeWM
from lewm_hf.data.trajectories import load_trajectories
rows, info = load_trajectories("me/walk-moves", split="validation")
raw = load_dataset(snapshot_download("me/walk-moves", repo_type="dataset"), split="validation")
model = AutoModel.from_pretrained("me/traj-wm").eval()
batch = DataCollatorForLeWM()(list(rows.select(range(8))))
with torch.no_grad():
    out = model(**batch)
print(json.dumps({
    "lewm_hf": lewm_hf.__file__, "rows": len(rows), "raw_equal": raw.to_dict() == rows.to_dict(),
    "info": info.to_dict(), "latents": out.latents.flatten().tolist(),
}))
"""


def test_hub_round_trip_offline(tmp_path, walk_run, hub, monkeypatch):  # noqa: F811
    root, _, info = walk_run
    cache = tmp_path / "hub_cache"
    lay_out_hub_cache(cache, "dataset", "me/walk-moves", root / "export")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    # Train from the Hub id (read from the cache, offline), evaluate, push the model.
    result, out = run_trajectory_phase(
        tmp_path / "hub_run",
        dataset_name="me/walk-moves",
        push_to_hub=True,
        hub_model_id="me/traj-wm",
        run_evaluation=True,
        evaluation={"num_items": 32, "num_rollouts": 8},
    )
    assert result[K.EVAL_ACTION_R1_COPY] == pytest.approx(result[K.EVAL_ACTION_CHANCE])
    assert result[K.EVAL_ACTION_CHANCE] == pytest.approx(1 / info.num_actions)
    assert len(result[K.EVAL_ROLLOUT_L2]) == 2 and 0 <= result[K.EVAL_SURPRISE_AUROC] <= 1
    pushed = hub.root / "me" / "traj-wm"
    assert {K.CONFIG_FILE, K.SAFE_WEIGHTS_FILE, K.MODEL_CARD_FILE} <= files_in(pushed)
    card = huggingface_hub.ModelCard.load(pushed / K.MODEL_CARD_FILE)
    assert "trajectories" in card.data.tags and "me/walk-moves" in card.text

    # Push the dataset (card, metadata, parquet) through the same client boundary.
    datasets_hub = RecordingHfApi(tmp_path / "dataset_hub")
    assert push_trajectories(root / "export", "me/walk-moves", api=datasets_hub) == "me/walk-moves"
    dataset_repo = datasets_hub.root / "me" / "walk-moves"
    assert files_in(dataset_repo) == files_in(root / "export")
    assert huggingface_hub.DatasetCard.load(dataset_repo / "README.md").data.tags[0] == "lewm_hf"

    # A fresh process, offline, loads both back from a Hub cache of the pushed repos.
    fresh = tmp_path / "fresh_cache"
    lay_out_hub_cache(fresh, "model", "me/traj-wm", pushed)
    lay_out_hub_cache(fresh, "dataset", "me/walk-moves", dataset_repo)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(fresh),
        "HF_DATASETS_CACHE": str(tmp_path / "fresh_datasets"),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], env=env, capture_output=True, text=True,
        timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(got["lewm_hf"]).is_relative_to(REPO)
    assert got["rows"] == 32 and got["raw_equal"] and got["info"] == info.to_dict()
    rows, _ = load_trajectories(str(root / "export"), split="validation")
    local = LeWMModel.from_pretrained(out).eval()
    with torch.no_grad():
        expected = local(**DataCollatorForLeWM()(list(rows.select(range(8))))).latents
    assert torch.equal(torch.tensor(got["latents"]), expected.flatten())


def test_the_edit_corpus_exports_to_the_format_column_for_column(tmp_path):
    config = EditCorpusConfig(
        synthetic_records=2, synthetic_length=6000, window_length=48, window_stride=24, margin=6
    )
    corpus = build_edit_corpus(config, tmp_path / "cache")
    info = export_trajectories(corpus, tmp_path / "edits", {"train": "train", "validation": "test"})
    assert (info.action_type, info.window_length, info.num_actions) == ("edit", 48, 3)
    assert info.action_names == ["SUB", "INS", "DEL"] and info.token_names[6] == "<end>"
    for split, name in (("train", "train"), ("validation", "test")):
        rows, loaded = load_trajectories(str(tmp_path / "edits"), split=name)
        assert loaded == info and len(rows) == len(corpus[split])
        for column in ("input_ids", "edit_ops", "edit_positions", "edit_tokens", "locus"):
            assert rows[column] == corpus[split][column], (split, column)


def test_a_dataset_key_on_a_walk_phase_names_the_task_that_reads_it(tmp_path, cache_dir):
    recipe = write_walk_recipe(tmp_path, cache_dir, [{**WALK_PHASE, "dataset_name": "me/x"}])
    with pytest.raises(LeWMConfigError) as caught:
        validate_recipe(recipe)
    assert caught.value.field.endswith("dataset_name")
    assert "unknown key for task world_model (read by task" in caught.value.reason
    assert "trajectory_world_model" in caught.value.reason


def test_ragged_rows_with_padding_train_and_evaluate(tmp_path):
    # Rows of 1 to 4 actions, some padded by action_mask, through the frozen feature cache.
    rng = np.random.default_rng(0)
    info = TrajectoryInfo(vocab_size=12, num_actions=4, window_length=3)
    for split, count in (("train", 48), ("test", 16)):
        steps = rng.integers(1, 5, size=count)
        rows = {
            "input_ids": [rng.integers(0, 12, (k + 1, 3)).tolist() for k in steps],
            "actions": [rng.integers(0, 4, k).tolist() for k in steps],
            "action_mask": [[1] * (k - int(k > 2)) + [0] * int(k > 2) for k in steps],
        }
        write_trajectories(rows, info, tmp_path / "ragged", split)
    result, out = run_trajectory_phase(
        tmp_path / "run",
        dataset_name=str(tmp_path / "ragged"),
        dataset_test_split="test",
        max_steps=4,
        run_evaluation=True,
        evaluation={"num_items": 16, "num_rollouts": 4, "max_horizon": 8},
    )
    config = json.loads((out / K.CONFIG_FILE).read_text())
    # The history covers the longest real row (3 actions: padding does not count).
    assert config["history_length"] == 3
    assert (config["action_vocab_size"], config["vocab_size"]) == (4, 12)
    assert np.isfinite(result[K.EVAL_PRED_MSE]) and result[K.EVAL_ACTION_CHANCE] == 0.25
    # Rollouts go as far as the real (unpadded) rows allow: 3 actions.
    assert result[K.EVAL_ROLLOUT_HORIZONS] == [1, 2, 3]
    # Surprise and its references reach result.json and the run's summary alike.
    summary = json.loads((tmp_path / "run" / "run" / K.SUMMARY_FILE).read_text())
    phase = summary["phases"]["world_model"]
    for key in (K.EVAL_SURPRISE_AUROC, K.EVAL_SURPRISE_AUROC_COPY, K.EVAL_SURPRISE_AUROC_SHUFFLED):
        assert 0 <= result[key] <= 1 and phase[key] == result[key]


# ---- long rows: clips of history_length actions ----------------------------------------------


@pytest.mark.parametrize(
    ("steps", "history", "stride", "offsets"),
    [
        (3, 4, 4, [0]),  # a short row is one clip (padded by the collator)
        (4, 4, 4, [0]),
        (10, 4, 4, [0, 4, 8]),  # back-to-back; the last clip holds the 2 remaining actions
        (10, 4, 2, [0, 2, 4, 6]),  # overlapping; the last clip ends at the row's end
        (10, 4, 1, [0, 1, 2, 3, 4, 5, 6]),
        (9, 3, 3, [0, 3, 6]),
    ],
)
def test_clip_offsets_cover_every_transition(steps, history, stride, offsets):
    rows, got = clip_offsets(np.array([1, steps]), history, stride)
    assert rows.tolist() == [0] + [1] * len(offsets) and got.tolist() == [0, *offsets]
    covered = set()
    for start in offsets:
        covered |= set(range(start, min(start + history, steps)))
    assert covered == set(range(steps))


@pytest.mark.parametrize(
    ("history", "stride", "field"),
    [
        (0, None, "history_length"),
        (4, 0, "clip_stride"),
        (4, 5, "clip_stride"),
        (4, 1.5, "clip_stride"),
    ],
)
def test_bad_clip_settings_are_config_errors(history, stride, field):
    rows = dataset(**GOOD)
    with pytest.raises(LeWMConfigError) as caught:
        trajectory_clips(rows, history, stride)
    assert caught.value.field == field


def long_rows(rng, count: int, info: TrajectoryInfo, low: int, high: int) -> dict:
    steps = rng.integers(low, high, size=count)
    window, vocab = info.window_length, info.vocab_size
    return {
        "input_ids": [rng.integers(0, vocab, (k + 1, window)).tolist() for k in steps],
        "actions": [rng.integers(0, info.num_actions, k).tolist() for k in steps],
        "episode": list(range(count)),
    }


def test_clips_read_the_rows_lazily_and_deterministically():
    rng = np.random.default_rng(0)
    info = TrajectoryInfo(vocab_size=12, num_actions=4, window_length=3)
    rows = dataset(**long_rows(rng, 5, info, 30, 60))
    clips = trajectory_clips(rows, 8, 3)
    again = trajectory_clips(rows, 8, 3)
    assert np.array_equal(clips.rows, again.rows) and np.array_equal(clips.offsets, again.offsets)
    index = clips.as_dataset()
    assert index.column_names == ["clip_split", "clip_row", "clip_offset"] and len(index) > 5 * 8
    for c in (0, 7, len(clips) - 1):
        row, start = int(clips.rows[c]), int(clips.offsets[c])
        (clip,) = clips.read([c])
        k = len(clip["actions"])
        assert k == min(8, len(rows[row]["actions"]) - start) >= 1
        assert clip["actions"] == rows[row]["actions"][start : start + k]
        assert clip["input_ids"] == rows[row]["input_ids"][start : start + k + 1]
    # The collator reads the clips an index row names.
    collate = TrajectoryCollator(DataCollatorForLeWM(), (clips,))
    batch = collate([index[0], index[1]])
    expected = DataCollatorForLeWM()(clips.read([0, 1]))
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["actions"]["ids"], expected["actions"]["ids"])


def test_long_episodes_train_and_evaluate_on_clips(tmp_path):
    # Episodes of 40-90 actions against a history of 6: cut into clips, trained, evaluated.
    rng = np.random.default_rng(1)
    info = TrajectoryInfo(vocab_size=12, num_actions=4, window_length=3)
    for split, count in (("train", 12), ("test", 4)):
        write_trajectories(long_rows(rng, count, info, 40, 90), info, tmp_path / "long", split)
    keys = {
        "dataset_name": str(tmp_path / "long"),
        "dataset_test_split": "test",
        "history_length": 6,
        "max_steps": 3,
        "run_evaluation": True,
        "evaluation": {"num_items": 16, "num_rollouts": 4, "max_horizon": 10},
    }
    result, out = run_trajectory_phase(tmp_path / "run", **keys)
    assert json.loads((out / K.CONFIG_FILE).read_text())["history_length"] == 6
    assert np.isfinite(result[K.EVAL_PRED_MSE]) and np.isfinite(result[K.EVAL_COPY_MSE])
    # Rollouts stay within a clip: at most history_length steps.
    assert result[K.EVAL_ROLLOUT_HORIZONS] == [1, 2, 3, 4, 5, 6]
    # A stride above the history would skip transitions.
    with pytest.raises(LeWMConfigError) as caught:
        run_trajectory_phase(tmp_path / "bad", **keys, clip_stride=7)
    assert caught.value.field == "clip_stride"


# ---- edit actions from a dataset ---------------------------------------------------------------

EDIT_CORPUS = {
    "synthetic_records": 2,
    "synthetic_length": 6000,
    "window_length": 48,
    "window_stride": 24,
    "margin": 12,  # the dataset path's evaluation sampler: min(16, 48 // 4)
    "max_actions": 2,
}
EDIT_MODEL = {
    "encoder_path": None,
    "encoder_mode": "frozen",
    "dropout": 0.0,
    **TINY_PHASE_MODEL,
    "action_hidden": 8,
    "max_steps": 4,
    "learning_rate": 1e-2,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "save_strategy": "no",
    "logging_steps": 1,
    "collapse_monitor_steps": 0,
}


def edit_numbers(result: dict) -> dict:
    return {
        k: v
        for k, v in result.items()
        if k.startswith(("eval_snv", "eval_edit")) and isinstance(v, (int, float))
    }


def test_edit_export_round_trip_trains_and_evaluates_to_the_built_in_numbers(tmp_path):
    root = tmp_path / "builtin"
    root.mkdir()
    recipe = {
        "output_dir": str(root / "run"),
        "seed": 0,
        "disable_tqdm": True,
        "corpus_cache_dir": str(tmp_path / "cache"),
        "phases": [
            {"name": "world_model", "task": "edit_world_model", **EDIT_CORPUS, **EDIT_MODEL,
             "eval_items": 8}
        ],
    }  # fmt: skip
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    plan = validate_recipe(root / "recipe.yaml")[0]
    corpus = build_edit_corpus(plan.args.domain.data, tmp_path / "cache")
    info = export_trajectories(corpus, tmp_path / "export")
    assert info.action_type == "edit"
    run_recipe(root / "recipe.yaml")
    builtin = json.loads((root / "run" / "world_model" / K.RESULT_FILE).read_text())

    keys = {
        **EDIT_MODEL,
        "task": "trajectory_world_model",
        "dataset_test_split": "validation",
        "run_evaluation": True,
        "evaluation": {"num_items": 8},
    }
    phase = {k: v for k, v in TRAJECTORY_PHASE.items() if k not in keys}
    result, out = run_trajectory_phase(
        tmp_path / "ours", **phase, **keys, dataset_name=str(tmp_path / "export")
    )
    config = json.loads((out / K.CONFIG_FILE).read_text())
    assert (config["pooling"], config["action_position_origin"]) == ("centered", "locus")
    assert np.abs(numbers(result) - numbers(builtin)).max() <= 1e-6
    theirs, ours = edit_numbers(builtin), edit_numbers(result)
    assert theirs and ours.keys() == theirs.keys()
    assert max(abs(ours[k] - theirs[k]) for k in ours) <= 1e-6
    mine = load_file(out / K.SAFE_WEIGHTS_FILE)
    built = load_file(root / "run" / "world_model" / K.SAFE_WEIGHTS_FILE)
    assert max((mine[k].float() - built[k].float()).abs().max().item() for k in mine) <= 1e-6

    # Control: the same rows in another order give other numbers under the same seed.
    shuffled = tmp_path / "shuffled"
    for split in ("train", "validation"):
        rows, _ = load_trajectories(str(tmp_path / "export"), split=split)
        order = np.random.default_rng(1).permutation(len(rows))
        write_trajectories(rows.select(order), info, shuffled, split)
    control, _ = run_trajectory_phase(
        tmp_path / "control", **phase, **keys, dataset_name=str(shuffled)
    )
    assert np.abs(numbers(control) - numbers(builtin)).max() > 1e-3


def test_edit_clips_keep_a_locus_per_state_and_foreign_edit_vocabularies_are_refused(tmp_path):
    rows = dataset(
        input_ids=[[[0, 1, 2, 3]] * 5],
        edit_ops=[[0, 1, 2, 0]],
        edit_positions=[[1, 2, 0, 3]],
        edit_tokens=[[[2], [3, 1], [0], [1]]],
        locus=[[1, 2, 3, 0, 1]],
    )
    validate_trajectories(rows, EDIT_INFO)
    clips = trajectory_clips(rows, 2)
    assert clips.offsets.tolist() == [0, 2]
    (second,) = clips.read([1])
    assert second["edit_ops"] == [2, 0] and second["edit_tokens"] == [[0], [1]]
    assert second["locus"] == [3, 0, 1] and len(second["input_ids"]) == 3
    # Edits are coded over the DNA vocabulary: another vocabulary is refused before training.
    info = TrajectoryInfo(vocab_size=9, num_actions=3, window_length=4, action_type="edit")
    for split in ("train", "test"):
        write_trajectories(rows, info, tmp_path / "wide", split)
    with pytest.raises(LeWMConfigError) as caught:
        run_trajectory_phase(
            tmp_path / "run", dataset_name=str(tmp_path / "wide"), dataset_test_split="test"
        )
    assert caught.value.field == "dataset_name" and "DNA vocabulary" in caught.value.reason


# ---- surprise beside its references ------------------------------------------------------------


class ActionIsNextState(torch.nn.Module):
    """States are one token; the encoder one-hots it. `predict` returns the one-hot of the action
    taken: on rows whose next state is the action's id, a perfect model that reads its action."""

    def __init__(self, num_actions: int, history: int):
        super().__init__()
        self.config = SimpleNamespace(history_length=history, action_vocab_size=num_actions)
        self.num_actions = num_actions

    def encode(self, input_ids):
        return torch.nn.functional.one_hot(input_ids[:, 0], self.num_actions).float()

    def predict(self, z_hist, actions):
        return torch.nn.functional.one_hot(actions.ids, self.num_actions).float()


class ActionBlind(ActionIsNextState):
    """Ignores the action: predicts the mean of the history's latents."""

    def predict(self, z_hist, actions):
        return z_hist.cumsum(1) / torch.arange(1, z_hist.shape[1] + 1).view(1, -1, 1)


class Copy(ActionIsNextState):
    """Predicts the current latent: the copy score itself."""

    def predict(self, z_hist, actions):
        return z_hist


def action_is_next_state_rows(count: int, steps: int, num_actions: int, seed: int = 0) -> Dataset:
    """Rows of one-token states whose next state is the id of the action taken."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, num_actions, (count, steps))
    first = rng.integers(0, num_actions, (count, 1))
    states = np.concatenate([first, actions], axis=1)[..., None]  # (count, steps + 1, 1)
    return dataset(input_ids=states.tolist(), actions=actions.tolist())


def test_trajectory_surprise_reports_copy_and_action_blind_references():
    held_out = action_is_next_state_rows(256, 3, num_actions=4)
    config = TrajectoryEvalConfig(num_items=512, num_rollouts=4, max_horizon=2, seed=3)
    keys = (K.EVAL_SURPRISE_AUROC, K.EVAL_SURPRISE_AUROC_COPY, K.EVAL_SURPRISE_AUROC_SHUFFLED)

    # A model that reads its action: the true next state is never surprising, another row's
    # (a different state) always is; under another item's action it is a coin toss; copy, on
    # rows whose next state is drawn independently of the current one, is chance too.
    reads = evaluate_trajectory_model(ActionIsNextState(4, 3), held_out, 4, config)
    model, copy, blind = (reads[key] for key in keys)
    assert model == 1.0 and reads[K.EVAL_SURPRISE_TRUE] == 0.0
    assert copy == pytest.approx(0.5, abs=0.06) and blind == pytest.approx(0.5, abs=0.06)
    line = format_evaluation(reads).splitlines()[1]  # the printed table shows them beside it
    assert "another row's next" in line and f"copy {copy:.3f}  shuffled {blind:.3f}" in line

    # A model that ignores its action scores exactly its own action-blind control.
    ignores = evaluate_trajectory_model(ActionBlind(4, 3), held_out, 4, config)
    assert ignores[K.EVAL_SURPRISE_AUROC_SHUFFLED] == ignores[K.EVAL_SURPRISE_AUROC]

    # A model that predicts the current latent scores exactly copy (and its control).
    copies = evaluate_trajectory_model(Copy(4, 3), held_out, 4, config)
    assert copies[K.EVAL_SURPRISE_AUROC] == copies[K.EVAL_SURPRISE_AUROC_COPY] == copy
    assert copies[K.EVAL_SURPRISE_AUROC_SHUFFLED] == copy
    # The references are the same items whatever the model: copy does not depend on it.
    assert ignores[K.EVAL_SURPRISE_AUROC_COPY] == copy
