"""Fingerprinted, atomically written corpus cache shared by every corpus builder.

A corpus is built into a temporary folder next to its final place and renamed only once it is
complete, with a `COMPLETE` marker written last. A build that is killed part-way leaves only a
temporary folder, which is never loaded (and is removed by a later build once its process is
gone), so a half-written corpus can never be picked up as a valid cache.

The cache key is a fingerprint of the builder's name, every field of its config, and
`CORPUS_FORMAT_VERSION`; any config change gives a new cache folder.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasets import DatasetDict, DatasetInfo, Features, load_from_disk
from datasets import config as datasets_config
from datasets.arrow_writer import ArrowWriter
from datasets.utils import logging as datasets_logging

from .. import metric_keys as K
from ..errors import LeWMConfigError

CORPUS_FORMAT_VERSION = 2
COMPLETE_MARKER = "COMPLETE"
DATA_SUBDIR = "data"


def default_cache_dir() -> Path:
    """The corpus cache root: `$LEWM_HF_CACHE`, else `~/.cache/lewm_hf/corpora`."""
    env = os.environ.get("LEWM_HF_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lewm_hf" / "corpora"


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-serialisable dict of a (possibly nested) config dataclass."""
    if dataclasses.is_dataclass(config):
        return json.loads(json.dumps(dataclasses.asdict(config), default=list))
    if isinstance(config, dict):
        return json.loads(json.dumps(config, default=list))
    raise LeWMConfigError("config", type(config).__name__, "must be a dataclass or a dict")


