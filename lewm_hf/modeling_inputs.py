"""The checks of a LeWM world model's clip inputs: the states (token windows or their pooled
features), their masks and loci, and the actions between them, all before any is used.

Shapes: `B` batch, `T + 1` states, `L` tokens per state, `E` the encoder's pooled width.
"""

from __future__ import annotations

import torch

from .errors import LeWMInputError
from .modeling_actions import ActionInputs, _check_integer, _check_shape, require_actions


def check_clip_inputs(
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    locus: torch.Tensor | None,
    state_features: torch.Tensor | None,
    actions: ActionInputs | None,
    history_length: int,
    pooled_width: int,
) -> tuple[int, int, int]:
    """Every shape and type check of `LeWMModel.forward`'s states and actions.

    Args:
        input_ids (`torch.Tensor`, *optional*): States as token windows, `(B, T + 1, L)`.
        attention_mask (`torch.Tensor`, *optional*): 1 for real tokens, the shape of `input_ids`.
        locus (`torch.Tensor`, *optional*): Centre token of each state, `(B, T + 1)`.
        state_features (`torch.Tensor`, *optional*): States as pooled features, `(B, T + 1, E)`.
        actions (`ActionInputs`): The actions between the states, `(B, T)`.
        history_length (`int`): The model's longest history `T`.
        pooled_width (`int`): The encoder's pooled width `E`.

    Returns:
        `tuple[int, int, int]`: `(B, T + 1, L)`, `L` the pooled width `E` for
        `state_features`.

    Raises:
        `LeWMInputError`: naming the argument, its shape (or dtype) and what was expected:
            both or neither of `input_ids` / `state_features`; a rank other than 3 or fewer than
            2 states; more than `history_length + 1` states; integer `state_features` or a width
            other than the encoder's pooled width; non-integer `input_ids`; `attention_mask` /
            `locus` given with `state_features` (they are pooled already) or of another shape
            than the states; actions of another shape than `(B, T)`.
    """
    if state_features is not None:
        name, states = "state_features", state_features
        if input_ids is not None:
            raise LeWMInputError(name, "given", "give input_ids or state_features, not both")
        layout = f"(B, T + 1, E) with 1 <= T <= history_length={history_length}"
        for other, value in (("attention_mask", attention_mask), ("locus", locus)):
            if value is not None:
                raise LeWMInputError(
                    other,
                    tuple(value.shape),
                    "must be None with state_features (the features are pooled already)",
                )
    else:
        name, states = "input_ids", input_ids
        layout = f"(B, T + 1, L) with 1 <= T <= history_length={history_length}"
        if states is None:
            raise LeWMInputError(name, None, f"give input_ids or state_features: {layout}")
    if states.dim() != 3 or states.shape[1] < 2:
        raise LeWMInputError(name, tuple(states.shape), f"must have shape {layout}")
    if states.shape[1] > history_length + 1:
        raise LeWMInputError(
            name,
            tuple(states.shape),
            f"T + 1={states.shape[1]} states (T={states.shape[1] - 1} actions) exceed "
            f"history_length + 1={history_length + 1}",
        )
    batch, num_states, width = states.shape
    if state_features is not None:
        if not state_features.is_floating_point():
            raise LeWMInputError(
                name, str(state_features.dtype), "must be floating point (pooled features)"
            )
        pooled = pooled_width
        if width != pooled:
            raise LeWMInputError(
                name,
                tuple(state_features.shape),
                f"last dim must be the encoder's pooled width E={pooled}",
            )
    else:
        _check_integer(input_ids, name)
        _check_shape(attention_mask, (batch, num_states, width), "attention_mask")
        _check_shape(locus, (batch, num_states), "locus")
    if require_actions(actions).shape != (batch, num_states - 1):
        raise LeWMInputError(
            "actions",
            actions.shape,
            f"must have shape ({batch}, {num_states - 1}): one per step between the states",
        )
    return batch, num_states, width
