"""Fixtures shared by the tests: factories of tiny world models, toy clips, training arguments and
tiny walk-corpus recipes (implemented in `_builders`, which the torchrun scripts import too), a
module's corpus cache, and one intra-op thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _builders
import pytest
import torch
from datasets import Dataset

from lewm_hf import LeWMConfig, LeWMModel, LeWMTrainingArguments


@pytest.fixture(scope="session")
def tiny_lewm_config() -> Callable[..., LeWMConfig]:
    """Factory `tiny_lewm_config(**overrides)` of the tiny `LeWMConfig` (a one-layer Llama
    encoder of width 32, `d_state=16`, one predictor layer; see `_builders.tiny_lewm_config`)."""
    return _builders.tiny_lewm_config


@pytest.fixture(scope="session")
def tiny_lewm_model() -> Callable[..., LeWMModel]:
    """Factory `tiny_lewm_model(seed=0, **overrides)`: the tiny model initialised after
    `torch.manual_seed(seed)` (`seed=None`: from the global RNG as it is)."""
    return _builders.tiny_lewm_model


@pytest.fixture(scope="session")
def tiny_clips() -> Callable[..., Dataset]:
    """Factory `tiny_clips(n=64, seed=0, idx=False)` of toy-system clips (`tokens`,
    `actions`), next token `(last + action + 1) mod VOCAB`."""
    return _builders.tiny_clips


@pytest.fixture
def tiny_training_args(tmp_path: Path) -> Callable[..., LeWMTrainingArguments]:
    """Factory `tiny_training_args(output_dir=None, **overrides)` of CPU training arguments for
    the tiny models (8 steps of 16, no saving, seed 0); `output_dir` defaults to
    `tmp_path / "out"`."""

    def build(output_dir: str | Path | None = None, **overrides: Any) -> LeWMTrainingArguments:
        folder = tmp_path / "out" if output_dir is None else output_dir
        return _builders.tiny_training_args(folder, **overrides)

    return build


@pytest.fixture(scope="session")
def write_walk_recipe() -> Callable[..., Path]:
    """Factory `write_walk_recipe(folder, cache_dir, phases, **top)`: writes
    `folder/recipe.yaml`, the phases on the tiny walk corpus, output under `folder/run`."""
    return _builders.write_walk_recipe


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One corpus cache for the whole module (its recipes share the same tiny corpora)."""
    return str(tmp_path_factory.mktemp("corpora"))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    the models are tiny, and on a shared two-core machine two OpenMP threads that wait for each
    other make a step 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
