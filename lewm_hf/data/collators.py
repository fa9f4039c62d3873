"""Collators: LM rows for the encoder phase, move clips and ragged action sequences for LeWM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import LeWMInputError


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

    Accepts rows in one of two forms:

    - move clips: `tokens` (a `w + H` token span) and `actions` (`H` neighbour ranks); the span
      is unfolded into `H + 1` windows of `window` tokens;
    - explicit trajectories: `input_ids` (`K + 1` states of equal length) and `actions` (`K`
      action ids), ragged in `K`: padded to the batch maximum, with `action_mask` marking real
      steps (padded states repeat the last real state).

    Args:
        window (`int`, *optional*): The state window `w`, required for move clips.

    Returns (from `__call__`):
        `dict[str, torch.Tensor]`: `input_ids` `(B, T + 1, L)`, `action_ids` `(B, T)`, and for
        ragged trajectories `action_mask` `(B, T)` bool.
    """

    window: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise LeWMInputError("features", [], "empty batch")
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
            # Move clips are never padded: no `action_mask`, so the model takes its unpadded
            # path (one SIGReg call over all steps).
            return {"input_ids": states.contiguous(), "action_ids": actions}
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
            "action_ids": torch.stack(action_ids),
            "action_mask": torch.stack(masks),
        }
