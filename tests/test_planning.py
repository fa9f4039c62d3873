"""Tests of the latent planners and the planning evaluation (perfect oracles, tiny graphs)."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from lewm_hf import metric_keys as K
from lewm_hf.configuration_lewm import LeWMConfig
from lewm_hf.data.graphs import Graph
from lewm_hf.data.walks import generate_walks
from lewm_hf.determinism import derive_seed
from lewm_hf.errors import LeWMConfigError, LeWMInputError
from lewm_hf.evaluation.held_out import neighbor_table
from lewm_hf.evaluation.inference import imagine_latents
from lewm_hf.evaluation.planning import evaluate_planning, random_baseline, wilson_interval
from lewm_hf.evaluation.planning_config import PlanningConfig
from lewm_hf.evaluation.planning_episodes import run_episodes
from lewm_hf.evaluation.planning_problems import sample_problems, shortest_distances
from lewm_hf.evaluation.planning_search import (
    all_sequences,
    cem_plan,
    exhaustive_plan,
    rank_prior,
    sequence_costs,
)
from lewm_hf.modeling_lewm import LeWMModel
from lewm_hf.testing_utils import MoveOracle

W, H = 4, 3


def graph_from_lists(neighbours: list[list[int]]) -> Graph:
    n = len(neighbours)
    indptr = np.concatenate([[0], np.cumsum([len(x) for x in neighbours])]).astype(np.int64)
    indices = np.concatenate([sorted(x) for x in neighbours]).astype(np.int32)
    return Graph(indptr, indices, np.zeros(n, np.int32), np.ones(n), 1, 0)


# Six vertices, strongly connected, out-degrees 1..5 (so ranks can be invalid at most vertices),
# distances up to 3.
SIX = graph_from_lists([[1, 2], [2, 3], [3], [0, 1, 2, 4, 5], [5], [0, 2, 4]])


def bfs(graph: Graph, source: int) -> dict[int, int]:
    seen = {source: 0}
    queue = deque([source])
    while queue:
        v = queue.popleft()
        for u in graph.neighbors(v).tolist():
            if u not in seen:
                seen[u] = seen[v] + 1
                queue.append(u)
    return seen


@pytest.fixture(scope="module")
def walks() -> np.ndarray:
    return generate_walks(SIX, [], 64, 20, seed=1)


def first_valid(graph: Graph, vertices) -> torch.Tensor:
    degree = torch.from_numpy(graph.out_degree[np.asarray(vertices)])
    return torch.arange(graph.max_out_degree)[None] < degree[:, None]


def history_of(oracle: MoveOracle, vertices) -> tuple[torch.Tensor, torch.Tensor]:
    """A one-step true history (T0 = 1) at each vertex, no past actions."""
    z = oracle.embedding[torch.as_tensor(vertices)].unsqueeze(1)  # (P, 1, D)
    return z, torch.zeros(len(vertices), 0, dtype=torch.long)


# ---- statistics ------------------------------------------------------------------------------


def test_wilson_interval_known_values():
    # statsmodels.stats.proportion.proportion_confint(8, 10, method="wilson")
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4901625, abs=1e-6)
    assert high == pytest.approx(0.9433178, abs=1e-6)
    # Zero successes: [0, z^2 / (n + z^2)].
    z = 1.959963984540054
    assert wilson_interval(0, 10) == pytest.approx((0.0, z * z / (10 + z * z)))
    # Symmetry and a wider 99% interval.
    low, high = wilson_interval(30, 300)
    low_c, high_c = wilson_interval(270, 300)
    assert (low, high) == pytest.approx((1 - high_c, 1 - low_c))
    low99, high99 = wilson_interval(30, 300, confidence=0.99)
    assert low99 < low and high99 > high
    with pytest.raises(LeWMInputError):
        wilson_interval(11, 10)


# ---- planners --------------------------------------------------------------------------------


def test_sequence_costs_match_a_step_by_step_loop():
    g = torch.Generator().manual_seed(0)
    oracle = MoveOracle(SIX, embedding=torch.randn(6, 4, generator=g), history_length=2)
    z_hist, past = history_of(oracle, [0, 3])
    z_goal = torch.randn(2, 4, generator=g)
    plans = torch.randint(0, 5, (2, 7, 4), generator=g)
    table = neighbor_table(SIX)
    for cost in ("min", "final"):
        costs, steps = sequence_costs(oracle, z_hist, past, z_goal, plans, cost, max_rows=5)
        for p, start in enumerate([0, 3]):
            for s in range(7):
                v, dists = start, []
                for a in plans[p, s].tolist():
                    v = table[v, a % SIX.out_degree[v]]
                    dists.append(float((oracle.embedding[v] - z_goal[p]).pow(2).sum()))
                want = min(dists) if cost == "min" else dists[-1]
                want_step = dists.index(min(dists)) + 1 if cost == "min" else 4
                assert costs[p, s].item() == pytest.approx(want, rel=1e-5)
                assert steps[p, s].item() == want_step


def test_exhaustive_finds_the_brute_force_optimum_and_masks_the_first_action():
    g = torch.Generator().manual_seed(1)
    oracle = MoveOracle(SIX, embedding=torch.randn(6, 3, generator=g), history_length=H)
    starts = [0, 2, 4]
    z_hist, past = history_of(oracle, starts)
    z_goal = torch.randn(3, 3, generator=g)
    plan = exhaustive_plan(oracle, z_hist, past, z_goal, first_valid(SIX, starts), 3, "final")
    grid = all_sequences(5, 3)
    assert grid.shape == (125, 3)
    for p, start in enumerate(starts):
        valid = grid[grid[:, 0] < SIX.out_degree[start]]
        costs, _ = sequence_costs(oracle, z_hist[p : p + 1], past[p : p + 1], z_goal[p : p + 1],
                                  valid[None], "final")  # fmt: skip
        assert plan.cost[p].item() == pytest.approx(costs.min().item())
        assert plan.actions[p, 0].item() < SIX.out_degree[start]


class ShortcutModel(nn.Module):
    """Latent 0 everywhere except that the (invalid at most vertices) rank 4 reaches latent 1."""

    config = SimpleNamespace(history_length=1, d_state=1)

    def predict(self, z_hist, actions):
        return (actions.ids == 4).float().unsqueeze(-1)


def test_invalid_first_actions_are_never_chosen():
    model = ShortcutModel()
    z_hist = torch.zeros(2, 1, 1)
    past = torch.zeros(2, 0, dtype=torch.long)
    goal = torch.ones(2, 1)
    valid = first_valid(SIX, [0, 3])  # degree 2 and 5: rank 4 is valid only at vertex 3
    for plan in (
        exhaustive_plan(model, z_hist, past, goal, valid, 2),
        cem_plan(model, z_hist, past, goal, valid, 2, samples=32, elites=4,
                 generator=torch.Generator().manual_seed(0)),
    ):  # fmt: skip
        assert plan.actions[0, 0].item() < 2
        assert plan.actions[1, 0].item() == 4  # the shortcut, valid at vertex 3
        assert plan.cost[1].item() == 0.0 and plan.step[1].item() == 1
        # Beyond the first step every rank is imagined: vertex 0 takes the shortcut at step 2.
        assert plan.actions[0, 1].item() == 4 and plan.step[0].item() == 2


def test_cem_finds_the_exhaustive_optimum_in_50_of_50_seeds():
    found, found_one_round = 0, 0
    for seed in range(50):
        g = torch.Generator().manual_seed(1000 + seed)
        oracle = MoveOracle(SIX, embedding=torch.randn(6, 4, generator=g), history_length=H)
        start = [int(torch.randint(0, 6, (1,), generator=g))]
        z_hist, past = history_of(oracle, start)
        z_goal = torch.randn(1, 4, generator=g)
        valid = first_valid(SIX, start)
        best = exhaustive_plan(oracle, z_hist, past, z_goal, valid, 4, "final")  # 625 sequences
        plan = cem_plan(
            oracle, z_hist, past, z_goal, valid, 4, "final", samples=48, elites=6,
            iterations=5, smoothing=0.1, generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        found += bool(torch.isclose(plan.cost, best.cost, rtol=1e-6, atol=1e-7).item())
        one_round = cem_plan(
            oracle, z_hist, past, z_goal, valid, 4, "final", samples=48, elites=6,
            iterations=1, generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        found_one_round += bool(torch.isclose(one_round.cost, best.cost, rtol=1e-6).item())
    assert found == 50
    assert found_one_round < 50  # the refits matter: one round of random samples misses some


class Additive(nn.Module):
    """`z_{t+1} = z_t + e[a_t]`: the final latent depends on every action of the plan."""

    config = SimpleNamespace(history_length=H, d_state=1)

    def __init__(self, embedding: torch.Tensor):
        super().__init__()
        self.embedding = embedding

    def predict(self, z_hist, actions):
        return z_hist + self.embedding[actions.ids]


def test_cem_refits_beat_random_search_of_the_same_budget():
    """A far goal is reached by repeating the best action: one sequence in `deg * 5^3`."""

    def found(smoothing: float) -> int:
        hits = 0
        for seed in range(50):
            model = Additive(torch.randn(5, 1, generator=torch.Generator().manual_seed(seed)))
            z_hist, past = torch.zeros(1, 1, 1), torch.zeros(1, 0, dtype=torch.long)
            goal = torch.full((1, 1), 100.0)
            valid = first_valid(SIX, [seed % 6])
            best = exhaustive_plan(model, z_hist, past, goal, valid, 4, "final")
            plan = cem_plan(
                model, z_hist, past, goal, valid, 4, "final", samples=32, elites=6,
                iterations=6, smoothing=smoothing, generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
            hits += bool(torch.equal(plan.actions, best.actions))
        return hits

    assert found(0.5) == 50
    assert found(1.0) <= 35  # smoothing 1 never refits: 192 uniform samples


def test_mpc_executes_only_valid_first_actions(walks):
    """The model believes rank 4 leads exactly to vertex 2 from anywhere (and every true move
    only approximately): MPC takes it where it is valid and never where it is not."""

    class Shortcut(MoveOracle):
        def predict(self, z_hist, actions):
            approx = 0.9 * super().predict(z_hist, actions)
            return torch.where((actions.ids == 4).unsqueeze(-1), self.embedding[2], approx)

    model = Shortcut(SIX, history_length=H)
    problems = sample_problems(SIX, walks, W, H, 1, 200, np.random.default_rng(0))
    keep = problems.goal == 2
    problems = type(problems)(**{k: v[keep] for k, v in vars(problems).items()})
    config = PlanningConfig(distances=[1], goals_per_distance=1, seeds=[0])
    result = run_episodes(model, SIX, problems, W, 1, config)
    taken = result.actions[:, 0]
    degree = SIX.out_degree[problems.start]
    assert (degree < 5).any() and (degree == 5).any()
    assert (taken[degree == 5] == 4).all()  # the favourite, where valid (at vertex 3)
    assert (taken[degree < 5] < degree[degree < 5]).all()
    np.testing.assert_array_equal(result.vertices[:, 0], neighbor_table(SIX)[problems.start, taken])
    assert result.success[degree < 5].all() and not result.success[degree == 5].any()


def test_cem_is_seeded():
    oracle = MoveOracle(SIX, embedding=torch.randn(6, 4), history_length=H)
    z_hist, past = history_of(oracle, [1, 3])
    goal = torch.randn(2, 4)
    valid = first_valid(SIX, [1, 3])

    def run(seed):
        return cem_plan(oracle, z_hist, past, goal, valid, 3, samples=8, elites=2, iterations=2,
                        generator=torch.Generator().manual_seed(seed)).actions  # fmt: skip

    torch.testing.assert_close(run(5), run(5))


# ---- problems --------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
def test_problems_have_goals_at_the_true_distance(walks, d):
    problems = sample_problems(SIX, walks, W, H, d, 200, np.random.default_rng(d))
    assert problems.history.shape == (200, W + H - 1)
    for p in range(200):
        start, goal = int(problems.start[p]), int(problems.goal[p])
        assert start != goal
        assert bfs(SIX, start)[goal] == d
        path = [start, *problems.path[p].tolist()]
        assert path[-1] == goal
        assert SIX.has_edges(np.array(path[:-1]), np.array(path[1:])).all()
        window = [*problems.history[p].tolist(), *problems.path[p].tolist()][-W:]
        assert problems.goal_window[p].tolist() == window
    # The history is a piece of a walk, and its actions are its neighbour ranks.
    hist = problems.history
    assert SIX.has_edges(hist[:, :-1], hist[:, 1:]).all()
    table = neighbor_table(SIX)
    np.testing.assert_array_equal(table[hist[:, W - 1 : -1], problems.past_actions], hist[:, W:])


def test_shortest_distances_match_bfs():
    dist = shortest_distances(SIX)
    for v in range(6):
        for u, d in bfs(SIX, v).items():
            assert dist[v, u] == d


def test_random_baseline_on_a_cycle():
    cycle = graph_from_lists([[1], [2], [3], [4], [0]])
    start = np.zeros(10, dtype=np.int64)
    goal = np.full(10, 3)
    rng = np.random.default_rng(0)
    assert random_baseline(cycle, start, goal, 3, rng).all()
    assert not random_baseline(cycle, start, goal, 2, rng).any()
    # On SIX: vertex 0 -> {1, 2}; from 0 the goal 1 is hit in one step half the time.
    hits = random_baseline(
        SIX, np.zeros(4000, dtype=np.int64), np.ones(4000, dtype=np.int64), 1, rng
    )
    assert hits.mean() == pytest.approx(0.5, abs=0.03)


# ---- episodes --------------------------------------------------------------------------------


@pytest.mark.parametrize("replan", [True, False])
def test_perfect_model_reaches_every_goal_in_d_steps(walks, replan):
    oracle = MoveOracle(SIX, history_length=H)
    config = PlanningConfig(distances=[1, 2, 3], goals_per_distance=40, seeds=[0, 1],
                            replan=replan)  # fmt: skip
    out = evaluate_planning(oracle, SIX, W, walks, config)
    assert out[K.EVAL_PLAN_SUCCESS] == {"1": 1.0, "2": 1.0, "3": 1.0}
    assert out[K.EVAL_PLAN_SHORTEST_RATE] == {"1": 1.0, "2": 1.0, "3": 1.0}
    assert out[K.EVAL_PLAN_TRIALS] == 80
    for d in ("1", "2", "3"):
        assert out[K.EVAL_PLAN_SUCCESS_RANDOM][d] < 1.0
        low, high = out[K.EVAL_PLAN_CI][d]
        pairs = out[K.EVAL_PLAN_DISTINCT_PAIRS][d]  # every pair succeeded: Wilson over the pairs
        assert low == pytest.approx(wilson_interval(pairs, pairs)[0]) and high == 1.0
        assert out[K.EVAL_PLANS_PER_SECOND][d] > 0
        assert out[K.EVAL_PLAN_SUCCESS_PER_SEED][d] == [1.0, 1.0]
    assert out[K.EVAL_PLAN_MISSING_DISTANCES] == []


def test_mpc_with_cem_and_slack_reaches_goals(walks):
    oracle = MoveOracle(SIX, history_length=H)
    config = PlanningConfig(distances=[2, 3], goals_per_distance=30, seeds=[0], planner="cem",
                            cem_samples=64, cem_elites=8, cem_iterations=3, budget_slack=1)  # fmt: skip
    out = evaluate_planning(oracle, SIX, W, walks, config)
    assert out[K.EVAL_PLAN_SUCCESS] == {"2": 1.0, "3": 1.0}
    assert set(out[K.EVAL_PLAN_PLANNERS]["3"]) == {"cem"}
    # With a step of slack the random baseline does better than without (the same problems and
    # random draws, one more step), the planner no worse and still on shortest paths.
    config.budget_slack = 0
    tight = evaluate_planning(oracle, SIX, W, walks, config)
    assert tight[K.EVAL_PLAN_SUCCESS] == out[K.EVAL_PLAN_SUCCESS]
    for d in ("2", "3"):
        assert out[K.EVAL_PLAN_SUCCESS_RANDOM][d] > tight[K.EVAL_PLAN_SUCCESS_RANDOM][d], d
        assert out[K.EVAL_PLAN_SHORTEST_RATE][d] == 1.0


def test_mpc_plans_once_per_executed_step(walks):
    config = PlanningConfig(distances=[2], goals_per_distance=30, seeds=[0])
    problems = sample_problems(SIX, walks, W, 1, 2, 30, np.random.default_rng(0))
    result = run_episodes(MoveOracle(SIX, history_length=1), SIX, problems, W, 2, config)
    assert result.success.all()
    assert (result.steps == 2).all()
    assert result.plans == 60  # replanned after the first executed step
    open_loop = PlanningConfig(distances=[2], goals_per_distance=30, seeds=[0], replan=False)
    result = run_episodes(MoveOracle(SIX, history_length=1), SIX, problems, W, 2, open_loop)
    assert result.success.all()
    assert result.plans == 30


def test_tiny_lewm_planning_smoke(walks):
    torch.manual_seed(0)
    model = LeWMModel(
        LeWMConfig(
            encoder_config={"model_type": "llama", "vocab_size": 6, "hidden_size": 32,
                            "intermediate_size": 64, "num_hidden_layers": 1,
                            "num_attention_heads": 4, "max_position_embeddings": 16},
            d_state=16, projector_hidden=32, d_model=32, predictor_layers=1, predictor_heads=4,
            history_length=H, action_vocab_size=8, action_hidden=16,
        )
    )  # fmt: skip
    # The shortest-path goal form, whose problems the check below draws again.
    config = PlanningConfig(distances=[1, 2], goals_per_distance=12, seeds=[0, 1],
                            cem_samples=16, cem_elites=4, cem_iterations=2,
                            goal_forms=["path"])  # fmt: skip
    out = evaluate_planning(model, SIX, W, walks, config)
    for key in (K.EVAL_PLAN_SUCCESS, K.EVAL_PLAN_SUCCESS_RANDOM, K.EVAL_PLAN_SHORTEST_RATE,
                K.EVAL_PLAN_CI, K.EVAL_PLANS_PER_SECOND):  # fmt: skip
        assert set(out[key]) == {"1", "2"}, key
    for d in ("1", "2"):
        success = out[K.EVAL_PLAN_SUCCESS][d]
        low, high = out[K.EVAL_PLAN_CI][d]
        assert low <= success <= high
        assert out[K.EVAL_PLAN_SHORTEST_RATE][d] <= success
    # An untrained predictor copies z_t, so every plan costs the same and the first one (all
    # rank 0) is taken: on d = 1 it succeeds exactly where rank 0 leads to the goal.
    table = neighbor_table(SIX)
    hits = []
    for seed in config.seeds:
        rng = np.random.default_rng(derive_seed(seed, "planning-goals-1"))
        problems = sample_problems(SIX, walks, W, H, 1, 12, rng, shortest_distances(SIX))
        hits.append(table[problems.start, 0] == problems.goal)
    assert out[K.EVAL_PLAN_SUCCESS]["1"] == np.concatenate(hits).mean()


def test_planning_config_is_validated_in_one_place():
    for kwargs, name in (
        ({"cem_elites": 300}, "cem_elites"),
        ({"planner": "beam"}, "planner"),
        ({"cost": "sum"}, "cost"),
        ({"distances": [0, 1]}, "distances"),
        ({"distances": [1, 1]}, "distances"),
        ({"goals_per_distance": 0}, "goals_per_distance"),
        ({"cem_smoothing": 1.5}, "cem_smoothing"),
        ({"confidence": 1.0}, "confidence"),
        ({"seeds": []}, "seeds"),
    ):
        with pytest.raises(LeWMConfigError) as err:
            PlanningConfig(**kwargs)
        assert err.value.field == name


def test_fast_preset_is_smaller_and_overridable():
    fast = PlanningConfig.fast(seeds=[4])
    full = PlanningConfig()
    assert fast.goals_per_distance < full.goals_per_distance
    assert fast.cem_samples * fast.cem_iterations < full.cem_samples * full.cem_iterations
    assert fast.seeds == [4] and full.goals_per_distance >= 300 and len(full.seeds) == 3
    with pytest.raises(LeWMConfigError):
        PlanningConfig.fast(cem_elites=500)


def test_missing_strata_are_reported_not_raised(walks):
    oracle = MoveOracle(SIX, history_length=H)
    diameter = int(shortest_distances(SIX).max())
    config = PlanningConfig(distances=[1, diameter + 1], goals_per_distance=5, seeds=[0])
    out = evaluate_planning(oracle, SIX, W, walks, config)
    assert out[K.EVAL_PLAN_MISSING_DISTANCES] == [diameter + 1]
    assert set(out[K.EVAL_PLAN_SUCCESS]) == {"1"}


def test_imagined_rollout_used_by_planning_matches_sequence_costs():
    oracle = MoveOracle(SIX, embedding=torch.randn(6, 3), history_length=2)
    z = oracle.embedding[torch.tensor([[0, 1, 3]])]  # a true history 0 -> 1 -> 3 (ranks 0, 1)
    past = torch.tensor([[0, 1]])
    plan = torch.tensor([[[2, 0]]])
    imagined = imagine_latents(oracle, z, torch.cat([past, plan[0]], 1))
    goal = oracle.embedding[[0]]
    costs, _ = sequence_costs(oracle, z, past, goal, plan, "final")
    assert costs.item() == pytest.approx((imagined[0, -1] - goal[0]).pow(2).sum().item())
    # 3 --rank 2--> 2 --rank 0--> 3 (neighbours of 3: 0, 1, 2, 4, 5; of 2: 3).
    assert oracle.decode(imagined[0]).tolist() == [2, 3]


def test_exact_ties_prefer_the_earliest_arrival(walks):
    """With slack, a perfect model and exhaustive search still take shortest paths: equal (zero)
    costs are broken by the step that attains them."""
    oracle = MoveOracle(SIX, history_length=H)
    config = PlanningConfig(distances=[1, 2], goals_per_distance=40, seeds=[0], budget_slack=2,
                            planner="exhaustive")  # fmt: skip
    out = evaluate_planning(oracle, SIX, W, walks, config)
    assert out[K.EVAL_PLAN_SUCCESS] == {"1": 1.0, "2": 1.0}
    assert out[K.EVAL_PLAN_SHORTEST_RATE] == {"1": 1.0, "2": 1.0}


class CountingOracle(MoveOracle):
    """A perfect model that counts the rows its predictor is asked for."""

    predicted_rows = 0

    def predict(self, z_hist, actions):
        self.predicted_rows += z_hist.shape[0]
        return super().predict(z_hist, actions)


def test_plans_sharing_a_prefix_share_its_imagined_latents():
    g = torch.Generator().manual_seed(3)
    oracle = CountingOracle(SIX, embedding=torch.randn(6, 4, generator=g), history_length=2)
    z_hist, past = history_of(oracle, [0, 3])
    z_goal = torch.randn(2, 4, generator=g)
    num_actions, horizon = 5, 3
    plans = all_sequences(num_actions, horizon).expand(2, -1, -1)  # (2, 125, 3)
    costs, steps = sequence_costs(oracle, z_hist, past, z_goal, plans, "min", max_rows=7)
    # Against the plain rollout of every sequence.
    actions = torch.cat([past.repeat_interleave(125, 0), plans.reshape(-1, horizon)], dim=1)
    imagined = imagine_latents(oracle, z_hist.repeat_interleave(125, 0), actions)
    dist = (imagined - z_goal.repeat_interleave(125, 0)[:, None]).pow(2).sum(-1)
    want, arg = dist.min(dim=1)
    torch.testing.assert_close(costs.reshape(-1), want, rtol=0, atol=0)
    assert torch.equal(steps.reshape(-1), arg + 1)
    # One predictor row per distinct (problem, prefix): 2 * (5 + 25 + 125), not 2 * 3 * 125.
    assert oracle.predicted_rows == 2 * (5 + 25 + 125) + 2 * 3 * 125  # ours, then the plain one


def test_rank_prior_is_the_share_of_vertices_where_a_rank_is_valid():
    # SIX's out-degrees: 2, 2, 1, 5, 1, 3.
    torch.testing.assert_close(
        rank_prior(SIX), torch.tensor([6, 4, 2, 1, 1], dtype=torch.float64) / 6
    )


class Recording(MoveOracle):
    """A perfect model that records the plans it is asked to imagine."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.actions: list[torch.Tensor] = []

    def predict(self, z_hist, actions):
        self.actions.append(actions.ids[:, -1])
        return super().predict(z_hist, actions)


