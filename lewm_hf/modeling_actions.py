"""The actions of a LeWM world model: their typed input (`ActionInputs`), its checks, and the
action encoder that embeds them into the predictor's conditioning space.

An action is an operation, a position and one or several tokens (a graph move is one token,
the neighbour rank; an edit is an op, a window position and the bases it writes). Shapes: `B`
batch, `T` number of actions, `L_a` tokens per action.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from .configuration_lewm import LeWMConfig
from .errors import LeWMInputError

# Attribute that marks an Embedding initialised N(0, 1), on the scale of a sinusoidal embedding.
_UNIT_INIT = "_lewm_unit_init"
# The fields of `ActionInputs`, in order; a flat batch holds field `f` under `action_<f>`.
ACTION_FIELDS = ("ids", "mask", "ops", "positions", "tokens", "token_mask")
BATCH_KEY_PREFIX = "action_"


@dataclass(init=False, eq=False)
class ActionInputs(Mapping):
    """
    The actions `a_0 .. a_{T-1}` of a batch of clips, as [`LeWMModel`] takes them
    (`forward(actions=...)`, `predict`, `encode_actions`).

    Give `ids` (one token per action) or `tokens` (several per action, mean-pooled). Padded
    actions (`mask` False) are never looked up, so any padding value (e.g. -100) is accepted.
    Building one checks every shape (`LeWMInputError` naming the field, e.g. `actions.mask`);
    the values (ids within their vocabularies, trailing padding) are checked by the model, or on
    the host by [`~ActionInputs.check_values`].

    It is also a read-only `Mapping` from field name to tensor (the fields given), and
    `ActionInputs(mapping)` builds one from such a mapping: the `Trainer`, accelerate and torch's
    `DataLoader` move, pin and concatenate the tensors of a batch by walking its Mappings and
    rebuilding each as `type(m)({...})` (they do not walk dataclasses), so a collated batch
    holds it under `"actions"` and `model(**batch)` works on any device and in any data loader.

    Args:
        ids (`torch.LongTensor` of shape `(B, T)`, *optional*):
            One token per action (graph moves: the neighbour rank). Required unless `tokens`
            is given.
        mask (`torch.BoolTensor` of shape `(B, T)`, *optional*):
            True (or 1) for real actions, False for padding, which must be trailing in a clip
            (`LeWMModel.forward`). Defaults to all True.
        ops (`torch.LongTensor` of shape `(B, T)`, *optional*):
            Operation ids in `[0, num_action_ops)`. Defaults to zeros.
        positions (`torch.LongTensor` of shape `(B, T)`, *optional*):
            Positions in `[0, max_action_position)`. Defaults to zeros.
        tokens (`torch.LongTensor` of shape `(B, T, L_a)`, *optional*):
            Several tokens per action (e.g. inserted bases), mean-pooled; instead of `ids`.
        token_mask (`torch.BoolTensor` of shape `(B, T, L_a)`, *optional*):
            Valid entries of `tokens` (of shape `(B, T, 1)` with `ids`). Defaults to all True.
            An action with no valid token gets a zero token embedding (e.g. a deletion).
    """

    ids: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ops: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None

    def __init__(
        self,
        data: Mapping[str, torch.Tensor] | None = None,
        /,
        *,
        ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        ops: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
    ):
        values = {
            "ids": ids,
            "mask": mask,
            "ops": ops,
            "positions": positions,
            "tokens": tokens,
            "token_mask": token_mask,
        }
        if data is not None:
            if not isinstance(data, Mapping):
                raise LeWMInputError(
                    "actions",
                    type(data).__name__,
                    "ActionInputs takes a Mapping of its fields or keywords (ids=...)",
                )
            if any(value is not None for value in values.values()):
                raise LeWMInputError("actions", "mapping and keywords", "give one or the other")
            unknown = sorted(set(data) - set(ACTION_FIELDS))
            if unknown:
                raise LeWMInputError("actions", unknown, f"fields must be among {ACTION_FIELDS}")
            values.update(data)
        for name, value in values.items():
            setattr(self, name, value)
        self._check_shapes()

    def _check_shapes(self) -> None:
        """Every shape check of actions: each field's rank, size and dtype against the rest."""
        for name in ACTION_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, torch.Tensor):
                raise LeWMInputError(f"actions.{name}", type(value).__name__, "must be a tensor")
        if self.tokens is not None:
            if self.ids is not None:
                raise LeWMInputError("actions.ids", "given with tokens", "give ids or tokens")
            if self.tokens.dim() != 3:
                raise LeWMInputError(
                    "actions.tokens", tuple(self.tokens.shape), "must have shape (B, T, L_a)"
                )
            _check_integer(self.tokens, "actions.tokens")
            token_shape = tuple(self.tokens.shape)
        elif self.ids is None:
            raise LeWMInputError("actions.ids", None, "give ids or tokens")
        elif self.ids.dim() != 2:
            raise LeWMInputError("actions.ids", tuple(self.ids.shape), "must have shape (B, T)")
        else:
            _check_integer(self.ids, "actions.ids")
            token_shape = (*self.ids.shape, 1)
        for name in ("mask", "ops", "positions"):
            _check_shape(getattr(self, name), token_shape[:2], f"actions.{name}")
        for name in ("ops", "positions"):
            if getattr(self, name) is not None:
                _check_integer(getattr(self, name), f"actions.{name}")
        _check_shape(self.token_mask, token_shape, "actions.token_mask")

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any]) -> ActionInputs:
        """The actions held as flat `action_<field>` entries of a mapping, e.g. the output of
        `lewm_hf.data.edits.edits_to_actions`: `action_ids`, `action_mask`, `action_ops`,
        `action_positions`, `action_tokens`, `action_token_mask` (other keys are ignored).

        Args:
            batch (`Mapping[str, Any]`): The mapping.

        Returns:
            [`ActionInputs`]: Its actions (shapes checked).
        """
        return cls(
            {
                name: batch[BATCH_KEY_PREFIX + name]
                for name in ACTION_FIELDS
                if batch.get(BATCH_KEY_PREFIX + name) is not None
            }
        )

    def to_batch(self) -> dict[str, torch.Tensor]:
        """The flat `action_<field>` entries of the fields given (the inverse of `from_batch`),
        e.g. for `lewm_hf.data.edits.code_edit_actions`."""
        return {BATCH_KEY_PREFIX + name: value for name, value in self.items()}

    # ---- Mapping: the fields given ----
    def __getitem__(self, name: str) -> torch.Tensor:
        value = getattr(self, name) if name in ACTION_FIELDS else None
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return (name for name in ACTION_FIELDS if getattr(self, name) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    # Tensors have no truth value: compare (and hash) by identity, not as a Mapping would.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    # ---- shape and transforms ----
    @property
    def shape(self) -> tuple[int, int]:
        """`(B, T)`: clips and actions per clip."""
        source = self.ids if self.tokens is None else self.tokens
        return tuple(source.shape[:2])

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ActionInputs:
        """A new `ActionInputs` with `fn` applied to every field given, e.g. `lambda t: t[lo:hi]`
        (clips `lo .. hi - 1`) or `lambda t: t[:, lo:hi]` (actions `lo .. hi - 1`).

        Args:
            fn (`Callable[[torch.Tensor], torch.Tensor]`): Maps a field's tensor to the new one.

        Returns:
            [`ActionInputs`]: The result (shapes checked).
        """
        return type(self)({name: fn(value) for name, value in self.items()})

    def select(self, rows: slice = slice(None), steps: slice = slice(None)) -> ActionInputs:
        """Clips `rows` and actions `steps` of every field (`t[rows, steps]`).

        Args:
            rows (`slice`, *optional*): Clips kept, e.g. `slice(lo, hi)`; defaults to all.
            steps (`slice`, *optional*): Actions kept, e.g. `slice(0, 1)`; defaults to all.

        Returns:
            [`ActionInputs`]: Views of the selected entries.
        """
        return self.apply(lambda value: value[rows, steps])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ActionInputs:
        """The same actions on `device` (as `torch.Tensor.to`)."""
        return self.apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> ActionInputs:
        """The same actions in pinned host memory (torch's `DataLoader(pin_memory=True)`)."""
        return self.apply(torch.Tensor.pin_memory)

    # ---- value checks ----
    def check_values(self, config: LeWMConfig) -> None:
        """The value checks of `LeWMModel.forward`: padding trailing in every clip, ids, ops and
        positions within `config`'s vocabularies. They read the values, a host synchronisation
        on an accelerator: `LeWMTrainer` runs them on the collated batch, still on the host
        (`check_input_values`), and calls the model with `check_values=False`.

        Args:
            config (`LeWMConfig`): The model's configuration (vocabulary sizes).

        Raises:
            `LeWMInputError`: naming the field.
        """
        if self.mask is not None:
            _check_trailing_padding(self.mask.bool())
        _check_ranges(_action_ranges(config, _masked(self)))


class _MaskedActions(NamedTuple):
    """Actions with their defaults filled in and padded entries replaced by 0."""

    mask: torch.Tensor  # (B, T) bool
    token_mask: torch.Tensor  # (B, T, L_a) bool
    tokens: torch.Tensor  # (B, T, L_a)
    ops: torch.Tensor  # (B, T) long
    positions: torch.Tensor  # (B, T) long
    token_field: str  # the field the tokens came from


def _masked(actions: ActionInputs) -> _MaskedActions:
    """Fill in the defaults of `actions` and replace padded entries by 0 (before any lookup)."""
    if actions.tokens is None:
        tokens, token_field = actions.ids.unsqueeze(-1), "actions.ids"
    else:
        tokens, token_field = actions.tokens, "actions.tokens"
    shape = tuple(tokens.shape[:2])
    device = tokens.device
    if actions.mask is None:
        mask = torch.ones(shape, dtype=torch.bool, device=device)
    else:
        mask = actions.mask.to(device=device, dtype=torch.bool)
    token_mask = mask.unsqueeze(-1).expand_as(tokens)
    if actions.token_mask is not None:
        token_mask = token_mask & actions.token_mask.to(device=device, dtype=torch.bool)
    ops, positions = (
        torch.zeros(shape, dtype=torch.long, device=device)
        if value is None
        else value.to(device=device, dtype=torch.long)
        for value in (actions.ops, actions.positions)
    )
    tokens = torch.where(token_mask, tokens, 0)
    ops = torch.where(mask, ops, 0)
    positions = torch.where(mask, positions, 0)
    return _MaskedActions(mask, token_mask, tokens, ops, positions, token_field)


def _action_ranges(
    config: LeWMConfig, masked: _MaskedActions
) -> list[tuple[str, torch.Tensor, int]]:
    """The `(field, tensor, upper bound)` checks of masked actions."""
    return [
        (masked.token_field, masked.tokens, config.action_vocab_size),
        ("actions.ops", masked.ops, config.num_action_ops),
        ("actions.positions", masked.positions, config.max_action_position),
    ]


def require_actions(actions: Any) -> ActionInputs:
    """`actions` if it is an [`ActionInputs`], else a `LeWMInputError` naming `actions`."""
    if not isinstance(actions, ActionInputs):
        raise LeWMInputError(
            "actions",
            None if actions is None else type(actions).__name__,
            "must be an ActionInputs (ActionInputs.from_batch reads a batch's action_* keys)",
        )
    return actions


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


class LeWMActionEncoder(nn.Module):
    """Embeds actions `(op, position, tokens)` into the predictor's conditioning space.

    `e = MLP(op_embedding(op) + sinusoidal(position) + mean_l token_embedding(token_l))`, with
    MLP = Linear(action_hidden, d_model) -> GELU -> Linear(d_model, d_model). Padded actions
    (`mask` False) come out as exact zeros and their values are never looked up, so any
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

    def forward(self, actions: ActionInputs, check_values: bool = True) -> torch.FloatTensor:
        """
        Args:
            actions ([`ActionInputs`]): The actions, `(B, T)`.
            check_values (`bool`, *optional*, defaults to `True`):
                Check that the ids lie in their vocabularies (`LeWMInputError` otherwise). The
                check reads the values, which on an accelerator is a host synchronisation;
                `LeWMTrainer` checks each batch on the host instead (`check_input_values`) and
                passes `False`.

        Returns:
            `torch.FloatTensor` of shape `(B, T, d_model)`.
        """
        masked = _masked(require_actions(actions))
        if check_values:
            _check_ranges(_action_ranges(self.config, masked))

        weights = masked.token_mask.to(self.token_embedding.weight.dtype)  # (B, T, L_a)
        token_emb = (self.token_embedding(masked.tokens) * weights.unsqueeze(-1)).sum(dim=2)
        token_emb = token_emb / weights.sum(dim=2, keepdim=True).clamp(min=1.0)  # (B, T, A)
        pos_emb = sinusoidal_embedding(masked.positions, self.config.action_hidden)
        pos_emb = pos_emb.to(token_emb.dtype)
        hidden = self.op_embedding(masked.ops) + pos_emb + token_emb  # (B, T, A)
        return self.mlp(hidden) * masked.mask.unsqueeze(-1).to(token_emb.dtype)  # (B, T, C)


# ----------------------------------------------------------------------------------------------
# Input checks (shared with `modeling_lewm`)


def check_input_values(config: LeWMConfig, batch: Mapping[str, Any]) -> None:
    """The value checks of `LeWMModel.forward` (`check_values`) on a batch, where it lies.

    On a collated batch, still on the host, the checks read no accelerator memory; the trainer
    runs them in its data loader and then calls the model with `check_values=False`, so that a
    training step never waits for the device to answer a question about its inputs.

    Args:
        config (`LeWMConfig`): The model's configuration (vocabulary sizes).
        batch (`Mapping[str, Any]`): Keyword arguments of `LeWMModel.forward`; its `actions`
            ([`ActionInputs`]) are checked.

    Raises:
        `LeWMInputError`: as `LeWMModel.forward` would, naming the field.
    """
    require_actions(batch.get("actions")).check_values(config)


def _check_integer(tensor: torch.Tensor, field: str) -> None:
    if tensor.is_floating_point() or tensor.is_complex():
        raise LeWMInputError(field, str(tensor.dtype), "must be an integer tensor")


def _check_shape(tensor: torch.Tensor | None, shape: tuple[int, ...], field: str) -> None:
    if tensor is not None and tuple(tensor.shape) != shape:
        raise LeWMInputError(field, tuple(tensor.shape), f"must have shape {shape}")


def _check_trailing_padding(mask: torch.Tensor) -> None:
    """State `k >= 1` exists when action `k - 1` does: no real action after a pad."""
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise LeWMInputError(
            "actions.mask", "holes", "padding must be trailing (no real action after a pad)"
        )


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
    "ACTION_FIELDS",
    "ActionInputs",
    "LeWMActionEncoder",
    "check_input_values",
    "require_actions",
    "sinusoidal_embedding",
]
