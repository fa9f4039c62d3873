"""What the distributed tests and the scripts they launch share: the tiny world model, clips of a
toy system and training arguments of `tests/_builders.py` with this folder's defaults, a
collator that records which samples each step saw, and the one-process and FSDP2 training
loops.

Imported by `tests/test_distributed.py` (as `_dist_scripts.common`) and by the scripts of this
folder run under torchrun (as `common`, their own folder being first on `sys.path`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from lewm_hf import DataCollatorForLeWM, LeWMModel, LeWMTrainingArguments
from lewm_hf import metric_keys as K

# Under torchrun only this folder is on `sys.path`; the shared builders live one folder up.
TESTS = str(Path(__file__).resolve().parents[1])
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from _builders import W, tiny_clips, tiny_lewm_model, tiny_training_args  # noqa: E402

STEPS = 5
GLOBAL_BATCH = 16

# The distributed runs' training arguments (over `_builders.TINY_TRAINING_ARGS`).
DISTRIBUTED_ARGS: dict[str, Any] = {
    "per_device_train_batch_size": GLOBAL_BATCH,
    "per_device_eval_batch_size": GLOBAL_BATCH,
    # SGD, not AdamW: the biases of the Linear layers just before a BatchNorm (and so the
    # running means after them) get a gradient that is zero up to rounding, which Adam
    # normalises into lr-sized steps of random sign. Under AdamW the losses of one and two
    # processes still agree to 2e-6 but those biases differ by 2.5e-3 after 5 steps.
    "optim": "sgd",
    "learning_rate": 0.05,
    "weight_decay": 0.0,
    "max_steps": STEPS,
    "warmup_steps": 0,
    "lr_schedule": "constant",
    "max_grad_norm": 1.0,
    "collapse_monitor_steps": 1,
    "dataloader_pin_memory": False,
}


def tiny_model(seed: int = 0, **kwargs: Any) -> LeWMModel:
    """The shared tiny LeWM (one-layer Llama encoder), dropout 0 unless given."""
    return tiny_lewm_model(seed, **{"dropout": 0.0, **kwargs})


def clip_dataset(n: int = 128, seed: int = 0) -> Dataset:
    """The shared toy-system clips (next token = last + action + 1 mod VOCAB) with a row `idx`."""
    return tiny_clips(n, seed, idx=True)


def make_args(output_dir: str | Path, **kwargs: Any) -> LeWMTrainingArguments:
    """The shared tiny training arguments with `DISTRIBUTED_ARGS` and `kwargs`."""
    return tiny_training_args(output_dir, **{**DISTRIBUTED_ARGS, **kwargs})


class RecordingCollator(DataCollatorForLeWM):
    """`DataCollatorForLeWM` that records the `idx` of the rows of every training batch."""

    def __init__(self) -> None:
        super().__init__(window=W)
        self.batches: list[list[int]] = []

    def __call__(self, features):
        self.batches.append([int(f["idx"]) for f in features])
        return super().__call__(features)


def train_logs(trainer) -> list[dict[str, float]]:
    """The per-step training log entries (those with a `loss`)."""
    return [e for e in trainer.state.log_history if K.LOSS in e]


def curves(trainer, keys: tuple[str, ...]) -> dict[str, list[float]]:
    logs = train_logs(trainer)
    return {key: [e[key] for e in logs if key in e] for key in keys}


def collapse_curves(trainer) -> dict[str, list[float]]:
    entries = [e for e in trainer.state.log_history if "collapse/effective_rank" in e]
    keys = sorted(k for k in entries[0] if k.startswith(K.COLLAPSE_PREFIX)) if entries else []
    return {key: [e[key] for e in entries] for key in keys}


def state_dict_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def fixed_batches(dataset: Dataset, steps: int, batch: int, rank: int = 0, world: int = 1):
    """Batches `k = 0 .. steps - 1` of `batch` consecutive rows; rank `r` of `world` takes the
    `r`-th contiguous share, so the ranks' shares concatenate to the one-process batch."""
    collator = DataCollatorForLeWM(window=W)
    share = batch // world
    out = []
    for k in range(steps):
        start = k * batch + rank * share
        out.append(collator([dataset[i] for i in range(start, start + share)]))
    return out


def manual_training(model, batches, lr: float = 3e-3, autocast_dtype=None) -> dict[str, list]:
    """AdamW steps on `batches` (the FSDP2 check's loop, also its one-process reference)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    out: dict[str, list] = {"loss": [], "pred_loss": [], "reg_loss": [], "reg_dtype": []}
    for step, batch in enumerate(batches):
        if autocast_dtype is not None:
            with torch.autocast("cpu", dtype=autocast_dtype):
                output = model(**batch, step=step)
        else:
            output = model(**batch, step=step)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for key in ("loss", "pred_loss", "reg_loss"):
            out[key].append(float(getattr(output, key).detach().float()))
        out["reg_dtype"].append(str(output.reg_loss.dtype))
    return out


def write_json(path: str | Path, payload: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=1))