def test_cem_draws_imagined_steps_from_the_prior():
    oracle = Recording(SIX, history_length=1)
    z_hist, past = history_of(oracle, [3])
    valid = first_valid(SIX, [3])
    prior = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0])  # ranks 2..4 never drawn after step 1
    cem_plan(
        oracle, z_hist, past, oracle.embedding[[2]], valid, 3, "final", samples=64, elites=8,
        iterations=1, generator=torch.Generator().manual_seed(0), prior=prior,
    )  # fmt: skip
    first, *later = oracle.actions  # one predictor call per step (distinct prefixes)
    assert set(first.tolist()) == {0, 1, 2, 3, 4}  # step 1: every valid rank at vertex 3
    assert all(set(step.tolist()) <= {0, 1} for step in later)
    with pytest.raises(LeWMInputError, match="prior"):
        cem_plan(oracle, z_hist, past, z_hist[:, 0], valid, 2, prior=torch.ones(3))


class StayOnInvalid(MoveOracle):
    """A model that believes a rank invalid at the vertex leaves it where it is."""

    def predict(self, z_hist, actions):
        vertex = self.decode(z_hist)
        moved = super().predict(z_hist, actions)
        invalid = actions.ids.long() >= self.degree[vertex]
        return torch.where(invalid[..., None], self.embedding[vertex], moved)


def test_degree_prior_finds_paths_that_uniform_samples_miss():
    """A chain 1 -> 2 -> ... -> 11 -> 0 whose hub 0 reaches every vertex: rank 0 is the only
    valid move except at the hub, so the one plan from 1 to 4 ([0, 0, 0]) is one uniform draw in
    121, but about one in three under the degree prior."""
    chain = graph_from_lists([list(range(1, 12))] + [[v + 1] for v in range(1, 11)] + [[0]])
    oracle = StayOnInvalid(chain, history_length=1)
    z_hist, past = history_of(oracle, [1])
    goal = oracle.embedding[[4]]
    valid = first_valid(chain, [1])
    hits = {}
    for name, prior in (("degree", rank_prior(chain)), ("uniform", None)):
        hits[name] = 0
        for seed in range(30):
            plan = cem_plan(
                oracle, z_hist, past, goal, valid, 3, "final", samples=8, elites=2,
                iterations=1, generator=torch.Generator().manual_seed(seed), prior=prior,
            )  # fmt: skip
            hits[name] += plan.cost.item() == 0
    assert hits["degree"] >= 25 and hits["uniform"] <= 10, hits
