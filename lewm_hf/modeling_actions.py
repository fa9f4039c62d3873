"""The action encoder of a LeWM world model and the checks of its inputs.

An action is an operation, a position and one or several tokens (a graph move is one token,
the neighbour rank; an edit is an op, a window position and the bases it writes). Shapes: `B`
batch, `T` number of actions, `L_a` tokens per action.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .configuration_lewm import LeWMConfig
from .errors import LeWMInputError

# Attribute that marks an Embedding initialised N(0, 1), on the scale of a sinusoidal embedding.
_UNIT_INIT = "_lewm_unit_init"


def sinusoidal_embedding(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoidal embedding: `[sin(p w_i), cos(p w_i)]`, `w_i = base^(-2i/dim)`.

    Args:
        positions (`torch.Tensor`): Integer or float positions, any shape `S`.
        dim (`int`): Embedding size (even).
        base (`float`, *optional*, defaults to 10000.0): Longest wavelength scale.

    Returns:
        `torch.FloatTensor` of shape `(*S, dim)`.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(base) * torch.arange(half, device=positions.device, dtype=torch.float32) / half
    )
    angles = positions.float().unsqueeze(-1) * freqs  # (*S, half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _masked_action_inputs(
    action_ids: torch.Tensor | None,
    action_mask: torch.Tensor | None,
    action_ops: torch.Tensor | None,
    action_positions: torch.Tensor | None,
    action_tokens: torch.Tensor | None,
    action_token_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """Validate the shapes of raw actions and replace padded entries by 0.

    Returns:
        `tuple`: `(mask (B, T), token_mask (B, T, L_a), tokens, ops, positions, token_field)`,
        `token_field` naming the argument the tokens came from.
    """
    if action_tokens is None:
        if action_ids is None:
            raise LeWMInputError("action_ids", None, "give action_ids or action_tokens")
        if action_ids.dim() != 2:
            raise LeWMInputError("action_ids", tuple(action_ids.shape), "must have shape (B, T)")
        action_tokens = action_ids.unsqueeze(-1)
        token_field = "action_ids"
    else:
        if action_tokens.dim() != 3:
            raise LeWMInputError(
                "action_tokens", tuple(action_tokens.shape), "must have shape (B, T, L_a)"
            )
        token_field = "action_tokens"
    batch, steps = action_tokens.shape[:2]
    device = action_tokens.device
    mask = _bool_mask(action_mask, (batch, steps), "action_mask", device)
    token_mask = mask.unsqueeze(-1).expand_as(action_tokens)
    if action_token_mask is not None:
        token_mask = token_mask & _bool_mask(
            action_token_mask, tuple(action_tokens.shape), "action_token_mask", device
        )
    ops = _long_or_zeros(action_ops, (batch, steps), "action_ops", device)
    positions = _long_or_zeros(action_positions, (batch, steps), "action_positions", device)

    # Padded entries are replaced by 0 before any lookup (and before the range check).
    tokens = torch.where(token_mask, action_tokens, 0)
    ops = torch.where(mask, ops, 0)
    positions = torch.where(mask, positions, 0)
    return mask, token_mask, tokens, ops, positions, token_field


def _action_ranges(
    config: LeWMConfig,
    token_field: str,
    tokens: torch.Tensor,
    ops: torch.Tensor,
    positions: torch.Tensor,
) -> list[tuple[str, torch.Tensor, int]]:
    """The `(field, tensor, upper bound)` checks of masked action inputs."""
    return [
        (token_field, tokens, config.action_vocab_size),
        ("action_ops", ops, config.num_action_ops),
        ("action_positions", positions, config.max_action_position),
    ]


class LeWMActionEncoder(nn.Module):
    """Embeds actions `(op, position, tokens)` into the predictor's conditioning space.

    `e = MLP(op_embedding(op) + sinusoidal(position) + mean_l token_embedding(token_l))`, with
    MLP = Linear(action_hidden, d_model) -> GELU -> Linear(d_model, d_model). Padded actions
    (`action_mask` False) come out as exact zeros and their values are never looked up, so any
    padding value (e.g. -100) is accepted.

    Args:
        config ([`LeWMConfig`]): Model configuration.
    """

    def __init__(self, config: LeWMConfig):
        super().__init__()
        self.config = config
        self.op_embedding = nn.Embedding(config.num_action_ops, config.action_hidden)
        self.token_embedding = nn.Embedding(config.action_vocab_size, config.action_hidden)
        # N(0, 1) rather than N(0, initializer_range): op and token then weigh as much as the
        # O(1) sinusoidal position at init, instead of being drowned by it.
        for embedding in (self.op_embedding, self.token_embedding):
            setattr(embedding, _UNIT_INIT, True)
        self.mlp = nn.Sequential(
            nn.Linear(config.action_hidden, config.d_model),
            nn.GELU(),
            nn.Linear(config.d_model, config.d_model),
        )

    def forward(
        self,
        action_ids: torch.LongTensor | None = None,
        action_mask: torch.Tensor | None = None,
        action_ops: torch.LongTensor | None = None,
        action_positions: torch.LongTensor | None = None,
        action_tokens: torch.LongTensor | None = None,
        action_token_mask: torch.Tensor | None = None,
        check_values: bool = True,
    ) -> torch.FloatTensor:
        """
        Args:
            action_ids (`torch.LongTensor` of shape `(B, T)`, *optional*):
                One token per action (for graph moves: the neighbour rank). Required unless
                `action_tokens` is given.
            action_mask (`torch.Tensor` of shape `(B, T)`, *optional*):
                True (or 1) for real actions, False for padding. Defaults to all True.
            action_ops (`torch.LongTensor` of shape `(B, T)`, *optional*):
                Operation ids in `[0, num_action_ops)`. Defaults to zeros.
            action_positions (`torch.LongTensor` of shape `(B, T)`, *optional*):
                Positions in `[0, max_action_position)`. Defaults to zeros.
            action_tokens (`torch.LongTensor` of shape `(B, T, L_a)`, *optional*):
                Several tokens per action (e.g. inserted bases), mean-pooled; used instead of
                `action_ids` when given.
            action_token_mask (`torch.Tensor` of shape `(B, T, L_a)`, *optional*):
                Valid entries of `action_tokens`. Defaults to all True. An action with no valid
                token gets a zero token embedding (e.g. a deletion).
            check_values (`bool`, *optional*, defaults to `True`):
                Check that the ids lie in their vocabularies (`LeWMInputError` otherwise). The
                check reads the values, which on an accelerator is a host synchronisation;
                `LeWMTrainer` checks each batch on the host instead (`check_input_values`) and
                passes `False`.

        Returns:
            `torch.FloatTensor` of shape `(B, T, d_model)`.
        """
        mask, token_mask, tokens, ops, positions, token_field = _masked_action_inputs(
            action_ids, action_mask, action_ops, action_positions, action_tokens, action_token_mask
        )
        if check_values:
            _check_ranges(_action_ranges(self.config, token_field, tokens, ops, positions))

        weights = token_mask.to(self.token_embedding.weight.dtype)  # (B, T, L_a)
        token_emb = (self.token_embedding(tokens) * weights.unsqueeze(-1)).sum(dim=2)
        token_emb = token_emb / weights.sum(dim=2, keepdim=True).clamp(min=1.0)  # (B, T, A)
        pos_emb = sinusoidal_embedding(positions, self.config.action_hidden).to(token_emb.dtype)
        hidden = self.op_embedding(ops) + pos_emb + token_emb  # (B, T, A)
        return self.mlp(hidden) * mask.unsqueeze(-1).to(token_emb.dtype)  # (B, T, C)


# ----------------------------------------------------------------------------------------------
# Input checks (shared with `modeling_lewm`)


def _check_shape(tensor: torch.Tensor | None, shape: tuple[int, ...], field: str) -> None:
    if tensor is not None and tuple(tensor.shape) != shape:
        raise LeWMInputError(field, tuple(tensor.shape), f"must have shape {shape}")


def _bool_mask(
    mask: torch.Tensor | None, shape: tuple[int, ...], field: str, device: torch.device
) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    _check_shape(mask, shape, field)
    return mask.to(device=device, dtype=torch.bool)


def _long_or_zeros(
    tensor: torch.Tensor | None, shape: tuple[int, ...], field: str, device: torch.device
) -> torch.Tensor:
    if tensor is None:
        return torch.zeros(shape, dtype=torch.long, device=device)
    _check_shape(tensor, shape, field)
    if tensor.is_floating_point():
        raise LeWMInputError(field, str(tensor.dtype), "must be an integer tensor")
    return tensor.to(device=device, dtype=torch.long)


def _check_trailing_padding(mask: torch.Tensor) -> None:
    """State `k >= 1` exists when action `k - 1` does: no real action after a pad."""
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise LeWMInputError(
            "action_mask", "holes", "padding must be trailing (no real action after a pad)"
        )


def check_input_values(config: LeWMConfig, batch: dict[str, Any]) -> None:
    """The value checks of `LeWMModel.forward` (`check_values`) on a batch, where it lies.

    On a collated batch, still on the host, the checks read no accelerator memory; the trainer
    runs them in its data loader and then calls the model with `check_values=False`, so that a
    training step never waits for the device to answer a question about its inputs.

    Args:
        config (`LeWMConfig`): The model's configuration (vocabulary sizes).
        batch (`dict[str, Any]`): Keyword arguments of `LeWMModel.forward`.

    Raises:
        `LeWMInputError`: as `LeWMModel.forward` would, naming the field.
    """
    action_mask = batch.get("action_mask")
    if isinstance(action_mask, torch.Tensor) and action_mask.dim() == 2:
        _check_trailing_padding(action_mask.bool())
    if batch.get("action_ids") is None and batch.get("action_tokens") is None:
        return  # `forward` raises the missing-actions error itself
    _, _, tokens, ops, positions, token_field = _masked_action_inputs(
        batch.get("action_ids"),
        action_mask,
        batch.get("action_ops"),
        batch.get("action_positions"),
        batch.get("action_tokens"),
        batch.get("action_token_mask"),
    )
    _check_ranges(_action_ranges(config, token_field, tokens, ops, positions))


def _check_ranges(checks: list[tuple[str, torch.Tensor, int]]) -> None:
    """Check `0 <= t < upper` for several tensors with a single device sync."""
    flags = torch.stack([((t < 0) | (t >= upper)).any() for _, t, upper in checks])
    if bool(flags.any()):
        for (field, tensor, upper), bad in zip(checks, flags.tolist()):
            if bad:
                raise LeWMInputError(
                    field,
                    f"values in [{int(tensor.min())}, {int(tensor.max())}]",
                    f"must lie in [0, {upper})",
                )


__all__ = [
    "LeWMActionEncoder",
    "check_input_values",
    "sinusoidal_embedding",
]
