"""Distributed training against one process: global BatchNorm, DDP and FSDP2 parity, metrics
over ranks, bf16 autocast, and skipped non-finite steps.

Every two-process check runs in one torchrun launch (`_dist_scripts/ddp_fsdp_checks.py`, gloo
on the CPU), started first so that the one-process references computed here overlap with it.
The oracle of each parity check is the same model trained in this process at the global batch
size; a control run without global statistics shows that the comparison can fail.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _dist_scripts.common import (
    GLOBAL_BATCH,
    STEPS,
    RecordingCollator,
    W,
    clip_dataset,
    collapse_curves,
    curves,
    fixed_batches,
    make_args,
    manual_training,
    state_dict_cpu,
    tiny_model,
)
from safetensors.torch import load_file
from torch import nn

from lewm_hf import LeWMModel, LeWMTrainer
from lewm_hf import metric_keys as K
from lewm_hf.distributed import (
    GlobalBatchNorm1d,
    convert_to_global_batchnorm,
    global_batchnorm_layers,
)
from lewm_hf.errors import LeWMNonFiniteLossError
from lewm_hf.losses import sigreg, sigreg_generator

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "_dist_scripts" / "ddp_fsdp_checks.py"

# Measured on 2 CPU cores (torch 2.13, gloo, SGD): DDP against one process, max |delta| 9.5e-7 on
# the loss curves, 2.4e-7 on the final weights, 9.5e-7 on the evaluation metrics, 1.9e-6 on the
# collapse statistics; FSDP2 against one process 1.4e-6 on the losses. The control run (per-rank
# BatchNorm and SIGReg) differs by 3.05. Table and method: docs/distributed.md.
PARITY_ATOL = 1e-5
CONTROL_MIN_DIFF = 1e-3
# bf16 against fp32: relative difference of the loss over 20 steps of CPU autocast, measured at
# most 1.4e-3 (pred_loss 5.3e-3); over 5 FSDP2 steps with bf16 parameters, 2.6e-3.
BF16_LOSS_RTOL = 2e-2
CURVE_KEYS = (K.LOSS, K.PRED_LOSS, K.REG_LOSS)
EVAL_KEYS = (K.EVAL_LOSS, K.EVAL_PRED_LOSS, K.EVAL_REG_LOSS, K.EVAL_PRED_MSE, K.EVAL_COPY_MSE)


pytestmark = pytest.mark.usefixtures("one_thread")


def max_diff(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max()) if a.numel() else 0.0


# ---------------------------------------------------------------------------------------------
# One torchrun launch for every two-process check, and the one-process references


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`(ranks, reference, out)`: each rank's results, the one-process results, the output dir."""
    out = tmp_path_factory.mktemp("two_ranks")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(out / "torchrun.log", "w")
    proc = subprocess.Popen(
        [*cmd, str(SCRIPT), str(out)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        reference = one_process_reference(out / "reference")
        returncode = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert returncode == 0, (out / "torchrun.log").read_text()[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return ranks, reference, out


def one_process_reference(out: Path) -> dict:
    """The world model in this process at the global batch (16): `LeWMTrainer` (the DDP
    oracle) and the plain AdamW loop (the FSDP2 oracle)."""
    collator = RecordingCollator()
    trainer = LeWMTrainer(
        tiny_model(),
        make_args(out),
        train_dataset=clip_dataset(128),
        eval_dataset=clip_dataset(32, seed=1),
        data_collator=collator,
    )
    trainer.train()
    batches = collator.batches[:STEPS]
    metrics = trainer.evaluate()
    reference = {
        "curves": curves(trainer, (*CURVE_KEYS, "grad_norm")),
        "collapse": collapse_curves(trainer),
        "eval": {k: metrics[k] for k in EVAL_KEYS},
        "batches": batches,
        "weights": state_dict_cpu(trainer.model),
        "global_batchnorm": global_batchnorm_layers(trainer.model),
    }
    loop = manual_training(tiny_model(), fixed_batches(clip_dataset(128), STEPS, GLOBAL_BATCH))
    reference["fsdp"] = loop
    return reference


# ---------------------------------------------------------------------------------------------
# GlobalBatchNorm1d in one process


@pytest.mark.parametrize("shape, momentum", [((16, 8), 0.1), ((6, 8, 5), None)])
def test_global_batchnorm_equals_batchnorm1d_in_one_process(shape, momentum):
    torch.manual_seed(0)
    reference = nn.BatchNorm1d(8, momentum=momentum)
    nn.init.normal_(reference.weight)
    nn.init.normal_(reference.bias)
    global_bn = GlobalBatchNorm1d.from_batchnorm(copy.deepcopy(reference))
    for _ in range(3):  # running statistics over several updates
        x = torch.randn(*shape) * 2 + 0.5
        grad_out = torch.randn(*shape)
        x_ref, x_glob = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ref, y = reference(x_ref), global_bn(x_glob)
        (y_ref * grad_out).sum().backward()
        (y * grad_out).sum().backward()
        torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(x_glob.grad, x_ref.grad, rtol=1e-6, atol=1e-6)
        for name in ("weight", "bias"):
            a, b = getattr(global_bn, name).grad, getattr(reference, name).grad
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(
            global_bn.running_mean, reference.running_mean, rtol=0, atol=1e-6
        )
        torch.testing.assert_close(
            global_bn.running_var, reference.running_var, rtol=1e-6, atol=1e-6
        )
        assert int(global_bn.num_batches_tracked) == int(reference.num_batches_tracked)
    reference.eval()
    global_bn.eval()
    x = torch.randn(*shape)
    torch.testing.assert_close(global_bn(x), reference(x), rtol=1e-6, atol=1e-6)


def test_global_batchnorm_keeps_names_and_checkpoints_load_into_a_plain_model(tmp_path):
    model = tiny_model()
    keys = list(model.state_dict())
    params = dict(model.named_parameters())
    convert_to_global_batchnorm(model)
    assert global_batchnorm_layers(model) == ["projector.1", "predictor.head.1"]
    assert list(model.state_dict()) == keys
    # The same Parameter objects: an optimizer or peft wrapper holding them keeps working.
    assert all(p is params[n] for n, p in model.named_parameters())

    model.train()
    batch = fixed_batches(clip_dataset(32), 1, 16)[0]
    model(**batch)  # updates the running statistics
    model.save_pretrained(tmp_path)
    plain = LeWMModel.from_pretrained(tmp_path).eval()
    assert type(plain.projector[1]) is nn.BatchNorm1d
    model.eval()
    with torch.no_grad():
        a, b = model(**batch), plain(**batch)
    assert torch.equal(a.predictions, b.predictions) and torch.equal(a.latents, b.latents)

    # On CUDA the replacement is torch's SyncBatchNorm, with the same names.
    synced = convert_to_global_batchnorm(tiny_model(), device="cuda")
    assert isinstance(synced.projector[1], nn.SyncBatchNorm)
    assert list(synced.state_dict()) == keys


def test_sigreg_stays_float32_under_bf16_autocast():
    z = torch.randn(4, 32, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = sigreg(z.bfloat16(), num_slices=64, generator=sigreg_generator(3))
    outside = sigreg(z.bfloat16().float(), num_slices=64, generator=sigreg_generator(3))
    assert inside.dtype == torch.float32
    assert torch.equal(inside, outside)  # computed in float32, not bf16, inside autocast


# ---------------------------------------------------------------------------------------------
# DDP (2 gloo processes, batch 8 each) against one process at batch 16


def test_ddp_sees_the_one_process_samples(runs):
    ranks, reference, _ = runs
    assert ranks[0]["ddp"]["world_size"] == 2
    for step, batch in enumerate(reference["batches"]):
        # Rank r's batch is the r-th half of the one-process batch: same samples, same order.
        assert ranks[0]["ddp"]["batches"][step] + ranks[1]["ddp"]["batches"][step] == batch


def test_ddp_matches_one_process_curves_weights_and_metrics(runs):
    ranks, reference, out = runs
    assert reference["global_batchnorm"] == []  # one process keeps nn.BatchNorm1d
    for rank in ranks:
        ddp = rank["ddp"]
        assert ddp["global_batchnorm"] == ["projector.1", "predictor.head.1"]
        assert ddp["state_dict_keys"] == sorted(reference["weights"])
        # Logged curves are averaged over the ranks (the same on both), not rank 0's own.
        for key in CURVE_KEYS:
            assert len(ddp["curves"][key]) == STEPS, key
            assert max_diff(ddp["curves"][key], reference["curves"][key]) <= PARITY_ATOL, key
        # The gradient norm (~100 here) agrees to the same relative precision.
        norms = reference["curves"]["grad_norm"]
        assert max_diff(ddp["curves"]["grad_norm"], norms) <= PARITY_ATOL * max(norms)
        for key in EVAL_KEYS:
            assert max_diff(ddp["eval"][key], reference["eval"][key]) <= PARITY_ATOL, key
        # Collapse statistics of the gathered global batch.
        assert ddp["collapse"].keys() == reference["collapse"].keys()
        for key, values in reference["collapse"].items():
            assert len(values) == STEPS
            scale = max(1.0, max(abs(v) for v in values))
            assert max_diff(ddp["collapse"][key], values) <= PARITY_ATOL * scale, key
    weights = load_file(str(out / "ddp_weights.safetensors"))
    assert weights.keys() == reference["weights"].keys()
    for key, value in reference["weights"].items():
        assert max_diff(weights[key], value) <= PARITY_ATOL, key


def test_ddp_streams_the_one_process_batches(runs, tmp_path):
    """A streamed split under DDP: rank r's batch is the r-th half of one process's batch at the
    global batch size (every rank reads the stream and keeps its part), and the losses match."""
    ranks, _, _ = runs
    collator = RecordingCollator()
    args = make_args(tmp_path, dataset_streaming=True, streaming_buffer_size=32)
    trainer = LeWMTrainer(
        tiny_model(), args, train_dataset=clip_dataset(128), data_collator=collator
    )
    trainer.train()
    batches = collator.batches[:STEPS]
    assert len({i for batch in batches for i in batch}) > GLOBAL_BATCH  # not one batch again
    for step, batch in enumerate(batches):
        assert ranks[0]["streaming"]["batches"][step] + ranks[1]["streaming"]["batches"][step] == (
            batch
        )
    reference = curves(trainer, (K.LOSS,))[K.LOSS]
    for rank in ranks:
        assert max_diff(rank["streaming"]["curves"][K.LOSS], reference) <= PARITY_ATOL


def test_control_without_global_statistics_differs(runs):
    """Per-rank BatchNorm and SIGReg: the comparison above would fail, so it can."""
    ranks, reference, _ = runs
    control = ranks[0]["control"]
    assert control["global_batchnorm"] == []
    assert max_diff(control["curves"][K.LOSS], reference["curves"][K.LOSS]) > CONTROL_MIN_DIFF


def test_nonfinite_loss_on_one_rank_skips_the_step_on_every_rank(runs):
    ranks, _, _ = runs
    for rank in ranks:
        nf = rank["nonfinite"]
        assert nf["step3_unchanged"] and nf["step4_changed"]
        assert nf["weights_finite"] and nf["bn_finite"]
        assert nf["nonfinite_total"] == 1 and nf["skipped_steps"] == [3]
        assert nf["curves"][K.NONFINITE_STEPS] == [0.0, 0.0, 1.0, 1.0]
    # The ranks stayed in step: the same weights after the skipped step.
    assert ranks[0]["nonfinite"]["final_weights_sum"] == ranks[1]["nonfinite"]["final_weights_sum"]


def test_gather_rows_concatenates_ranks_of_different_shapes(runs):
    ranks, _, _ = runs
    for rank in ranks:
        # rank 0: (1, 2, 3) of ones; rank 1: (2, 3, 3) of twos; dim 1 padded with zeros to 3.
        assert rank["gather"] == {"shape": [3, 3, 3], "row_sums": [6.0, 18.0, 18.0]}


# ---------------------------------------------------------------------------------------------
# FSDP2 (fully_shard over gloo) and bf16


def test_fsdp2_matches_one_process_and_its_full_state_dict_reloads(runs):
    ranks, reference, out = runs
    fsdp = [rank["fsdp2"] for rank in ranks]
    assert all(f["dtensor_parameters"] for f in fsdp)
    # Each rank's loss is its own prediction loss plus the global SIGReg: their mean is the
    # one-process loss.
    for key in CURVE_KEYS:
        mean = [(a + b) / 2 for a, b in zip(fsdp[0][key], fsdp[1][key])]
        assert max_diff(mean, reference["fsdp"][key]) <= PARITY_ATOL, key
    assert fsdp[0]["reg_loss"] == fsdp[1]["reg_loss"]  # SIGReg over the global batch

    plain = LeWMModel.from_pretrained(out / "fsdp_model").eval()
    assert type(plain.projector[1]) is nn.BatchNorm1d
    assert sorted(plain.state_dict()) == fsdp[0]["full_state_dict_keys"]
    expected = load_file(str(out / "fsdp_outputs.safetensors"))
    batch = fixed_batches(clip_dataset(32, seed=1), 1, GLOBAL_BATCH)[0]
    with torch.no_grad():
        output = plain(**batch)
    torch.testing.assert_close(output.predictions, expected["predictions"], rtol=0, atol=1e-6)
    torch.testing.assert_close(output.latents, expected["latents"], rtol=0, atol=1e-6)


def test_fsdp2_bf16_parameters_keep_loss_parity_and_float32_sigreg(runs):
    ranks, _, _ = runs
    for rank in ranks:
        bf16, fp32 = rank["fsdp2_bf16"], rank["fsdp2"]
        assert set(bf16["reg_dtype"]) == {"torch.float32"}
        for a, b in zip(bf16["loss"], fp32["loss"]):
            assert math.isclose(a, b, rel_tol=BF16_LOSS_RTOL), (a, b)


def test_bf16_autocast_matches_fp32_over_20_steps(tmp_path):
    losses = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        args = make_args(tmp_path / name, max_steps=20, bf16=bf16, collapse_monitor_steps=0)
        trainer = LeWMTrainer(tiny_model(), args, train_dataset=clip_dataset(128), window=W)
        trainer.train()
        losses[name] = curves(trainer, (K.LOSS, K.REG_LOSS))
    assert len(losses["bf16"][K.LOSS]) == 20
    for a, b in zip(losses["bf16"][K.LOSS], losses["fp32"][K.LOSS]):
        assert math.isclose(a, b, rel_tol=BF16_LOSS_RTOL), (a, b)
    assert losses["bf16"][K.LOSS] != losses["fp32"][K.LOSS]  # autocast did run in bf16


# ---------------------------------------------------------------------------------------------
# Non-finite losses in one process


def test_consecutive_nonfinite_steps_stop_with_a_typed_error_and_keep_the_checkpoint(tmp_path):
    model = tiny_model()
    args = make_args(
        tmp_path, max_steps=10, save_strategy="steps", save_steps=2, max_nonfinite_steps=3
    )
    trainer = LeWMTrainer(model, args, train_dataset=clip_dataset(128), window=W)
    after_step_2: dict[str, torch.Tensor] = {}

    def snapshot(module, inputs):
        if trainer.state.global_step == 2 and not after_step_2:
            after_step_2.update(state_dict_cpu(module))  # before step 3's forward

    def poison(module, inputs, output):
        if module.training and trainer.state.global_step >= 2:  # steps 3, 4, 5, ... are NaN
            output.loss = output.loss * math.nan
        return output

    model.register_forward_pre_hook(snapshot)
    model.register_forward_hook(poison)
    with pytest.raises(LeWMNonFiniteLossError, match="max_nonfinite_steps=3"):
        trainer.train()
    assert trainer.state.global_step == 4  # steps 3 and 4 skipped, the error at step 5
    assert trainer.nonfinite_guard.skipped_steps == [3, 4, 5]
    logged = [e[K.NONFINITE_STEPS] for e in trainer.state.log_history if K.LOSS in e]
    assert logged == [0.0, 0.0, 1.0, 2.0]
    # Nothing was saved after the error; checkpoint-4 (two skipped steps) holds step 2's
    # weights and running statistics, finite, and loads into a plain model.
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    saved = load_file(str(tmp_path / "checkpoint-4" / K.SAFE_WEIGHTS_FILE))
    for key, value in after_step_2.items():
        assert torch.equal(saved[key], value), key
    reloaded = LeWMModel.from_pretrained(tmp_path / "checkpoint-4")
    assert all(torch.isfinite(t).all() for t in reloaded.state_dict().values())


# ---------------------------------------------------------------------------------------------
# The shipped launch configs


@pytest.mark.parametrize(
    "path, kind",
    [
        ("accelerate_configs/cpu.yaml", "NO"),
        ("accelerate_configs/ddp.yaml", "MULTI_GPU"),
        ("accelerate_configs/fsdp2.yaml", "FSDP"),
        ("accelerate_configs/deepspeed_zero2.yaml", "DEEPSPEED"),
        ("recipes/launch/multi_node.yaml", "MULTI_GPU"),
    ],
)
def test_launch_configs_parse_with_accelerate(path, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / path))
    assert str(config.distributed_type).endswith(kind)
    if kind == "FSDP":
        fsdp = config.fsdp_config
        assert fsdp["fsdp_version"] == 2
        # Whole tensors in every save: checkpoints load into a plain LeWMModel.
        assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 2
