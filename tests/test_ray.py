"""Ray Train: a recipe on a local Ray cluster (2 CPU workers, gloo) through `train_on_ray`.

One Ray run (`max_failures=1`) of a recipe of three phases, each the same tiny world model at
batch 8 per worker, checked against one process at batch 16 (run here):

- `world_model`: the parity check, losses and final weights within the DDP tests' tolerance;
- `control`: per-rank BatchNorm (`sync_batchnorm: false`) and SIGReg (`PerRankSigreg`): it
  must differ;
- `again`: rank 1 is SIGKILLed after the phase's first checkpoint; Ray restarts the worker
  group, the finished phases are not run again, `again` resumes from the checkpoint reported to
  Ray (the new workers train only the steps after it) and ends within the parity tolerance.

The checkpoints reported to Ray are the Trainer's safetensors checkpoint folders. Starting Ray
workers (importing torch and transformers) costs most of the time, so the module starts one
local cluster and one run.
"""

from __future__ import annotations

import json
import os
import runpy
import tempfile
import time
from pathlib import Path

import pytest
import ray
import ray.train
import torch
from _builders import TINY_PHASE_MODEL
from _dist_scripts.ray_callbacks import KillAfterCheckpoint, PerRankSigreg, StepLog
from safetensors.torch import load_file
from test_distributed import CONTROL_MIN_DIFF, PARITY_ATOL, max_diff

from lewm_hf import LeWMModel
from lewm_hf import metric_keys as K
from lewm_hf.tasks import ray_train, runner
from lewm_hf.tasks.base import PhaseContext
from lewm_hf.tasks.ray_train import (
    RAY_CHECKPOINT_FOLDER,
    RAY_STATE_FILE,
    RESTORE_PREFIX,
    RayPhaseHooks,
    init_ray,
    train_on_ray,
    worker_runtime_env,
)
from lewm_hf.tasks.runner import run_recipe

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
HEALTH_CHECK = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
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
def worker_tmp(tmp_path_factory) -> Path:
    """The Ray workers' `TMPDIR`: where a restarted worker copies the checkpoint it resumes."""
    return tmp_path_factory.mktemp("worker_tmp")


@pytest.fixture(scope="module")
def cluster(worker_tmp):
    """A local Ray cluster of 2 CPUs; its workers import `lewm_hf` from this checkout and the
    callbacks of `tests/_dist_scripts` by name, and keep their temporary files in `worker_tmp`."""
    # The controller polls the workers every 2 s by default: a run's end and a lost worker are
    # seen sooner with 0.5 s (read by the controller from the driver's environment).
    saved = os.environ.get(HEALTH_CHECK)
    os.environ[HEALTH_CHECK] = "0.5"
    runtime_env = worker_runtime_env([TESTS])
    runtime_env["env_vars"]["TMPDIR"] = str(worker_tmp)
    init_ray(num_cpus=2, include_dashboard=False, runtime_env=runtime_env)
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop(HEALTH_CHECK)
    else:
        os.environ[HEALTH_CHECK] = saved


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


@pytest.fixture(scope="module")
def ray_run(cluster, folder, reference, write_walk_recipe, cache_dir) -> dict:
    """The Ray run of the three phases: its summary, output dir, Ray storage and step log."""
    phases = [
        PHASE,
        {**PHASE, "name": "control", "sync_batchnorm": False},
        {**PHASE, "name": "again"},
    ]
    recipe = write_walk_recipe(folder / "ray_run", cache_dir, phases)
    log = folder / "ray_run" / "log"
    log.mkdir()
    start = time.perf_counter()
    summary = train_on_ray(
        recipe,
        num_workers=2,
        storage_path=folder / "ray_run" / "ray",
        name="ray_run",
        max_failures=1,
        callbacks=[
            StepLog(str(log)),
            PerRankSigreg("control"),
            KillAfterCheckpoint(str(log), "again", SAVE_STEPS, rank=1),
        ],
    )
    print(f"Ray run: {time.perf_counter() - start:.1f} s")
    return {
        "summary": summary,
        "run": folder / "ray_run" / "run",
        "storage": folder / "ray_run" / "ray" / "ray_run",
        "log": log,
    }


