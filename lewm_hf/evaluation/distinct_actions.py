"""Action discrimination among the actions whose next states differ.

In many environments several actions lead from a state to the same next state: in Taxi a
move into a wall, a pickup with no passenger there and a dropoff with nothing to drop all leave
the state unchanged. Their candidates in an [`ActionCandidates`] then carry the same next latent
and tie at every distance, so a perfect model scores Recall@1 `1 / g` on an item whose true
action shares its next state with `g - 1` others: the metric would count as errors what no
model can tell apart.

[`merge_equal_next_states`] keeps one candidate per distinct next state (the first, in
candidate order) and points the target at the one standing for the true action's next state.
Ties between the kept candidates (distinct next states the encoder maps to the same latent)
remain, and [`lewm_hf.evaluation.retrieval`] scores them at their expected rank, so an encoder
that confuses distinct states is still charged for it. Items left with fewer than two
candidates say nothing about the actions and are dropped.

It works on any candidate set whose next states can be named: token windows from an
environment, or any per-candidate key (`(N, C, ...)` integers).
"""

from __future__ import annotations

import torch

from ..errors import LeWMInputError
from .discrimination import ActionCandidates


def merge_equal_next_states(
    candidates: ActionCandidates, next_states: torch.Tensor
) -> tuple[ActionCandidates, torch.Tensor]:
    """One candidate per distinct next state; the target moved to its next state's candidate.

    Args:
        candidates (`ActionCandidates`): The items (`C` candidates each).
        next_states (`torch.Tensor` of shape `(N, C)` or `(N, C, L)`): An integer key of each
            candidate's true next state (a state id, or its token window); equal keys mean the
            same next state.

    Returns:
        `tuple[ActionCandidates, torch.Tensor]`: the items with at least two distinct next
        states, their duplicate candidates masked out and `target` the first candidate sharing
        the true action's next state; and `(N,)` bool, which of the input items were kept.

    Raises:
        `LeWMInputError`: when `next_states` does not match the candidates' shape.
    """
    candidates.validate()
    num, width = candidates.candidate_mask.shape
    keys = next_states.to(candidates.candidate_mask.device)
    if keys.dim() == 2:
        keys = keys[..., None]
    if keys.dim() != 3 or tuple(keys.shape[:2]) != (num, width):
        raise LeWMInputError(
            "next_states",
            tuple(next_states.shape),
            f"must be ({num}, {width}) or ({num}, {width}, L)",
        )
    mask = candidates.candidate_mask
    same = (keys[:, :, None, :] == keys[:, None, :, :]).all(-1)  # (N, C, C)
    same &= mask[:, :, None] & mask[:, None, :]
    earlier = torch.ones(width, width, dtype=torch.bool, device=mask.device).tril(-1)  # j < i
    duplicate = (same & earlier).any(-1)  # (N, C): an earlier real candidate has this state
    kept = mask & ~duplicate
    # The representative of every candidate: the first real candidate with its next state.
    first = same.float().argmax(-1)  # (N, C) first True along j
    rows = torch.arange(num, device=mask.device)
    target = first[rows, candidates.target]
    useful = kept.sum(1) >= 2
    index = useful.nonzero(as_tuple=True)[0]
    merged = ActionCandidates(
        z_hist=candidates.z_hist[index],
        actions=candidates.actions.apply(lambda value: value[index]),
        candidate_latents=candidates.candidate_latents[index],
        candidate_actions=candidates.candidate_actions.apply(lambda value: value[index]),
        candidate_mask=kept[index],
        target=target[index],
    )
    return merged, useful


__all__ = ["merge_equal_next_states"]
