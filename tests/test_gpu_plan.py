"""`lewm_hf.gpu_plan` against the models it sizes, and the GPU table of `docs/distributed.md`
against `benchmarks/gpu_plan.py`'s output.

The parameter counts are checked against each model instantiated on the meta device (no
memory): the tiny test model, the default recipe's world model and the scaled one of the
table; the FLOP count against `benchmarks/gpu_step.py`'s count from hooked `nn.Linear` calls
on a real forward pass of the tiny model.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import pytest
import torch

from lewm_hf import LeWMConfig, LeWMModel
from lewm_hf.gpu_plan import memory_per_gpu, parameter_counts, step_flops, trained_parameters

REPO = Path(__file__).resolve().parents[1]
PLAN = runpy.run_path(str(REPO / "benchmarks" / "gpu_plan.py"))
TABLE_START = "<!-- gpu_plan.py: start -->"
TABLE_END = "<!-- gpu_plan.py: end -->"


def tiny_config(**kwargs) -> LeWMConfig:
    encoder = {
        "model_type": "llama",
        "vocab_size": 50,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
    }
    keys = {"d_state": 16, "projector_hidden": 24, "d_model": 32, "predictor_layers": 2}
    keys.update(predictor_heads=2, action_vocab_size=7, action_hidden=12, num_action_ops=3)
    return LeWMConfig(encoder_config=encoder, **{**keys, **kwargs})


def instantiated(config: LeWMConfig) -> dict[str, int]:
    with torch.device("meta"):
        model = LeWMModel(config)
    counts = {
        part: sum(p.numel() for p in getattr(model, part).parameters())
        for part in ("encoder", "projector", "action_encoder", "predictor")
    }
    counts["total"] = sum(p.numel() for p in model.parameters())
    counts["trained"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return counts


@pytest.fixture(scope="module")
def rows():
    return PLAN["plan_rows"]()


def test_parameter_counts_equal_the_instantiated_models(rows):
    configs = [tiny_config(), tiny_config(encoder_mode="frozen", mlp_ratio=2.5)]
    configs += [row.config for row in rows]
    for config in configs:
        model = instantiated(config)
        counts = parameter_counts(config)
        assert counts == {k: v for k, v in model.items() if k != "trained"}, config
        assert trained_parameters(config) == model["trained"]
    # The table's models: the default recipe's world model (frozen encoder) and the scaled one.
    default, scaled = (row.config for row in rows)
    assert default.encoder_mode == "frozen" and scaled.encoder_mode == "train"
    assert scaled.d_model == 1024 and scaled.predictor_layers == 12
    assert scaled.encoder_config["num_hidden_layers"] == 12
    assert scaled.encoder_config["hidden_size"] == 1024


def test_step_flops_equal_the_hooked_count_of_gpu_step():
    sys.path.insert(0, str(REPO / "benchmarks"))  # gpu_step imports its sibling `_timing`
    try:
        step = runpy.run_path(str(REPO / "benchmarks" / "gpu_step.py"), run_name="gpu_step")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    opts = argparse.Namespace(
        hidden=32, layers=2, heads=4, vocab=50, window=8, encoder_mode="train", d_state=16,
        d_model=32, predictor_layers=2, predictor_heads=2, history=3, actions=7, slices=64,
        batch=4,
    )  # fmt: skip
    model = step["build_model"](opts).train()
    hooked = step["matmul_flops"](model, step["random_batch"](opts, torch.device("cpu")), opts)
    flops = step_flops(model.config, opts.batch, opts.window)
    assert flops["encoder"] == pytest.approx(hooked["encoder"], rel=1e-12)
    assert flops["rest"] == pytest.approx(hooked["rest"], rel=1e-12)
    assert flops["step"] == pytest.approx(3 * (hooked["encoder"] + hooked["rest"]), rel=1e-12)


def test_memory_per_gpu_shards_as_each_strategy_does():
    config = tiny_config()
    total, trained = parameter_counts(config)["total"], trained_parameters(config)
    one, eight = memory_per_gpu(config, 1), memory_per_gpu(config, 8)
    assert one["DDP"] == one["FSDP2"] == one["ZeRO-2"] == 16 * total
    assert eight["DDP"] == 16 * total
    assert eight["FSDP2"] == 16 * total / 8
    assert eight["ZeRO-2"] == 2 * total + 14 * trained / 8
    frozen = tiny_config(encoder_mode="frozen")
    assert memory_per_gpu(frozen, 1)["DDP"] < one["DDP"]  # a frozen encoder has no optimizer state


def test_docs_table_is_the_scripts_output(rows):
    docs = (REPO / "docs" / "distributed.md").read_text()
    assert TABLE_START in docs and TABLE_END in docs
    table = docs.split(TABLE_START)[1].split(TABLE_END)[0].strip()
    assert table == PLAN["plan_table"](rows).strip()