def test_two_ray_workers_match_one_process_at_twice_the_batch(ray_run, reference):
    summary = ray_run["summary"]
    assert summary["phases"]["world_model"]["global_step"] == STEPS
    diffs = parity(read_run(ray_run["run"] / "world_model"), reference)
    print("Ray parity:", diffs)
    assert all(d <= PARITY_ATOL for d in diffs.values()), diffs


def test_control_with_per_rank_statistics_differs(ray_run, reference):
    """Per-rank BatchNorm and SIGReg: the parity comparison would fail, so it can."""
    diffs = parity(read_run(ray_run["run"] / "control"), reference)
    print("Ray control:", diffs)
    assert diffs[K.TRAIN_LOSS] > CONTROL_MIN_DIFF, diffs


def test_checkpoints_reported_to_ray_are_the_trainers_folders(ray_run):
    """Safetensors weights (loadable as they are), optimizer, both ranks' RNG states, trainer
    state: the files of the Trainer's `checkpoint-<step>`, byte for byte."""
    reported = reported_checkpoints(ray_run["storage"])
    phases = ("world_model", "control", "again")
    assert sorted(reported) == sorted((p, s) for p in phases for s in (SAVE_STEPS, STEPS))
    assert Path(ray_run["summary"]["ray"]["checkpoint"]) == reported["again", STEPS]
    for (phase, step), path in reported.items():
        hf = path / RAY_CHECKPOINT_FOLDER
        own = ray_run["run"] / phase / f"checkpoint-{step}"
        names = sorted(p.name for p in hf.iterdir())
        assert names == sorted(p.name for p in own.iterdir())
        assert {"rng_state_0.pth", "rng_state_1.pth", K.SAFE_WEIGHTS_FILE} <= set(names)
        for name in (K.SAFE_WEIGHTS_FILE, K.CONFIG_FILE, K.TRAINER_STATE_FILE):
            assert (hf / name).read_bytes() == (own / name).read_bytes(), name
    final = LeWMModel.from_pretrained(reported["world_model", STEPS] / RAY_CHECKPOINT_FOLDER)
    weights = read_run(ray_run["run"] / "world_model")["weights"]
    for key, value in final.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_lost_worker_restarts_and_resumes_from_the_reported_checkpoint(
    ray_run, reference, worker_tmp
):
    summary, log = ray_run["summary"], ray_run["log"]
    killed_pid, killed_step = (log / "killed.txt").read_text().split()
    assert int(killed_step) == SAVE_STEPS + 1
    restored = summary["ray"]["restored"]
    assert restored["phase"] == "again" and restored["global_step"] == SAVE_STEPS
    # The restarted worker's local copy of the checkpoint was in its TMPDIR, and is gone.
    copy = Path(restored["local_copy"])
    assert copy.parent == worker_tmp and copy.name.startswith(RESTORE_PREFIX)
    assert not copy.exists() and not list(worker_tmp.glob(RESTORE_PREFIX + "*"))
    for rank in (0, 1):
        steps = {}
        for phase in ("world_model", "control", "again"):
            rows = (log / f"steps_{phase}_rank{rank}.txt").read_text().split()
            steps[phase] = list(zip(rows[::2], map(int, rows[1::2])))
        # The finished phases ran once, in the first worker group.
        first_pid = steps["world_model"][0][0]
        for phase in ("world_model", "control"):
            assert steps[phase] == [(first_pid, s) for s in range(1, STEPS + 1)], phase
        # `again`: steps 1 .. 4 in the first group (rank 1 killed after step 4), then 4 .. 6 in
        # one new process, resumed from the checkpoint of step 3.
        first = [s for pid, s in steps["again"] if pid == first_pid]
        assert first == [1, 2, 3, 4][: len(first)] and len(first) >= SAVE_STEPS
        later = [(pid, s) for pid, s in steps["again"] if pid != first_pid]
        assert len({pid for pid, _ in later}) == 1 and [s for _, s in later] == [4, 5, 6]
        if rank == 1:
            assert first_pid == killed_pid
    assert summary["phases"]["again"]["global_step"] == STEPS
    again = read_run(ray_run["run"] / "again")
    diffs = parity(again, reference)
    print("Ray lost worker:", diffs)
    assert all(d <= PARITY_ATOL for d in diffs.values()), diffs
    # Bitwise what the same run's uninterrupted `world_model` phase (the same keys) ended with:
    # the optimizer, scheduler and both ranks' RNG states came back from the Ray checkpoint.
    uninterrupted = read_run(ray_run["run"] / "world_model")
    for key in CURVES:
        assert again["result"]["curves"][key] == uninterrupted["result"]["curves"][key], key
    for key, value in uninterrupted["weights"].items():
        assert torch.equal(again["weights"][key], value), key