def config_fingerprint(kind: str, config: Any) -> str:
    """A stable hash of the builder name, every config field and the corpus format version.

    Args:
        kind (`str`): The builder's name, e.g. `"walks"`.
        config (`Any`): The config dataclass (or dict).

    Returns:
        `str`: 16 hex digits.
    """
    payload = {"kind": kind, "format": CORPUS_FORMAT_VERSION, "config": config_to_dict(config)}
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(root: Path, prefix: str) -> None:
    for tmp in root.glob(f".tmp-{prefix}-*"):
        try:
            pid = int(tmp.name.split("-")[-2])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def cached_build(
    kind: str,
    config: Any,
    build: Callable[[Path], None],
    cache_dir: str | Path | None = None,
) -> Path:
    """Return the folder of a complete cached corpus, building it first if needed.

    Args:
        kind (`str`): The builder's name; part of the folder name and of the fingerprint.
        config (`Any`): The builder's config dataclass.
        build (`Callable[[Path], None]`): Writes the corpus into the folder it is given (the
            `datasets` data under `folder / "data"` plus any metadata files).
        cache_dir (`str` or `Path`, *optional*): The cache root; `default_cache_dir()` if None.

    Returns:
        `Path`: The complete corpus folder.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    key = config_fingerprint(kind, config)
    final = root / f"{kind}-{key}"
    if (final / COMPLETE_MARKER).is_file():
        return final
    if final.exists():  # not complete: never trust it
        shutil.rmtree(final, ignore_errors=True)
    _remove_stale_temporaries(root, f"{kind}-{key}")
    tmp = root / f".tmp-{kind}-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    bars = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()  # one quiet "Saving the dataset" bar per split
    try:
        build(tmp)
        meta = {
            "kind": kind,
            "fingerprint": key,
            "format": CORPUS_FORMAT_VERSION,
            "config": config_to_dict(config),
        }
        (tmp / K.CORPUS_META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        (tmp / COMPLETE_MARKER).write_text(key)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / COMPLETE_MARKER).is_file():  # lost a race to a complete copy? fine
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bars:
            datasets_logging.enable_progress_bar()
    return final


def write_split_tables(folder: str | Path, splits: dict[str, Iterable[pa.Table]]) -> None:
    """Write a `DatasetDict` folder (what `load_from_disk` reads) chunk by chunk.

    Each split's tables are appended to its one Arrow file as they come, so a corpus is never
    held whole in memory (`Dataset.save_to_disk` needs the whole dataset first); the rows and
    the column types are those of the tables, in order, exactly as `save_to_disk` of their
    concatenation would store them.

    Args:
        folder (`str` or `Path`): The `DatasetDict` folder (e.g. `corpus / DATA_SUBDIR`).
        splits (`dict[str, Iterable[pa.Table]]`): Per split, its rows as tables of one schema
            (a generator, so that only one chunk exists at a time).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, tables in splits.items():
        split_dir = folder / split
        split_dir.mkdir()
        shard = "data-00000-of-00001.arrow"
        writer: ArrowWriter | None = None
        digest = hashlib.sha256(split.encode())
        try:
            for table in tables:
                if writer is None:
                    writer = ArrowWriter(schema=table.schema, path=str(split_dir / shard))
                writer.write_table(table)
                digest.update(str(table.num_rows).encode())
            if writer is None:
                raise LeWMConfigError("splits", split, "has no table to write")
            writer.finalize()
        except BaseException:
            if writer is not None:
                writer.close()
            raise
        features = Features.from_arrow_schema(writer.schema)
        state = {
            "_data_files": [{"filename": shard}],
            "_fingerprint": digest.hexdigest()[:16],
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        (split_dir / datasets_config.DATASET_STATE_JSON_FILENAME).write_text(
            json.dumps(state, indent=2, sort_keys=True)
        )
        info = asdict(DatasetInfo(features=features))
        (split_dir / datasets_config.DATASET_INFO_FILENAME).write_text(
            json.dumps({key: info[key] for key in sorted(info)}, indent=2)
        )
    (folder / datasets_config.DATASETDICT_JSON_FILENAME).write_text(
        json.dumps({"splits": list(splits)})
    )


def load_corpus(folder: str | Path) -> DatasetDict:
    """Load a complete corpus folder's `datasets` data (memory-mapped Arrow)."""
    return load_from_disk(str(Path(folder) / DATA_SUBDIR))


def corpus_folder(corpus: DatasetDict) -> Path:
    """The cache folder a corpus `DatasetDict` was loaded from.

    Args:
        corpus (`DatasetDict`): A corpus returned by a builder of this package.

    Returns:
        `Path`: The corpus folder (holding `corpus.json` and the metadata files).
    """
    for split in corpus.values():
        for f in split.cache_files:
            folder = Path(f["filename"]).parents[2]  # folder / data / <split> / *.arrow
            if (folder / COMPLETE_MARKER).is_file():
                return folder
    raise LeWMConfigError("corpus", list(corpus.keys()), "was not loaded from a corpus cache")


# madvise(2) advice that drops a mapping's pages from the process (Linux).
_MADV_DONTNEED = 4


def release_mapped_pages(dataset: Any) -> int:
    """Hand back the resident pages of `dataset`'s memory-mapped Arrow files.

    A memory-mapped corpus costs nothing until it is read, but every page read stays in the
    process's resident memory (`RssFile`) for as long as the mapping lives: one pass over a
    whole-genome edit corpus (118 MB) left all of it resident. This drops those pages from the
    process (`madvise(MADV_DONTNEED)`); they stay in the page cache, and a later read maps them
    again. Only mappings the process cannot write are touched (a read-only mapping of a file
    holds no data of its own, so nothing is lost). A no-op where `/proc/self/maps` or
    `madvise` is missing, and for in-memory datasets.

    Args:
        dataset (`datasets.Dataset`): Any dataset (its `cache_files` are looked up).

    Returns:
        `int`: Bytes of the mappings advised (their whole length, resident or not).
    """
    files = {os.path.realpath(f["filename"]) for f in getattr(dataset, "cache_files", None) or []}
    madvise = _madvise()
    if not files or madvise is None or not os.path.exists("/proc/self/maps"):
        return 0
    released = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or "w" in fields[1] or fields[5].rstrip("\n") not in files:
                continue
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if madvise(ctypes.c_void_p(low), ctypes.c_size_t(high - low), _MADV_DONTNEED) == 0:
                released += high - low
    return released


@functools.cache
def _madvise() -> Any:
    try:
        madvise = ctypes.CDLL("libc.so.6", use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise
