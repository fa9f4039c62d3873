"""The action coding of edits: from `Edit`s to the model's action tensors.

`edits_to_actions` turns edits into model action tensors (window positions);
`code_edit_actions` then codes them as an edit model reads them (positions relative to the
locus, `SUB` reference tokens), for training batches and evaluation candidates alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ...errors import LeWMInputError
from ...fields import PositionOrigin
from ..dna import DNA_END_ID
from .ops import DEFAULT_MAX_EDIT_LEN, Edit, EditOp


def edits_to_actions(
    trajectories: Sequence[Sequence[Edit]],
    end_token: int | None = DNA_END_ID,
    max_edit_len: int = DEFAULT_MAX_EDIT_LEN,
) -> dict[str, torch.Tensor]:
    """Model action tensors of a batch of ragged edit trajectories (the one such conversion).

    An action is `(op, pos, tokens)`: the alternative tokens for `SUB` and `INS`, the deleted
    reference tokens for `DEL`, followed by `end_token`. The action encoder mean-pools token
    embeddings, which would make `DEL` of `A` and of `AA` (or any two edits whose tokens have
    the same composition) identical; the end token's share, `1 / (n + 1)`, makes the length
    visible, so every edit of a window is identifiable from its action.

    Args:
        trajectories (`Sequence[Sequence[Edit]]`): `B` trajectories of `K_b` edits.
        end_token (`int`, *optional*, defaults to `DNA_END_ID`): Appended to every action's
            tokens; None appends nothing.
        max_edit_len (`int`, defaults to 16): Longest edit accepted.

    Returns:
        `dict[str, torch.Tensor]`: `action_ops`, `action_positions` `(B, K)` long;
        `action_tokens` `(B, K, L_a)` long; `action_token_mask` `(B, K, L_a)` bool;
        `action_mask` `(B, K)` bool, with `K = max K_b` and `L_a` the longest action's tokens.
        Padded steps and tokens are 0 and masked.
    """
    batch = len(trajectories)
    steps = max((len(t) for t in trajectories), default=0)
    extra = 0 if end_token is None else 1
    width = extra + max((e.length for t in trajectories for e in t), default=0)
    ops = torch.zeros(batch, steps, dtype=torch.long)
    positions = torch.zeros(batch, steps, dtype=torch.long)
    tokens = torch.zeros(batch, steps, max(width, 1), dtype=torch.long)
    token_mask = torch.zeros(batch, steps, max(width, 1), dtype=torch.bool)
    action_mask = torch.zeros(batch, steps, dtype=torch.bool)
    for b, trajectory in enumerate(trajectories):
        for k, edit in enumerate(trajectory):
            if not isinstance(edit, Edit):
                raise LeWMInputError(f"trajectories[{b}][{k}]", type(edit).__name__, "not an Edit")
            if not 1 <= edit.length <= max_edit_len:
                raise LeWMInputError(
                    f"trajectories[{b}][{k}].tokens",
                    edit.length,
                    f"an edit has 1..max_edit_len={max_edit_len} tokens",
                )
            row = list(edit.tokens) + ([] if end_token is None else [end_token])
            ops[b, k] = int(edit.op)
            positions[b, k] = edit.pos
            tokens[b, k, : len(row)] = torch.tensor(row, dtype=torch.long)
            token_mask[b, k, : len(row)] = True
            action_mask[b, k] = True
    return {
        "action_ops": ops,
        "action_positions": positions,
        "action_tokens": tokens,
        "action_token_mask": token_mask,
        "action_mask": action_mask,
    }


def locus_relative_positions(positions: Any, locus: Any, window_length: int) -> Any:
    """Action positions as seen from the state's locus: `pos - locus + window_length`.

    A `"centered"` state is the encoder's view of the tokens around its locus, and the predictor
    is given the state but not the locus, so a window position alone does not tell it where an
    edit falls in what the state sees. Relative to the locus it does: offset `d = pos - locus`
    (`-L < d <= L`, an insertion may sit at `pos = L`), shifted by `L` so that every position
    lies in `[1, 2L]` (the model's `max_action_position` must exceed `2L`). Works elementwise on
    arrays and tensors.

    Args:
        positions (`np.ndarray` or `torch.Tensor`): Edit positions in the window.
        locus (`np.ndarray` or `torch.Tensor`): The locus of the state each edit applies to
            (broadcast against `positions`).
        window_length (`int`): L.

    Returns:
        The same type as `positions`: the shifted offsets.
    """
    return positions - locus + window_length


def with_reference_tokens(
    actions: dict[str, torch.Tensor],
    states: torch.Tensor,
    offset: int,
    end_token: int | None = DNA_END_ID,
) -> dict[str, torch.Tensor]:
    """Actions whose `SUB` tokens also name the tokens they replace (`ref + offset`).

    A `DEL` action carries its deleted reference and an `INS` replaces nothing, but a `SUB`
    action names only what it writes, so the predictor would have to read the replaced base
    back from the state, which a pooled state keeps poorly. Here every `SUB` action also gets
    its reference tokens `state[pos:pos + n]`, shifted by `offset` (at least the vocabulary
    size) so that the mean-pooling action encoder tells them from the written ones. The other
    actions are unchanged.

    Args:
        actions (`dict[str, torch.Tensor]`): `edits_to_actions` tensors: `action_ops`,
            `action_positions` (window positions) `(B, K)`, `action_tokens`,
            `action_token_mask` `(B, K, L_a)`, and optionally `action_mask` `(B, K)`.
        states (`torch.Tensor` of shape `(B, K, L)`): The state each action edits (action `k`
            edits state `k`).
        offset (`int`): Shift of the reference tokens.
        end_token (`int`, *optional*, defaults to `DNA_END_ID`): The token that closes each
            action (not a written token); None if the actions have none.

    Returns:
        `dict[str, torch.Tensor]`: The same keys, with `L_a` reference entries appended to
        `action_tokens` and `action_token_mask` (`(B, K, 2 L_a)`; unused ones masked).
    """
    ops, positions = actions["action_ops"], actions["action_positions"]
    tokens, token_mask = actions["action_tokens"], actions["action_token_mask"].bool()
    if states.dim() != 3 or states.shape[:2] != ops.shape:
        raise LeWMInputError(
            "states", tuple(states.shape), f"must have shape {tuple(ops.shape)} + (L,)"
        )
    is_sub = ops == EditOp.SUB
    if "action_mask" in actions:
        is_sub = is_sub & actions["action_mask"].bool()
    written = token_mask if end_token is None else token_mask & (tokens != end_token)
    n = written.sum(-1, keepdim=True)  # (B, K, 1) tokens a SUB writes (and replaces)
    j = torch.arange(tokens.shape[-1], device=tokens.device)  # (L_a,)
    at = (positions.unsqueeze(-1) + j).clamp(0, states.shape[-1] - 1)  # (B, K, L_a)
    ref = states.to(tokens.device).gather(-1, at) + offset
    ref_mask = (j < n) & is_sub.unsqueeze(-1)
    return {
        **actions,
        "action_tokens": torch.cat([tokens, torch.where(ref_mask, ref, 0)], dim=-1),
        "action_token_mask": torch.cat([token_mask, ref_mask], dim=-1),
    }


def code_edit_actions(
    actions: dict[str, torch.Tensor],
    states: torch.Tensor,
    locus: torch.Tensor,
    position_origin: PositionOrigin = "window",
    reference_offset: int | None = None,
    end_token: int | None = DNA_END_ID,
) -> dict[str, torch.Tensor]:
    """Edit actions in the coding a model reads: `SUB` reference tokens, then locus-relative
    positions, each when asked for. The one place both training batches and evaluation
    candidates go through, so that the two always agree.

    Args:
        actions (`dict[str, torch.Tensor]`): `edits_to_actions` tensors (window positions).
        states (`torch.Tensor` of shape `(B, K, L)`): The state each action edits.
        locus (`torch.Tensor` of shape `(B, K)`): Those states' loci.
        position_origin (`str`, defaults to `"window"`): `"locus"`: positions become
            `locus_relative_positions`.
        reference_offset (`int`, *optional*): With a value, `with_reference_tokens` by it.
        end_token (`int`, *optional*, defaults to `DNA_END_ID`): The actions' end token.

    Returns:
        `dict[str, torch.Tensor]`: The coded actions (the input when nothing is asked for).
    """
    if reference_offset is not None:
        actions = with_reference_tokens(actions, states, reference_offset, end_token)
    if position_origin == "locus":
        positions = locus_relative_positions(
            actions["action_positions"],
            locus.to(actions["action_positions"].device),
            states.shape[-1],
        )
        actions = {**actions, "action_positions": positions}
    return actions


__all__ = [
    "PositionOrigin",
    "code_edit_actions",
    "edits_to_actions",
    "locus_relative_positions",
    "with_reference_tokens",
]