def test_train_ray_script_splits_its_flags_and_checks_the_recipe_before_ray(
    tmp_path, write_walk_recipe, cache_dir, capsys
):
    script = runpy.run_path(str(REPO / "recipes" / "train_ray.py"))
    flags, rest = script["split_launcher_flags"](
        [
            "--num_workers",
            "4",
            "--learning_rate",
            "1e-3",
            "--use_gpu",
            "--name=x",
            "--max_failures",
            "2",
        ]
    )
    assert flags == {"use_gpu": True, "num_workers": 4, "name": "x", "max_failures": 2}
    assert rest == ["--learning_rate", "1e-3"]
    recipe = write_walk_recipe(tmp_path, cache_dir, [PHASE])
    # A bad key fails before any Ray worker starts (Ray is not even initialised here).
    assert script["main"](["--config", str(recipe), "--no_such_key", "1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert script["main"](["--num_workers", "two"]) == 2


def reported(folder: Path, phase: str, step: int) -> ray.train.Checkpoint:
    """A checkpoint as `LeWMRayReportCallback` reports it: the HF folder and the run state."""
    (folder / RAY_CHECKPOINT_FOLDER).mkdir(parents=True)
    (folder / RAY_CHECKPOINT_FOLDER / K.CONFIG_FILE).write_text("{}")
    state = {"phase": phase, "index": 1, "global_step": step, "finished": {"first": {}}}
    (folder / RAY_STATE_FILE).write_text(json.dumps(state))
    return ray.train.Checkpoint.from_directory(str(folder))


def test_the_local_copy_of_a_restored_checkpoint_is_removed(tmp_path, monkeypatch):
    """No Ray cluster: `ray.train.get_checkpoint` gives a reported checkpoint, as after a
    restart. The copy lives until the phase it resumes has finished, or the worker's run ends
    (here with an error in that phase)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    checkpoint = reported(tmp_path / "reported", "again", SAVE_STEPS)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: checkpoint)

    hooks = RayPhaseHooks()
    restored = hooks.restore()
    assert restored.phase == "again" and restored.finished == {"first": {}}
    assert Path(restored.checkpoint).parent.parent == tmp
    assert (Path(restored.checkpoint) / K.CONFIG_FILE).read_text() == "{}"
    hooks.phase_finished(PhaseContext(name="first", index=0), {})
    assert Path(restored.checkpoint).is_dir()  # the restored phase has not run yet
    hooks.phase_finished(PhaseContext(name="again", index=1), {})
    assert list(tmp.iterdir()) == []

    # A worker whose restored phase fails leaves no copy behind either.
    def failing_run(config, overrides, hooks):
        assert Path(hooks.restore().checkpoint).is_dir()
        raise RuntimeError("the phase failed")

    monkeypatch.setattr(runner, "run_recipe", failing_run)
    with pytest.raises(RuntimeError, match="the phase failed"):
        ray_train._train_loop_per_worker(
            {"config": "recipe.yaml", "overrides": [], "use_gpu": True}
        )
    assert list(tmp.iterdir()) == []
