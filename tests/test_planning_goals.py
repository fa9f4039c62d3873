"""Planning goals that a planner has to find, intervals over (start, goal) pairs, the steps of
successful episodes, and the `wide` graph preset on which goals 5 and 6 moves away exist."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _builders import TINY_CORPUS

from lewm_hf import LeWMConfig, LeWMModel
from lewm_hf import metric_keys as K
from lewm_hf.data.graphs import Graph
from lewm_hf.data.walks import (
    WalkCorpusConfig,
    build_graph_and_jumpers,
    build_walk_corpus,
    generate_walks,
    load_walk_metadata,
)
from lewm_hf.errors import LeWMConfigError
from lewm_hf.evaluation.planning import (
    PlanningConfig,
    evaluate_planning,
    pair_bootstrap_interval,
    random_episodes,
    sample_problems,
    shortest_distances,
    wilson_interval,
)
from lewm_hf.testing_utils import MoveOracle

W, H = 4, 3
REPO = Path(__file__).resolve().parents[1]


def graph_from_lists(neighbours: list[list[int]]) -> Graph:
    n = len(neighbours)
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in neighbours])]).astype(np.int64)
    indices = np.concatenate([sorted(x) for x in neighbours]).astype(np.int32)
    return Graph(indptr, indices, np.zeros(n, np.int32), np.ones(n), 1, 0)


SIX = graph_from_lists([[1, 2], [2, 3], [3], [0, 1, 2, 4, 5], [5], [0, 2, 4]])


@pytest.fixture(scope="module")
def walks() -> np.ndarray:
    return generate_walks(SIX, [], 64, 20, seed=1)


def contains_window(walk: np.ndarray, window: np.ndarray) -> bool:
    w = window.shape[0]
    return any((walk[i : i + w] == window).all() for i in range(walk.shape[0] - w + 1))


# ---- goal windows ------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
def test_walk_goals_are_windows_of_another_walk_ending_at_the_goal(walks, d):
    problems = sample_problems(SIX, walks, W, H, d, 60, np.random.default_rng(d), goal_form="walk")
    dist = shortest_distances(SIX)
    assert (dist[problems.start, problems.goal] == d).all()
    assert (problems.goal_window[:, -1] == problems.goal).all()
    assert (problems.goal_row != problems.start_row).all()
    for window, row, start_row, history in zip(
        problems.goal_window, problems.goal_row, problems.start_row, problems.history
    ):
        assert contains_window(walks[row], window)  # cut from the walk it names
        assert contains_window(walks[start_row], history)
    # Not the start window followed by the path, as the `path` form's goal is.
    path_goal = np.concatenate([problems.history[:, -W:], problems.path], axis=1)[:, -W:]
    assert (path_goal != problems.goal_window).any(1).mean() > 0.5


def test_path_goals_keep_the_start_window_followed_by_the_path(walks):
    problems = sample_problems(SIX, walks, W, H, 2, 40, np.random.default_rng(0))
    expected = np.concatenate([problems.history[:, -W:], problems.path], axis=1)[:, -W:]
    np.testing.assert_array_equal(problems.goal_window, expected)
    assert (problems.goal_row == -1).all()
    with pytest.raises(LeWMConfigError, match="goal_form"):
        sample_problems(SIX, walks, W, H, 2, 4, np.random.default_rng(0), goal_form="start")


def test_both_goal_forms_are_reported_and_the_first_is_the_top_level(walks):
    oracle = MoveOracle(SIX, history_length=H)
    config = PlanningConfig(distances=[1, 2, 3], goals_per_distance=30, seeds=[0, 1],
                            goal_forms=["walk", "path"])  # fmt: skip
    out = evaluate_planning(oracle, SIX, W, walks, config)
    assert out[K.EVAL_PLAN_GOAL_FORM] == "walk"
    assert set(out[K.EVAL_PLAN_BY_GOAL_FORM]) == {"walk", "path"}
    for form in ("walk", "path"):
        numbers = out[K.EVAL_PLAN_BY_GOAL_FORM][form]
        assert numbers[K.EVAL_PLAN_SUCCESS] == {"1": 1.0, "2": 1.0, "3": 1.0}  # a perfect model
        for d in ("1", "2", "3"):
            assert 1 <= numbers[K.EVAL_PLAN_DISTINCT_PAIRS][d] <= 60
            assert numbers[K.EVAL_PLAN_STEPS][d] == float(d)
            assert numbers[K.EVAL_PLAN_STEPS_RATIO][d] == 1.0
    for key in (K.EVAL_PLAN_SUCCESS, K.EVAL_PLAN_CI, K.EVAL_PLAN_STEPS, K.EVAL_PLAN_DISTINCT_PAIRS):
        assert out[key] == out[K.EVAL_PLAN_BY_GOAL_FORM]["walk"][key]
    only_path = evaluate_planning(
        oracle, SIX, W, walks, PlanningConfig(distances=[2], goals_per_distance=10, seeds=[0],
                                              goal_forms=["path"])
    )  # fmt: skip
    assert only_path[K.EVAL_PLAN_GOAL_FORM] == "path"
    assert set(only_path[K.EVAL_PLAN_BY_GOAL_FORM]) == {"path"}
    with pytest.raises(LeWMConfigError, match="goal_forms"):
        PlanningConfig(goal_forms=["walk", "walk"])
    with pytest.raises(LeWMConfigError, match="goal_forms"):
        PlanningConfig(goal_forms=["start"])


# ---- steps ---------------------------------------------------------------------------------------


def test_random_episode_steps_on_a_cycle():
    # A directed 5-cycle: the only move goes on, so goal k is reached in exactly k steps.
    cycle = graph_from_lists([[1], [2], [3], [4], [0]])
    start = np.zeros(4, dtype=np.int64)
    reached, steps = random_episodes(
        cycle, start, np.array([1, 2, 3, 4]), 3, np.random.default_rng(0)
    )
    np.testing.assert_array_equal(reached, [True, True, True, False])
    np.testing.assert_array_equal(steps, [1, 2, 3, 3])


def test_steps_of_successes_for_the_planner_and_for_random_moves(walks):
    """With slack, a perfect model under exhaustive search still arrives in d steps (ratio 1);
    random walks that succeed take at least d steps, and with slack some take more."""
    oracle = MoveOracle(SIX, history_length=H)
    config = PlanningConfig(distances=[1, 2], goals_per_distance=40, seeds=[0], budget_slack=3,
                            planner="exhaustive")  # fmt: skip
    out = evaluate_planning(oracle, SIX, W, walks, config)
    for d in ("1", "2"):
        assert out[K.EVAL_PLAN_STEPS_RATIO][d] == 1.0
        ratio = out[K.EVAL_PLAN_STEPS_RATIO_RANDOM][d]
        assert ratio >= 1.0 and out[K.EVAL_PLAN_STEPS_RANDOM][d] == pytest.approx(ratio * int(d))
    # With three steps of slack, some random walks reach their goal late.
    assert out[K.EVAL_PLAN_STEPS_RATIO_RANDOM]["1"] > 1.0


# ---- intervals -----------------------------------------------------------------------------------


def test_pair_bootstrap_matches_the_binomial_when_pairs_are_distinct():
    rng = np.random.default_rng(0)
    success = rng.random(400) < 0.7
    low, high = pair_bootstrap_interval(np.arange(400), success, resamples=4000, rng=rng)
    w_low, w_high = wilson_interval(int(success.sum()), 400)
    assert low == pytest.approx(w_low, abs=0.01) and high == pytest.approx(w_high, abs=0.01)


def test_pair_bootstrap_widens_when_trials_repeat_pairs():
    """30 pairs drawn 10 times each, every pair always succeeding or always failing: the data hold
    30 independent outcomes, not 300, and the interval says so."""
    pairs = np.repeat(np.arange(30), 10)
    success = np.repeat(np.arange(30) % 2 == 0, 10)
    low, high = pair_bootstrap_interval(pairs, success, rng=np.random.default_rng(0))
    w_low, w_high = wilson_interval(150, 300)  # trials treated as independent
    w30_low, w30_high = wilson_interval(15, 30)
    assert high - low > 2.5 * (w_high - w_low)
    assert high - low == pytest.approx(w30_high - w30_low, rel=0.2)
    assert low < 0.5 < high


def test_pair_bootstrap_at_the_ends_uses_the_number_of_pairs():
    pairs = np.repeat(np.arange(12), 5)
    assert pair_bootstrap_interval(pairs, np.ones(60, bool)) == wilson_interval(12, 12)
    assert pair_bootstrap_interval(pairs, np.zeros(60, bool)) == wilson_interval(0, 12)
    with pytest.raises(LeWMConfigError, match="confidence"):
        pair_bootstrap_interval(pairs, np.ones(60, bool), confidence=1.0)


# ---- the wide preset -----------------------------------------------------------------------------


def test_wide_preset_has_goals_five_and_six_moves_away():
    config = WalkCorpusConfig.preset("wide")
    graph, jumpers = build_graph_and_jumpers(config)
    dist = shortest_distances(graph)
    assert np.isfinite(dist).all() and dist.max() >= 6
    walks = generate_walks(graph, jumpers, 256, config.walk_length, seed=7)  # the suite's size
    for d in (5, 6):
        for form in ("walk", "path"):
            problems = sample_problems(graph, walks, config.context_window, 3, d, 300,
                                       np.random.default_rng(d), dist, goal_form=form)  # fmt: skip
            pairs = set(zip(problems.start.tolist(), problems.goal.tolist()))
            assert len(pairs) >= 50, (d, form, len(pairs))


# ---- recipes/evaluate.py -------------------------------------------------------------------------


def test_evaluate_script_keeps_the_recipes_planning_keys_and_writes_both_goal_forms(tmp_path):
    cache = tmp_path / "cache"
    recipe = tmp_path / "wm.yaml"
    planning = {"distances": [1, 2], "budget_slack": 1, "goals_per_distance": 50}
    recipe.write_text(
        yaml.safe_dump({"task": "world_model", "corpus_preset": "small", "corpus": TINY_CORPUS,
                        "corpus_cache_dir": str(cache), "history_length": 2,
                        "planning": planning})
    )  # fmt: skip
    meta = load_walk_metadata(
        build_walk_corpus(WalkCorpusConfig.preset("small", **TINY_CORPUS), cache)
    )
    torch.manual_seed(0)
    LeWMModel(
        LeWMConfig(vocab_size=meta.graph.num_vertices, d_state=16, d_model=32,
                   projector_hidden=32, history_length=2,
                   action_vocab_size=meta.graph.max_out_degree)
    ).save_pretrained(tmp_path / "model")  # fmt: skip
    main = runpy.run_path(str(REPO / "recipes" / "evaluate.py"))["main"]
    out = tmp_path / "eval.json"
    argv = [
        "--model_path", str(tmp_path / "model"), "--config", str(recipe), "--output", str(out),
        "--evaluation.num_items", "32", "--evaluation.num_rollouts", "8",
        "--evaluation.max_horizon", "2", "--evaluation.num_walks", "32",
        "--planning.goals_per_distance", "6", "--planning.seeds", "[0]",
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads(out.read_text())
    settings = results[K.EVAL_SETTINGS]["planning"]
    # The recipe's distances and slack; the flags' sample (not the recipe's 50 goals).
    assert settings["distances"] == [1, 2] and settings["budget_slack"] == 1
    assert settings["goals_per_distance"] == 6 and settings["goal_forms"] == ["walk", "path"]
    for form in ("walk", "path"):
        numbers = results[K.EVAL_PLAN_BY_GOAL_FORM][form]
        for key in (K.EVAL_PLAN_SUCCESS, K.EVAL_PLAN_CI, K.EVAL_PLAN_SUCCESS_RANDOM,
                    K.EVAL_PLAN_DISTINCT_PAIRS, K.EVAL_PLAN_STEPS, K.EVAL_PLAN_STEPS_RATIO):  # fmt: skip
            assert set(numbers[key]) == {"1", "2"}, (form, key)
