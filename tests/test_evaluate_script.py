"""`recipes/evaluate.py` on a saved model: the suite's numbers, reproduced exactly (walks, and a
trajectory dataset without a graph)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from _builders import TINY_CORPUS

from lewm_hf import LeWMConfig, LeWMModel
from lewm_hf import metric_keys as K
from lewm_hf.data.trajectories import TrajectoryInfo, write_trajectories
from lewm_hf.data.walks import WalkCorpusConfig, build_walk_corpus, load_walk_metadata
from lewm_hf.tasks.runner import run_recipe

REPO = Path(__file__).resolve().parents[1]
TIMING = ("seconds", "per_second")


def test_evaluate_script_reproduces_its_results(tmp_path):
    cache = tmp_path / "cache"
    recipe = tmp_path / "wm.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "task": "world_model",
                "corpus_preset": "small",
                "corpus": TINY_CORPUS,
                "corpus_cache_dir": str(cache),
                "history_length": 2,
            }
        )
    )
    meta = load_walk_metadata(
        build_walk_corpus(WalkCorpusConfig.preset("small", **TINY_CORPUS), cache)
    )
    torch.manual_seed(0)
    model = LeWMModel(
        LeWMConfig(
            vocab_size=meta.graph.num_vertices,
            d_state=16,
            d_model=32,
            projector_hidden=32,
            history_length=2,
            action_vocab_size=meta.graph.max_out_degree,
        )
    )
    model.save_pretrained(tmp_path / "model")
    main = runpy.run_path(str(REPO / "recipes" / "evaluate.py"))["main"]
    argv = [
        "--model_path", str(tmp_path / "model"), "--config", str(recipe),
        "--evaluation.num_items", "64", "--evaluation.num_rollouts", "16",
        "--evaluation.max_horizon", "3", "--evaluation.num_walks", "32",
        "--planning.goals_per_distance", "4", "--planning.distances", "[1, 2]",
        "--planning.seeds", "[0]",
    ]  # fmt: skip
    outputs = []
    for i in range(2):
        out = tmp_path / f"eval_{i}.json"
        assert main([*argv, "--output", str(out)]) == 0
        outputs.append(json.loads(out.read_text()))
    first, second = outputs
    numbers = {k: v for k, v in first.items() if k != "command" and not any(t in k for t in TIMING)}
    assert {k: second[k] for k in numbers} == numbers
    assert numbers[K.EVAL_SETTINGS]["planning"]["goals_per_distance"] == 4
    assert set(numbers[K.EVAL_PLAN_SUCCESS]) == {"1", "2"}
    assert len(numbers[K.EVAL_ROLLOUT_L2]) == 3
    assert first["command"].startswith("python recipes/evaluate.py --model_path")
    # An untrained predictor is the copy baseline: it ranks candidates as copy does.
    assert numbers[K.EVAL_ACTION_R1] == numbers[K.EVAL_ACTION_R1_COPY]


def test_evaluate_script_needs_a_model_path(capsys):
    main = runpy.run_path(str(REPO / "recipes" / "evaluate.py"))["main"]
    assert main([]) == 2
    assert "model_path" in capsys.readouterr().err


def test_evaluate_script_reads_a_trajectory_model_its_recipe_and_dataset(tmp_path, monkeypatch):
    # A trajectory_world_model phase on episodes longer than its history (clips), evaluated
    # after training; the script, given only the model, reads the recipe saved beside it.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")
    rng = np.random.default_rng(0)
    info = TrajectoryInfo(vocab_size=12, num_actions=4, window_length=3)
    for split, count in (("train", 12), ("test", 4)):
        steps = rng.integers(10, 20, size=count)
        rows = {
            "input_ids": [rng.integers(0, 12, (k + 1, 3)).tolist() for k in steps],
            "actions": [rng.integers(0, 4, k).tolist() for k in steps],
        }
        write_trajectories(rows, info, tmp_path / "data", split)
    evaluation = {"num_items": 16, "num_rollouts": 4, "max_horizon": 3}
    phase = {
        "name": "world_model",
        "task": "trajectory_world_model",
        "dataset_name": str(tmp_path / "data"),
        "encoder_path": None,
        "history_length": 4,
        "clip_stride": 2,
        "d_state": 16,
        "d_model": 32,
        "predictor_layers": 1,
        "predictor_heads": 2,
        "projector_hidden": 32,
        "sigreg_num_slices": 64,
        "max_steps": 2,
        "save_strategy": "no",
        "run_evaluation": True,
        "evaluation": evaluation,
    }
    recipe = {"output_dir": str(tmp_path / "run"), "seed": 0, "disable_tqdm": True}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({**recipe, "phases": [phase]}))
    torch.set_num_threads(1)
    run_recipe(tmp_path / "recipe.yaml")
    model = tmp_path / "run" / "world_model"
    trained = json.loads((model / K.RESULT_FILE).read_text())

    main = runpy.run_path(str(REPO / "recipes" / "evaluate.py"))["main"]
    assert main(["--model_path", str(model)]) == 0
    got = json.loads((model / K.EVAL_RESULTS_FILE).read_text())
    # The numbers of the evaluation that ran after training, from the saved model.
    for key in (K.EVAL_ACTION_R1, K.EVAL_ACTION_MRR, K.EVAL_SURPRISE_AUROC, K.EVAL_ROLLOUT_L2):
        assert got[key] == pytest.approx(trained[key], abs=1e-6), key
    assert got[K.EVAL_ROLLOUT_HORIZONS] == [1, 2, 3]
    settings = got[K.EVAL_SETTINGS]
    assert settings["evaluation"]["num_items"] == 16
    assert settings["dataset"]["clip_stride"] == 2 and settings["dataset"]["history_length"] == 4
    assert got["config"] == str(model / K.RECIPE_FILE)
    # Overrides apply; planning does not exist without a graph.
    out = tmp_path / "more.json"
    argv = ["--model_path", str(model), "--evaluation.max_horizon", "2", "--output", str(out)]
    assert main(argv) == 0
    assert json.loads(out.read_text())[K.EVAL_ROLLOUT_HORIZONS] == [1, 2]
    assert main(["--model_path", str(model), "--planning.seeds", "[0]"]) == 2
