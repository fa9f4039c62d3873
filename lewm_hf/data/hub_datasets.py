"""Flat LM corpora from the Hub or local files: `dataset_name` -> splits -> fixed-length LM rows.

`load_dataset_splits` reads a dataset the way TRL's scripts name one: `dataset_name` is a Hub
id (offline with `HF_HUB_OFFLINE=1`: from `datasets`' cache of an earlier load, else from the
repo's snapshot in the Hub cache, `hub_dataset_snapshot`), a folder written by
`save_to_disk` (`load_from_disk`), a data folder or a data file / glob (`.parquet`, `.jsonl`,
`.json`, `.arrow`, `.csv`), or a builder name (`parquet`, `json`, `arrow`, `csv`) with
`data_files`; `dataset_config` is the Hub configuration. `lm_rows` turns one split into the
encoder phase's rows: an `input_ids` column of token ids, or a text column tokenized with a
local tokenizer, packed into rows of `max_length` tokens when the rows differ in length.

Every problem is a `LeWMConfigError` naming the key (or the column and row) and what was
expected. This module needs only `datasets`, `transformers`' tokenizers and the foundation layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from ..errors import LeWMConfigError

# `load_dataset` builders for local data files, by file suffix.
FILE_BUILDERS = {
    ".parquet": "parquet",
    ".jsonl": "json",
    ".json": "json",
    ".arrow": "arrow",
    ".csv": "csv",
}
# Files `save_to_disk` writes at the top of its folder (a `DatasetDict`, a `Dataset`).
SAVED_MARKERS = ("dataset_dict.json", "state.json")
# The LM rows' column.
INPUT_IDS = "input_ids"


def _builder_for(path: str) -> str | None:
    suffix = Path(path.replace("*", "x")).suffix.lower()
    return FILE_BUILDERS.get(suffix)


def hub_dataset_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot of a Hub dataset repo (downloaded once; with `HF_HUB_OFFLINE=1` read
    from the Hub cache).

    Args:
        repo_id (`str`): The dataset's Hub id (`owner/name`).
        revision (`str`, *optional*): The Hub revision (the default branch if None).

    Returns:
        `Path`: The snapshot folder.

    Raises:
        `LeWMConfigError`: naming `dataset_name`, for a name that is no Hub id or a repo that
            cannot be fetched (offline: that is not in the Hub cache).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision))
    except HFValidationError as err:
        raise LeWMConfigError(
            "dataset_name", repo_id, "is no local folder, no file builder and no Hub id"
        ) from err
    except Exception as err:  # the Hub's errors: not found, offline without a cached copy, ...
        raise LeWMConfigError(
            "dataset_name",
            repo_id,
            "is no local folder and cannot be loaded from the Hub (with HF_HUB_OFFLINE=1, only "
            f"from the Hub cache): {type(err).__name__}: {err}",
        ) from err


def _hub_offline() -> bool:
    """Whether `huggingface_hub` or `datasets` is in offline mode (`HF_HUB_OFFLINE=1`)."""
    import datasets
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE or datasets.config.HF_HUB_OFFLINE)


def load_dataset_splits(
    dataset_name: str,
    dataset_config: str | None = None,
    data_files: str | list[str] | dict[str, Any] | None = None,
) -> DatasetDict:
    """Load every split of a dataset named as TRL's scripts name one.

    Args:
        dataset_name (`str`): A Hub id, a `save_to_disk` folder, a data folder, a data file or
            glob (`.parquet`, `.jsonl`, `.json`, `.arrow`, `.csv`), or a builder name
            (`parquet`, `json`, `arrow`, `csv`) together with `data_files`.
        dataset_config (`str`, *optional*): The dataset's configuration (`load_dataset`'s
            `name`).
        data_files (`str`, `list[str]` or `dict`, *optional*): Data files (per split in a dict).

    Returns:
        `DatasetDict`: Its splits (a single file or a bare `Dataset` becomes split `train`).

    Raises:
        `LeWMConfigError`: naming `dataset_name` (or `dataset_config`) when nothing loads.
    """
    path = Path(dataset_name)
    try:
        if path.is_dir() and any((path / m).is_file() for m in SAVED_MARKERS):
            if dataset_config is not None or data_files is not None:
                raise LeWMConfigError(
                    "dataset_config" if dataset_config is not None else "data_files",
                    dataset_config if dataset_config is not None else data_files,
                    f"{dataset_name} is a save_to_disk folder, which has no configurations "
                    "or data files: remove it",
                )
            loaded = load_from_disk(str(path))
        elif data_files is not None:
            loaded = load_dataset(dataset_name, dataset_config, data_files=data_files)
        elif path.is_file() or ("*" in dataset_name and _builder_for(dataset_name)):
            builder = _builder_for(dataset_name)
            if builder is None:
                raise LeWMConfigError(
                    "dataset_name",
                    dataset_name,
                    f"a data file must end in one of {sorted(FILE_BUILDERS)}",
                )
            loaded = load_dataset(builder, data_files=dataset_name)
        elif _hub_offline() and not path.exists():
            loaded = _load_offline(dataset_name, dataset_config)
        else:
            loaded = load_dataset(dataset_name, dataset_config)
    except LeWMConfigError:
        raise
    except Exception as err:  # datasets raises many types (FileNotFound, DatasetNotFound, ...)
        if "corresponds to no data" in str(err):  # a split whose files hold no row
            raise LeWMConfigError(
                "data_files" if data_files is not None else "dataset_name",
                data_files if data_files is not None else dataset_name,
                f"a split is empty (datasets: {err})",
            ) from err
        field = "dataset_config" if dataset_config and "config" in str(err).lower() else None
        raise LeWMConfigError(
            field or "dataset_name",
            dataset_config if field else dataset_name,
            f"cannot load the dataset: {type(err).__name__}: {err}",
        ) from err
    if isinstance(loaded, Dataset):
        loaded = DatasetDict({"train": loaded})
    if not isinstance(loaded, DatasetDict):
        raise LeWMConfigError(
            "dataset_name", dataset_name, f"loads a {type(loaded).__name__}, not a DatasetDict"
        )
    return loaded


def _load_offline(dataset_name: str, dataset_config: str | None) -> Any:
    """A Hub id offline: from `datasets`' own cache of an earlier `load_dataset`, else from the
    repo's snapshot in the Hub cache (which `datasets` does not read offline by itself)."""
    try:
        return load_dataset(dataset_name, dataset_config)
    except Exception as err:  # offline without a `datasets` cache entry: a ConnectionError
        if "/" not in dataset_name:
            raise
        try:
            snapshot = hub_dataset_snapshot(dataset_name)
        except LeWMConfigError as missing:
            raise LeWMConfigError(
                "dataset_name",
                dataset_name,
                f"is in neither the datasets cache ({type(err).__name__}: {err}) nor the Hub "
                f"cache ({missing.reason})",
            ) from err
    return load_dataset(str(snapshot), dataset_config)


