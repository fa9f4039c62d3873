"""The encoder phase (`task: lm`) on any tokenized corpus: `dataset_name` instead of the walks.

- The same corpus as a `save_to_disk` folder, as parquet files per split (`data_files`) and as
  one parquet file trains the LM; a text column is tokenized by a tokenizer saved on disk.
- Bad sources are typed errors naming the key, or the split, row and column (a table).
- Early stopping on `eval_loss` stops at the step the control's evaluations predict.
- A Hub id trains the LM offline, from a dataset repository laid out as the Hub cache holds it;
  an id that is not there is a typed error naming `dataset_name`.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pytest
import yaml
from _builders import lay_out_hub_cache, tiny_lm_phase
from datasets import Dataset, DatasetDict

from lewm_hf.errors import LeWMConfigError
from lewm_hf.tasks.runner import run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, LENGTH = 20, 12

TINY_LM = tiny_lm_phase(per_device_eval_batch_size=32, eval_steps=2, warmup_steps=0)


def counting_rows(n: int, seed: int) -> list[list[int]]:
    """Rows where each token is the previous one + 1 (mod VOCAB), from a random start."""
    starts = np.random.default_rng(seed).integers(0, VOCAB, size=n)
    return ((starts[:, None] + np.arange(LENGTH)) % VOCAB).tolist()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The corpus on disk: `saved/` (save_to_disk), `train.parquet`, `test.parquet`."""
    root = tmp_path_factory.mktemp("lm_corpus")
    splits = DatasetDict(
        {
            "train": Dataset.from_dict({"input_ids": counting_rows(64, 0)}),
            "test": Dataset.from_dict({"input_ids": counting_rows(16, 1)}),
        }
    )
    splits.save_to_disk(str(root / "saved"))
    for name, split in splits.items():
        split.to_parquet(str(root / f"{name}.parquet"))
    return root


def write(folder: Path, phase: dict, **top) -> Path:
    recipe = {
        "output_dir": str(folder / "run"),
        "seed": 0,
        "disable_tqdm": True,
        "report_to": "none",
        **top,
        "phases": [phase],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_lm_phase_from_save_to_disk_and_parquet(tmp_path, corpus):
    runs = {
        "saved": {"dataset_name": str(corpus / "saved")},
        "files": {
            "dataset_name": "parquet",
            "data_files": {
                "train": str(corpus / "train.parquet"),
                "test": str(corpus / "test.parquet"),
            },
        },
        "one_file": {
            "dataset_name": str(corpus / "train.parquet"),
            "dataset_test_split": None,
            "eval_strategy": "no",
        },
    }
    summaries = {}
    for name, keys in runs.items():
        summary = run_recipe(write(tmp_path / name, {**TINY_LM, **keys}))
        summaries[name] = phase = summary["phases"]["encoder"]
        out = Path(phase["output_dir"])
        assert json.loads((out / "config.json").read_text())["vocab_size"] == VOCAB
        assert phase["train_windows"] == 64 and phase["global_step"] == 4
        assert "gate_passed" not in phase
    # The same rows from a folder and from files: the same run.
    assert summaries["saved"]["final_eval_loss"] == summaries["files"]["final_eval_loss"]
    assert summaries["one_file"]["final_eval_loss"] is None


def test_lm_phase_on_a_text_column_with_a_tokenizer_on_disk(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(VOCAB - 1)]
    vocab = {w: i for i, w in enumerate(words)} | {"<eos>": VOCAB - 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")
    tokenizer.save_pretrained(tmp_path / "tok")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=rng.integers(3, 9))) for _ in range(80)]
    DatasetDict(
        {
            "train": Dataset.from_dict({"text": texts[:64]}),
            "test": Dataset.from_dict({"text": texts[64:]}),
        }
    ).save_to_disk(str(tmp_path / "texts"))
    phase = {
        **TINY_LM,
        "dataset_name": str(tmp_path / "texts"),
        "dataset_text_field": "text",
        "tokenizer_name": str(tmp_path / "tok"),
        "max_length": 8,
    }
    summary = run_recipe(write(tmp_path / "run", phase))
    out = Path(summary["phases"]["encoder"]["output_dir"])
    assert (out / "tokenizer.json").is_file()  # saved beside the model
    assert json.loads((out / "config.json").read_text())["vocab_size"] == VOCAB
    assert json.loads((out / "result.json").read_text())["row_length"] == 8


