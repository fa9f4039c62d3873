"""Checks of a saved model or a training checkpoint before anything is loaded from it.

A missing, truncated or corrupt weights file, a `config.json` of another model type or an
unreadable trainer state fails here with a typed error naming the file, instead of a traceback
from deep inside safetensors or the Trainer (or, for a wrong `model_type`, a silently
re-initialised model). Checking reads only the safetensors header (8 bytes of length, then a
JSON table of tensors and their byte ranges) and compares its byte count with the file size,
so it costs no tensor load.

Weights are read from safetensors; the Trainer reads its optimizer, scheduler and RNG states
with `torch.load(weights_only=True)` (transformers >= 5), and nothing in `lewm_hf` unpickles.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from . import metric_keys as K
from .errors import LeWMConfigError, LeWMInputError

logger = logging.getLogger(__name__)
# The Trainer's checkpoint folders: `checkpoint-<global step>`.
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")

# Element sizes of the safetensors dtypes, to check that each tensor's byte range fits its shape.
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def _read_json(path: Path, field: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LeWMInputError(field, str(path), f"unreadable JSON ({err})") from err


def check_safetensors(path: str | os.PathLike, field: str) -> dict[str, Any]:
    """Check a safetensors file's header and size without loading a tensor.

    Args:
        path (`str` or `PathLike`): The file.
        field (`str`): The input that named it (in the error).

    Returns:
        `dict[str, Any]`: The header (tensor name -> dtype, shape, data_offsets).

    Raises:
        `LeWMInputError`: naming the file, when it is missing, truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise LeWMInputError(field, str(path), "missing weights file")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise LeWMInputError(field, str(path), f"truncated safetensors file ({size} bytes)")
        header_len = int.from_bytes(prefix, "little")
        if header_len < 2 or 8 + header_len > size:
            raise LeWMInputError(
                field,
                str(path),
                f"truncated or corrupt safetensors file (header of {header_len} bytes, file of "
                f"{size})",
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LeWMInputError(field, str(path), f"corrupt safetensors header ({err})") from err
    if not isinstance(header, dict):
        raise LeWMInputError(field, str(path), "corrupt safetensors header (not a mapping)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(x) for x in entry["data_offsets"])
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            width = _DTYPE_BYTES.get(entry["dtype"])
        except (KeyError, TypeError, ValueError) as err:
            raise LeWMInputError(
                field, str(path), f"corrupt safetensors header entry {name!r}"
            ) from err
        if width is not None and stop - start != count * width:
            raise LeWMInputError(
                field, str(path), f"corrupt safetensors header: {name!r} has the wrong byte range"
            )
        end = max(end, stop)
    expected = 8 + header_len + end
    if size != expected:
        raise LeWMInputError(
            field,
            str(path),
            f"truncated or corrupt safetensors file ({size} bytes; its header needs {expected})",
        )
    return header


def check_model_dir(
    path: str | os.PathLike, field: str, model_type: str | None = None
) -> dict[str, Any]:
    """Check a saved model folder (`save_pretrained`): its config and its safetensors weights.

    Args:
        path (`str` or `PathLike`): The folder.
        field (`str`): The input that named it.
        model_type (`str`, *optional*): The `model_type` its `config.json` must have.

    Returns:
        `dict[str, Any]`: The config.

    Raises:
        `LeWMInputError`: naming the file, for a missing folder or config, another model type,
            or missing, truncated or corrupt weights.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise LeWMInputError(field, str(folder), "no such model folder")
    config_path = folder / K.CONFIG_FILE
    if not config_path.is_file():
        raise LeWMInputError(field, str(config_path), "missing: not a saved model folder")
    config = _read_json(config_path, field)
    if not isinstance(config, dict):
        raise LeWMInputError(field, str(config_path), "corrupt config (not a mapping)")
    if model_type is not None and config.get("model_type") != model_type:
        raise LeWMInputError(
            field,
            str(config_path),
            f"model_type is {config.get('model_type')!r}, expected {model_type!r}",
        )
    check_weights(folder, field)
    return config


def check_weights(folder: str | os.PathLike, field: str) -> None:
    """Check the safetensors weights of a model folder (one file, or the shards of an index).

    Raises:
        `LeWMInputError`: naming the file, when no safetensors weights are there or one is
            truncated or corrupt.
    """
    folder = Path(folder)
    single = folder / K.SAFE_WEIGHTS_FILE
    index = folder / K.SAFE_WEIGHTS_INDEX_FILE
    if single.is_file():
        check_safetensors(single, field)
    elif index.is_file():
        table = _read_json(index, field)
        weight_map = table.get("weight_map") if isinstance(table, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise LeWMInputError(field, str(index), "corrupt index (no weight_map)")
        for shard in sorted(set(weight_map.values())):
            check_safetensors(folder / shard, field)
    elif not (folder / K.PICKLE_WEIGHTS_FILE).is_file():
        raise LeWMInputError(field, str(single), "missing weights file (safetensors)")
    # (A `pytorch_model.bin` is left to transformers, which reads it with weights_only=True.)


def check_checkpoint_dir(path: str | os.PathLike, field: str) -> dict[str, Any]:
    """Check a Trainer checkpoint folder (`checkpoint-<step>`) before resuming from it.

    Args:
        path (`str` or `PathLike`): The folder.
        field (`str`): The input that named it (e.g. `resume_from_checkpoint`).

    Returns:
        `dict[str, Any]`: The trainer state.

    Raises:
        `LeWMInputError`: naming the file, for a missing or unreadable trainer state, or missing,
            truncated or corrupt weights (the model's, or a LoRA run's adapter).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise LeWMInputError(field, str(folder), "no such checkpoint folder")
    state_path = folder / K.TRAINER_STATE_FILE
    if not state_path.is_file():
        raise LeWMInputError(field, str(state_path), "missing: not a Trainer checkpoint")
    state = _read_json(state_path, field)
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        raise LeWMInputError(field, str(state_path), "corrupt trainer state (no global_step)")
    if (folder / K.ADAPTER_CONFIG_FILE).is_file():
        check_safetensors(folder / K.ADAPTER_WEIGHTS_FILE, field)
    elif not any(folder.glob(K.SHARDED_WEIGHTS_GLOB)):
        # (FSDP's sharded state dict is a folder of its own format, loaded by accelerate.)
        check_model_dir(folder, field)
    return state


def last_complete_checkpoint(output_dir: str | os.PathLike, field: str) -> str | None:
    """The newest `checkpoint-<step>` folder of `output_dir` that is whole, or None.

    A worker killed while a checkpoint was being written leaves a folder without its trainer
    state or with truncated weights; such a folder is skipped (with a warning naming it) and
    the one before it is used.

    Args:
        output_dir (`str` or `PathLike`): A phase's output dir.
        field (`str`): What asks (named in the warning).

    Returns:
        `str` or `None`: the checkpoint folder, or None when there is no whole one.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    steps = []
    for child in folder.iterdir():
        match = _CHECKPOINT_NAME.match(child.name)
        if match and child.is_dir():
            steps.append((int(match.group(1)), child))
    for _, child in sorted(steps, reverse=True):
        try:
            check_checkpoint_dir(child, field)
        except LeWMInputError as err:
            logger.warning("%s: skipping %s (%s)", field, child, err)
            continue
        return str(child)
    return None


def check_checkpoint_fits(checkpoint: str | os.PathLike, model: Any, field: str) -> None:
    """The checkpoint to resume from was saved by a run of this phase's model.

    A checkpoint of another task (an LM's for a world-model phase, or a world model of another
    size) would otherwise fail deep in torch (`loaded state dict has a different number of
    parameter groups`, a size mismatch). Reads only `config.json` and the safetensors header.
    A LoRA checkpoint (adapters only) is checked by peft when it loads.

    Args:
        checkpoint (`str` or `PathLike`): The `checkpoint-*` folder (checked by
            `check_checkpoint_dir` before).
        model (`PreTrainedModel`): The phase's model, before training.
        field (`str`): The input that named the checkpoint.

    Raises:
        `LeWMConfigError`: naming `field`, when the checkpoint's model type,
            parameter names or shapes differ from the model's.
    """
    folder = Path(checkpoint)
    if (folder / K.ADAPTER_CONFIG_FILE).is_file() or not (folder / K.SAFE_WEIGHTS_FILE).is_file():
        return
    checkpoint = str(checkpoint)
    saved_type = None
    if (folder / K.CONFIG_FILE).is_file():
        saved_type = _read_json(folder / K.CONFIG_FILE, field).get("model_type")
    model_type = model.config.model_type
    if saved_type is not None and saved_type != model_type:
        raise LeWMConfigError(
            field,
            checkpoint,
            f"is a checkpoint of a {saved_type!r} model, and this phase trains a {model_type!r} "
            "model: resume from a checkpoint of this phase (its output_dir's checkpoint-*)",
        )
    header = check_safetensors(folder / K.SAFE_WEIGHTS_FILE, field)
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if name not in shapes:
            raise LeWMConfigError(
                field, checkpoint, f"holds {name!r}, which this phase's model does not have"
            )
        if tuple(entry["shape"]) != shapes[name]:
            raise LeWMConfigError(
                field,
                checkpoint,
                f"{name!r} has shape {tuple(entry['shape'])} there and {shapes[name]} in this "
                "phase's model (another architecture)",
            )


__all__ = [
    "check_checkpoint_dir",
    "check_checkpoint_fits",
    "check_model_dir",
    "check_safetensors",
    "check_weights",
    "last_complete_checkpoint",
]