def select_split(splits: DatasetDict, split: str, field: str) -> Dataset:
    """One split, which must exist and hold rows.

    Raises:
        `LeWMConfigError`: naming `field` (`dataset_train_split`, `dataset_test_split`) for a
            missing or empty split.
    """
    if split not in splits:
        raise LeWMConfigError(field, split, f"no such split; the dataset has {sorted(splits)}")
    dataset = splits[split]
    if len(dataset) == 0:
        raise LeWMConfigError(field, split, "the split is empty")
    return dataset


def _token_rows(dataset: Dataset, split: str) -> list[list[int]]:
    """The `input_ids` rows of a split as lists of ints, each checked."""
    rows = dataset[INPUT_IDS]
    out = []
    for index, row in enumerate(rows):
        values = np.asarray(row)
        if values.ndim != 1 or values.size == 0:
            raise LeWMConfigError(
                f"{split}[{index}].{INPUT_IDS}",
                f"shape {values.shape}",
                "a non-empty list of token ids",
            )
        if not np.issubdtype(values.dtype, np.integer):
            raise LeWMConfigError(
                f"{split}[{index}].{INPUT_IDS}", str(values.dtype), "integer token ids"
            )
        out.append(values.astype(np.int64).tolist())
    return out


def lm_rows(
    dataset: Dataset,
    split: str,
    text_field: str | None = None,
    tokenizer: Any = None,
    max_length: int | None = None,
) -> list[list[int]]:
    """The LM rows of one split: token-id lists of one length.

    With `text_field`, the column is tokenized by `tokenizer` (its EOS token, when it has one,
    closes each text); else the split's `input_ids` column is read. Rows of one length are kept
    as they are (cut to `max_length` when longer); rows of several lengths are packed: all rows
    concatenated and cut into rows of `max_length` tokens (the remainder is dropped), as a
    causal-LM corpus usually is.

    Args:
        dataset (`Dataset`): The split.
        split (`str`): Its name (named in errors).
        text_field (`str`, *optional*): A text column to tokenize.
        tokenizer (*optional*): The tokenizer of `text_field`.
        max_length (`int`, *optional*): The row length of packed rows.

    Returns:
        `list[list[int]]`: The rows.

    Raises:
        `LeWMConfigError`: for a missing column, a row that is no list of ints, rows of several
            lengths without `max_length`, or too few tokens for one row.
    """
    column = text_field or INPUT_IDS
    if column not in dataset.column_names:
        expected = "a text column" if text_field else "a column of token ids"
        raise LeWMConfigError(
            "dataset_text_field" if text_field else INPUT_IDS,
            column,
            f"{expected}; split {split!r} has columns {dataset.column_names}"
            + ("" if text_field else " (set dataset_text_field and tokenizer_name for text)"),
        )
    if text_field:
        texts = dataset[text_field]
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise LeWMConfigError(
                    f"{split}[{index}].{text_field}", type(text).__name__, "a string"
                )
        eos = getattr(tokenizer, "eos_token_id", None)
        encoded = tokenizer(list(texts), add_special_tokens=False)[INPUT_IDS]
        rows = [list(ids) + ([eos] if eos is not None else []) for ids in encoded]
        rows = [row for row in rows if row]
    else:
        rows = _token_rows(dataset, split)
    lengths = {len(row) for row in rows}
    if len(lengths) == 1 and (max_length is None or max_length >= next(iter(lengths))):
        return rows
    if max_length is None:
        first = next(i for i, row in enumerate(rows) if len(row) != len(rows[0]))
        raise LeWMConfigError(
            f"{split}[{first}].{column}",
            f"{len(rows[first])} tokens",
            f"rows of one length (row 0 has {len(rows[0])}), or set max_length to pack the "
            "rows into rows of max_length tokens",
        )
    flat = np.fromiter((t for row in rows for t in row), dtype=np.int64)
    count = flat.size // max_length
    if count == 0:
        raise LeWMConfigError(
            "max_length", max_length, f"split {split!r} has only {flat.size} tokens"
        )
    return flat[: count * max_length].reshape(count, max_length).tolist()


def check_token_range(rows: list[list[int]], vocab_size: int, split: str, source: str) -> None:
    """Every token id lies in `[0, vocab_size)`.

    Raises:
        `LeWMConfigError`: naming the first row with an id outside, the id and the vocabulary.
    """
    for index, row in enumerate(rows):
        low, high = min(row), max(row)
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise LeWMConfigError(
                f"{split}[{index}].{INPUT_IDS}",
                bad,
                f"token ids in [0, {vocab_size}) ({source})",
            )


__all__ = [
    "FILE_BUILDERS",
    "INPUT_IDS",
    "check_token_range",
    "hub_dataset_snapshot",
    "lm_rows",
    "load_dataset_splits",
    "select_split",
]
