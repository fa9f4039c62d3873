"""Ray Train: a recipe on a local Ray cluster (2 CPU workers, gloo) through `train_on_ray`.

- parity: 2 Ray workers at batch 8 train like one process at batch 16 (losses and final
  weights within the DDP tests' tolerance); the control (per-rank BatchNorm and SIGReg) does
  not;
- the checkpoints reported to Ray are the Trainer's safetensors checkpoint folders;
- a worker SIGKILLed after the first checkpoint of a recipe's second phase: Ray restarts the
  worker group (`max_failures=1`), the first phase is not run again, the second resumes from
  the reported checkpoint (the new workers train only the steps after it), and both end
  within the parity tolerance.

One local cluster and two Ray runs for the module (starting the workers costs most of a run's
time: each run has two phases); the one-process reference runs in this process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import torch
from _builders import TINY_PHASE_MODEL
from _dist_scripts.ray_callbacks import KillAfterCheckpoint, PerRankSigreg, StepLog
from safetensors.torch import load_file
from test_distributed import CONTROL_MIN_DIFF, PARITY_ATOL, max_diff

from lewm_hf import LeWMModel
from lewm_hf import metric_keys as K
from lewm_hf.tasks.ray_train import (
    RAY_CHECKPOINT_FOLDER,
    RAY_STATE_FILE,
    init_ray,
    train_on_ray,
    worker_runtime_env,
)
from lewm_hf.tasks.runner import run_recipe

TESTS = Path(__file__).resolve().parent
STEPS = 6
SAVE_STEPS = 3
BATCH = 8  # per Ray worker; the reference runs one process at 2 * BATCH
CURVES = (K.TRAIN_LOSS, K.PRED_LOSS, K.REG_LOSS)

PHASE = {
    "name": "world_model",
    "task": "world_model",
    "encoder_path": None,
    "encoder_mode": "train",
    **TINY_PHASE_MODEL,
    "dropout": 0.0,
    "num_clips": 160,
    "eval_clips": 32,
    "per_device_train_batch_size": BATCH,
    "per_device_eval_batch_size": 32,
    "max_steps": STEPS,
    # SGD, as the DDP parity tests (AdamW turns the zero-up-to-rounding gradients of the biases
    # before a BatchNorm into lr-sized steps of random sign).
    "optim": "sgd",
    "learning_rate": 0.05,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "save_strategy": "steps",
    "save_steps": SAVE_STEPS,
    "eval_strategy": "no",
    "run_evaluation": False,
    "collapse_monitor_steps": 1,
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs; its workers import `lewm_hf` from this checkout and the
    callbacks of `tests/_dist_scripts` by name."""
    init_ray(num_cpus=2, include_dashboard=False, runtime_env=worker_runtime_env([TESTS]))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray")


@pytest.fixture(scope="module")
def reference(folder, write_walk_recipe, cache_dir) -> dict:
    """One process at batch 2 * BATCH: its `result.json` and final weights."""
    recipe = write_walk_recipe(folder / "one_process", cache_dir, [PHASE])
    run_recipe(recipe, [("per_device_train_batch_size", 2 * BATCH)])
    return read_run(folder / "one_process" / "run" / "world_model")


def read_run(phase: Path) -> dict:
    return {
        "result": json.loads((phase / K.RESULT_FILE).read_text()),
        "weights": load_file(str(phase / K.SAFE_WEIGHTS_FILE)),
    }


def parity(run: dict, reference: dict) -> dict[str, float]:
    """Max |difference| of each loss curve and of the final weights against the reference."""
    diffs = {}
    for key in CURVES:
        got, expected = run["result"]["curves"][key], reference["result"]["curves"][key]
        assert got["step"] == expected["step"] == list(range(1, STEPS + 1)), key
        diffs[key] = max_diff(got["value"], expected["value"])
    assert run["weights"].keys() == reference["weights"].keys()
    diffs["weights"] = max(max_diff(run["weights"][k], v) for k, v in reference["weights"].items())
    return diffs


def reported_checkpoints(storage: Path) -> dict[tuple[str, int], Path]:
    """The checkpoints reported to Ray, by (phase, step)."""
    found = {}
    for path in storage.iterdir():
        if (path / RAY_STATE_FILE).exists():
            state = json.loads((path / RAY_STATE_FILE).read_text())
            found[state["phase"], state["global_step"]] = path
    return found


