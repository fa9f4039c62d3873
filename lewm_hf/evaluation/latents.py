"""Latent metrics: effective rank, the collapse statistics of predicted and target latents, and
the health of held-out latents (effective rank, variance per dimension, SIGReg).

Used by the collapse monitor during training and by the world-model evaluation on held-out data.
"""

from __future__ import annotations

import torch

from ..errors import LeWMInputError
from ..losses import _check_floating, _no_autocast, gaussian_kl, sigreg, sigreg_generator


@torch.no_grad()
def effective_rank(z: torch.Tensor) -> torch.Tensor:
    """Effective rank (Roy & Vetterli): `exp` of the entropy of the normalised singular values.

    The rows are centred first. Ranges from 1 (one direction) to `min(N, D)`; a batch whose rows
    are all equal (nothing left after centring) gives 0.

    Args:
        z (`torch.Tensor` of shape `(N, D)`): Embeddings; `(..., D)` is flattened to rows.

    Returns:
        `torch.Tensor`: 0-dim float32 value, without gradient.
    """
    _check_floating("z", z)
    if z.dim() < 2 or z.shape[-1] < 1:
        raise LeWMInputError("z", tuple(z.shape), "expected shape (N, D) or (..., D)")
    rows = z.reshape(-1, z.shape[-1]).to(torch.float64)
    if rows.shape[0] < 1:
        raise LeWMInputError("z", tuple(z.shape), "needs at least one row")
    with _no_autocast(rows):
        singular = torch.linalg.svdvals(rows - rows.mean(dim=0))
    total = singular.sum()
    probs = singular / total.clamp_min(torch.finfo(torch.float64).tiny)
    entropy = -torch.where(probs > 0, probs * probs.log(), probs.new_zeros(())).sum()
    rank = torch.where(total > 0, entropy.exp(), total.new_zeros(()))
    return rank.to(torch.float32)


def collapse_statistics(
    predictions: torch.Tensor, targets: torch.Tensor, reg_loss: float | None = None
) -> dict[str, float]:
    """Collapse statistics of a batch of predicted and target latents.

    Args:
        predictions (`torch.Tensor`): `(..., D)` predicted latents.
        targets (`torch.Tensor`): `(..., D)` target latents.
        reg_loss (`float`, *optional*): The regulariser's value, logged alongside.

    Returns:
        `dict[str, float]`: `pred_var_per_dim`, `target_var_per_dim`, `mean_pairwise_distance`
        (of targets), `effective_rank` (of targets), `gaussian_kl` (of targets), `reg_value`.
    """
    p = predictions.detach().float().reshape(-1, predictions.shape[-1])
    t = targets.detach().float().reshape(-1, targets.shape[-1])
    n = min(t.shape[0], 512)
    out = {
        "pred_var_per_dim": p.var(dim=0, unbiased=False).mean().item(),
        "target_var_per_dim": t.var(dim=0, unbiased=False).mean().item(),
        "mean_pairwise_distance": torch.pdist(t[:n]).mean().item() if n > 1 else 0.0,
        "effective_rank": float(effective_rank(t)),
        "gaussian_kl": float(gaussian_kl(t)),
    }
    if reg_loss is not None:
        out["reg_value"] = float(reg_loss)
    return out


def representation_health(
    z: torch.Tensor, num_slices: int = 1024, seed: int = 0
) -> dict[str, float]:
    """Effective rank, mean per-dimension variance and SIGReg of held-out latents.

    Args:
        z (`torch.Tensor` of shape `(N, D)`): Latents, one per held-out state.
        num_slices (`int`, defaults to 1024): SIGReg slices (drawn from a generator seeded by
            `seed`, so the value is reproducible).
        seed (`int`, defaults to 0): Seed of the slices.

    Returns:
        `dict[str, float]`: `effective_rank`, `var_per_dim` (population variance, averaged over
        dimensions) and `sigreg` (about 1.05 for a standard Gaussian sample, growing like `N` for a
        collapsed one; see docs/design.md, section 5 (The loss)).
    """
    z = z.detach().float()
    generator = sigreg_generator(0, seed=seed, device=z.device)
    return {
        "effective_rank": float(effective_rank(z)),
        "var_per_dim": z.var(dim=0, unbiased=False).mean().item(),
        "sigreg": float(sigreg(z, num_slices=num_slices, generator=generator)),
    }


__all__ = ["collapse_statistics", "effective_rank", "representation_health"]
