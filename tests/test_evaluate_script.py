"""`recipes/evaluate.py` on a saved model: the suite's numbers, reproduced exactly."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import torch
import yaml
from _builders import TINY_CORPUS

from lewm_hf import LeWMConfig, LeWMModel
from lewm_hf import metric_keys as K
from lewm_hf.data.walks import WalkCorpusConfig, build_walk_corpus, load_walk_metadata

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
