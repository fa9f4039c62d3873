"""The trajectory dataset format: any `datasets` dataset whose rows are trajectories.

A row holds one trajectory of `K + 1` states and `K` actions (`K >= 1`, may differ between
rows); the format is described in full in `docs/trajectories.md`:

- `input_ids`: `K + 1` states, each a window of `L` token ids in `[0, vocab_size)` (`L` fixed
  for the dataset);
- discrete actions: `actions`, `K` ids in `[0, num_actions)`; or edit actions (the columns the
  edit corpus writes): `edit_ops` (`K` ops in `[0, num_actions)`), `edit_positions` (`K`
  positions in `[0, L]`), `edit_tokens` (`K` lists of token ids) and `locus` (`K + 1` window
  positions);
- `action_mask` (optional): `K` values, 1 for a real action and 0 for trailing padding.

The metadata ([`TrajectoryInfo`]: vocabulary size, number of actions, window length) is the
file `lewm_dataset.json` at the dataset's root, or JSON in the splits' `info.description`.

A dataset is read with [`load_trajectories`] (a Hub id, a local folder of data files, a
`save_to_disk` folder, or `data_files` of a packaged builder such as `parquet`), checked in one
place ([`validate_trajectories`], on Arrow buffers, never row by row), and written with
[`write_trajectories`] (parquet under `data/`, the metadata file and a dataset card). The
library's own corpora are one case of the format: [`export_trajectories`] writes the move clips
of `lewm_hf.data.walks` and the edit corpus of `lewm_hf.data.edits` in it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from .. import metric_keys as K
from ..errors import LeWMConfigError, LeWMDatasetError
from ..fields import ActionType, option, validate_fields
from .dna import DNA_VOCAB, DNA_VOCAB_SIZE
from .edits.ops import EditOp
from .hub_datasets import hub_dataset_snapshot
from .walks import load_walk_metadata

TRAJECTORY_FORMAT = "lewm-trajectories"
TRAJECTORY_FORMAT_VERSION = 1
# Packaged `datasets` builders that read `data_files` (`load_dataset("parquet", data_files=...)`).
FILE_BUILDERS = ("parquet", "json", "arrow")
# The columns of each action type (besides `input_ids` and the optional `action_mask`).
ACTION_COLUMNS: dict[str, tuple[str, ...]] = {
    "discrete": ("actions",),
    "edit": ("edit_ops", "edit_positions", "edit_tokens", "locus"),
}
STATE_COLUMN = "input_ids"
ACTION_MASK_COLUMN = "action_mask"
# Where `write_trajectories` puts the parquet files of a split (the Hub's layout).
DATA_DIR = "data"


@dataclass
class TrajectoryInfo:
    """The metadata of a trajectory dataset (`lewm_dataset.json`).

    Args:
        vocab_size (`int`): State tokens are ids in `[0, vocab_size)`.
        num_actions (`int`): Discrete action ids (edit operations) lie in `[0, num_actions)`.
        window_length (`int`): Tokens per state (`L`).
        action_type (`str`, defaults to `"discrete"`): `discrete` (an `actions` column) or
            `edit` (the edit corpus's columns).
        action_names (`list[str]`, *optional*): A name per action id.
        token_names (`list[str]`, *optional*): A name per token id.
        environment (`str`, *optional*): Where the trajectories come from, in a few words.
    """

    vocab_size: int = option(help="State tokens are ids in [0, vocab_size).", low=1)
    num_actions: int = option(help="Action ids lie in [0, num_actions).", low=1)
    window_length: int = option(help="Tokens per state (L).", low=1)
    action_type: ActionType = option("discrete", help="discrete or edit.")
    action_names: list[str] | None = option(None, help="A name per action id.")
    token_names: list[str] | None = option(None, help="A name per token id.")
    environment: str | None = option(None, help="Where the trajectories come from.")

    def __post_init__(self) -> None:
        validate_fields(self)
        for name, size in (("action_names", self.num_actions), ("token_names", self.vocab_size)):
            names = getattr(self, name)
            if names is not None and len(names) != size:
                raise LeWMConfigError(name, len(names), f"must hold {size} names")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of `lewm_dataset.json` (format name and version first)."""
        out = {"format": TRAJECTORY_FORMAT, "version": TRAJECTORY_FORMAT_VERSION}
        out.update({k: v for k, v in asdict(self).items() if v is not None})
        return out

    def to_json(self) -> str:
        """`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], source: str = K.TRAJECTORY_INFO_FILE
    ) -> TrajectoryInfo:
        """Read the metadata object.

        Raises:
            `LeWMConfigError`: naming the field (and `source`) for another format, a newer
                version, a missing or unknown field or a bad value.
        """
        if not isinstance(data, dict):
            raise LeWMConfigError("lewm_dataset", type(data).__name__, "must be an object", source)
        data = dict(data)
        fmt = data.pop("format", TRAJECTORY_FORMAT)
        if fmt != TRAJECTORY_FORMAT:
            raise LeWMConfigError("format", fmt, f"must be {TRAJECTORY_FORMAT!r}", source)
        version = data.pop("version", TRAJECTORY_FORMAT_VERSION)
        if not isinstance(version, int) or not 1 <= version <= TRAJECTORY_FORMAT_VERSION:
            raise LeWMConfigError(
                "version", version, f"this library reads versions 1..{TRAJECTORY_FORMAT_VERSION}"
            )
        known = set(cls.__dataclass_fields__)
        for key in data:
            if key not in known:
                raise LeWMConfigError(key, data[key], f"unknown field (known: {sorted(known)})")
        for key in ("vocab_size", "num_actions", "window_length"):
            if key not in data:
                raise LeWMConfigError(key, None, "is required", source)
        try:
            return cls(**data)
        except LeWMConfigError as err:
            raise LeWMConfigError(err.field, err.value, err.reason, source) from err

    @classmethod
    def from_json(cls, text: str, source: str = K.TRAJECTORY_INFO_FILE) -> TrajectoryInfo:
        """Read `lewm_dataset.json`'s text (see `from_dict`)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise LeWMConfigError("lewm_dataset", text[:80], f"is not JSON: {err}", source) from err
        return cls.from_dict(data, source)


# ----------------------------------------------------------------------------------------------
# Validation (vectorised over Arrow buffers)


class _Column:
    """One integer column of nested lists, flattened level by level.

    `lengths[d]` are the list lengths of the items at depth `d` (depth 0: the rows) and `values`
    the leaf integers (an Arrow array, never copied unless a check fails). Where an item or a
    leaf sits (its row) is computed only for the first bad one, from the offsets.
    """

    def __init__(self, table: pa.Table, name: str, depth: int, split: str | None):
        self.name = name
        self.split = split
        self.lengths: list[np.ndarray] = []
        array = table.column(name).combine_chunks()
        shape = "a list of " * depth + "integers"
        for level in range(depth + 1):
            if level < depth and not (
                pa.types.is_list(array.type)
                or pa.types.is_large_list(array.type)
                or pa.types.is_fixed_size_list(array.type)
            ):
                raise LeWMDatasetError(name, None, str(array.type), shape, split)
            if level == depth and not pa.types.is_integer(array.type):
                raise LeWMDatasetError(name, None, str(array.type), shape, split)
            if array.null_count:
                first = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
                raise LeWMDatasetError(
                    name, self.row_of(level, first), None, shape + ", no nulls", split
                )
            if level < depth:
                lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
                self.lengths.append(lengths.astype(np.int64))
                array = array.flatten()
        self.values = array

    def row_of(self, depth: int, index: int) -> int:
        """The row of item `index` of depth `depth` (depth 0: the rows themselves)."""
        for level in range(depth - 1, -1, -1):
            offsets = np.cumsum(self.lengths[level])
            index = int(np.searchsorted(offsets, index, side="right"))
        return index

    def value_rows(self) -> np.ndarray:
        """The row of every leaf value (for small columns: one entry per value)."""
        rows = np.arange(len(self.lengths[0]))
        for lengths in self.lengths:
            rows = np.repeat(rows, lengths)
        return rows

    def check_range(self, low: int, high: int, what: str) -> None:
        """Every leaf value in `[low, high)`, else an error at the first row breaking it."""
        if len(self.values) == 0:
            return
        bounds = pc.min_max(self.values)
        if bounds["min"].as_py() >= low and bounds["max"].as_py() < high:
            return
        values = self.values.to_numpy(zero_copy_only=False)
        i = int(np.flatnonzero((values < low) | (values >= high))[0])
        raise LeWMDatasetError(
            self.name,
            self.row_of(len(self.lengths), i),
            int(values[i]),
            f"{what} in [{low}, {high})",
            self.split,
        )

    def check_lengths(self, depth: int, expected: np.ndarray | int, what: str) -> None:
        """The list lengths at `depth` equal `expected` (per item), else an error."""
        bad = self.lengths[depth] != expected
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            want = expected if np.isscalar(expected) else int(np.asarray(expected)[i])
            raise LeWMDatasetError(
                self.name,
                self.row_of(depth, i),
                f"length {int(self.lengths[depth][i])}",
                f"{what} ({want})",
                self.split,
            )


def _arrow_table(dataset: Dataset) -> pa.Table:
    """The dataset's rows as one Arrow table (indices mappings applied)."""
    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    return dataset.data.table


def validate_trajectories(dataset: Dataset, info: TrajectoryInfo, split: str | None = None) -> None:
    """Check a split against the trajectory format; the one place every check lives.

    Every check runs on the Arrow buffers of a whole column at once (no loop over rows).

    Args:
        dataset (`Dataset`): The split.
        info (`TrajectoryInfo`): The dataset's metadata.
        split (`str`, *optional*): Its name (given in errors).

    Raises:
        `LeWMDatasetError`: naming the column, the first offending row and what was expected: an
            empty split, a missing column, a column of another type or with nulls, fewer than 2
            states, `K + 1` states against another number of actions, a state of another length
            than `window_length`, a token id outside `[0, vocab_size)`, an action id outside
            `[0, num_actions)`, an `action_mask` of another length, with values other than 0 / 1,
            with padding before a real action or without a real action, and for edit actions an
            edit list, position or locus out of place.
    """
    if len(dataset) == 0:
        raise LeWMDatasetError("rows", None, 0, "at least one trajectory", split)
    table = _arrow_table(dataset)
    required = (STATE_COLUMN, *ACTION_COLUMNS[info.action_type])
    for name in required:
        if name not in table.column_names:
            raise LeWMDatasetError(
                name,
                None,
                "missing",
                f"a column {name!r} for {info.action_type} actions (columns: {table.column_names})",
                split,
            )
    states = _Column(table, STATE_COLUMN, 2, split)
    num_states = states.lengths[0]
    short = num_states < 2
    if short.any():
        row = int(np.flatnonzero(short)[0])
        raise LeWMDatasetError(
            STATE_COLUMN, row, f"{int(num_states[row])} states", "K + 1 >= 2 states", split
        )
    steps = num_states - 1
    states.check_lengths(1, info.window_length, "states of window_length tokens")
    states.check_range(0, info.vocab_size, "token ids")

    if info.action_type == "discrete":
        actions = _Column(table, "actions", 1, split)
        actions.check_lengths(0, steps, "K actions for K + 1 states")
        actions.check_range(0, info.num_actions, "action ids")
    else:
        ops = _Column(table, "edit_ops", 1, split)
        ops.check_lengths(0, steps, "K edits for K + 1 states")
        ops.check_range(0, info.num_actions, "edit operations")
        positions = _Column(table, "edit_positions", 1, split)
        positions.check_lengths(0, steps, "K edit positions for K + 1 states")
        positions.check_range(0, info.window_length + 1, "edit positions")
        tokens = _Column(table, "edit_tokens", 2, split)
        tokens.check_lengths(0, steps, "K edit token lists for K + 1 states")
        tokens.check_range(0, info.vocab_size, "edit token ids")
        locus = _Column(table, "locus", 1, split)
        locus.check_lengths(0, num_states, "a locus per state")
        locus.check_range(0, info.window_length, "loci")

    if ACTION_MASK_COLUMN in table.column_names:
        mask = _Column(table, ACTION_MASK_COLUMN, 1, split)
        mask.check_lengths(0, steps, "a mask value per action")
        mask.check_range(0, 2, "mask values")
        # Trailing padding only: within a row, a value is never above the one before it, and
        # the first action is real.
        values = mask.values.to_numpy(zero_copy_only=False)
        rows = mask.value_rows()
        first = np.concatenate([[0], np.cumsum(mask.lengths[0])[:-1]])
        head = values[first]
        if (head != 1).any():
            row = int(np.flatnonzero(head != 1)[0])
            raise LeWMDatasetError(
                ACTION_MASK_COLUMN, row, 0, "a first action that is real (1)", split
            )
        rises = np.flatnonzero(np.diff(values) > 0) + 1
        rises = rises[rows[rises] == rows[rises - 1]]
        if rises.size:
            raise LeWMDatasetError(
                ACTION_MASK_COLUMN,
                int(rows[rises[0]]),
                "1 after 0",
                "padding (0) only after the last real action",
                split,
            )


def real_steps(dataset: Dataset) -> np.ndarray:
    """The real actions of every row of a validated split: `K`, or the sum of its
    `action_mask` (read from the Arrow buffers).

    Returns:
        `np.ndarray`: `(num_rows,)` int64.
    """
    table = _arrow_table(dataset)
    if ACTION_MASK_COLUMN in table.column_names:
        mask = table.column(ACTION_MASK_COLUMN).combine_chunks()
        values = pc.list_flatten(mask).to_numpy(zero_copy_only=False).astype(np.int64)
        parents = pc.list_parent_indices(mask).to_numpy(zero_copy_only=False)
        return np.bincount(parents, weights=values, minlength=len(table)).astype(np.int64)
    column = "actions" if "actions" in table.column_names else "edit_ops"
    lengths = pc.list_value_length(table.column(column).combine_chunks())
    return lengths.to_numpy(zero_copy_only=False).astype(np.int64)


def _is_save_to_disk_folder(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _info_from_description(dataset: Dataset | DatasetDict) -> TrajectoryInfo | None:
    splits = dataset.values() if isinstance(dataset, DatasetDict) else [dataset]
    for split in splits:
        text = (split.info.description or "").strip()
        if text.startswith("{"):
            return TrajectoryInfo.from_json(text, "info.description")
    return None


def _read_info(
    roots: list[Path], dataset: Dataset | DatasetDict, dataset_name: str
) -> TrajectoryInfo:
    for root in roots:
        path = root / K.TRAJECTORY_INFO_FILE
        if path.is_file():
            return TrajectoryInfo.from_json(path.read_text(), str(path))
    info = _info_from_description(dataset)
    if info is None:
        raise LeWMConfigError(
            "dataset_name",
            dataset_name,
            f"has no {K.TRAJECTORY_INFO_FILE} (looked in {[str(r) for r in roots]}) and no "
            "metadata in its info.description: write one with "
            '{"vocab_size": ..., "num_actions": ..., "window_length": ...} '
            "(see docs/trajectories.md)",
        )
    return info


def load_trajectory_dataset(
    dataset_name: str,
    dataset_config: str | None = None,
    data_files: str | list | dict | None = None,
    revision: str | None = None,
) -> tuple[DatasetDict, TrajectoryInfo]:
    """Load every split of a trajectory dataset and its metadata (not yet validated).

    `dataset_name` is one of:

    - a folder written by `save_to_disk` (read with `load_from_disk`; `dataset_config` and
      `data_files` must then be None);
    - a packaged builder of `FILE_BUILDERS` (`parquet`, `json`, `arrow`) with
      `data_files` (`lewm_dataset.json` beside the first file, or one folder up);
    - a local folder of data files (`load_dataset(folder, name=dataset_config,
      data_files=...)`);
    - a Hub dataset id (`owner/name`): its snapshot is fetched with `snapshot_download` (the
      Hub cache serves it with `HF_HUB_OFFLINE=1`) and read as a local folder.

    Args:
        dataset_name (`str`): See above.
        dataset_config (`str`, *optional*): The dataset's config name.
        data_files (`str`, `list` or `dict`, *optional*): `load_dataset`'s `data_files`.
        revision (`str`, *optional*): The Hub revision.

    Returns:
        `tuple[DatasetDict, TrajectoryInfo]`: The splits and the metadata.

    Raises:
        `LeWMConfigError`: for a source that cannot be read or has no metadata, and for
            `dataset_config` / `data_files` that a `save_to_disk` folder would ignore.
    """
    path = Path(dataset_name).expanduser()
    if dataset_name in FILE_BUILDERS:
        if not data_files:
            raise LeWMConfigError(
                "data_files", data_files, f"dataset_name={dataset_name!r} reads data_files"
            )
        dataset = load_dataset(dataset_name, name=dataset_config, data_files=data_files)
        first = data_files
        while isinstance(first, (dict, list)):
            first = next(iter(first.values())) if isinstance(first, dict) else first[0]
        parent = Path(str(first)).expanduser().parent
        return dataset, _read_info([parent, parent.parent], dataset, dataset_name)
    if not path.exists() and not dataset_name.startswith((".", "/", "~")):
        path = hub_dataset_snapshot(dataset_name, revision)
    if not path.is_dir():
        raise LeWMConfigError("dataset_name", dataset_name, "folder or Hub dataset not found")
    if _is_save_to_disk_folder(path):
        for key, value in (("dataset_config", dataset_config), ("data_files", data_files)):
            if value is not None:
                raise LeWMConfigError(
                    key, value, f"{dataset_name} is a save_to_disk folder, read whole: set null"
                )
        dataset = load_from_disk(str(path))
        if isinstance(dataset, Dataset):
            dataset = DatasetDict({"train": dataset})
        return dataset, _read_info([path], dataset, dataset_name)
    try:
        # Rebuilt from the files every time: with the dataset card's `configs`, `datasets` keys
        # its cache by the folder's name and the relative file patterns only, so two folders
        # named alike (`.../a/data`, `.../b/data`), or a folder written again, would read
        # stale cached rows, or fail its split sizes against the stale ones (the rows are
        # checked by `validate_trajectories` instead).
        dataset = load_dataset(
            str(path),
            name=dataset_config,
            data_files=data_files,
            download_mode="force_redownload",
            verification_mode="no_checks",
        )
    except (ValueError, FileNotFoundError) as err:
        raise LeWMConfigError("dataset_name", dataset_name, f"cannot be loaded: {err}") from err
    return dataset, _read_info([path], dataset, dataset_name)


def select_split(dataset: DatasetDict, split: str, field: str, dataset_name: str) -> Dataset:
    """One split by name, or an error naming `field` (`dataset_train_split`, ...)."""
    if split not in dataset:
        raise LeWMConfigError(
            field, split, f"{dataset_name} has splits {sorted(dataset)}, not this one"
        )
    return dataset[split]


def load_trajectories(
    dataset_name: str,
    dataset_config: str | None = None,
    split: str = "train",
    data_files: str | list | dict | None = None,
) -> tuple[Dataset, TrajectoryInfo]:
    """One validated split of a trajectory dataset and its metadata.

    Args:
        dataset_name (`str`): A Hub id, a folder or a file builder (see
            [`load_trajectory_dataset`]).
        dataset_config (`str`, *optional*): The dataset's config name.
        split (`str`, defaults to `"train"`): The split.
        data_files (`str`, `list` or `dict`, *optional*): `load_dataset`'s `data_files`.

    Returns:
        `tuple[Dataset, TrajectoryInfo]`: The split and the metadata.
    """
    dataset, info = load_trajectory_dataset(dataset_name, dataset_config, data_files)
    rows = select_split(dataset, split, "split", dataset_name)
    validate_trajectories(rows, info, split)
    return rows, info


# ----------------------------------------------------------------------------------------------
# Writing


def nested_int_array(values: np.ndarray, counts: np.ndarray | None = None) -> pa.Array:
    """Rows of `(T, L)` integer windows as an Arrow `list<list<int32>>` column.

    Args:
        values (`np.ndarray`): `(N, T, L)` (or `(N, T)` for `list<int32>`).
        counts (`np.ndarray`, *optional*): `(N,)` items kept per row (`values[i, :counts[i]]`);
            all `T` if None.
    """
    values = np.asarray(values)
    num, width = values.shape[:2]
    counts = np.full(num, width) if counts is None else np.asarray(counts)
    keep = np.arange(width)[None, :] < counts[:, None]
    flat = np.ascontiguousarray(values[keep], dtype=np.int32)
    if flat.ndim == 1:
        inner: pa.Array = pa.array(flat)
    else:
        inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), inner)