def test_two_ray_workers_match_one_process_at_twice_the_batch(
    cluster, folder, reference, write_walk_recipe, cache_dir
):
    """One Ray run of two phases: `world_model` (global statistics) against one process at
    twice the batch, and `control` (per-rank BatchNorm and SIGReg), which must differ."""
    control = {**PHASE, "name": "control", "sync_batchnorm": False}
    recipe = write_walk_recipe(folder / "parity", cache_dir, [PHASE, control])
    summary = train_on_ray(
        recipe,
        num_workers=2,
        storage_path=folder / "parity" / "ray",
        name="parity",
        callbacks=[PerRankSigreg("control")],
    )
    run = folder / "parity" / "run"
    assert summary["phases"]["world_model"]["global_step"] == STEPS
    assert summary["ray"]["restored"] is None
    diffs = parity(read_run(run / "world_model"), reference)
    print("ray parity:", diffs)
    assert all(d <= PARITY_ATOL for d in diffs.values()), diffs
    control_diffs = parity(read_run(run / "control"), reference)
    print("ray control:", control_diffs)
    assert control_diffs[K.TRAIN_LOSS] > CONTROL_MIN_DIFF, control_diffs

    # The checkpoints reported to Ray are the Trainer's checkpoint folders: safetensors weights
    # (loadable as they are), optimizer, both ranks' RNG states, trainer state.
    reported = reported_checkpoints(folder / "parity" / "ray" / "parity")
    phases = ("world_model", "control")
    assert sorted(reported) == sorted((p, s) for p in phases for s in (SAVE_STEPS, STEPS))
    assert Path(summary["ray"]["checkpoint"]) == reported["control", STEPS]
    for (phase, step), path in reported.items():
        hf = path / RAY_CHECKPOINT_FOLDER
        own = run / phase / f"checkpoint-{step}"
        names = sorted(p.name for p in hf.iterdir())
        assert names == sorted(p.name for p in own.iterdir())
        assert {"rng_state_0.pth", "rng_state_1.pth", K.SAFE_WEIGHTS_FILE} <= set(names)
        for name in (K.SAFE_WEIGHTS_FILE, K.CONFIG_FILE, K.TRAINER_STATE_FILE):
            assert (hf / name).read_bytes() == (own / name).read_bytes(), name
    final = LeWMModel.from_pretrained(reported["world_model", STEPS] / RAY_CHECKPOINT_FOLDER)
    weights = read_run(run / "world_model")["weights"]
    for key, value in final.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_lost_worker_restarts_and_resumes_from_the_reported_checkpoint(
    cluster, folder, reference, write_walk_recipe, cache_dir
):
    """Rank 1 is SIGKILLed in the second phase, after its first checkpoint: Ray restarts the
    worker group once; the first phase is not run again and the second resumes from the
    checkpoint reported to Ray, ending within the parity tolerance."""
    recipe = write_walk_recipe(folder / "lost", cache_dir, [PHASE, {**PHASE, "name": "again"}])
    log = folder / "lost" / "log"
    log.mkdir()
    summary = train_on_ray(
        recipe,
        num_workers=2,
        storage_path=folder / "lost" / "ray",
        name="lost_worker",
        max_failures=1,
        callbacks=[StepLog(str(log)), KillAfterCheckpoint(str(log), "again", SAVE_STEPS, rank=1)],
    )
    killed_pid, killed_step = (log / "killed.txt").read_text().split()
    assert int(killed_step) == SAVE_STEPS + 1
    restored = summary["ray"]["restored"]
    assert restored["phase"] == "again" and restored["global_step"] == SAVE_STEPS
    for rank in (0, 1):
        # The first phase ran once, in the first worker group.
        rows = (log / f"steps_world_model_rank{rank}.txt").read_text().split("\n")[:-1]
        assert [int(r.split()[1]) for r in rows] == list(range(1, STEPS + 1))
        first_pid = rows[0].split()[0]
        # The second: steps 1 .. 4 in the first group (killed after 4), 4 .. 6 in the new one,
        # which resumed from the checkpoint of step 3.
        rows = [r.split() for r in (log / f"steps_again_rank{rank}.txt").read_text().split("\n")]
        rows = [r for r in rows if r]
        assert [int(s) for pid, s in rows if pid == first_pid] == [1, 2, 3, 4][: len(rows)]
        later = [(pid, int(s)) for pid, s in rows if pid != first_pid]
        assert len({pid for pid, _ in later}) == 1 and [s for _, s in later] == [4, 5, 6]
        if rank == 1:
            assert first_pid == killed_pid
    assert summary["phases"]["again"]["global_step"] == STEPS
    run = folder / "lost" / "run"
    diffs = {phase: parity(read_run(run / phase), reference) for phase in ("world_model", "again")}
    print("ray lost worker:", diffs)
    assert all(d <= PARITY_ATOL for phase in diffs.values() for d in phase.values()), diffs
