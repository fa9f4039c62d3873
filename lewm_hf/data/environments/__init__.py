"""Environments as transition functions: an adapter protocol, a registry, the transition table
and true distances of a finite environment, and random-policy trajectories in the trajectory
format.

An [`EnvironmentAdapter`] turns an environment whose states are finitely many ids into what a
world model reads and what an evaluation needs: `encode` maps states to token windows (the
`input_ids` of the trajectory format), `step(state, action)` puts the environment in a state
and steps it (the environment's own dynamics decide the outcome), `reset` draws an initial
state. Everything else is derived here, once, for any adapter:

- [`transition_table`]: the next state and the termination flag of every (state, action), read
  from the environment's `step`;
- [`shortest_distances`]: true shortest distances by breadth-first search over that table (a
  state entered by a terminating transition is not expanded: the episode ends there);
- [`rollout_trajectories`]: episodes of a uniformly random policy cut into rows of `K` steps
  (`input_ids`: `K + 1` token windows, `actions`: `K` ids; an episode's last row may be
  shorter), and [`write_environment_dataset`], which writes them in the trajectory format of
  `lewm_hf.data.trajectories` (parquet and `lewm_dataset.json`), deterministically from a seed.

Adapters are registered by name in [`ENVIRONMENTS`] ([`make_environment`]); `Taxi-v4` is the
first ([`lewm_hf.data.environments.taxi`], needing the optional `gym` extra).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ... import metric_keys as K
from ...determinism import derive_seed
from ...errors import LeWMConfigError, LeWMInputError
from ...fields import option, validate_fields
from ..trajectories import TrajectoryInfo, write_trajectories


@runtime_checkable
class EnvironmentAdapter(Protocol):
    """A finite, deterministic environment as a world model sees it.

    Attributes:
        name (`str`): The registry name (`"Taxi-v4"`).
        num_states (`int`): States are the ids `0 .. num_states - 1`.
        num_actions (`int`): Actions are the ids `0 .. num_actions - 1`.
        vocab_size (`int`): Token ids of an encoded state lie in `[0, vocab_size)`.
        window_length (`int`): Tokens per encoded state (`L`).
        action_names (`list[str]`): A name per action.
        token_names (`list[str]`): A name per token id.
    """

    name: str
    num_states: int
    num_actions: int
    vocab_size: int
    window_length: int
    action_names: list[str]
    token_names: list[str]

    def reset(self, seed: int | None = None) -> int:
        """Start an episode; returns the initial state id."""

    def step(self, state: int, action: int) -> tuple[int, bool]:
        """Put the environment in `state`, take `action`; returns the next state id and
        whether the episode terminated."""

    def encode(self, states: np.ndarray) -> np.ndarray:
        """State ids `(...)` -> token windows `(..., L)`."""

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Token windows `(..., L)` -> state ids `(...)` (`LeWMInputError` if one is no
        state)."""


# name -> a factory taking the adapter's keyword arguments.
ENVIRONMENTS: dict[str, Callable[..., EnvironmentAdapter]] = {}


def register_environment(name: str, factory: Callable[..., EnvironmentAdapter]) -> None:
    """Register an adapter factory under `name` (what `lewm_dataset.json`'s `environment`
    field and the recipes' `environment` key name)."""
    ENVIRONMENTS[name] = factory


def make_environment(name: str, **kwargs: Any) -> EnvironmentAdapter:
    """The adapter registered under `name`.

    Raises:
        `LeWMConfigError`: for an unknown name (listing the registered ones), or when the
            environment's library is not installed.
    """
    if name not in ENVIRONMENTS:
        raise LeWMConfigError("environment", name, f"must be one of {sorted(ENVIRONMENTS)}")
    return ENVIRONMENTS[name](**kwargs)


def transition_table(env: EnvironmentAdapter) -> tuple[np.ndarray, np.ndarray]:
    """The environment's transitions, read once from its `step`.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: `next_state` `(S, A)` int64 and `terminated`
        `(S, A)` bool.
    """
    nxt = np.empty((env.num_states, env.num_actions), dtype=np.int64)
    done = np.zeros((env.num_states, env.num_actions), dtype=bool)
    for s in range(env.num_states):
        for a in range(env.num_actions):
            nxt[s, a], done[s, a] = env.step(s, a)
    return nxt, done


