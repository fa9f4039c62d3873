"""Surprise: the squared prediction error of an observed next state. A true move should be
unsurprising and a *teleport* (a next window ending at a vertex that is no out-neighbour of the
current one, under the action actually taken) surprising; [`auroc`] measures the separation.

A teleport can be told from a move without the action: most teleports leave the current block
and most moves do not, so a model that ignores its action separates them too. A *hard negative*
([`hard_negative_vertices`]) is the window of a valid out-neighbour other than the one the action
chose: only a model that reads its action finds it surprising. [`surprise_separation`] scores
either kind of negative beside two references on the same items: the copy score
`||z_t - z_obs||^2` (no predictor at all) and an action-blind control (the same model with the
last action replaced by a uniformly random valid one, drawn independently of the true one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from ..data.graphs import Graph
from ..errors import LeWMInputError
from .held_out import neighbor_table
from .inference import Actions, encode_states, evaluating, predict_last


def surprise_from_latents(
    model: Any,
    z_hist: torch.Tensor,
    actions: Actions,
    z_observed: torch.Tensor,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Squared prediction error `||predict(z_hist, actions)[:, -1] - z_observed||^2`, `(N,)`."""
    with evaluating(model):
        z_hat = predict_last(model, z_hist, actions, batch_size)
        error = (z_hat - z_observed.to(z_hat.device).float()).pow(2).sum(-1)
    return error.clone()  # an ordinary tensor, not an inference one


