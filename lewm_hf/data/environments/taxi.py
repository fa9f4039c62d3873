"""Gymnasium's `Taxi-v4` as an [`EnvironmentAdapter`] (needs the optional `gym` extra).

Taxi has 500 states (`env.unwrapped.decode(s)` gives taxi row 0..4, taxi column 0..4,
passenger location 0..4, 4 meaning in the taxi, destination 0..3) and 6 actions (south, north,
east, west, pickup, dropoff). A state is written as `L = 4` tokens, one per decoded field, each
field with its own ids: `[row, 5 + column, 10 + passenger, 15 + destination]` (`vocab_size`
19). Walls, and a pickup or dropoff where there is nothing to do, leave the state unchanged;
a dropoff at the destination terminates the episode.

`gymnasium` is imported when an adapter is built, not when this module is, so the rest of the
library works without it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ...errors import LeWMConfigError, LeWMInputError

# Token offsets of the four decoded fields, and their sizes.
FIELD_SIZES = (5, 5, 5, 4)
FIELD_OFFSETS = (0, 5, 10, 15)
TAXI_VOCAB_SIZE = 19
GYM_INSTALL = 'pip install -e ".[gym]"'


def _import_gymnasium() -> Any:
    try:
        import gymnasium
    except ImportError as err:
        raise LeWMConfigError(
            "environment",
            TaxiAdapter.name,
            f"needs gymnasium, which is not installed ({GYM_INSTALL})",
        ) from err
    return gymnasium


class TaxiAdapter:
    """`Taxi-v4` (deterministic: not rainy, no fickle passenger) as an `EnvironmentAdapter`.

    Args:
        **kwargs: Passed to `gymnasium.make("Taxi-v4", ...)` (e.g. `render_mode`).

    Raises:
        `LeWMConfigError`: when gymnasium is not installed.
    """

    name = "Taxi-v4"
    num_states = 500
    num_actions = 6
    vocab_size = TAXI_VOCAB_SIZE
    window_length = 4
    action_names: ClassVar[list[str]] = ["south", "north", "east", "west", "pickup", "dropoff"]
    token_names: ClassVar[list[str]] = (
        [f"row={i}" for i in range(5)]
        + [f"col={i}" for i in range(5)]
        + [f"passenger={name}" for name in ("R", "G", "Y", "B", "taxi")]
        + [f"destination={name}" for name in ("R", "G", "Y", "B")]
    )

    def __init__(self, **kwargs: Any):
        gymnasium = _import_gymnasium()
        self.env = gymnasium.make(self.name, **kwargs)
        self._core = self.env.unwrapped

    def reset(self, seed: int | None = None) -> int:
        """Start an episode (`env.reset(seed=seed)`); returns the initial state id."""
        state, _ = self.env.reset(seed=seed)
        return int(state)

    def step(self, state: int, action: int) -> tuple[int, bool]:
        """Put the taxi in `state` and take `action` with the environment's own `step`.

        Returns:
            `tuple[int, bool]`: The next state id and whether the episode terminated.
        """
        if not 0 <= int(state) < self.num_states:
            raise LeWMInputError("state", state, f"must lie in [0, {self.num_states})")
        if not 0 <= int(action) < self.num_actions:
            raise LeWMInputError("action", action, f"must lie in [0, {self.num_actions})")
        self._core.s = int(state)
        nxt, _, terminated, _, _ = self._core.step(int(action))
        return int(nxt), bool(terminated)

    def encode(self, states: np.ndarray) -> np.ndarray:
        """State ids `(...)` -> tokens `(..., 4)`: `[row, 5 + col, 10 + passenger, 15 + dest]`."""
        states = np.asarray(states, dtype=np.int64)
        if states.size and (states.min() < 0 or states.max() >= self.num_states):
            raise LeWMInputError("states", "out of range", f"must lie in [0, {self.num_states})")
        fields = [self._core.decode(int(s)) for s in states.reshape(-1)]
        tokens = np.asarray(fields, dtype=np.int64).reshape(*states.shape, 4)
        return tokens + np.asarray(FIELD_OFFSETS, dtype=np.int64)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens `(..., 4)` -> state ids `(...)` (the environment's own `encode`).

        Raises:
            `LeWMInputError`: when a window is not 4 tokens or a token lies outside its field.
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim < 1 or tokens.shape[-1] != 4:
            raise LeWMInputError("tokens", tokens.shape, "must be (..., 4) Taxi windows")
        fields = tokens - np.asarray(FIELD_OFFSETS, dtype=np.int64)
        bad = (fields < 0) | (fields >= np.asarray(FIELD_SIZES))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise LeWMInputError(
                f"tokens{list(where)}",
                int(tokens[where]),
                f"field {where[-1]} takes ids {FIELD_OFFSETS[where[-1]]}.."
                f"{FIELD_OFFSETS[where[-1]] + FIELD_SIZES[where[-1]] - 1}",
            )
        flat = fields.reshape(-1, 4)
        ids = [self._core.encode(*(int(v) for v in row)) for row in flat]
        return np.asarray(ids, dtype=np.int64).reshape(tokens.shape[:-1])


__all__ = ["FIELD_OFFSETS", "FIELD_SIZES", "TAXI_VOCAB_SIZE", "TaxiAdapter"]