def terminal_states(next_state: np.ndarray, terminated: np.ndarray) -> np.ndarray:
    """`(S,)` bool: the states some terminating transition enters."""
    out = np.zeros(next_state.shape[0], dtype=bool)
    out[next_state[terminated]] = True
    return out


def shortest_distances(
    next_state: np.ndarray, terminated: np.ndarray, sources: np.ndarray | None = None
) -> np.ndarray:
    """True shortest distances (numbers of steps) by breadth-first search over the transitions.

    A terminal state ([`terminal_states`]) can be reached but is not expanded: its episode is
    over.

    Args:
        next_state (`np.ndarray`): `(S, A)` from [`transition_table`].
        terminated (`np.ndarray`): `(S, A)` from [`transition_table`].
        sources (`np.ndarray`, *optional*): `(N,)` start states; every state if None.

    Returns:
        `np.ndarray`: `(N, S)` int64 distances, `-1` where unreachable.
    """
    num_states = next_state.shape[0]
    sources = np.arange(num_states) if sources is None else np.asarray(sources, dtype=np.int64)
    stop = terminal_states(next_state, terminated)
    dist = np.full((sources.shape[0], num_states), -1, dtype=np.int64)
    rows = np.arange(sources.shape[0])
    dist[rows, sources] = 0
    frontier = np.zeros((sources.shape[0], num_states), dtype=bool)
    frontier[rows, sources] = True
    d = 0
    while frontier.any():
        d += 1
        expand = frontier & ~stop[None]
        item, state = np.nonzero(expand)
        reached = np.zeros_like(frontier)
        reached[np.repeat(item, next_state.shape[1]), next_state[state].reshape(-1)] = True
        frontier = reached & (dist < 0)
        dist[frontier] = d
    return dist


def rollout_trajectories(
    env: EnvironmentAdapter,
    episodes: int,
    max_episode_steps: int,
    steps_per_row: int,
    seed: int,
) -> dict[str, list[Any]]:
    """Episodes of a uniformly random policy, cut into trajectory rows.

    Each episode starts at `env.reset(seed=...)` (seeds drawn from `seed`) and takes uniformly
    random actions until it terminates or has taken `max_episode_steps` steps; it is cut into
    rows of `steps_per_row` steps (`K`) one after the other, the last row shorter when the
    episode's length is not a multiple of `K`. A row never spans two episodes.

    Args:
        env (`EnvironmentAdapter`): The environment.
        episodes (`int`): Episodes to roll out (`>= 1`).
        max_episode_steps (`int`): Longest episode (`>= 1`).
        steps_per_row (`int`): `K` (`>= 1`).
        seed (`int`): Seed of the reset seeds and the actions.

    Returns:
        `dict[str, list]`: the columns `input_ids` (per row `K + 1` windows of `L` tokens),
        `actions` (`K` ids), `episode` and `start_step` (where the row lies).
    """
    for name, value in (
        ("episodes", episodes),
        ("max_episode_steps", max_episode_steps),
        ("steps_per_row", steps_per_row),
    ):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise LeWMInputError(name, value, "must be an integer >= 1")
    rng = np.random.default_rng(seed)
    out: dict[str, list[Any]] = {"input_ids": [], "actions": [], "episode": [], "start_step": []}
    for episode in range(episodes):
        states = [env.reset(seed=int(rng.integers(2**31)))]
        actions: list[int] = []
        for _ in range(max_episode_steps):
            action = int(rng.integers(env.num_actions))
            state, done = env.step(states[-1], action)
            states.append(state)
            actions.append(action)
            if done:
                break
        tokens = env.encode(np.asarray(states, dtype=np.int64))
        for start in range(0, len(actions), steps_per_row):
            stop = min(start + steps_per_row, len(actions))
            out["input_ids"].append(tokens[start : stop + 1].tolist())
            out["actions"].append(actions[start:stop])
            out["episode"].append(episode)
            out["start_step"].append(start)
    return out


