"""Seeds and determinism: one `seed` derives distinct seeds; same seed, same bits."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from _builders import PREDICTOR_LORA, W, pretrained_like

from lewm_hf import LeWMTrainer
from lewm_hf import metric_keys as K
from lewm_hf.determinism import derive_seed, prepare_run, run_seeds


def test_seed_derives_distinct_data_model_and_lora_seeds(tiny_training_args):
    args = tiny_training_args(seed=42, data_seed=None)
    seeds = run_seeds(args)
    assert seeds.seed == 42
    assert seeds.data == derive_seed(42, "data")
    assert seeds.model == derive_seed(42, "model")
    assert seeds.lora == derive_seed(42, "lora")
    assert len({seeds.seed, seeds.data, seeds.model, seeds.lora}) == 4
    assert run_seeds(tiny_training_args(seed=43, data_seed=None)).model != seeds.model
    # Explicit seeds win over the derived ones.
    explicit = run_seeds(tiny_training_args(seed=42, data_seed=5, lora_seed=6))
    assert (explicit.data, explicit.lora, explicit.model) == (5, 6, seeds.model)
    prepare_run(args)
    assert args.data_seed == seeds.data


@pytest.fixture
def train_run(tiny_lewm_model, tiny_clips, tiny_training_args):
    """`train_run(folder, seed, steps=6)`: what a task runner does: seed, build a fresh model
    (from the global RNG, which `prepare_run` seeds), wrap it with LoRA, train. Returns the
    trained state dict."""

    def run(folder, seed: int, steps: int = 6) -> dict[str, torch.Tensor]:
        args = tiny_training_args(
            folder / "out", seed=seed, data_seed=None, max_steps=steps, **PREDICTOR_LORA
        )
        prepare_run(args)
        model = pretrained_like(tiny_lewm_model(seed=None))
        trainer = LeWMTrainer(model, args, train_dataset=tiny_clips(), window=W)
        trainer.train()
        return {k: v.clone() for k, v in trainer.model.state_dict().items()}

    return run


def test_same_seed_gives_bitwise_identical_weights_in_two_cpu_runs(tmp_path, train_run):
    first = train_run(tmp_path / "a", seed=3)
    second = train_run(tmp_path / "b", seed=3)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    other = train_run(tmp_path / "c", seed=4)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_another_lora_seed_changes_only_the_adapter_init(
    tiny_lewm_model, tiny_clips, tiny_training_args
):
    states = []
    for lora_seed in (1, 2):
        model = pretrained_like(tiny_lewm_model(seed=0))
        args = tiny_training_args(lora_seed=lora_seed, **PREDICTOR_LORA)
        trainer = LeWMTrainer(model, args, train_dataset=tiny_clips(16), window=W)
        states.append(trainer.model.state_dict())
    a, b = states
    assert a.keys() == b.keys()
    differ = sorted(k for k in a if not torch.equal(a[k], b[k]))
    lora_a = sorted(k for k in a if "lora_A" in k)
    assert lora_a and differ == lora_a


def test_full_determinism_sets_the_flags_and_every_run_records_them(
    tmp_path, monkeypatch, tiny_training_args
):
    # enable_full_determinism sets these; set-then-delete makes monkeypatch restore them.
    for name in (
        "CUBLAS_WORKSPACE_CONFIG",
        "CUDA_LAUNCH_BLOCKING",
        "FLASH_ATTENTION_DETERMINISTIC",
        "ASCEND_LAUNCH_BLOCKING",
        "HCCL_DETERMINISTIC",
    ):
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "argv", ["recipes/train.py", "--config", "x.yaml", "--seed", "7"])
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        args = tiny_training_args(seed=7, full_determinism=True, lora_seed=9)
        recipe = {"task": "world_model", "seed": 7, "full_determinism": True}
        seeds = prepare_run(args, recipe)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        report = json.loads((tmp_path / "out" / K.DETERMINISM_FILE).read_text())
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
    assert report["seeds"] == {
        "seed": 7,
        "data_seed": 0,  # tiny_training_args sets data_seed=0: an explicit one is kept
        "model_init_seed": seeds.model,
        "lora_init_seed": 9,
    }
    assert report["full_determinism"] is True
    assert report["flags"] == {
        "torch_deterministic_algorithms": True,
        "cudnn_deterministic": True,
        "cudnn_benchmark": False,
        "CUBLAS_WORKSPACE_CONFIG": ":16:8",
    }
    assert report["command"] == "python recipes/train.py --config x.yaml --seed 7"
    assert report["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    for lib in ("transformers", "peft", "accelerate", "huggingface_hub", "python"):
        assert report["versions"][lib], lib
    assert (tmp_path / "out" / K.RECIPE_FILE).read_text().startswith("task: world_model")


def test_seed_without_full_determinism_leaves_the_flags(tmp_path, tiny_training_args):
    args = tiny_training_args(seed=1)
    prepare_run(args)
    report = json.loads((tmp_path / "out" / K.DETERMINISM_FILE).read_text())
    assert report["full_determinism"] is False
    assert report["flags"]["torch_deterministic_algorithms"] is False
