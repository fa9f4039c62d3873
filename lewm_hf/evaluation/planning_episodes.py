"""The planning episode loop on the true graph, batched over problems: model-predictive control
(plan over the remaining budget, execute the first action, encode the true next window, replan)
or one plan executed open loop, stopping at the goal vertex.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.graphs import Graph
from ..errors import LeWMInputError
from .held_out import neighbor_table
from .inference import encode_states, evaluating
from .planning_config import PlanningConfig
from .planning_problems import PlanningProblems
from .planning_search import plan_actions, rank_prior


@dataclass
class EpisodeResult:
    """Outcome of planning episodes on the true graph.

    Args:
        success (`np.ndarray`): `(P,)` the goal vertex was reached within the budget.
        steps (`np.ndarray`): `(P,)` executed steps (up to and including reaching the goal).
        plans (`int`): Planner calls, counting one per problem per replanning.
        plan_seconds (`float`): Wall time spent in the planners.
        actions (`np.ndarray`): `(P, budget)` executed ranks, -1 after the episode stopped.
        vertices (`np.ndarray`): `(P, budget)` vertices reached, -1 after the episode stopped.
        planners (`list[str]`): The planner used at each replanning round.
    """

    success: np.ndarray
    steps: np.ndarray
    plans: int
    plan_seconds: float
    actions: np.ndarray
    vertices: np.ndarray
    planners: list[str] = field(default_factory=list)


def run_episodes(
    model: Any,
    graph: Graph,
    problems: PlanningProblems,
    window: int,
    budget: int,
    config: PlanningConfig,
    generator: torch.Generator | None = None,
) -> EpisodeResult:
    """Plan and act on the true graph, batched over problems.

    MPC (`config.replan`): at every step the still-active problems plan over the remaining
    budget from their true history (the last `H` true latents and actions), execute the first
    action (valid by construction) on the graph, encode the new true window, and stop on
    reaching the goal vertex. Open loop: one plan over the whole budget, executed with each rank
    taken modulo the true vertex's out-degree, stopping at the goal.

    Args:
        model: A [`LeWMModel`] or an object with `encode`, `predict`, `config.history_length`.
        graph (`Graph`): The true graph.
        problems (`PlanningProblems`): Starts and goals.
        window (`int`): The state window `w`.
        budget (`int`): Steps allowed.
        config (`PlanningConfig`): Planner settings.
        generator (`torch.Generator`, *optional*): Random source of CEM.

    Returns:
        `EpisodeResult`: Success and executed steps per problem, planner calls and time.
    """
    history = model.config.history_length
    table = neighbor_table(graph)
    degree = graph.out_degree
    num = problems.start.shape[0]
    num_actions = graph.max_out_degree
    bs = config.batch_size
    prior = rank_prior(graph) if config.cem_rank_prior == "degree" else None
    with evaluating(model):
        hist_states = torch.from_numpy(problems.history).unfold(1, window, 1)  # (P, H, w)
        latents = encode_states(model, hist_states, bs)  # (P, H, D)
        device = latents.device
        z_goal = encode_states(model, torch.from_numpy(problems.goal_window), bs)  # (P, D)
        actions = torch.from_numpy(problems.past_actions).to(device)  # (P, H - 1)
        last_window = problems.history[:, -window:].copy()  # (P, w)
        cur = problems.start.copy()
        done = np.zeros(num, dtype=bool)
        steps = np.zeros(num, dtype=np.int64)
        plans = 0
        seconds = 0.0
        planners: list[str] = []
        open_loop: np.ndarray | None = None
        executed = np.full((num, budget), -1, dtype=np.int64)
        visited = np.full((num, budget), -1, dtype=np.int64)
        for step in range(budget):
            active = np.flatnonzero(~done)
            if active.size == 0:
                break
            if config.replan or open_loop is None:
                idx = torch.from_numpy(active).to(device)
                keep = min(history, latents.shape[1])  # the last H true latents and actions
                valid = torch.from_numpy(np.arange(num_actions)[None] < degree[cur[active], None])
                started = time.perf_counter()
                plan, kind = plan_actions(
                    model,
                    latents[idx, -keep:],
                    actions[idx, actions.shape[1] - (keep - 1) :],
                    z_goal[idx],
                    valid.to(device),
                    budget - step,
                    config,
                    generator,
                    prior,
                )
                seconds += time.perf_counter() - started
                plans += int(active.size)
                planners.append(kind)
                chosen = plan.actions[:, 0].cpu().numpy()
                if not config.replan:
                    open_loop = np.zeros((num, budget), dtype=np.int64)
                    open_loop[active] = plan.actions.cpu().numpy()
            if open_loop is not None:  # open loop: a rank invalid at the true vertex wraps
                rank = open_loop[active, step] % degree[cur[active]]
            else:  # MPC: the planners mask the first action, so it is valid
                rank = chosen
                if (rank >= degree[cur[active]]).any():
                    raise LeWMInputError(
                        "first_valid", config.planner, "a plan began with an invalid action"
                    )
            nxt = table[cur[active], rank]
            executed[active, step] = rank
            visited[active, step] = nxt
            cur[active] = nxt
            steps[active] += 1
            done[active] |= nxt == problems.goal[active]
            last_window[active] = np.concatenate([last_window[active, 1:], nxt[:, None]], axis=1)
            going = active[~done[active]]  # the true history grows only where it is used again
            if config.replan and step + 1 < budget and going.size:
                rows = torch.from_numpy(going).to(device)
                z_new = latents.new_zeros(num, latents.shape[-1])
                z_new[rows] = encode_states(model, torch.from_numpy(last_window[going]), bs)
                a_new = actions.new_zeros(num)
                a_new[torch.from_numpy(active).to(device)] = torch.from_numpy(rank).to(device)
                latents = torch.cat([latents, z_new[:, None]], dim=1)  # (P, H + step + 1, D)
                actions = torch.cat([actions, a_new[:, None]], dim=1)  # (P, H + step)
    return EpisodeResult(done, steps, plans, seconds, executed, visited, planners)


__all__ = ["EpisodeResult", "run_episodes"]
