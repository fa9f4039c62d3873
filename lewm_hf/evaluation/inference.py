"""Running a world model under evaluation: eval and inference mode, chunked encoding of token
states, the prediction after a history, and the autoregressive imagination of latents with a
sliding history window.

Every evaluation (action discrimination, rollouts, surprise, planning, edits) calls the model
through these, so they all see it the same way: no dropout, BatchNorm running statistics, no
autograd, the training mode restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import LeWMInputError
from ..modeling_actions import ActionInputs

# Action ids `(N, T)` (graph moves), or any actions.
Actions = torch.Tensor | ActionInputs


@contextlib.contextmanager
def evaluating(model: Any) -> Iterator[None]:
    """Eval mode (no dropout, BatchNorm running statistics) and inference mode, then restore."""
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training and hasattr(model, "train"):
            model.train(True)


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    if isinstance(model, nn.Module):
        for tensor in model.parameters():
            return tensor.device
        for tensor in model.buffers():
            return tensor.device
    return torch.device("cpu")


def encode_states(model: Any, states: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Encode full-length token states in chunks.

    Args:
        model: An object with `encode(input_ids)` (a [`LeWMModel`] or an oracle).
        states (`torch.LongTensor` of shape `(..., L)`): Token states (vertex windows).
        batch_size (`int`, defaults to 1024): States per encoder call.

    Returns:
        `torch.FloatTensor` of shape `(..., D)` on the model's device.
    """
    device = model_device(model)
    flat = states.reshape(-1, states.shape[-1]).to(device)  # (M, L)
    out = [model.encode(flat[i : i + batch_size]) for i in range(0, flat.shape[0], batch_size)]
    return torch.cat(out).float().view(*states.shape[:-1], -1)


def as_actions(actions: Actions) -> ActionInputs:
    """Action ids `(N, T)` as an [`ActionInputs`]; an [`ActionInputs`] as it is."""
    if isinstance(actions, torch.Tensor):
        return ActionInputs(ids=actions)
    if not isinstance(actions, ActionInputs):
        raise LeWMInputError(
            "actions", type(actions).__name__, "must be action ids or an ActionInputs"
        )
    return actions


def predict_last(
    model: Any, z_hist: torch.Tensor, actions: Actions, batch_size: int = 1024
) -> torch.Tensor:
    """The prediction of the latent after the last history step, in row chunks.

    Args:
        model: An object with `predict(z_hist, actions)` taking [`ActionInputs`].
        z_hist (`torch.Tensor` of shape `(N, T, D)`): Latents `z_0 .. z_{T-1}`, `T <= H`.
        actions (`torch.LongTensor` of shape `(N, T)` or [`ActionInputs`]):
            Action ids, or any actions `(N, T)`, for `a_0 .. a_{T-1}`.
        batch_size (`int`, defaults to 1024): Rows per predictor call.

    Returns:
        `torch.FloatTensor` of shape `(N, D)`: the prediction of `z_T`.
    """
    acts = as_actions(actions).to(z_hist.device)
    out = [
        model.predict(z_hist[i : i + batch_size], acts.select(slice(i, i + batch_size)))[:, -1]
        for i in range(0, z_hist.shape[0], batch_size)
    ]
    return torch.cat(out).float()


def imagine_latents(model: Any, z_hist: torch.Tensor, actions: Actions) -> torch.Tensor:
    """Autoregressive latent rollout with a sliding history window.

    Starts from `T0` known latents and feeds every prediction back. Predicting latent `m` uses
    the last `min(m, H)` latents `z_{m-H} .. z_{m-1}` (true or imagined) and the actions
    `a_{m-H} .. a_{m-1}`, `H = model.config.history_length`, and keeps `predict(...)[:, -1]`.

    Args:
        model: An object with `predict` and `config.history_length`.
        z_hist (`torch.Tensor` of shape `(B, T0, D)`): Known latents `z_0 .. z_{T0-1}`, `T0 >= 1`.
        actions (`torch.LongTensor` of shape `(B, T0 - 1 + K)` or [`ActionInputs`]):
            The `T0 - 1` actions between the known latents, then the `K` actions to imagine.

    Returns:
        `torch.FloatTensor` of shape `(B, K, D)`: imagined `z_{T0} .. z_{T0+K-1}`.
    """
    history = model.config.history_length
    acts = as_actions(actions).to(z_hist.device)
    known = z_hist.shape[1]
    steps = acts.shape[1] - (known - 1)
    if known < 1 or steps < 1:
        raise LeWMInputError(
            "actions", steps, f"need T0 - 1 + K actions with K >= 1 for T0 = {known} latents"
        )
    latents = list(z_hist.unbind(dim=1))
    for _ in range(steps):
        m = len(latents)
        lo = max(0, m - history)
        hist = torch.stack(latents[lo:m], dim=1)  # (B, min(m, H), D)
        out = model.predict(hist, acts.select(steps=slice(lo, m)))
        latents.append(out[:, -1].to(z_hist.dtype))
    return torch.stack(latents[known:], dim=1)


__all__ = [
    "Actions",
    "as_actions",
    "encode_states",
    "evaluating",
    "imagine_latents",
    "model_device",
    "predict_last",
]
