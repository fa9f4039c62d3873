"""Latent rollouts: autoregressive prediction from `z_0` alone for horizons `1 .. K`, feeding the
predictions back (a sliding history window past `history_length`), scored per horizon by L2 and
cosine to the true latents against the copy baseline (`z_0` at every horizon).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import LeWMInputError
from .inference import Actions, as_actions, encode_states, evaluating, imagine_latents


def latent_rollout(
    model: Any, states: torch.Tensor, actions: Actions, batch_size: int = 1024
) -> dict[str, list[float]]:
    """Autoregressive rollout from `z_0` against the true latents, per horizon.

    `z_hat_1 .. z_hat_K = imagine_latents(model, z_0, a_0 .. a_{K-1})` (sliding the history
    window past `history_length`); the copy baseline predicts `z_0` at every horizon.

    Args:
        model: An object with `encode`, `predict` and `config.history_length`.
        states (`torch.LongTensor` of shape `(N, K + 1, L)`): True states `s_0 .. s_K`.
        actions (`torch.LongTensor` of shape `(N, K)` or [`ActionInputs`]): `a_0 .. a_{K-1}`.
        batch_size (`int`, defaults to 1024): States per encoder call (rows per predictor call).

    Returns:
        `dict[str, list[float]]`: `l2`, `cos`, `l2_copy`, `cos_copy`, each a list over horizons
        `1 .. K` of the mean over trajectories of `||z_hat_k - z_k||_2` and `cos(z_hat_k, z_k)`.
    """
    if states.dim() != 3 or states.shape[1] < 2:
        raise LeWMInputError("states", tuple(states.shape), "must be (N, K + 1, L) with K >= 1")
    acts = as_actions(actions)
    if acts.shape != (states.shape[0], states.shape[1] - 1):
        raise LeWMInputError("actions", acts.shape, "must be (N, K)")
    with evaluating(model):
        z = encode_states(model, states, batch_size)  # (N, K + 1, D)
        chunks = [
            imagine_latents(model, z[i : i + batch_size, :1], acts.select(slice(i, i + batch_size)))
            for i in range(0, z.shape[0], batch_size)
        ]
        z_hat = torch.cat(chunks).float()  # (N, K, D)
    true = z[:, 1:]
    copy = z[:, :1].expand_as(true)

    def per_horizon(pred: torch.Tensor) -> tuple[list[float], list[float]]:
        l2 = (pred - true).norm(dim=-1).mean(0)
        cos = torch.nn.functional.cosine_similarity(pred, true, dim=-1).mean(0)
        return l2.tolist(), cos.tolist()

    l2, cos = per_horizon(z_hat)
    l2_copy, cos_copy = per_horizon(copy)
    return {"l2": l2, "cos": cos, "l2_copy": l2_copy, "cos_copy": cos_copy}


__all__ = ["latent_rollout"]
