"""Collators: LM rows for the encoder phase, move clips, ragged action sequences and edit
trajectories for LeWM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import LeWMInputError
from ..modeling_actions import ActionInputs
from .dna import DNA_END_ID
from .edits.actions import edits_to_actions
from .edits.corpus import edits_from_row
from .edits.ops import DEFAULT_MAX_EDIT_LEN


@dataclass
class DataCollatorForWalkLM:
    """Stack fixed-length LM rows; `labels` are the inputs (the causal LM shifts them).

    A row of `w + 1` tokens thus trains on input `[:-1]` and labels `[1:]`.
    """

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids = torch.as_tensor([f["input_ids"] for f in features], dtype=torch.long)
        return {"input_ids": input_ids, "labels": input_ids.clone()}


@dataclass
class DataCollatorForLeWM:
    """Collate world-model clips.

    Accepts rows in one of three forms:

    - move clips: `tokens` (a `w + H` token span) and `actions` (`H` neighbour ranks); the span
      is unfolded into `H + 1` windows of `window` tokens;
    - explicit trajectories: `input_ids` (`K + 1` states of equal length) and `actions` (`K`
      action ids), ragged in `K`: padded to the batch maximum, with the actions' `mask` marking
      real steps (padded states repeat the last real state);
    - edit trajectories (rows of `build_edit_corpus`): `input_ids` (`K + 1` states),
      `edit_ops`, `edit_positions`, `edit_tokens` (`K` edits) and `locus` (`K + 1`), ragged in
      `K`; the edits become actions through `edits.edits_to_actions` (each action's tokens
      closed by `edit_end_token`); padded states repeat the last real state and locus, padded
      actions are 0 and masked.

    Args:
        window (`int`, *optional*): The state window `w`, required for move clips.
        edit_end_token (`int`, *optional*, defaults to `DNA_END_ID`): Closes every edit
            action's tokens (None: nothing appended).
        max_edit_len (`int`, defaults to 16): Longest edit accepted.

    Returns (from `__call__`):
        `dict[str, Any]`: the keyword arguments of `LeWMModel.forward`: `input_ids`
        `(B, T + 1, L)` and `actions` ([`ActionInputs`]) with `ids` `(B, T)`, and for ragged
        trajectories `mask` `(B, T)` bool. Edit trajectories give `input_ids` `(B, K + 1, L)`,
        `locus` `(B, K + 1)` and `actions` with `ops`, `positions` and `mask` `(B, K)`,
        `tokens` and `token_mask` `(B, K, L_a)`.
    """

    window: int | None = None
    edit_end_token: int | None = DNA_END_ID
    max_edit_len: int = DEFAULT_MAX_EDIT_LEN

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise LeWMInputError("features", [], "empty batch")
        if "edit_ops" in features[0]:
            return self._collate_edits(features)
        if "tokens" in features[0]:
            if self.window is None:
                raise LeWMInputError("window", None, "move clips need the state window")
            tokens = torch.as_tensor([f["tokens"] for f in features], dtype=torch.long)
            actions = torch.as_tensor([f["actions"] for f in features], dtype=torch.long)
            states = tokens.unfold(1, self.window, 1)  # (B, H + 1, w)
            if states.shape[1] != actions.shape[1] + 1:
                raise LeWMInputError(
                    "tokens", tuple(tokens.shape), f"span must be window + H = {self.window} + H"
                )
            # Move clips are never padded: no action mask, so the model takes its unpadded
            # path (one SIGReg call over all steps).
            return {"input_ids": states.contiguous(), "actions": ActionInputs(ids=actions)}
        steps = max(len(f["actions"]) for f in features)
        input_ids, action_ids, masks = [], [], []
        for f in features:
            states = torch.as_tensor(f["input_ids"], dtype=torch.long)
            acts = torch.as_tensor(f["actions"], dtype=torch.long)
            k = acts.shape[0]
            if states.shape[0] != k + 1:
                raise LeWMInputError("input_ids", tuple(states.shape), f"need {k + 1} states")
            pad = steps - k
            input_ids.append(torch.cat([states, states[-1:].expand(pad, -1)]))
            action_ids.append(torch.cat([acts, acts.new_zeros(pad)]))
            masks.append(torch.arange(steps) < k)
        return {
            "input_ids": torch.stack(input_ids),
            "actions": ActionInputs(ids=torch.stack(action_ids), mask=torch.stack(masks)),
        }

    def _collate_edits(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """Edit-trajectory rows -> padded states, loci and actions."""
        trajectories = [edits_from_row(f) for f in features]
        actions = ActionInputs.from_batch(
            edits_to_actions(trajectories, self.edit_end_token, self.max_edit_len)
        )
        steps = actions.shape[1]
        input_ids, loci = [], []
        for i, f in enumerate(features):
            states = torch.as_tensor(f["input_ids"], dtype=torch.long)  # (K + 1, L)
            locus = torch.as_tensor(f["locus"], dtype=torch.long)  # (K + 1,)
            k = len(trajectories[i])
            if states.dim() != 2 or states.shape[0] != k + 1:
                raise LeWMInputError(
                    f"features[{i}].input_ids", tuple(states.shape), f"need {k + 1} states"
                )
            if locus.shape != (k + 1,):
                raise LeWMInputError(
                    f"features[{i}].locus", tuple(locus.shape), f"need {k + 1} loci"
                )
            if input_ids and states.shape[1] != input_ids[0].shape[1]:
                raise LeWMInputError(
                    f"features[{i}].input_ids",
                    tuple(states.shape),
                    f"windows differ in length ({input_ids[0].shape[1]} before)",
                )
            pad = steps - k
            input_ids.append(torch.cat([states, states[-1:].expand(pad, -1)]))
            loci.append(torch.cat([locus, locus[-1:].expand(pad)]))
        return {"input_ids": torch.stack(input_ids), "locus": torch.stack(loci), "actions": actions}
