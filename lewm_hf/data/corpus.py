"""Fingerprinted, atomically written corpus cache shared by every corpus builder.

A corpus is built into a temporary folder next to its final place and renamed only once it is
complete, with a `COMPLETE` marker written last. A build that is killed part-way leaves only a
temporary folder, which is never loaded (and is removed by a later build once its process is
gone), so a half-written corpus can never be picked up as a valid cache.

The cache key is a fingerprint of the builder's name, every field of its config, and
`CORPUS_FORMAT_VERSION`; any config change gives a new cache folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import DatasetDict, load_from_disk
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
