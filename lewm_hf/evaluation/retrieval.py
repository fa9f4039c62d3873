"""Retrieval metrics of a query latent against candidate latents: where the true candidate
ranks by squared L2 distance, Recall@k and MRR expected under a uniformly random tie-break, and
their analytic chance levels.

Shared by the action discrimination of graph moves and the edit evaluation.
"""

from __future__ import annotations

import numpy as np
import torch

RECALL_KS = (1, 5)


def retrieval_ranks(
    query: torch.Tensor, candidates: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the target candidate ranks by squared L2 distance to the query.

    Args:
        query (`torch.Tensor` of shape `(N, D)`): Query latents (a prediction, or `z_t`).
        candidates (`torch.Tensor` of shape `(N, C, D)`): Candidate latents.
        mask (`torch.BoolTensor` of shape `(N, C)`): Real candidates.
        target (`torch.LongTensor` of shape `(N,)`): Index of the true candidate.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `closer` (real candidates strictly nearer than the
        target) and `ties` (other real candidates at exactly the target's distance), each `(N,)`.
    """
    dist = (candidates.float() - query.float().unsqueeze(1)).pow(2).sum(-1)  # (N, C)
    true = dist.gather(1, target.view(-1, 1))  # (N, 1)
    closer = ((dist < true) & mask).sum(1)
    ties = ((dist == true) & mask).sum(1) - 1
    return closer, ties


def retrieval_metrics(
    closer: torch.Tensor, ties: torch.Tensor, ks: tuple[int, ...] = RECALL_KS
) -> dict[str, float]:
    """Recall@k and MRR, expected under a uniformly random tie-break.

    With `c` candidates strictly closer and `t` tied, the rank is uniform on `c + 1 .. c + t + 1`:
    `Recall@k = clamp((k - c) / (t + 1), 0, 1)` and
    `MRR = (1 / (t + 1)) sum_{j=0}^{t} 1 / (c + 1 + j) = (psi(c + t + 2) - psi(c + 1)) / (t + 1)`.

    Args:
        closer (`torch.Tensor` of shape `(N,)`): See [`retrieval_ranks`].
        ties (`torch.Tensor` of shape `(N,)`): See [`retrieval_ranks`].
        ks (`tuple[int, ...]`, defaults to `(1, 5)`): Recall cut-offs.

    Returns:
        `dict[str, float]`: `r{k}` for every k, and `mrr`.
    """
    c = closer.double()
    t = ties.double()
    out = {f"r{k}": ((k - c) / (t + 1)).clamp(0, 1).mean().item() for k in ks}
    out["mrr"] = ((torch.digamma(c + t + 2) - torch.digamma(c + 1)) / (t + 1)).mean().item()
    return out


def chance_metrics(num_valid: torch.Tensor, ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """Analytic chance of [`retrieval_metrics`] for a uniformly random ranking.

    `Recall@k = mean min(k, n) / n`, `MRR = mean H_n / n` over items with `n` candidates.
    """
    n = num_valid.double()
    out = {f"r{k}": (n.clamp(max=k) / n).mean().item() for k in ks}
    out["mrr"] = ((torch.digamma(n + 1) + np.euler_gamma) / n).mean().item()
    return out


__all__ = ["RECALL_KS", "chance_metrics", "retrieval_metrics", "retrieval_ranks"]