def _dataset(tmp_path: Path, train, test=None, column="input_ids") -> str:
    splits = {"train": Dataset.from_dict({column: train})}
    if test is not None:
        splits["test"] = Dataset.from_dict({column: test})
    DatasetDict(splits).save_to_disk(str(tmp_path / "bad"))
    return str(tmp_path / "bad")


def _empty_test_split(tmp_path: Path) -> dict:
    """Parquet files of which the test split has no row (`save_to_disk` cannot load one)."""
    rows = Dataset.from_dict({"input_ids": ROWS})
    rows.to_parquet(str(tmp_path / "train.parquet"))
    rows.select([]).to_parquet(str(tmp_path / "test.parquet"))
    files = {"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")}
    return {"dataset_name": "parquet", "data_files": files}


ROWS = [[1, 2, 3, 4]] * 8
# id -> (dataset builder or None for the module corpus, phase keys, field, words in the message)
BAD = {
    "missing-dataset": (None, {"dataset_name": "/nonexistent/folder"}, "dataset_name", "cannot"),
    "missing-column": (
        lambda t: _dataset(t, ROWS, ROWS, column="tokens"),
        {},
        "input_ids",
        "has columns",
    ),
    "ragged-rows": (
        lambda t: _dataset(t, [[1, 2, 3], [1, 2]] * 4, ROWS),
        {},
        "train[1].input_ids",
        "max_length",
    ),
    "id-past-vocab": (
        lambda t: _dataset(t, ROWS, [[1, 2, 3, 9]] * 4),
        {"vocab_size": 8},
        "test[0].input_ids",
        "[0, 8)",
    ),
    "negative-id": (
        lambda t: _dataset(t, [[1, -2, 3, 4]] * 4, ROWS),
        {},
        "train[0].input_ids",
        "token ids in",
    ),
    "float-ids": (
        lambda t: _dataset(t, [[1.5, 2.0, 3.0, 4.0]] * 4, ROWS),
        {},
        "train[0].input_ids",
        "integer",
    ),
    "empty-split": (_empty_test_split, {}, "data_files", "empty"),
    "missing-split": (lambda t: _dataset(t, ROWS), {}, "dataset_test_split", "no such split"),
    "gate-key": (None, {"gate_rule_threshold": 0.5}, "gate_rule_threshold", "early_stopping"),
    "corpus-key": (None, {"corpus_preset": "small"}, "corpus_preset", "walk-corpus key"),
    "split-without-dataset": (
        None,
        {"dataset_name": None, "dataset_train_split": "x"},
        "dataset_train_split",
        "dataset_name",
    ),
    "text-without-tokenizer": (None, {"dataset_text_field": "text"}, "dataset_text_field", "tok"),
    "tokenizer-not-on-disk": (
        None,
        {"dataset_text_field": "text", "tokenizer_name": "/nonexistent/tok"},
        "tokenizer_name",
        "offline",
    ),
    "patience-without-eval": (
        None,
        {"early_stopping_patience": 2, "eval_strategy": "no"},
        "early_stopping_patience",
        "eval_strategy",
    ),
    "threshold-without-patience": (
        None,
        {"early_stopping_threshold": 0.1},
        "early_stopping_threshold",
        "patience",
    ),
    "no-test-split-but-eval": (
        None,
        {"dataset_test_split": None},
        "eval_strategy",
        "dataset_test_split",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_dataset_sources_are_typed_errors(tmp_path, corpus, case):
    build, keys, field, words = BAD[case]
    source = build(tmp_path) if build else str(corpus / "saved")
    phase = {**TINY_LM, **(source if isinstance(source, dict) else {"dataset_name": source})}
    phase.update(keys)
    with pytest.raises(LeWMConfigError) as info:
        run_recipe(write(tmp_path / "r", phase))
    assert info.value.field.endswith(field), str(info.value)
    assert words in str(info.value), str(info.value)


def test_early_stopping_stops_where_the_control_predicts(tmp_path):
    # Tokens drawn independently: the held-out loss stops improving once the LM has learned
    # the unigram distribution.
    rng = np.random.default_rng(0)
    DatasetDict(
        {
            "train": Dataset.from_dict({"input_ids": rng.integers(0, VOCAB, (256, LENGTH))}),
            "test": Dataset.from_dict({"input_ids": rng.integers(0, VOCAB, (32, LENGTH))}),
        }
    ).save_to_disk(str(tmp_path / "iid"))
    phase = {
        **TINY_LM,
        "dataset_name": str(tmp_path / "iid"),
        "max_steps": 60,
        "learning_rate": 3e-2,
        "lr_scheduler_type": "constant",
    }
    patience = 2
    control = run_recipe(write(tmp_path / "control", phase))["phases"]["encoder"]
    stopped = run_recipe(
        write(tmp_path / "stopped", {**phase, "early_stopping_patience": patience})
    )["phases"]["encoder"]
    assert control["global_step"] == 60 and not control["stopped_early"]
    # Where the control's evaluations say it should stop: the first evaluation that is the
    # `patience`-th in a row not better than the best before it.
    history = json.loads((Path(control["output_dir"]) / "result.json").read_text())
    evals = history["curves"]["eval_loss"]
    best, misses, expected = None, 0, None
    for step, loss in zip(evals["step"], evals["value"]):
        if best is None or loss < best:
            best, misses = loss, 0
        else:
            misses += 1
        if misses >= patience:
            expected = step
            break
    assert expected is not None and expected < 60, evals
    assert stopped["stopped_early"] and stopped["global_step"] == expected


def test_early_stopping_works_beside_the_gate_on_walks(tmp_path, cache_dir):
    # The walk source keeps its gate (here out of reach) and may stop on eval_loss as well.
    from _builders import write_walk_recipe

    phase = {
        **TINY_LM,
        "max_steps": 40,
        "learning_rate": 3e-2,
        "lr_scheduler_type": "constant",
        "gate_num_sequences": 8,
        "gate_batch_size": 8,
        "gate_log_other_decoding": False,
        "gate_edge_threshold": 1.0,  # never passes: only early stopping can end the run early
    }
    control = run_recipe(write_walk_recipe(tmp_path / "c", cache_dir, [phase]))
    stopped = run_recipe(
        write_walk_recipe(tmp_path / "s", cache_dir, [{**phase, "early_stopping_patience": 1}])
    )
    assert control["phases"]["encoder"]["global_step"] == 40
    assert not stopped["phases"]["encoder"]["gate_passed"]
    assert stopped["phases"]["encoder"]["global_step"] < 40


@pytest.fixture
def offline_hub_cache(tmp_path, monkeypatch) -> Path:
    """The Hub cache `huggingface_hub` and `datasets` read, with the network off: offline mode
    (`HF_HUB_OFFLINE=1`, as each library reads it) and any socket connection refused."""
    cache = tmp_path / "hub_cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")

    def refuse(self, address):
        raise OSError(f"the network is off in this test (connect to {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return cache


def test_lm_phase_from_a_hub_id_offline(tmp_path, corpus, offline_hub_cache):
    # The corpus as a Hub dataset repository: data/<split>-00000-of-00001.parquet.
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    for split in ("train", "test"):
        (repo / "data" / f"{split}-00000-of-00001.parquet").write_bytes(
            (corpus / f"{split}.parquet").read_bytes()
        )
    lay_out_hub_cache(offline_hub_cache, "dataset", "me/counting", repo)

    hub = run_recipe(write(tmp_path / "hub", {**TINY_LM, "dataset_name": "me/counting"}))
    phase = hub["phases"]["encoder"]
    assert phase["train_windows"] == 64 and phase["global_step"] == 4
    # The same rows as from the save_to_disk folder: the same run.
    saved = run_recipe(
        write(tmp_path / "saved", {**TINY_LM, "dataset_name": str(corpus / "saved")})
    )
    assert phase["final_eval_loss"] == saved["phases"]["encoder"]["final_eval_loss"]

    # Control: an id that is in no cache is a typed error naming the field, not a network call.
    with pytest.raises(LeWMConfigError) as info:
        run_recipe(write(tmp_path / "missing", {**TINY_LM, "dataset_name": "me/no-such-corpus"}))
    assert info.value.field.endswith("dataset_name") and info.value.value == "me/no-such-corpus"
    assert "Hub cache" in info.value.reason, str(info.value)