def environment_info(env: EnvironmentAdapter) -> TrajectoryInfo:
    """The trajectory format's metadata (`lewm_dataset.json`) of an environment's datasets; its
    `environment` field is the registry name, so an evaluation can rebuild the environment."""
    return TrajectoryInfo(
        vocab_size=env.vocab_size,
        num_actions=env.num_actions,
        window_length=env.window_length,
        action_type="discrete",
        action_names=list(env.action_names),
        token_names=list(env.token_names),
        environment=env.name,
    )


@dataclass
class EnvironmentRolloutConfig:
    """A trajectory dataset of an environment under a uniformly random policy.

    Args:
        environment (`str`, defaults to `"Taxi-v4"`): A registered environment
            ([`ENVIRONMENTS`]).
        train_episodes (`int`, defaults to 300): Episodes of the `train` split.
        validation_episodes (`int`, defaults to 30): Episodes of the `validation` split (their
            own reset seeds and actions).
        max_episode_steps (`int`, defaults to 200): Longest episode (Taxi's own time limit).
        steps_per_row (`int`, defaults to 4): Actions per row (`K`; a world model's
            `history_length` must be at least this).
        seed (`int`, defaults to 0): Base seed; each split's rollouts use
            `derive_seed(seed, "rollouts-<split>")`.
    """

    environment: str = option("Taxi-v4", help="Registered environment name.")
    train_episodes: int = option(300, help="Episodes of the train split.", low=1)
    validation_episodes: int = option(30, help="Episodes of the validation split.", low=1)
    max_episode_steps: int = option(200, help="Longest episode.", low=1)
    steps_per_row: int = option(4, help="Actions per trajectory row (K).", low=1)
    seed: int = option(0, help="Seed of the rollouts.")

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.environment not in ENVIRONMENTS:
            raise LeWMConfigError(
                "environment", self.environment, f"must be one of {sorted(ENVIRONMENTS)}"
            )


def write_environment_dataset(
    config: EnvironmentRolloutConfig, folder: str | Path
) -> dict[str, Any]:
    """Roll out the random policy and write the dataset in the trajectory format.

    Writes the splits `train` and `validation` (columns `input_ids`, `actions`, and `episode`
    and `start_step`, where each row lies) with `lewm_hf.data.trajectories.write_trajectories`
    (parquet under `data/`, `lewm_dataset.json` from [`environment_info`], a dataset card), so
    the folder loads with `load_trajectories(folder)` or as `dataset_name: <folder>`. The same
    config writes the same files.

    Args:
        config (`EnvironmentRolloutConfig`): What to roll out.
        folder (`str` or `Path`): The dataset root (created).

    Returns:
        `dict[str, Any]`: `dataset_path`, `train_rows`, `eval_rows`, `distinct_states` (over
        both splits) and `environment`.
    """
    env = make_environment(config.environment)
    info = environment_info(env)
    folder = Path(folder)
    rows: dict[str, int] = {}
    seen: set[int] = set()
    for split, episodes in (
        ("train", config.train_episodes),
        ("validation", config.validation_episodes),
    ):
        columns = rollout_trajectories(
            env,
            episodes,
            config.max_episode_steps,
            config.steps_per_row,
            derive_seed(config.seed, f"rollouts-{split}"),
        )
        write_trajectories(columns, info, folder, split)
        rows[split] = len(columns["actions"])
        for row in columns["input_ids"]:
            seen.update(env.decode(np.asarray(row)).tolist())
    return {
        "dataset_path": str(folder),
        K.TRAIN_ROWS: rows["train"],
        K.EVAL_ROWS: rows["validation"],
        "distinct_states": len(seen),
        "environment": config.environment,
    }


def _register_builtin() -> None:
    from .taxi import TaxiAdapter

    register_environment(TaxiAdapter.name, TaxiAdapter)


_register_builtin()

__all__ = [
    "ENVIRONMENTS",
    "EnvironmentAdapter",
    "EnvironmentRolloutConfig",
    "environment_info",
    "make_environment",
    "register_environment",
    "rollout_trajectories",
    "shortest_distances",
    "terminal_states",
    "transition_table",
    "write_environment_dataset",
]
