"""Environments as transition functions (Gymnasium's Taxi-v4): the state codec, true distances,
random-policy datasets, latent MPC executed in the environment (a perfect model reaches its
goals, the same planner aimed at the wrong goal does not), and action discrimination among the
actions whose next states differ."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")

from lewm_hf import metric_keys as K
from lewm_hf.data.environments import (
    EnvironmentRolloutConfig,
    make_environment,
    rollout_trajectories,
    shortest_distances,
    terminal_states,
    transition_table,
    write_environment_dataset,
)
from lewm_hf.data.environments.taxi import TaxiAdapter
from lewm_hf.data.trajectories import load_trajectories
from lewm_hf.errors import LeWMConfigError, LeWMInputError
from lewm_hf.evaluation.discrimination import ActionCandidates, action_discrimination
from lewm_hf.evaluation.distinct_actions import merge_equal_next_states
from lewm_hf.evaluation.planning_config import PlanningConfig
from lewm_hf.evaluation.planning_env import (
    EnvironmentProblems,
    environment_action_discrimination,
    evaluate_environment_planning,
    evaluate_planning_with,
    random_environment_baseline,
    run_environment_episodes,
    sample_environment_problems,
)
from lewm_hf.evaluation.planning_search import tree_plan
from lewm_hf.modeling_actions import ActionInputs
from lewm_hf.testing_utils import TransitionOracle

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def taxi():
    return make_environment("Taxi-v4")


@pytest.fixture(scope="module")
def table(taxi):
    return transition_table(taxi)


@pytest.fixture(scope="module")
def oracle(taxi, table):
    return TransitionOracle(table[0], taxi.decode)


def test_codec_round_trip_and_token_layout(taxi):
    states = np.arange(500)
    tokens = taxi.encode(states)
    assert tokens.shape == (500, 4) and tokens.min() == 0 and tokens.max() == 18
    np.testing.assert_array_equal(taxi.decode(tokens), states)
    # State 123 decodes to taxi row 1, column 1, passenger at R (0), destination B (3).
    assert taxi.encode(np.array(123)).tolist() == [1, 5 + 1, 10 + 0, 15 + 3]
    # Each field has its own ids: a row id where a column belongs is no Taxi state.
    with pytest.raises(LeWMInputError, match="field 1"):
        taxi.decode(np.array([1, 2, 10, 15]))
    with pytest.raises(LeWMInputError, match="Taxi windows"):
        taxi.decode(np.array([1, 6, 10]))


def test_missing_gymnasium_is_a_typed_error(monkeypatch):
    real_import = builtins.__import__

    def no_gym(name, *args, **kwargs):
        if name == "gymnasium":
            raise ImportError("No module named 'gymnasium'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gym)
    with pytest.raises(LeWMConfigError, match=r'pip install -e "\.\[gym\]"'):
        TaxiAdapter()
    with pytest.raises(LeWMConfigError, match="must be one of"):
        make_environment("CartPole-v1")


def test_step_is_the_environments_own(taxi, table):
    nxt, done = table
    # From state 123 (row 1, col 1): south moves to row 2, pickup elsewhere than R does nothing.
    row, col, passenger, dest = taxi.encode(np.array(nxt[123, 0])) - np.array([0, 5, 10, 15])
    assert (row, col, passenger, dest) == (2, 1, 0, 3)
    assert nxt[123, 4] == 123 and not done[123, 4]
    # Only a dropoff at the destination terminates; the 4 terminal states are passenger == dest.
    assert done[:, :5].sum() == 0 and done[:, 5].sum() > 0
    terminal = np.flatnonzero(terminal_states(nxt, done))
    fields = taxi.encode(terminal) - np.array([0, 5, 10, 15])
    assert len(terminal) == 4 and (fields[:, 2] == fields[:, 3]).all()


def test_distances_are_consistent_with_the_transitions(table):
    nxt, done = table
    dist = shortest_distances(nxt, done)
    assert (np.diag(dist) == 0).all()
    stop = terminal_states(nxt, done)
    for s in np.flatnonzero(~stop)[:50]:
        for a in range(6):
            t = nxt[s, a]
            # One step never shortens anything by more than one.
            known = (dist[s] >= 0) & (dist[t] >= 0)
            assert (dist[s][known] <= dist[t][known] + 1).all()
    # A destination never changes: a state with another destination is unreachable.
    assert (dist[0, np.arange(500) % 4 != 0] == -1).all()


def test_rollouts_are_rows_of_one_episode_and_deterministic(taxi, table):
    nxt, _ = table
    a = rollout_trajectories(taxi, 3, 30, 4, seed=7)
    b = rollout_trajectories(taxi, 3, 30, 4, seed=7)
    assert a == b
    assert a != rollout_trajectories(taxi, 3, 30, 4, seed=8)
    for states, actions in zip(a["input_ids"], a["actions"]):
        ids = taxi.decode(np.asarray(states))
        assert len(ids) == len(actions) + 1 and 1 <= len(actions) <= 4
        np.testing.assert_array_equal(nxt[ids[:-1], actions], ids[1:])


def test_dataset_files_follow_the_format(tmp_path: Path):
    config = EnvironmentRolloutConfig(train_episodes=4, validation_episodes=2, seed=3)
    summary = write_environment_dataset(config, tmp_path / "taxi")
    # The format's own loader reads and validates both splits.
    train, info = load_trajectories(str(tmp_path / "taxi"), split="train")
    held_out, _ = load_trajectories(str(tmp_path / "taxi"), split="validation")
    assert (info.vocab_size, info.num_actions, info.window_length) == (19, 6, 4)
    assert info.action_type == "discrete" and info.environment == "Taxi-v4"
    assert info.action_names[4] == "pickup"
    assert len(train) == summary[K.TRAIN_ROWS] > 0 and len(held_out) == summary[K.EVAL_ROWS] > 0
    meta = json.loads((tmp_path / "taxi" / K.TRAJECTORY_INFO_FILE).read_text())
    assert meta["format"] == "lewm-trajectories" and meta["version"] == 1
    # Deterministic from the seed: the same config writes the same bytes, another seed does not.
    write_environment_dataset(config, tmp_path / "again")
    other = EnvironmentRolloutConfig(train_episodes=4, validation_episodes=2, seed=4)
    write_environment_dataset(other, tmp_path / "other")
    for split in ("train", "validation"):
        name = f"data/{split}-00000-of-00001.parquet"
        first = (tmp_path / "taxi" / name).read_bytes()
        assert first == (tmp_path / "again" / name).read_bytes()
        assert first != (tmp_path / "other" / name).read_bytes()
    with pytest.raises(LeWMConfigError, match="environment"):
        EnvironmentRolloutConfig(environment="Taxi-v3")


def _problems(table, distance, num=24, seed=0):
    nxt, done = table
    starts = np.flatnonzero(~terminal_states(nxt, done))
    dist = shortest_distances(nxt, done, starts)
    return sample_environment_problems(starts, dist, distance, num, np.random.default_rng(seed))


def test_problems_have_goals_at_the_true_distance(table):
    nxt, done = table
    problems = _problems(table, 5)
    dist = shortest_distances(nxt, done, problems.start)
    np.testing.assert_array_equal(dist[np.arange(24), problems.goal], 5)


@pytest.mark.parametrize("distance", [1, 2, 3])
def test_oracle_mpc_reaches_goals_in_the_environment(taxi, table, oracle, distance):
    problems = _problems(table, distance)
    config = PlanningConfig(planner="exhaustive")
    result = run_environment_episodes(oracle, taxi, problems, distance, config)
    assert result.success.all()
    assert (result.steps == distance).all()
    # The states reached are the environment's own.
    nxt, _ = table
    state = problems.start.copy()
    for step in range(distance):
        state = nxt[state, result.actions[:, step]]
        np.testing.assert_array_equal(state, result.vertices[:, step])


def test_wrong_goal_and_random_actions_fail(taxi, table, oracle):
    problems = _problems(table, 3)
    config = PlanningConfig(planner="exhaustive")
    # The planner aims at another problem's goal; success is still judged on the true goal.
    wrong = EnvironmentProblems(problems.start, np.roll(problems.goal, 1))
    aimed = run_environment_episodes(oracle, taxi, wrong, 3, config)
    reached_true = (aimed.vertices == problems.goal[:, None]).any(1)
    assert reached_true.mean() < 0.3
    random = random_environment_baseline(taxi, problems, 3, np.random.default_rng(0))
    assert random.mean() < 0.3


def test_environment_planning_report(taxi, table, oracle):
    nxt, done = table
    starts = np.flatnonzero(~terminal_states(nxt, done))[:100]
    config = PlanningConfig(distances=[1, 2, 60], goals_per_distance=10, seeds=[0])
    out = evaluate_environment_planning(oracle, taxi, starts, config, plan_horizon=2)
    assert out[K.EVAL_PLAN_SUCCESS] == {"1": 1.0, "2": 1.0}
    assert out[K.EVAL_PLAN_SUCCESS_RANDOM]["2"] < 1.0
    assert out[K.EVAL_PLAN_MISSING_DISTANCES] == [60]
    assert out[K.EVAL_PLAN_ENVIRONMENT] == "Taxi-v4" and out[K.EVAL_PLAN_HORIZON] == 2
    # The transition function decides which planning runs; without one there is none.
    assert K.EVAL_PLAN_SKIPPED in evaluate_planning_with(oracle, None)
    again = evaluate_planning_with(oracle, taxi, config, starts=starts, plan_horizon=2)
    assert again[K.EVAL_PLAN_SUCCESS] == out[K.EVAL_PLAN_SUCCESS]


def _hand_made(latents: torch.Tensor, query: torch.Tensor, target: int) -> ActionCandidates:
    width = latents.shape[0]
    return ActionCandidates(
        z_hist=query.view(1, 1, -1),
        actions=ActionInputs(ids=torch.tensor([[target]])),
        candidate_latents=latents[None],
        candidate_actions=ActionInputs(ids=torch.arange(width)[None]),
        candidate_mask=torch.ones(1, width, dtype=torch.bool),
        target=torch.tensor([target]),
    )


class _Copy(torch.nn.Module):
    """Predicts its input: with `z_hist` set to the true next latent, a perfect prediction."""

    config = type("C", (), {"history_length": 1})()

    def predict(self, z_hist, actions):
        return z_hist


def test_tie_aware_recall_on_a_hand_made_case():
    # Four actions: 0 and 1 lead to the same next state (say walls), 2 and 3 to two others.
    latents = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[7, 7, 8, 9]])
    items = _hand_made(latents, latents[1], target=1)  # the true action is 1, perfectly predicted
    # Among all actions the twins tie: expected rank 1.5, Recall@1 1/2, MRR (1 + 1/2) / 2.
    every = action_discrimination(_Copy(), items)
    assert every["r1"] == pytest.approx(0.5) and every["mrr"] == pytest.approx(0.75)
    merged, kept = merge_equal_next_states(items, keys)
    assert kept.tolist() == [True]
    assert merged.candidate_mask.tolist() == [[True, False, True, True]]
    assert merged.target.tolist() == [0]
    distinct = action_discrimination(_Copy(), merged)
    assert distinct["r1"] == 1.0 and distinct["chance"] == pytest.approx(1 / 3)
    # Distinct next states that the encoder maps to one latent still tie, at expected rank.
    latents[3] = latents[2]
    confused = _hand_made(latents, latents[2], target=2)
    merged, _ = merge_equal_next_states(confused, keys)
    assert action_discrimination(_Copy(), merged)["r1"] == pytest.approx(0.5)
    # An item whose actions all lead to one state says nothing and is dropped.
    merged, kept = merge_equal_next_states(confused, torch.tensor([[5, 5, 5, 5]]))
    assert kept.tolist() == [False] and merged.target.numel() == 0
    with pytest.raises(LeWMInputError, match="next_states"):
        merge_equal_next_states(confused, torch.tensor([[5, 5]]))


def test_oracle_discriminates_every_distinct_action(taxi, oracle):
    rows = rollout_trajectories(taxi, 5, 40, 4, seed=1)
    states = taxi.decode(np.asarray([r[0] for r in rows["input_ids"]]))
    actions = np.asarray([r[0] for r in rows["actions"]])
    out = environment_action_discrimination(oracle, taxi, states, actions)
    assert out[K.EVAL_DISTINCT_ACTION_R1] == 1.0
    assert out[K.EVAL_DISTINCT_ACTION_CHANCE] > 1 / 6
    # With every action a candidate, the no-op twins tie and a perfect model scores below 1.
    assert out[K.EVAL_DISTINCT_ACTION_R1_ALL] < 0.9


def test_taxi_recipe_writes_data_trains_and_evaluates_in_the_environment(tmp_path: Path):
    """The recipe's two phases, shrunk: rollouts, then a world model from the folder with
    `dataset_name`, evaluated on held-out rows and in Taxi itself."""
    import yaml

    from lewm_hf.tasks.runner import run_recipe

    recipe = yaml.safe_load((REPO / "recipes" / "configs" / "taxi_lewm.yaml").read_text())
    recipe["output_dir"] = str(tmp_path / "run")
    data, world = recipe["phases"]
    data.update(train_episodes=6, validation_episodes=2, max_episode_steps=40)
    world.update(
        dataset_name=str(tmp_path / "run" / "data"),
        max_steps=4,
        per_device_train_batch_size=16,
        logging_steps=2,
        collapse_monitor_steps=2,
        disable_tqdm=True,
        report_to="none",
        evaluation={"num_items": 32, "num_rollouts": 8, "sigreg_num_slices": 16},
        # The recipe's planner (tree), on fewer goals.
        environment_planning={
            **world["environment_planning"],
            "distances": [1, 2],
            "goals_per_distance": 4,
        },
        discrimination_items=64,
    )
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    summary = run_recipe(tmp_path / "recipe.yaml")
    rollouts, model = summary["phases"]["data"], summary["phases"]["world_model"]
    assert rollouts[K.TRAIN_ROWS] > 0 and rollouts["environment"] == "Taxi-v4"
    assert model[K.EVAL_COPY_MSE] > 0 and model[K.TRAIN_ROWS] == rollouts[K.TRAIN_ROWS]
    result = json.loads((tmp_path / "run" / "world_model" / K.RESULT_FILE).read_text())
    assert set(result[K.EVAL_PLAN_SUCCESS]) == {"1", "2"}
    assert set(result[K.EVAL_PLAN_SUCCESS_RANDOM]) == {"1", "2"}
    assert result[K.EVAL_PLAN_ENVIRONMENT] == "Taxi-v4"
    assert 0 <= result[K.EVAL_DISTINCT_ACTION_R1] <= 1
    assert result[K.EVAL_DISTINCT_ACTION_CHANCE] > 1 / 6
    assert K.EVAL_ACTION_R1 in result  # the dataset's own evaluation ran too


def test_two_dataset_folders_of_the_same_name_are_not_confused(tmp_path: Path):
    small = EnvironmentRolloutConfig(train_episodes=2, validation_episodes=1, seed=1)
    large = EnvironmentRolloutConfig(train_episodes=5, validation_episodes=1, seed=2)
    rows = {}
    for name, config in (("a", small), ("b", large)):
        written = write_environment_dataset(config, tmp_path / name / "data")
        loaded, _ = load_trajectories(str(tmp_path / name / "data"), split="train")
        rows[name] = (written[K.TRAIN_ROWS], len(loaded))
    assert rows["a"][0] == rows["a"][1] and rows["b"][0] == rows["b"][1]
    assert rows["a"][0] != rows["b"][0]
    # A folder written again is read again.
    written = write_environment_dataset(small, tmp_path / "b" / "data")
    loaded, _ = load_trajectories(str(tmp_path / "b" / "data"), split="train")
    assert len(loaded) == written[K.TRAIN_ROWS] == rows["a"][0]


@pytest.mark.parametrize("distance", [6, 8])
def test_tree_planner_searches_the_whole_budget_over_distinct_states(taxi, table, oracle, distance):
    # One-hot latents say nothing about how far a goal is, so a 3-step search cannot see a goal
    # 6-8 steps away; the tree planner imagines every distinct state within the budget.
    problems = _problems(table, distance, num=12)
    tree = PlanningConfig(planner="tree", merge_radius=1e-4)
    result = run_environment_episodes(oracle, taxi, problems, distance, tree)
    assert result.success.all() and (result.steps == distance).all()
    short = run_environment_episodes(
        oracle, taxi, problems, distance, PlanningConfig(planner="exhaustive"), plan_horizon=3
    )
    assert short.success.mean() < 0.5


def test_tree_planner_merges_equal_imagined_states(table, oracle):
    calls = []
    predict = oracle.predict

    def counting(z_hist, actions):
        calls.append(z_hist.shape[0])
        return predict(z_hist, actions)

    problem = _problems(table, 5, num=1)
    start, goal = int(problem.start[0]), int(problem.goal[0])
    oracle.predict = counting
    try:
        plan = tree_plan(
            oracle, torch.eye(500)[[start]][:, None], torch.zeros(1, 0, dtype=torch.long),
            torch.eye(500)[[goal]],
            torch.ones(1, 6, dtype=torch.bool), 6, merge_radius=1e-4, max_nodes=256,
        )  # fmt: skip
    finally:
        del oracle.predict
    # Taxi has at most 4 moves out of a state and no state twice in the tree: far fewer than
    # the 6 + 36 + ... + 6^6 rows an exhaustive search imagines.
    assert sum(calls) < 6 * 200 and plan.actions.shape == (1, 6)
    nxt, _ = table
    state = start
    for action in plan.actions[0, : int(plan.step[0])].tolist():
        state = nxt[state, action]
    assert state == goal and int(plan.step[0]) == 5 and float(plan.cost[0]) == 0.0
