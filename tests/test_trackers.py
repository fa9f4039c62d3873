"""Training and evaluation numbers reach the local trackers (`report_to`), as `result.json` says.

A tiny two-phase recipe (the walk LM with its compliance gate, then the world model with the
evaluation suite) runs with `report_to: tensorboard` and with `report_to: trackio` (its store
in a temporary `TRACKIO_DIR`, in a subprocess: trackio reads that variable on import). The
numbers are read back from the event files (TensorBoard's `EventAccumulator`) and from
trackio's local SQLite store, and compared with `result.json`: `pred_loss` and `reg_loss` at
every logged step, the collapse statistics, edge and rule compliance with their rule-check
counts, and the evaluation suite's `eval_*` numbers. The control: with the final report
switched off, the suite's numbers are missing from the tracker (they come after
`on_train_end`), while the training curves are there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _builders import TINY_CORPUS, TINY_PHASE_MODEL, tiny_lm_phase
from transformers.integrations.integration_utils import rewrite_logs

from lewm_hf import metric_keys as K
from lewm_hf.errors import LeWMConfigError
from lewm_hf.tasks import base
from lewm_hf.tasks.runner import run_recipe, validate_recipe
from lewm_hf.trainer.lewm_trainer import LeWMTrainer
from lewm_hf.trainer.results import flatten_numbers

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]

LM = tiny_lm_phase(eval_steps=4, gate_num_sequences=32, gate_batch_size=32, gate_min_rule_checks=1)
WORLD_MODEL = {
    "name": "world_model",
    "task": "world_model",
    "encoder_path": "previous",
    "encoder_mode": "frozen",
    **TINY_PHASE_MODEL,
    "num_clips": 128,
    "eval_clips": 64,
    "max_steps": 6,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "save_strategy": "no",
    "eval_strategy": "no",
    "logging_steps": 2,
    "collapse_monitor_steps": 2,
    "evaluation": {"num_items": 32, "num_rollouts": 8, "max_horizon": 2, "num_walks": 16},
    "planning": {"goals_per_distance": 2, "distances": [1], "seeds": [0]},
}


def write_recipe(folder: Path, cache_dir: str, report_to: str) -> Path:
    import yaml

    recipe = {
        "output_dir": str(folder / "run"),
        "seed": 0,
        "disable_tqdm": True,
        "report_to": report_to,
        "project": "lewm-trackers",
        "corpus_preset": "small",
        "corpus": dict(TINY_CORPUS),
        "corpus_cache_dir": cache_dir,
        "phases": [LM, WORLD_MODEL],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def read_events(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the event files under `folder`: tag -> step -> value (last wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            for event in events.Scalars(tag):
                out.setdefault(tag, {})[event.step] = event.value
    return out


def check_against_results(scalars: dict[str, dict[int, float]], run: Path, suite: bool) -> None:
    """The tracker's numbers are `result.json`'s (float32 precision)."""
    lm = json.loads((run / "encoder" / K.RESULT_FILE).read_text())
    wm = json.loads((run / "world_model" / K.RESULT_FILE).read_text())

    def same(tag: str, step: int, value: float) -> None:
        assert tag in scalars, f"{tag} missing; have {sorted(scalars)[:20]}"
        assert scalars[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-7), tag

    # Training: pred_loss and reg_loss at every logged step, the collapse statistics.
    for key in (K.PRED_LOSS, K.REG_LOSS):
        c = wm["curves"][key]
        assert c["step"], key
        for step, value in zip(c["step"], c["value"]):
            same(f"train/{key}", step, value)
    stats = wm[K.COLLAPSE_STATISTICS]
    assert {"effective_rank", "gaussian_kl", "target_var_per_dim"} <= set(stats)
    for name, c in stats.items():
        for step, value in zip(c["step"], c["value"]):
            same(f"train/{K.COLLAPSE_PREFIX}{name}", step, value)
    # The gate's compliance and rule-check counts at its evaluation.
    gate_step = LM["eval_steps"]
    for key in (K.EDGE_COMPLIANCE, K.RULE_COMPLIANCE):
        c = lm["curves"][key]
        assert c["step"] == [gate_step]
        same(f"eval/{key}", gate_step, c["value"][0])
    prefix = "" if lm[K.GATE_PASSED] else "final_"
    same(f"eval/{K.RULE_CHECKS}", gate_step, lm[prefix + K.RULE_CHECKS])
    # After training: the evaluation suite's eval_* numbers and the final compliance.
    final = wm["global_step"]
    numbers = {
        k: v
        for k, v in flatten_numbers(wm).items()
        if k.startswith(K.EVAL_PREFIX) and not k.startswith("curves")
    }
    assert any(k.startswith(K.EVAL_ACTION_PREFIX) for k in numbers)
    assert any(k.startswith(K.EVAL_PLAN_PREFIX) for k in numbers)
    tags = rewrite_logs(numbers)
    if not suite:
        missing = [t for t in tags if t not in scalars or final not in scalars[t]]
        assert missing, "the control logged the suite's numbers anyway"
        return
    for value, tag in zip(numbers.values(), tags):
        same(tag, final, value)
    for key in (K.EDGE_COMPLIANCE, K.RULE_COMPLIANCE, K.RULE_CHECKS):
        prefix = "" if lm[K.GATE_PASSED] else "final_"
        same(f"train/{prefix}{key}", lm["global_step"], lm[prefix + key])


def test_tensorboard_carries_the_results(tmp_path, cache_dir, monkeypatch):
    summary = run_recipe(write_recipe(tmp_path / "tb", cache_dir, "tensorboard"))
    run = Path(summary["phases"]["world_model"]["output_dir"]).parent
    check_against_results(read_events(run), run, True)

    # The control: without the final report the suite's numbers never reach the tracker.
    monkeypatch.setattr(LeWMTrainer, "report_result", lambda self, payload: {})
    summary = run_recipe(write_recipe(tmp_path / "control", cache_dir, "tensorboard"))
    run = Path(summary["phases"]["world_model"]["output_dir"]).parent
    check_against_results(read_events(run), run, False)


READ_TRACKIO = """
import json, sys
from trackio.sqlite_storage import SQLiteStorage
project = sys.argv[1]
print(json.dumps({run: SQLiteStorage.get_logs(project, run) for run in SQLiteStorage.get_runs(project)}))
"""


def test_trackio_local_store_carries_the_results(tmp_path, cache_dir):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TRACKIO_DIR": str(tmp_path / "trackio"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    recipe = write_recipe(tmp_path / "tk", cache_dir, "trackio")
    subprocess.run(
        [sys.executable, str(REPO / "recipes" / "train.py"), "--config", str(recipe)],
        env=env,
        check=True,
        cwd=tmp_path,
        capture_output=True,
    )
    out = subprocess.run(
        [sys.executable, "-c", READ_TRACKIO, "lewm-trackers"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    runs = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(runs) == 2, sorted(runs)  # one run per phase
    scalars: dict[str, dict[int, float]] = {}
    for logs in runs.values():
        for entry in logs:
            step = int(entry.get("train/global_step", entry["step"]))
            for tag, value in entry.items():
                if isinstance(value, (int, float)) and tag not in ("step", "train/global_step"):
                    scalars.setdefault(tag, {})[step] = value
    check_against_results(scalars, tmp_path / "tk" / "run", True)


@pytest.mark.parametrize("tracker", ["tensorboard", "trackio"])
def test_a_tracker_that_is_not_installed_fails_before_any_phase(tmp_path, cache_dir, tracker):
    recipe = write_recipe(tmp_path, cache_dir, tracker)
    validate_recipe(recipe)  # the control: installed, the recipe is valid
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(base.LOCAL_TRACKERS, tracker, lambda: False)
        with pytest.raises(LeWMConfigError) as info:
            validate_recipe(recipe)
    assert info.value.field == "report_to" and "lewm_hf[trackers]" in str(info.value)