def _as_dataset(rows: Dataset | pa.Table | dict[str, Any]) -> Dataset:
    if isinstance(rows, Dataset):
        return rows
    if isinstance(rows, pa.Table):
        return Dataset(rows)
    columns = {}
    for name, value in rows.items():
        if isinstance(value, np.ndarray) and value.ndim >= 2:
            columns[name] = nested_int_array(value)
        elif isinstance(value, np.ndarray):
            columns[name] = pa.array(value)
        else:
            columns[name] = value
    return Dataset(pa.table(columns))


def _dataset_card(info: TrajectoryInfo, splits: list[str]) -> str:
    configs = "\n".join(
        f"      - split: {s}\n        path: {DATA_DIR}/{s}-*.parquet" for s in splits
    )
    lines = [
        "---",
        "tags:",
        "  - lewm_hf",
        "  - world-model",
        "  - trajectories",
        "configs:",
        "  - config_name: default",
        "    data_files:",
        configs,
        "---",
        "",
        "# Trajectories",
        "",
        f"A trajectory dataset in the `{TRAJECTORY_FORMAT}` format (version "
        f"{TRAJECTORY_FORMAT_VERSION}) of `lewm_hf`: each row is one trajectory, `input_ids` "
        f"holding its `K + 1` states (windows of {info.window_length} token ids in "
        f"[0, {info.vocab_size})) and "
        + (
            f"`actions` its `K` actions (ids in [0, {info.num_actions}))."
            if info.action_type == "discrete"
            else "`edit_ops`, `edit_positions`, `edit_tokens` and `locus` its `K` edits."
        ),
        "",
        f"Metadata: `{K.TRAJECTORY_INFO_FILE}`."
        + (f" Source: {info.environment}." if info.environment else ""),
        "",
        "```python",
        "from lewm_hf.data.trajectories import load_trajectories",
        "",
        'rows, info = load_trajectories("<this repo or folder>", split="train")',
        "```",
        "",
    ]
    return "\n".join(lines)