def surprise(
    model: Any,
    states: torch.Tensor,
    actions: Actions,
    observed: torch.Tensor,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Surprise of observed next states: the squared error of their predicted latent.

    Args:
        model: An object with `encode` and `predict`.
        states (`torch.LongTensor` of shape `(N, T, L)`): History states `s_0 .. s_{T-1}`, `T <= H`.
        actions (`torch.LongTensor` of shape `(N, T)` or [`ActionInputs`]):
            Actions `a_0 .. a_{T-1}`; the last is the action taken from `s_{T-1}`.
        observed (`torch.LongTensor` of shape `(N, L)`): The observed next state.
        batch_size (`int`, defaults to 1024): States per encoder call.

    Returns:
        `torch.FloatTensor` of shape `(N,)`: `||z_hat_T - encode(observed)||^2`.
    """
    if states.dim() != 3:
        raise LeWMInputError("states", tuple(states.shape), "must be (N, T, L)")
    if tuple(observed.shape) != (states.shape[0], states.shape[2]):
        raise LeWMInputError("observed", tuple(observed.shape), "must be (N, L)")
    with evaluating(model):
        z_hist = encode_states(model, states, batch_size)
        z_obs = encode_states(model, observed, batch_size)
    return surprise_from_latents(model, z_hist, actions, z_obs, batch_size)


def teleport_vertices(graph: Graph, sources: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniform random vertex that is neither `v` nor an out-neighbour of `v`, per source `v`.

    Args:
        graph (`Graph`): The graph.
        sources (`np.ndarray`): `(N,)` source vertices; each needs a non-neighbour.
        rng (`np.random.Generator`): Random source.

    Returns:
        `np.ndarray`: `(N,)` int64 teleport targets.
    """
    sources = np.asarray(sources, dtype=np.int64)
    n = graph.num_vertices
    allowed = np.ones((sources.shape[0], n), dtype=bool)  # (N, n)
    table = neighbor_table(graph)[sources]
    rows = np.broadcast_to(np.arange(sources.shape[0])[:, None], table.shape)
    allowed[rows[table >= 0], table[table >= 0]] = False
    allowed[np.arange(sources.shape[0]), sources] = False
    count = allowed.sum(1)
    if (count == 0).any():
        bad = int(sources[np.flatnonzero(count == 0)[0]])
        raise LeWMInputError("sources", bad, "vertex has an edge to every other vertex")
    pick = np.minimum((rng.random(sources.shape[0]) * count).astype(np.int64), count - 1)
    return (np.cumsum(allowed, axis=1) > pick[:, None]).argmax(1)  # the pick-th allowed vertex


def hard_negative_vertices(
    graph: Graph, sources: np.ndarray, taken: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A uniform random out-neighbour of `v` other than the one the action took, per source `v`.

    Args:
        graph (`Graph`): The graph.
        sources (`np.ndarray`): `(N,)` source vertices.
        taken (`np.ndarray`): `(N,)` the out-neighbour each source actually moved to.
        rng (`np.random.Generator`): Random source.

    Returns:
        `np.ndarray`: `(N,)` int64 hard-negative vertices, -1 where `v` has no other
        out-neighbour (out-degree 1).
    """
    sources = np.asarray(sources, dtype=np.int64)
    taken = np.asarray(taken, dtype=np.int64)
    if sources.shape != taken.shape:
        raise LeWMInputError("taken", taken.shape, f"must match sources {sources.shape}")
    if not graph.has_edges(sources, taken).all():
        raise LeWMInputError("taken", "a non-edge", "must be an out-neighbour of its source")
    table = neighbor_table(graph)[sources]  # (N, A), -1 padded
    allowed = (table >= 0) & (table != taken[:, None])
    count = allowed.sum(1)
    pick = np.minimum((rng.random(sources.shape[0]) * count).astype(np.int64), count - 1)
    column = (np.cumsum(allowed, axis=1) > pick[:, None]).argmax(1)
    out = table[np.arange(sources.shape[0]), column]
    return np.where(count > 0, out, -1)


def surprise_separation(
    model: Any,
    z_hist: torch.Tensor,
    actions: Actions,
    shuffled_actions: Actions,
    z_true: torch.Tensor,
    z_negative: torch.Tensor,
    batch_size: int = 1024,
) -> dict[str, float]:
    """How well surprise tells observed true next states from negatives, beside its references.

    Every score is an AUROC with the negatives as positives (higher surprise means "negative"),
    on the same items:

    - `auroc`: the model's surprise under the action actually taken;
    - `auroc_copy`: the copy score `||z_t - z_obs||^2`, with `z_t = z_hist[:, -1]`;
    - `auroc_shuffled`: the model's surprise under `shuffled_actions` (the same history with the
      last action replaced independently of the true one), the action-blind control. For hard
      negatives it is 0.5 in expectation whatever the model: the shuffled action is as likely to
      be the one that leads to the negative as the one that leads to the true next state.

    Args:
        model: An object with `predict`.
        z_hist (`torch.Tensor` of shape `(N, T, D)`): True latents up to the source state.
        actions (`torch.LongTensor` of shape `(N, T)` or [`ActionInputs`]): The true actions.
        shuffled_actions (`torch.LongTensor` of shape `(N, T)` or [`ActionInputs`]): The same
            with the last action shuffled.
        z_true (`torch.Tensor` of shape `(N, D)`): Latent of the observed true next state.
        z_negative (`torch.Tensor` of shape `(N, D)`): Latent of the negative next state.
        batch_size (`int`, defaults to 1024): Rows per predictor call.

    Returns:
        `dict[str, float]`: `auroc`, `auroc_copy`, `auroc_shuffled`; `true` and `negative` (mean
        surprise of each under the true action); `num_items`.
    """
    num = z_hist.shape[0]
    for name, value in (("z_true", z_true), ("z_negative", z_negative)):
        if value.dim() != 2 or value.shape[0] != num:
            raise LeWMInputError(name, tuple(value.shape), f"must be ({num}, D)")
    labels = torch.cat([torch.zeros(num), torch.ones(num)]).bool()
    s_true = surprise_from_latents(model, z_hist, actions, z_true, batch_size)
    s_neg = surprise_from_latents(model, z_hist, actions, z_negative, batch_size)
    b_true = surprise_from_latents(model, z_hist, shuffled_actions, z_true, batch_size)
    b_neg = surprise_from_latents(model, z_hist, shuffled_actions, z_negative, batch_size)
    z_t = z_hist[:, -1].float()
    c_true = (z_true.float() - z_t).pow(2).sum(-1)
    c_neg = (z_negative.float() - z_t).pow(2).sum(-1)
    return {
        "auroc": auroc(torch.cat([s_true, s_neg]), labels),
        "auroc_copy": auroc(torch.cat([c_true, c_neg]), labels),
        "auroc_shuffled": auroc(torch.cat([b_true, b_neg]), labels),
        "true": s_true.mean().item(),
        "negative": s_neg.mean().item(),
        "num_items": num,
    }


def auroc(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U), ties counting one half.

    `AUROC = (sum of the average ranks of the positives - P (P + 1) / 2) / (P Q)`, the
    probability that a random positive scores above a random negative (ties half).

    Args:
        scores (`np.ndarray` or `torch.Tensor`): `(N,)` scores, higher meaning "positive".
        labels (`np.ndarray` or `torch.Tensor`): `(N,)` booleans (or 0/1), True for positives.

    Returns:
        `float`: The AUROC in `[0, 1]`.
    """
    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().double().numpy()
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).astype(bool).reshape(-1)
    if scores.shape != labels.shape:
        raise LeWMInputError("labels", labels.shape, f"must match scores {scores.shape}")
    if np.isnan(scores).any():
        raise LeWMInputError("scores", "nan", "must not contain NaN")
    pos = int(labels.sum())
    neg = labels.size - pos
    if pos == 0 or neg == 0:
        raise LeWMInputError("labels", f"{pos} positives, {neg} negatives", "need both classes")
    ranks = rankdata(scores, method="average")
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


__all__ = [
    "auroc",
    "hard_negative_vertices",
    "surprise",
    "surprise_from_latents",
    "surprise_separation",
    "teleport_vertices",
]
