"""Seeds and determinism of a run, and the record of both (`determinism.json`).

One recipe `seed` drives every random choice a run makes, through distinct seeds derived from it
with `derive_seed` (a SHA-256 of `"<seed>:<purpose>"`), so that changing how one thing is drawn
never shifts another:

- `seed` itself seeds the Trainer (`set_seed` in `Trainer.__init__`: dropout and the other
  draws during training);
- data: `derive_seed(seed, "data")` becomes `data_seed` (the order of the training batches)
  unless the recipe sets `data_seed`;
- model init: `derive_seed(seed, "model")` seeds the global RNG right before the task builds its
  model (the fresh weights: predictor, projector, a fresh encoder);
- LoRA init: `derive_seed(seed, "lora")` seeds the adapters' initialisation (in a forked RNG)
  unless `lora_seed` is set.

What is drawn is a property of the dataset, not of the run: the graph, jumpers, walks and clips
have their own seeds (`corpus.seed`, `trajectory_seed`), so one corpus serves runs with
different `seed`s.

Determinism: `full_determinism: true` (the `TrainingArguments` key; no second key) calls
`transformers.enable_full_determinism`: `CUBLAS_WORKSPACE_CONFIG=:16:8`,
`torch.use_deterministic_algorithms(True)`, `cudnn.deterministic = True`,
`cudnn.benchmark = False` (and the flash-attention / NPU flags), before the model is built. CPU
runs with the same seed are bitwise reproducible without it; on GPUs it is what makes them so.

Every run writes `determinism.json` in its output dir at its start (seeds, flags, library
versions, the command line) and `recipe.yaml`, the resolved recipe of the phase.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import enable_full_determinism, set_seed

from . import metric_keys as K
from .reporting import atomic_write_text, write_json

# Libraries whose versions the report records.
LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "huggingface_hub",
    "datasets",
    "safetensors",
    "numpy",
    "lewm_hf",
)


def derive_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose (`"graph"`, `"train"`, ...) derived from a base seed.

    Args:
        seed (`int`): The base seed.
        purpose (`str`): What the derived seed draws.

    Returns:
        `int`: The first 4 bytes (little-endian) of the SHA-256 of `"<seed>:<purpose>"`.
    """
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass(frozen=True)
class RunSeeds:
    """The seeds of one run (see the module docstring).

    Args:
        seed (`int`): The recipe's `seed` (the Trainer's).
        data (`int`): Order of the training batches (`data_seed`).
        model (`int`): Initialisation of the fresh model weights.
        lora (`int`): Initialisation of the LoRA adapters.
    """

    seed: int
    data: int
    model: int
    lora: int


def run_seeds(args: Any) -> RunSeeds:
    """The seeds of a run with training arguments `args` (explicit `data_seed` and `lora_seed`
    win over the derived ones)."""
    seed = int(args.seed)
    data_seed = getattr(args, "data_seed", None)
    lora_seed = getattr(args, "lora_seed", None)
    return RunSeeds(
        seed=seed,
        data=derive_seed(seed, "data") if data_seed is None else int(data_seed),
        model=derive_seed(seed, "model"),
        lora=derive_seed(seed, "lora") if lora_seed is None else int(lora_seed),
    )


def determinism_flags() -> dict[str, Any]:
    """The process's current determinism settings."""
    return {
        "torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries a run depends on (None when missing)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this process, shell-quoted."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith(".py"):
        argv = ["python", *argv]
    return shlex.join(argv)


def determinism_report(args: Any, seeds: RunSeeds) -> dict[str, Any]:
    """The payload of `determinism.json`."""
    return {
        "seeds": {
            "seed": seeds.seed,
            "data_seed": seeds.data,
            "model_init_seed": seeds.model,
            "lora_init_seed": seeds.lora,
        },
        "full_determinism": bool(getattr(args, "full_determinism", False)),
        "flags": determinism_flags(),
        "versions": library_versions(),
        "command": command_line(),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "torch_num_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


def prepare_run(args: Any, recipe: dict[str, Any] | None = None) -> RunSeeds:
    """Seed and configure a run before its model is built, and record it.

    Sets `args.data_seed` (when unset) to the derived data seed, seeds the global RNGs with the
    model-init seed (through `enable_full_determinism` when `args.full_determinism`), and, on
    the main process, writes `determinism.json` and (when given) `recipe.yaml` in
    `args.output_dir`.

    Args:
        args (`TrainingArguments`): The phase's training arguments.
        recipe (`dict[str, Any]`, *optional*): The phase's resolved recipe keys.

    Returns:
        `RunSeeds`: The seeds.
    """
    seeds = run_seeds(args)
    if args.data_seed is None:
        args.data_seed = seeds.data
    if args.full_determinism:
        enable_full_determinism(seeds.model)
    else:
        set_seed(seeds.model)
    if int(os.environ.get("RANK", "0")) == 0:
        out = Path(args.output_dir)
        write_json(out / K.DETERMINISM_FILE, determinism_report(args, seeds))
        if recipe is not None:
            write_recipe(out / K.RECIPE_FILE, recipe)
    return seeds


def write_recipe(path: str | Path, recipe: dict[str, Any]) -> None:
    """Write a phase's resolved recipe keys as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(recipe, sort_keys=False))


__all__ = [
    "RunSeeds",
    "command_line",
    "derive_seed",
    "determinism_flags",
    "determinism_report",
    "library_versions",
    "prepare_run",
    "run_seeds",
    "write_recipe",
]
