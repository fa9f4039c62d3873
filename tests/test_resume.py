"""Exact resume of a world-model run: SIGKILL after a checkpoint, resume, compare bitwise with an
uninterrupted run (weights, curves, WSD learning rates, collapse alerts); a finished run resumed
again trains no further step. Controls that a run ignoring its checkpoint would fail: the
optimizer steps run after resuming are counted (3 of 6, not 6), and resuming a deliberately
changed copy of the checkpoint changes the result.

The recipe is tiny (128 clips of the `small` preset's graph, the default tiny Llama encoder,
6 steps of 16) and dropout stays on, so the RNG state of the checkpoint matters too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from _builders import TINY_PHASE_MODEL
from safetensors.torch import load_file, save_file
from torch.optim.optimizer import register_optimizer_step_post_hook

from lewm_hf import metric_keys as K
from lewm_hf.tasks.runner import run_recipe

KILL_AFTER_STEP_3 = """
import os, signal, sys
import torch
from lewm_hf.tasks.runner import run_recipe
from lewm_hf.trainer.callbacks import CollapseMonitorCallback

torch.set_num_threads(1)

def on_save(self, args, state, control, **kwargs):
    # Called right after the Trainer wrote checkpoint-<step> (weights, optimizer, RNG, state).
    if state.global_step == 3:
        os.kill(os.getpid(), signal.SIGKILL)

CollapseMonitorCallback.on_save = on_save
run_recipe(sys.argv[1])
"""

PHASE = {
    "name": "world_model",
    "task": "world_model",
    "encoder_path": None,
    "encoder_mode": "train",
    **TINY_PHASE_MODEL,
    "dropout": 0.1,
    "num_clips": 160,
    "eval_clips": 32,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    # 6 steps, not a whole number of epochs: resuming the final checkpoint is where
    # transformers would otherwise train on to the end of the epoch.
    "max_steps": 6,
    "lr_schedule": "wsd",
    "warmup_steps": 2,
    "learning_rate": 3e-3,
    "save_strategy": "steps",
    "save_steps": 3,
    "eval_strategy": "no",
    "run_evaluation": False,
    # Alerts on every drop below the first values: the alert list then depends on the monitor's
    # first values, which must survive the kill.
    "collapse_monitor_steps": 1,
    "collapse_var_ratio": 1.0,
    "collapse_distance_ratio": 1.0,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@contextmanager
def counting_optimizer_steps() -> Iterator[list[int]]:
    """Count every `optimizer.step()` of any torch optimizer in this process: `[count]`."""
    count = [0]

    def hook(optimizer, args, kwargs) -> None:
        count[0] += 1

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def test_killed_world_model_run_resumes_bitwise(tmp_path, write_walk_recipe):
    cache = tmp_path / "corpora"
    killed = write_walk_recipe(tmp_path / "killed", cache, [PHASE])
    full = write_walk_recipe(tmp_path / "full", cache, [PHASE])
    script = tmp_path / "kill_after_step_3.py"
    script.write_text(KILL_AFTER_STEP_3)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(killed)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    out = tmp_path / "killed" / "run" / "world_model"
    state = read_json(out / "checkpoint-3" / K.TRAINER_STATE_FILE)
    assert not (out / K.RESULT_FILE).exists() and not (out / "checkpoint-6").exists()
    saved_monitor = state["stateful_callbacks"]["CollapseMonitorCallback"]["attributes"]
    assert saved_monitor["first_target_var"] is not None  # the monitor's state is checkpointed

    # A copy of the run whose checkpoint-3 weights are changed (scaled by 1.01) before resuming.
    tampered = write_walk_recipe(tmp_path / "tampered", cache, [PHASE])
    tampered_out = tmp_path / "tampered" / "run" / "world_model"
    shutil.copytree(out / "checkpoint-3", tampered_out / "checkpoint-3")
    weights_3 = load_file(str(out / "checkpoint-3" / K.SAFE_WEIGHTS_FILE))
    changed = {k: v * 1.01 if v.is_floating_point() else v for k, v in weights_3.items()}
    save_file(changed, str(tampered_out / "checkpoint-3" / K.SAFE_WEIGHTS_FILE),
              metadata={"format": "pt"})  # fmt: skip

    with counting_optimizer_steps() as resumed_steps:
        resumed = run_recipe(killed, [("resume_from_checkpoint", True)])["phases"]["world_model"]
    with counting_optimizer_steps() as full_steps:
        uninterrupted = run_recipe(full)["phases"]["world_model"]
    full_out = tmp_path / "full" / "run" / "world_model"
    # The resumed run trained steps 4-6 only: a run that ignored the checkpoint and started
    # again would have run 6 optimizer steps (and, being deterministic, matched all the same).
    assert (resumed_steps[0], full_steps[0]) == (3, 6)

    assert resumed["global_step"] == uninterrupted["global_step"] == 6
    assert_same_weights(out / K.SAFE_WEIGHTS_FILE, full_out / K.SAFE_WEIGHTS_FILE)
    result, expected = read_json(out / K.RESULT_FILE), read_json(full_out / K.RESULT_FILE)
    # Collapse alerts raised before the kill and after the resume, against the same first
    # values: the same list as the uninterrupted run's.
    assert expected["collapse_alerts"], "the thresholds raise no alert: the check is vacuous"
    assert {a["step"] for a in expected["collapse_alerts"]} & {4, 5, 6}
    assert result["collapse_alerts"] == expected["collapse_alerts"]
    for name in (K.TRAIN_LOSS, K.PRED_LOSS, K.REG_LOSS, K.LR_MULTIPLIER):
        assert result["curves"][name]["step"] == [1, 2, 3, 4, 5, 6], name
        assert result["curves"][name] == expected["curves"][name], name
    # The WSD warmup and decay are those of the uninterrupted schedule (checked at every step by
    # `WSDSchedulerCallback` too).
    assert result["curves"][K.LR_MULTIPLIER]["value"][:2] == [0.5, 1.0]

    # The changed checkpoint is what the resumed run continues from: same step count, the
    # logged curves of steps 1-3 (read from the checkpoint's state), other losses and weights after.
    with counting_optimizer_steps() as tampered_steps:
        run_recipe(tampered, [("resume_from_checkpoint", True)])
    assert tampered_steps[0] == 3
    changed_result = read_json(tampered_out / K.RESULT_FILE)
    loss, changed_loss = (r["curves"][K.TRAIN_LOSS]["value"] for r in (expected, changed_result))
    assert changed_loss[:3] == loss[:3]
    assert all(a != b for a, b in zip(changed_loss[3:], loss[3:])), (changed_loss, loss)
    changed_final = load_file(str(tampered_out / K.SAFE_WEIGHTS_FILE))
    final_full = load_file(str(full_out / K.SAFE_WEIGHTS_FILE))
    assert any(not torch.equal(changed_final[k], final_full[k]) for k in final_full)

    # Resuming the final checkpoint (max_steps reached) trains no further step.
    weights = load_file(str(out / K.SAFE_WEIGHTS_FILE))
    with counting_optimizer_steps() as again_steps:
        again = run_recipe(killed, [("resume_from_checkpoint", True)])["phases"]["world_model"]
    assert again["global_step"] == 6 and again_steps[0] == 0
    result = read_json(out / K.RESULT_FILE)
    assert result["curves"][K.TRAIN_LOSS] == expected["curves"][K.TRAIN_LOSS]
    assert result["collapse_alerts"] == expected["collapse_alerts"]
    final = load_file(str(out / K.SAFE_WEIGHTS_FILE))
    assert all(torch.equal(final[k], v) for k, v in weights.items())
