"""The tests' shared set-up, as plain functions and constants: a tiny world model, clips of a toy
system, training arguments, tiny walk-corpus recipes and their held-out clips, and a Hub cache
laid out on disk (`lay_out_hub_cache`, for the offline Hub tests).

`tests/conftest.py` hands the builders to the tests as fixtures; the scripts of
`tests/_dist_scripts/` (run under torchrun, outside pytest) import them from here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from datasets import Dataset

from lewm_hf import LeWMConfig, LeWMModel, LeWMTrainingArguments
from lewm_hf.data.collators import DataCollatorForLeWM

# The toy system of `tiny_clips`: windows of W tokens, H actions per clip, VOCAB tokens, ACTIONS
# action ids.
W, H, VOCAB, ACTIONS = 8, 3, 12, 4

# The tiny encoder: a one-layer Llama of width 32 over the toy vocabulary.
TINY_ENCODER: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 32,
}

# Everything of the tiny `LeWMConfig` but its encoder.
TINY_LEWM: dict[str, Any] = {
    "d_state": 16,
    "projector_hidden": 32,
    "d_model": 32,
    "predictor_layers": 1,
    "predictor_heads": 2,
    "history_length": H,
    "action_vocab_size": ACTIONS,
    "sigreg_num_slices": 64,
}

# LoRA on the predictor and the action encoder (training-argument overrides).
PREDICTOR_LORA: dict[str, Any] = {"lora_targets": ["predictor", "action_encoder"]}

# A tiny walk corpus on the `small` preset's graph (recipe `corpus` overrides).
TINY_CORPUS: dict[str, int] = {
    "corpus_size": 300,
    "eval_size": 64,
    "context_window": 8,
    "walk_length": 32,
}

# The model keys of a tiny world-model recipe phase (the default tiny Llama encoder).
TINY_PHASE_MODEL: dict[str, Any] = {
    "d_state": 16,
    "d_model": 32,
    "predictor_layers": 1,
    "predictor_heads": 2,
    "projector_hidden": 32,
    "history_length": 2,
    "sigreg_num_slices": 64,
}


def tiny_lm_phase(**overrides: Any) -> dict[str, Any]:
    """A tiny encoder (`task: lm`) recipe phase: a one-layer LM trained 4 steps at batch 8,
    evaluated during training, no checkpoints; `overrides` add or replace keys."""
    phase = {
        "name": "encoder",
        "task": "lm",
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_steps": 4,
        "per_device_train_batch_size": 8,
        "eval_strategy": "steps",
        "save_strategy": "no",
    }
    return {**phase, **overrides}


# `tiny_training_args`' defaults (besides `output_dir`).
TINY_TRAINING_ARGS: dict[str, Any] = {
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "learning_rate": 3e-3,
    "max_steps": 8,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": "none",
    "disable_tqdm": True,
    "seed": 0,
    "data_seed": 0,
    "collapse_monitor_steps": 0,
    "use_cpu": True,
    "dataloader_num_workers": 0,
}


def tiny_lewm_config(**overrides: Any) -> LeWMConfig:
    """The tiny `LeWMConfig`: `TINY_ENCODER` and `TINY_LEWM`.

    Args:
        **overrides:
            `LeWMConfig` arguments replacing the tiny ones (`encoder_config=None` with a
            `vocab_size` gives the default backbone).

    Returns:
        `LeWMConfig`: the configuration.
    """
    return LeWMConfig(**{"encoder_config": dict(TINY_ENCODER), **TINY_LEWM, **overrides})


def tiny_lewm_model(seed: int | None = 0, **overrides: Any) -> LeWMModel:
    """A tiny `LeWMModel` (`tiny_lewm_config(**overrides)`), initialised after
    `torch.manual_seed(seed)`.

    Args:
        seed (`int` or `None`, *optional*, defaults to 0):
            Seed of the initialisation; `None` initialises from the global RNG as it is.
        **overrides:
            `LeWMConfig` arguments replacing the tiny ones.

    Returns:
        `LeWMModel`: the untrained model.
    """
    if seed is not None:
        torch.manual_seed(seed)
    return LeWMModel(tiny_lewm_config(**overrides))


def tiny_clips(n: int = 64, seed: int = 0, idx: bool = False) -> Dataset:
    """Clips of a deterministic toy system: the next token is `(last + action + 1) mod VOCAB`.

    Args:
        n (`int`, *optional*, defaults to 64): Number of clips.
        seed (`int`, *optional*, defaults to 0): Seed of the windows and actions.
        idx (`bool`, *optional*, defaults to `False`): Add a column `idx` with the row numbers.

    Returns:
        `Dataset`: columns `tokens` (`W + H` tokens), `actions` (`H` ids) and maybe `idx`.
    """
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, W + H), dtype=np.int64)
    tokens[:, :W] = rng.integers(0, VOCAB, size=(n, W))
    actions = rng.integers(0, ACTIONS, size=(n, H))
    for k in range(H):
        tokens[:, W + k] = (tokens[:, W + k - 1] + actions[:, k] + 1) % VOCAB
    columns = {"tokens": tokens.tolist(), "actions": actions.tolist()}
    if idx:
        columns["idx"] = list(range(n))
    return Dataset.from_dict(columns)


def tiny_training_args(output_dir: str | Path, **overrides: Any) -> LeWMTrainingArguments:
    """Training arguments for the tiny models on the CPU: `TINY_TRAINING_ARGS` and `overrides`.

    Args:
        output_dir (`str` or `Path`): The run's output folder.
        **overrides: `LeWMTrainingArguments` arguments replacing the defaults.

    Returns:
        `LeWMTrainingArguments`: the arguments.
    """
    return LeWMTrainingArguments(
        **{"output_dir": str(output_dir), **TINY_TRAINING_ARGS, **overrides}
    )


def pretrained_like(model: LeWMModel, seed: int = 11) -> LeWMModel:
    """Give the zero-initialised layers (AdaLN modulations, the delta head's last Linear)
    small random weights, as training would: from an untrained predictor (whose delta head is
    zero) no gradient reaches the predictor's adapters.

    Args:
        model (`LeWMModel`): The model, changed in place.
        seed (`int`, *optional*, defaults to 11): Seed of the random weights.

    Returns:
        `LeWMModel`: `model`.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.copy_(0.05 * torch.randn(param.shape, generator=g))
    return model


def write_walk_recipe(folder: Path, cache_dir: str | Path, phases: Any, **top: Any) -> Path:
    """Write `folder/recipe.yaml`: `phases` on the `small` preset's graph with `TINY_CORPUS`,
    seed 0, output under `folder/run`.

    Args:
        folder (`Path`): Where the recipe goes (created if missing).
        cache_dir (`str` or `Path`): The corpus cache.
        phases (`list[dict]`): The recipe's phases, written as given.
        **top: Top-level keys replacing or adding to the defaults (e.g. `corpus`).

    Returns:
        `Path`: the recipe file.
    """
    recipe = {
        "output_dir": str(folder / "run"),
        "seed": 0,
        "disable_tqdm": True,
        "corpus_preset": "small",
        "corpus": dict(TINY_CORPUS),
        "corpus_cache_dir": str(cache_dir),
        **top,
        "phases": phases,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def held_out_batch(recipe: Path, cache_dir: str | Path) -> dict[str, torch.Tensor]:
    """The held-out move clips of a recipe's last phase, collated into one batch.

    Args:
        recipe (`Path`): The recipe file.
        cache_dir (`str` or `Path`): The corpus cache.

    Returns:
        `dict[str, torch.Tensor]`: the batch (model inputs).
    """
    # Imported here: the torchrun scripts import this module and need no recipe runner.
    from lewm_hf.data.walks import build_move_trajectories
    from lewm_hf.tasks.runner import validate_recipe

    plan = validate_recipe(recipe)[-1]
    clips = build_move_trajectories(plan.args.domain.clips, cache_dir)["validation"]
    return DataCollatorForLeWM(window=plan.args.domain.clips.corpus.context_window)(list(clips))


def lay_out_hub_cache(cache: Path, repo_type: str, repo_id: str, files: Path) -> Path:
    """Put `files` in `cache` the way huggingface_hub's cache holds a repo: content-addressed
    blobs, a snapshot of symlinks under a commit hash, and `refs/main` naming that commit."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    paths = sorted(p for p in files.rglob("*") if p.is_file())
    commit = hashlib.sha1("".join(p.relative_to(files).as_posix() for p in paths).encode())
    snapshot = repo / "snapshots" / commit.hexdigest()
    for path in paths:
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(files)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit.hexdigest())
    return snapshot