def write_trajectories(
    rows: Dataset | pa.Table | dict[str, Any],
    info: TrajectoryInfo,
    folder: str | Path,
    split_name: str = "train",
) -> Path:
    """Validate one split and write it in the trajectory format.

    Writes `folder/data/<split_name>-00000-of-00001.parquet`, `folder/lewm_dataset.json` and a
    dataset card `folder/README.md` listing every split written so far, which is the layout
    of a Hub dataset repo: the folder loads with `load_trajectories(folder)` and uploads as is.

    Args:
        rows (`Dataset`, `pa.Table` or `dict`): The trajectories; a dict maps column names to
            `(N, K + 1, L)` / `(N, K)` integer arrays (every row `K` steps) or Python lists.
        info (`TrajectoryInfo`): The metadata; must equal the one already in `folder`.
        folder (`str` or `Path`): The dataset root.
        split_name (`str`, defaults to `"train"`): The split.

    Returns:
        `Path`: The parquet file written.

    Raises:
        `LeWMDatasetError`: when the rows break the format (see [`validate_trajectories`]).
        `LeWMConfigError`: when `folder` already holds other metadata.
    """
    folder = Path(folder)
    dataset = _as_dataset(rows)
    validate_trajectories(dataset, info, split_name)
    meta = folder / K.TRAJECTORY_INFO_FILE
    if meta.is_file() and TrajectoryInfo.from_json(meta.read_text(), str(meta)) != info:
        raise LeWMConfigError("info", info, f"differs from the metadata already in {meta}")
    data = folder / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    for old in data.glob(f"{split_name}-*.parquet"):
        old.unlink()
    path = data / f"{split_name}-00000-of-00001.parquet"
    dataset.to_parquet(str(path))
    meta.write_text(info.to_json())
    splits = sorted({p.name.split("-")[0] for p in data.glob("*.parquet")})
    (folder / "README.md").write_text(_dataset_card(info, splits))
    return path


