"""Planning and action discrimination in a real environment (docs/design.md, section 9
(Evaluation)): the transition function is an [`EnvironmentAdapter`], not a graph.

**Transition functions.** Planning needs something that says what an action does. A walk model
has its graph ([`lewm_hf.evaluation.planning.evaluate_planning`]); a model trained on the
trajectories of an environment has the environment ([`evaluate_environment_planning`]); a
model trained on recorded trajectories alone has none, and its planning is not evaluated
([`evaluate_planning_with`] says so instead of inventing a number).

**Problems.** Start states come from held-out trajectories (never a terminal state); a goal is
a state at true shortest distance exactly `d` from the start, by breadth-first search over the
environment's own transitions ([`lewm_hf.data.environments.shortest_distances`]), drawn
uniformly among the states that far away. The planner sees the goal only as its latent
`z_goal = encode(goal tokens)`.

**Episodes.** Model-predictive control: at every step the planner of
[`lewm_hf.evaluation.planning_search`] (exhaustive, CEM, or auto; its cost and prefix-tree
scoring) searches action sequences of `min(remaining budget, plan_horizon)` steps from the
true history of latents, the first action is executed by the environment's `step`, the true
next state is encoded, and the loop replans. Every action is valid in every state (the
environment decides what it does), so no first action is masked. An episode succeeds when the
environment reaches the goal state within the budget `d + budget_slack`, and fails when the
environment terminates elsewhere. The random baseline takes uniformly random actions in the
same environment, from the same problems, with the same budget.

**Discrimination among distinct next states.** [`environment_action_candidates`] puts the
environment in each held-out state and steps every action, so each candidate's true next
latent is known; [`environment_action_discrimination`] scores the model on all actions (ties at
their expected rank) and, with [`lewm_hf.evaluation.distinct_actions.merge_equal_next_states`],
among the actions whose next states differ, beside copy, shuffled and chance.

Shapes: `P` problems, `A` actions, `D` d_state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from .. import metric_keys as K
from ..data.environments import (
    EnvironmentAdapter,
    make_environment,
    shortest_distances,
    terminal_states,
    transition_table,
)
from ..data.graphs import Graph
from ..determinism import derive_seed
from ..errors import LeWMConfigError, LeWMInputError
from ..fields import option, validate_fields
from ..modeling_actions import ActionInputs
from .discrimination import ActionCandidates, action_discrimination
from .distinct_actions import merge_equal_next_states
from .inference import encode_states, evaluating
from .planning import evaluate_planning, wilson_interval
from .planning_config import PlanningConfig
from .planning_episodes import EpisodeResult
from .planning_search import plan_actions


@dataclass
class EnvironmentProblems:
    """Start and goal states of one stratum.

    Args:
        start (`np.ndarray`): `(P,)` start state ids.
        goal (`np.ndarray`): `(P,)` goal state ids at true distance `d` from `start`.
    """

    start: np.ndarray
    goal: np.ndarray


def sample_environment_problems(
    starts: np.ndarray,
    dist: np.ndarray,
    distance: int,
    num: int,
    rng: np.random.Generator,
) -> EnvironmentProblems | None:
    """Draw `num` problems with goals at true distance exactly `distance`.

    The start is uniform among the entries of `starts` (so states seen more often in held-out
    data start more problems) that have a state that far away; the goal is uniform among those
    states.

    Args:
        starts (`np.ndarray`): `(M,)` candidate start states (held-out, non-terminal).
        dist (`np.ndarray`): `(M, S)` distances from each entry of `starts`
            ([`shortest_distances`]).
        distance (`int`): `d >= 1`.
        num (`int`): Problems to draw.
        rng (`np.random.Generator`): Random source.

    Returns:
        `EnvironmentProblems | None`: The problems, or None when no start has a state at `d`.
    """
    reachable = dist == distance  # (M, S)
    usable = np.flatnonzero(reachable.any(1))
    if usable.size == 0:
        return None
    pick = usable[rng.integers(usable.size, size=num)]
    goal = np.empty(num, dtype=np.int64)
    for i, row in enumerate(pick):
        options = np.flatnonzero(reachable[row])
        goal[i] = options[rng.integers(options.size)]
    return EnvironmentProblems(start=np.asarray(starts)[pick].astype(np.int64), goal=goal)


def _encode(model: Any, env: EnvironmentAdapter, states: np.ndarray, bs: int) -> torch.Tensor:
    return encode_states(model, torch.from_numpy(env.encode(states)), bs)


def run_environment_episodes(
    model: Any,
    env: EnvironmentAdapter,
    problems: EnvironmentProblems,
    budget: int,
    config: PlanningConfig,
    plan_horizon: int | None = None,
    generator: torch.Generator | None = None,
) -> EpisodeResult:
    """Plan in latent space and act in the environment (MPC), batched over problems.

    Args:
        model: A [`LeWMModel`] or an object with `encode`, `predict`, `config.history_length`.
        env (`EnvironmentAdapter`): The environment; its `step` executes every action.
        problems (`EnvironmentProblems`): Starts and goals.
        budget (`int`): Steps allowed.
        config (`PlanningConfig`): Planner settings (`replan` must be true here: the open-loop
            variant is the graph's).
        plan_horizon (`int`, *optional*): Longest plan searched; the remaining budget if None.
        generator (`torch.Generator`, *optional*): Random source of CEM.

    Returns:
        `EpisodeResult`: Success and executed steps per problem (`vertices` holds the states
        reached), planner calls and time.
    """
    if not config.replan:
        raise LeWMConfigError("replan", config.replan, "environment planning is MPC only")
    history = model.config.history_length
    num = problems.start.shape[0]
    bs = config.batch_size
    with evaluating(model):
        latents = _encode(model, env, problems.start, bs)[:, None]  # (P, 1, D)
        device = latents.device
        z_goal = _encode(model, env, problems.goal, bs)  # (P, D)
        actions = torch.zeros(num, 0, dtype=torch.long, device=device)
        cur = problems.start.copy()
        done = cur == problems.goal
        over = np.zeros(num, dtype=bool)  # terminated elsewhere
        steps = np.zeros(num, dtype=np.int64)
        plans, seconds = 0, 0.0
        planners: list[str] = []
        executed = np.full((num, budget), -1, dtype=np.int64)
        visited = np.full((num, budget), -1, dtype=np.int64)
        for step in range(budget):
            active = np.flatnonzero(~done & ~over)
            if active.size == 0:
                break
            idx = torch.from_numpy(active).to(device)
            keep = min(history, latents.shape[1])
            valid = torch.ones(active.size, env.num_actions, dtype=torch.bool, device=device)
            horizon = budget - step if plan_horizon is None else min(plan_horizon, budget - step)
            started = time.perf_counter()
            plan, kind = plan_actions(
                model,
                latents[idx, -keep:],
                actions[idx, actions.shape[1] - (keep - 1) :],
                z_goal[idx],
                valid,
                horizon,
                config,
                generator,
            )
            seconds += time.perf_counter() - started
            plans += int(active.size)
            planners.append(kind)
            chosen = plan.actions[:, 0].cpu().numpy()
            for i, action in zip(active, chosen):
                cur[i], terminated = env.step(int(cur[i]), int(action))
                over[i] = terminated and cur[i] != problems.goal[i]
            executed[active, step] = chosen
            visited[active, step] = cur[active]
            steps[active] += 1
            done[active] |= cur[active] == problems.goal[active]
            z_new = latents.new_zeros(num, latents.shape[-1])
            going = active[~done[active] & ~over[active]]
            if going.size and step + 1 < budget:
                z_new[torch.from_numpy(going).to(device)] = _encode(model, env, cur[going], bs)
            a_new = actions.new_zeros(num)
            a_new[idx] = torch.from_numpy(chosen).to(device)
            latents = torch.cat([latents, z_new[:, None]], dim=1)  # (P, step + 2, D)
            actions = torch.cat([actions, a_new[:, None]], dim=1)  # (P, step + 1)
    return EpisodeResult(done, steps, plans, seconds, executed, visited, planners)


def random_environment_baseline(
    env: EnvironmentAdapter,
    problems: EnvironmentProblems,
    budget: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Whether uniformly random actions reach the goal within `budget` steps, `(P,)` (an episode
    that terminates elsewhere fails)."""
    reached = problems.start == problems.goal
    for i in np.flatnonzero(~reached):
        state = int(problems.start[i])
        for _ in range(budget):
            state, terminated = env.step(state, int(rng.integers(env.num_actions)))
            if state == problems.goal[i]:
                reached[i] = True
                break
            if terminated:
                break
    return reached


def evaluate_environment_planning(
    model: Any,
    env: EnvironmentAdapter,
    starts: np.ndarray,
    config: PlanningConfig | None = None,
    plan_horizon: int | None = None,
) -> dict[str, Any]:
    """Goal reaching by latent MPC executed in the environment, by true distance, against random.

    For every seed and stratum `d`: `goals_per_distance` problems
    ([`sample_environment_problems`], from `derive_seed(seed, f"env-planning-goals-{d}")`),
    episodes with budget `d + budget_slack` ([`run_environment_episodes`]) and the random
    baseline on the same problems and budget. Rates pool the seeds.

    Args:
        model: A [`LeWMModel`] (or an object with `encode`, `predict`, `config.history_length`).
        env (`EnvironmentAdapter`): The environment.
        starts (`np.ndarray`): `(M,)` held-out state ids the problems start from (terminal
            states are left out).
        config (`PlanningConfig`, *optional*): Settings; defaults if None (`cem_rank_prior`
            does not apply: every action is valid everywhere).
        plan_horizon (`int`, *optional*): Longest plan searched per replanning (the remaining
            budget if None).

    Returns:
        `dict[str, Any]`: the keys of [`evaluate_planning`] (success, random, shortest rate,
        Wilson intervals, per seed, plans per second, planners, distinct pairs; missing
        distances, trials, budget slack, seconds), plus `eval_plan_environment` (its name) and
        `eval_plan_horizon`.
    """
    started = time.perf_counter()
    config = config if config is not None else PlanningConfig()
    if plan_horizon is not None and plan_horizon < 1:
        raise LeWMConfigError("plan_horizon", plan_horizon, "must be >= 1 (or None)")
    vocab = getattr(model.config, "action_vocab_size", None)
    if vocab is not None and env.num_actions > vocab:
        raise LeWMConfigError(
            "action_vocab_size", vocab, f"below the environment's {env.num_actions} actions"
        )
    nxt, term = transition_table(env)
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    starts = starts[~terminal_states(nxt, term)[starts]]
    if starts.size == 0:
        raise LeWMInputError("starts", "no non-terminal state", "need held-out start states")
    unique, inverse = np.unique(starts, return_inverse=True)
    dist = shortest_distances(nxt, term, unique)[inverse]  # (M, S)
    keys = K.EVAL_PLAN_PER_DISTANCE
    out: dict[str, Any] = {key: {} for key in keys}
    missing = [d for d in config.distances if not (dist == d).any()]
    for d in config.distances:
        if d in missing:
            continue
        budget = d + config.budget_slack
        pairs: set[tuple[int, int]] = set()
        wins, random_wins, shortest, per_seed = 0, 0, 0, []
        plans, seconds = 0, 0.0
        for i, seed in enumerate(config.seeds):
            rng = np.random.default_rng(derive_seed(seed, f"env-planning-goals-{d}"))
            problems = sample_environment_problems(starts, dist, d, config.goals_per_distance, rng)
            assert problems is not None  # d is not missing
            generator = torch.Generator().manual_seed(derive_seed(seed, f"env-planning-cem-{d}"))
            result = run_environment_episodes(
                model, env, problems, budget, config, plan_horizon, generator
            )
            baseline = random_environment_baseline(
                env, problems, budget,
                np.random.default_rng(derive_seed(seed, f"env-planning-random-{d}")),
            )  # fmt: skip
            pairs.update(zip(problems.start.tolist(), problems.goal.tolist()))
            wins += int(result.success.sum())
            shortest += int((result.success & (result.steps == d)).sum())
            random_wins += int(baseline.sum())
            per_seed.append(float(result.success.mean()))
            plans += result.plans
            seconds += result.plan_seconds
            if i == 0:
                out[K.EVAL_PLAN_PLANNERS][str(d)] = sorted(set(result.planners))
        trials = config.goals_per_distance * len(config.seeds)
        key = str(d)
        out[K.EVAL_PLAN_SUCCESS][key] = wins / trials
        out[K.EVAL_PLAN_SUCCESS_RANDOM][key] = random_wins / trials
        out[K.EVAL_PLAN_SHORTEST_RATE][key] = shortest / trials
        out[K.EVAL_PLAN_CI][key] = list(wilson_interval(wins, trials, config.confidence))
        out[K.EVAL_PLAN_CI_RANDOM][key] = list(
            wilson_interval(random_wins, trials, config.confidence)
        )
        out[K.EVAL_PLAN_SUCCESS_PER_SEED][key] = per_seed
        out[K.EVAL_PLANS_PER_SECOND][key] = plans / seconds if seconds > 0 else float("inf")
        out[K.EVAL_PLAN_DISTINCT_PAIRS][key] = len(pairs)
    out[K.EVAL_PLAN_MISSING_DISTANCES] = missing
    out[K.EVAL_PLAN_TRIALS] = config.goals_per_distance * len(config.seeds)
    out[K.EVAL_PLAN_BUDGET_SLACK] = config.budget_slack
    out[K.EVAL_PLAN_ENVIRONMENT] = env.name
    out[K.EVAL_PLAN_HORIZON] = plan_horizon
    out[K.EVAL_PLAN_SECONDS] = time.perf_counter() - started
    return out


def environment_action_candidates(
    model: Any,
    env: EnvironmentAdapter,
    states: np.ndarray,
    actions: np.ndarray,
    batch_size: int = 1024,
) -> tuple[ActionCandidates, torch.Tensor]:
    """Action-discrimination items from transitions `(s, a)`, every action a candidate.

    The environment is put in each state `s` and steps every action, so each candidate's true
    next state is known (history: the source state alone).

    Args:
        model: An object with `encode`.
        env (`EnvironmentAdapter`): The environment.
        states (`np.ndarray`): `(N,)` source state ids.
        actions (`np.ndarray`): `(N,)` the actions taken.
        batch_size (`int`, defaults to 1024): States per encoder call.

    Returns:
        `tuple[ActionCandidates, torch.Tensor]`: the items (`C = num_actions`, all real) and
        the next state id of every candidate `(N, C)`.
    """
    states = np.asarray(states, dtype=np.int64).reshape(-1)
    actions = np.asarray(actions, dtype=np.int64).reshape(-1)
    if states.shape != actions.shape or states.size == 0:
        raise LeWMInputError("actions", actions.shape, f"need one per state {states.shape}")
    width = env.num_actions
    nxt = np.array([[env.step(int(s), a)[0] for a in range(width)] for s in states])
    with evaluating(model):
        z_src = _encode(model, env, states, batch_size)  # (N, D)
        z_next = _encode(model, env, nxt, batch_size)  # (N, C, D)
    z_src, z_next = z_src.clone(), z_next.clone()
    device = z_src.device
    num = states.size
    candidates = ActionCandidates(
        z_hist=z_src[:, None],
        actions=ActionInputs(ids=torch.from_numpy(actions[:, None]).to(device)),
        candidate_latents=z_next,
        candidate_actions=ActionInputs(
            ids=torch.arange(width, device=device).expand(num, width).contiguous()
        ),
        candidate_mask=torch.ones(num, width, dtype=torch.bool, device=device),
        target=torch.from_numpy(actions).to(device),
    )
    return candidates, torch.from_numpy(nxt).to(device)


def environment_action_discrimination(
    model: Any,
    env: EnvironmentAdapter,
    states: np.ndarray,
    actions: np.ndarray,
    seed: int = 0,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """Action discrimination in the environment: among the actions whose next states differ
    (the headline), and among all actions (ties at their expected rank).

    Args:
        model: An object with `encode` and `predict`.
        env (`EnvironmentAdapter`): The environment.
        states (`np.ndarray`): `(N,)` held-out source state ids.
        actions (`np.ndarray`): `(N,)` the actions taken there.
        seed (`int`, defaults to 0): Seed of the shuffled-action reference.
        batch_size (`int`, defaults to 1024): Rows per model call.

    Returns:
        `dict[str, Any]`: `eval_distinct_action_{r1,r5,mrr}` with `_copy` and `_shuffled`,
        `eval_distinct_action_chance`, `eval_distinct_action_num_items`, and
        `eval_distinct_action_r1_all` / `eval_distinct_action_chance_all` (every action a
        candidate, equal next states tied).
    """
    candidates, next_states = environment_action_candidates(model, env, states, actions, batch_size)
    every = action_discrimination(model, candidates, seed=seed, batch_size=batch_size)
    merged, _ = merge_equal_next_states(candidates, next_states)
    if merged.target.numel() == 0:
        raise LeWMInputError("states", "no item", "no state has two distinct next states")
    distinct = action_discrimination(model, merged, seed=seed, batch_size=batch_size)
    prefix = K.EVAL_DISTINCT_ACTION_PREFIX
    out = {
        prefix + key: value
        for key, value in distinct.items()
        if key.split("_")[0] in ("r1", "r5", "mrr", "chance")
    }
    out[prefix + "num_items"] = distinct["num_items"]
    out[K.EVAL_DISTINCT_ACTION_R1_ALL] = every["r1"]
    out[K.EVAL_DISTINCT_ACTION_CHANCE_ALL] = every["chance"]
    return out


def evaluate_planning_with(
    model: Any,
    transitions: Graph | EnvironmentAdapter | None,
    config: PlanningConfig | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Planning with whatever transition function the data has.

    Args:
        model: The world model.
        transitions (`Graph | EnvironmentAdapter | None`): A graph (keyword arguments `window`
            and `walks` of [`evaluate_planning`]), an environment (`starts` and optionally
            `plan_horizon` of [`evaluate_environment_planning`]) or None (no planning
            evaluation: recorded trajectories alone cannot say what an action not taken does).
        config (`PlanningConfig`, *optional*): The planner and the goal strata.

    Returns:
        `dict[str, Any]`: The planning numbers, or `{"eval_plan_skipped": reason}`.
    """
    if transitions is None:
        return {K.EVAL_PLAN_SKIPPED: "no transition function (neither a graph nor an environment)"}
    if isinstance(transitions, Graph):
        return evaluate_planning(model, transitions, kwargs["window"], kwargs["walks"], config)
    if isinstance(transitions, EnvironmentAdapter):
        return evaluate_environment_planning(
            model, transitions, kwargs["starts"], config, kwargs.get("plan_horizon")
        )
    raise LeWMInputError(
        "transitions", type(transitions).__name__, "must be a Graph, an EnvironmentAdapter or None"
    )


# The environment planning's defaults (`EnvironmentEvaluationArguments.environment_planning`
# overrides them): goals 1..8 steps away, 50 per distance, one seed.
ENVIRONMENT_PLANNING_DEFAULTS: dict[str, Any] = {
    "distances": [1, 2, 3, 4, 5, 6, 7, 8],
    "goals_per_distance": 50,
    "seeds": [0],
}


@dataclass
class EnvironmentEvaluationArguments:
    """The evaluation in the environment a trajectory dataset names (`lewm_dataset.json`'s
    `environment`, when it is registered in `lewm_hf.data.environments.ENVIRONMENTS`).

    Args:
        environment_evaluation (`bool`, defaults to `True`): Run it where the dataset names a
            registered environment (a dataset without one is evaluated on its rows alone).
        environment_planning (`dict`, defaults to `{}`): `PlanningConfig` overrides, over
            `ENVIRONMENT_PLANNING_DEFAULTS` (distances 1..8, 50 goals each, seed 0).
        plan_horizon (`int`, *optional*): Longest plan searched per replanning; the remaining
            budget if None.
        discrimination_items (`int`, defaults to 2000): Held-out transitions ranked among the
            actions whose next states differ.
    """

    environment_evaluation: bool = option(
        True, help="Plan and discriminate actions in the environment the dataset names."
    )
    environment_planning: dict = option(
        default_factory=dict,
        help="PlanningConfig overrides for planning in the environment.",
        settings=PlanningConfig,
    )
    plan_horizon: int | None = option(
        None, help="Longest plan searched per replanning (None: the remaining budget).", low=1
    )
    discrimination_items: int = option(
        2000, help="Held-out transitions ranked among distinct next states.", low=1
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        self.planning_config()  # a bad nested field fails when the recipe is parsed

    def planning_config(self) -> PlanningConfig:
        """The planning settings (typed errors name the nested key)."""
        try:
            return PlanningConfig(**{**ENVIRONMENT_PLANNING_DEFAULTS, **self.environment_planning})
        except TypeError as err:
            raise LeWMConfigError(
                "environment_planning", self.environment_planning, f"unknown field: {err}"
            ) from err
        except LeWMConfigError as err:
            raise LeWMConfigError(
                f"environment_planning.{err.field}", err.value, err.reason, element=err.element
            ) from err


def held_out_transitions(
    env: EnvironmentAdapter, rows: Dataset
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The states and transitions of held-out trajectory rows, as the environment's state ids.

    Args:
        env (`EnvironmentAdapter`): The environment the rows come from.
        rows (`Dataset`): Validated discrete rows (`input_ids`, `actions`, optional
            `action_mask`).

    Returns:
        `tuple[np.ndarray, np.ndarray, np.ndarray]`: every state `(M,)`, and the source states
        and actions of every real transition, `(N,)` each.
    """
    table = rows.with_format("arrow")[:]
    masks = table.column("action_mask").to_pylist() if "action_mask" in table.column_names else None
    states, sources, actions = [], [], []
    for i, (window, acts) in enumerate(
        zip(table.column("input_ids").to_pylist(), table.column("actions").to_pylist())
    ):
        k = len(acts) if masks is None else int(np.sum(masks[i]))
        ids = env.decode(np.asarray(window[: k + 1], dtype=np.int64))
        states.append(ids)
        sources.append(ids[:k])
        actions.append(np.asarray(acts[:k], dtype=np.int64))
    return np.concatenate(states), np.concatenate(sources), np.concatenate(actions)


def evaluate_in_environment(
    model: Any,
    environment: str,
    rows: Dataset,
    args: EnvironmentEvaluationArguments,
    seed: int = 0,
) -> dict[str, Any]:
    """Action discrimination among distinct next states and latent MPC in the environment.

    Args:
        model: The world model.
        environment (`str`): A registered environment name.
        rows (`Dataset`): Held-out trajectory rows of that environment (start states and
            transitions).
        args (`EnvironmentEvaluationArguments`): The settings.
        seed (`int`, defaults to 0): Seed of the discrimination items.

    Returns:
        `dict[str, Any]`: [`environment_action_discrimination`]'s and
        [`evaluate_environment_planning`]'s keys.
    """
    env = make_environment(environment)
    states, sources, actions = held_out_transitions(env, rows)
    rng = np.random.default_rng(derive_seed(seed, "environment-discrimination"))
    pick = rng.permutation(sources.size)[: args.discrimination_items]
    config = args.planning_config()
    out = environment_action_discrimination(
        model, env, sources[pick], actions[pick], seed=seed, batch_size=config.batch_size
    )
    out.update(evaluate_environment_planning(model, env, states, config, args.plan_horizon))
    return out


__all__ = [
    "ENVIRONMENT_PLANNING_DEFAULTS",
    "EnvironmentEvaluationArguments",
    "EnvironmentProblems",
    "environment_action_candidates",
    "environment_action_discrimination",
    "evaluate_environment_planning",
    "evaluate_in_environment",
    "evaluate_planning_with",
    "held_out_transitions",
    "random_environment_baseline",
    "run_environment_episodes",
    "sample_environment_problems",
]
