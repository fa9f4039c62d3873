"""Every check that needs two processes, in one torchrun launch (a launch costs seconds).

Run by `tests/test_distributed.py` as
`python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_fsdp_checks.py OUT_DIR`;
each rank writes `OUT_DIR/rank<r>.json` (rank 0 also the weights and outputs as safetensors),
and the test compares them with one-process runs. The sections:

- `ddp`: the world model through `LeWMTrainer` under DDP (gloo) at batch 8 per rank, global
  BatchNorm and SIGReg: curves, collapse statistics, evaluation metrics, the samples each rank
  saw, final weights;
- `control`: the same with per-rank BatchNorm (`sync_batchnorm=False`) and SIGReg reduced over
  each rank alone (a one-rank process group): it must *not* match one process;
- `nonfinite`: rank 1's loss is NaN at step 3 only: both ranks must skip that step;
- `gather`: `gather_rows` with ranks of different shapes;
- `fsdp2`, `fsdp2_bf16`: `fully_shard` (FSDP2, DTensor parameters) over gloo, fp32 and bf16
  parameters (`MixedPrecisionPolicy`), a full state dict saved as safetensors.
- `streaming`: the world model on its streamed training split (`dataset_streaming`) at batch 8
  per rank: the samples each rank saw and the loss curve.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from common import (
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
    write_json,
)
from safetensors.torch import save_file
from transformers import TrainerCallback

from lewm_hf import LeWMTrainer
from lewm_hf import metric_keys as K
from lewm_hf.distributed import convert_to_global_batchnorm, gather_rows, global_batchnorm_layers

CURVE_KEYS = (K.LOSS, K.PRED_LOSS, K.REG_LOSS, K.NONFINITE_STEPS, "grad_norm")
EVAL_KEYS = (K.EVAL_LOSS, K.EVAL_PRED_LOSS, K.EVAL_REG_LOSS, K.EVAL_PRED_MSE, K.EVAL_COPY_MSE)


def ddp_section(out: Path, rank: int) -> dict:
    collator = RecordingCollator()
    args = make_args(out / "ddp", per_device_train_batch_size=8, per_device_eval_batch_size=8)
    trainer = LeWMTrainer(
        tiny_model(),
        args,
        train_dataset=clip_dataset(128),
        eval_dataset=clip_dataset(32, seed=1),
        data_collator=collator,
    )
    trainer.train()
    batches = collator.batches[:STEPS]  # the dataloader prefetches one batch ahead
    metrics = trainer.evaluate()
    model = trainer.accelerator.unwrap_model(trainer.model)
    if rank == 0:
        save_file(state_dict_cpu(model), str(out / "ddp_weights.safetensors"))
    return {
        "world_size": args.world_size,
        "curves": curves(trainer, CURVE_KEYS),
        "collapse": collapse_curves(trainer),
        "eval": {k: metrics[k] for k in EVAL_KEYS},
        "batches": batches,
        "global_batchnorm": global_batchnorm_layers(model),
        "state_dict_keys": sorted(model.state_dict()),
    }


def streaming_section(out: Path) -> dict:
    collator = RecordingCollator()
    args = make_args(
        out / "streaming",
        per_device_train_batch_size=GLOBAL_BATCH // 2,
        dataset_streaming=True,
        streaming_buffer_size=32,
    )
    trainer = LeWMTrainer(
        tiny_model(), args, train_dataset=clip_dataset(128), data_collator=collator
    )
    trainer.train()
    return {"batches": collator.batches[:STEPS], "curves": curves(trainer, (K.LOSS,))}


def control_section(out: Path, rank: int, world: int) -> dict:
    import lewm_hf.modeling_lewm as modeling

    groups = [dist.new_group([r]) for r in range(world)]  # every rank creates every group
    original = modeling.sigreg
    modeling.sigreg = functools.partial(original, process_group=groups[rank])
    try:
        args = make_args(
            out / "control",
            per_device_train_batch_size=8,
            sync_batchnorm=False,
            collapse_monitor_steps=0,
        )
        trainer = LeWMTrainer(tiny_model(), args, train_dataset=clip_dataset(128), window=W)
        trainer.train()
    finally:
        modeling.sigreg = original
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {
        "curves": curves(trainer, CURVE_KEYS),
        "global_batchnorm": global_batchnorm_layers(model),
    }


class _Snapshots(TrainerCallback):
    def __init__(self, model):
        self.model = model
        self.weights = {}

    def on_step_end(self, args, state, control, **kwargs):
        self.weights[state.global_step] = [p.detach().clone() for p in self.model.parameters()]


def nonfinite_section(out: Path, rank: int) -> dict:
    model = tiny_model()
    trainer = LeWMTrainer(
        model,
        make_args(out / "nonfinite", per_device_train_batch_size=8, max_steps=4),
        train_dataset=clip_dataset(128),
        window=W,
    )
    snapshots = _Snapshots(model)
    trainer.add_callback(snapshots)

    def poison(module, inputs, output):
        # Rank 1 alone gets a NaN loss, at step 3 only: the flag must stop rank 0 too.
        if module.training and rank == 1 and trainer.state.global_step == 2:
            output.loss = output.loss * math.nan
        return output

    handle = model.register_forward_hook(poison)
    trainer.train()
    handle.remove()
    w = snapshots.weights

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(w[a], w[b]))

    return {
        "step3_unchanged": same(2, 3),
        "step4_changed": not same(3, 4),
        "weights_finite": all(torch.isfinite(p).all().item() for p in model.parameters()),
        "bn_finite": all(torch.isfinite(b).all().item() for b in model.buffers()),
        "nonfinite_total": trainer.nonfinite_guard.total,
        "skipped_steps": trainer.nonfinite_guard.skipped_steps,
        "curves": curves(trainer, CURVE_KEYS),
        "final_weights_sum": float(sum(p.double().sum() for p in model.parameters())),
    }


def gather_section(rank: int) -> dict:
    local = torch.full((rank + 1, rank + 2, 3), float(rank + 1))
    gathered = gather_rows(local)
    return {"shape": list(gathered.shape), "row_sums": gathered.sum(dim=(1, 2)).tolist()}


def fsdp_section(out: Path, rank: int, world: int, bf16: bool) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor

    mesh = init_device_mesh("cpu", (world,))
    kwargs = {"mesh": mesh}
    if bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32
        )
    model = convert_to_global_batchnorm(tiny_model())
    # Wrap as the accelerate config's TRANSFORMER_BASED_WRAP would: the model's
    # `_no_split_modules` (the predictor's AdaLNBlock) and the backbone's decoder layers.
    for block in model.predictor.blocks:
        fully_shard(block, **kwargs)
    for layer in model.encoder.layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    dtensor = all(isinstance(p, DTensor) for p in model.parameters())
    batches = fixed_batches(clip_dataset(128), STEPS, GLOBAL_BATCH, rank, world)
    result = manual_training(model, batches)
    result["dtensor_parameters"] = dtensor
    if bf16:
        return result

    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    eval_batch = fixed_batches(clip_dataset(32, seed=1), 1, GLOBAL_BATCH)[0]
    model.eval()
    with torch.no_grad():
        output = model(**eval_batch)
    if rank == 0:
        folder = out / "fsdp_model"
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in full.items()}
        save_file(tensors, str(folder / K.SAFE_WEIGHTS_FILE), metadata={"format": "pt"})
        model.config.save_pretrained(folder)
        save_file(
            {"predictions": output.predictions, "latents": output.latents},
            str(out / "fsdp_outputs.safetensors"),
        )
    result["full_state_dict_keys"] = sorted(full)
    return result


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    out = Path(out_dir)
    rank = int(os.environ["RANK"])
    results: dict = {}
    try:
        results["ddp"] = ddp_section(out, rank)  # initialises the gloo process group
        world = dist.get_world_size()
        results["control"] = control_section(out, rank, world)
        results["nonfinite"] = nonfinite_section(out, rank)
        results["gather"] = gather_section(rank)
        results["fsdp2"] = fsdp_section(out, rank, world, bf16=False)
        results["fsdp2_bf16"] = fsdp_section(out, rank, world, bf16=True)
        results["streaming"] = streaming_section(out)
        dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        write_json(out / f"rank{rank}.json", results)
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