def push_trajectories(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload trajectories",
    api: Any = None,
) -> str:
    """Upload a folder written by [`write_trajectories`] as a Hub dataset repo.

    The folder is already a Hub dataset's layout (`data/<split>-*.parquet`, `README.md` with
    its `configs`, `lewm_dataset.json`), so it is uploaded as it is; `load_trajectories(repo_id)`
    reads it back.

    Args:
        folder (`str` or `Path`): The dataset root.
        repo_id (`str`): The dataset repo (`owner/name`).
        private (`bool`, *optional*): Create the repo private.
        token (`str`, *optional*): Hub token.
        commit_message (`str`, defaults to `"Upload trajectories"`): The commit message.
        api (`HfApi`, *optional*): The client (a new `HfApi` if None).

    Returns:
        `str`: The repo id.

    Raises:
        `LeWMConfigError`: when `folder` holds no trajectory metadata.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    meta = folder / K.TRAJECTORY_INFO_FILE
    if not meta.is_file():
        raise LeWMConfigError("folder", str(folder), f"has no {K.TRAJECTORY_INFO_FILE}")
    TrajectoryInfo.from_json(meta.read_text(), str(meta))
    api = api if api is not None else HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True, token=token)
    api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=str(folder),
        commit_message=commit_message,
        token=token,
    )
    return repo_id


def export_trajectories(
    corpus: DatasetDict, folder: str | Path, splits: dict[str, str] | None = None
) -> TrajectoryInfo:
    """Write one of the library's corpora in the trajectory format.

    - Move clips (`lewm_hf.data.walks.build_move_trajectories`: `tokens`, `actions`): each clip's
      `w + H` span becomes its `H + 1` windows of `w` vertices, row for row in the corpus's
      order; `vocab_size` is the graph's vertex count, `num_actions` its largest out-degree.
    - The edit corpus (`lewm_hf.data.edits.build_edit_corpus`): its columns are the format's
      edit columns already (the bookkeeping `record` / `start` are left out).

    Args:
        corpus (`DatasetDict`): The corpus, as its builder returns it.
        folder (`str` or `Path`): The dataset root written.
        splits (`dict[str, str]`, *optional*): Corpus split -> exported split name (all splits
            under their own names if None).

    Returns:
        `TrajectoryInfo`: The metadata written.
    """
    splits = splits if splits is not None else {name: name for name in corpus}
    columns = set(next(iter(corpus.values())).column_names)
    if {"tokens", "actions"} <= columns:
        meta = load_walk_metadata(corpus)
        window = meta.config.context_window
        info = TrajectoryInfo(
            vocab_size=meta.graph.num_vertices,
            num_actions=meta.graph.max_out_degree,
            window_length=window,
            environment=f"random walks on a {meta.graph.num_vertices}-vertex graph "
            "(lewm_hf move clips; action = rank of the next vertex among the out-neighbours)",
        )
        for name, out in splits.items():
            table = _arrow_table(corpus[name])
            spans = np.asarray(table.column("tokens").combine_chunks().flatten())
            spans = spans.reshape(len(table), -1)  # (N, w + H)
            actions = np.asarray(table.column("actions").combine_chunks().flatten())
            windows = np.lib.stride_tricks.sliding_window_view(spans, window, axis=1)
            rows = pa.table(
                {
                    STATE_COLUMN: nested_int_array(windows),  # (N, H + 1, w)
                    "actions": nested_int_array(actions.reshape(len(table), -1)),
                }
            )
            write_trajectories(rows, info, folder, out)
        return info
    if set(ACTION_COLUMNS["edit"]) <= columns:
        first = _arrow_table(next(iter(corpus.values())))
        window = len(first.column(STATE_COLUMN)[0][0])
        info = TrajectoryInfo(
            vocab_size=DNA_VOCAB_SIZE,
            num_actions=len(EditOp),
            window_length=window,
            action_type="edit",
            action_names=[op.name for op in EditOp],
            token_names=list(DNA_VOCAB),
            environment="edits of genome windows (lewm_hf edit corpus)",
        )
        keep = [STATE_COLUMN, *ACTION_COLUMNS["edit"]]
        for name, out in splits.items():
            write_trajectories(_arrow_table(corpus[name]).select(keep), info, folder, out)
        return info
    raise LeWMConfigError(
        "corpus", sorted(columns), "is neither move clips (tokens, actions) nor an edit corpus"
    )


__all__ = [
    "ACTION_COLUMNS",
    "FILE_BUILDERS",
    "TRAJECTORY_FORMAT",
    "TRAJECTORY_FORMAT_VERSION",
    "TrajectoryInfo",
    "export_trajectories",
    "load_trajectories",
    "load_trajectory_dataset",
    "nested_int_array",
    "push_trajectories",
    "real_steps",
    "select_split",
    "validate_trajectories",
    "write_trajectories",
]
