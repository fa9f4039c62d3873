"""Edit trajectories: `K` edits applied one after the other to each window, around one locus.

Locus: `pooling="centered"` pools each state around one locus, and a middle state is both the
target of edit k and the input to edit k + 1. So a trajectory has one locus, a site drawn in
`s_0` and followed through the edits (`map_locus`), and each of its edits is drawn so that the
tokens it touches meet the pooling window `[locus - cluster_radius, locus + cluster_radius]`
both in the state it edits and in the state it makes (see `footprints`). Set `cluster_radius`
to at most the model's `pool_radius`. A fraction of the edits may be drawn anywhere instead
(`free_edit_fraction`), so that a model also sees edits that miss the pooled tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import LeWMConfigError
from ..dna import N_ID
from .batched import apply_edit_batch
from .ops import Edit, map_locus
from .sampling import EditSampler


@dataclass
class EditTrajectories:
    """`N` trajectories of `K` edits each: `s_0 .. s_K` with `s_k = apply(a_1 .. a_k, s_0)`.

    Args:
        states (`np.ndarray`): `(N, K + 1, L)` windows.
        ops (`np.ndarray`): `(N, K)`.
        positions (`np.ndarray`): `(N, K)`, edit `k` in the coordinates of state `k`.
        lengths (`np.ndarray`): `(N, K)`.
        tokens (`np.ndarray`): `(N, K, M)`, -1 past each edit's length.
        locus (`np.ndarray`): `(N, K + 1)` the trajectory's site in each state.
    """

    states: np.ndarray
    ops: np.ndarray
    positions: np.ndarray
    lengths: np.ndarray
    tokens: np.ndarray
    locus: np.ndarray

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def edits(self, i: int, num_steps: int | None = None) -> list[Edit]:
        """The first `num_steps` (all if None) edits of trajectory `i`."""
        steps = self.ops.shape[1] if num_steps is None else num_steps
        return [
            Edit(
                int(self.ops[i, k]),
                int(self.positions[i, k]),
                self.tokens[i, k, : self.lengths[i, k]].tolist(),
            )
            for k in range(steps)
        ]


def sample_trajectories(
    windows: np.ndarray,
    num_edits: int,
    rng: np.random.Generator,
    sampler: EditSampler | None = None,
    cluster_radius: int | None = 4,
    pad_token: int = N_ID,
    free_fraction: float = 0.0,
) -> EditTrajectories:
    """Draw a trajectory of `num_edits` edits from each window (vectorised over windows).

    The locus is uniform over the positions `sampler.margin` from the edges of `s_0`, followed
    through the edits with `map_locus`; with `cluster_radius` every edit's footprints meet the
    locus's cluster (see `EditSampler.sample`), so one `"centered"` pooling window per state sees
    both the edit that made it and the edit applied to it. With `free_fraction > 0` each edit is,
    with that probability, drawn anywhere instead (among the positions that keep the locus
    `margin` from the edges): such edits may miss the pooled tokens, as most of the candidates
    of `evaluation.edits.snv_recovery` do, and show the model what they do to a state.

    Args:
        windows (`np.ndarray`): `(N, L)` source windows.
        num_edits (`int`): K.
        rng (`np.random.Generator`): Random source.
        sampler (`EditSampler`, *optional*): The edit mixture (DNA defaults if None).
        cluster_radius (`int`, *optional*, defaults to 4): Cluster radius (at most the model's
            `pool_radius`); None draws positions uniformly (the locus is then only followed).
        pad_token (`int`, defaults to `N_ID`): Fill after deletions.
        free_fraction (`float`, defaults to 0.0): Probability that an edit ignores the cluster
            (needs `cluster_radius`; 0 draws no extra random numbers).

    Returns:
        `EditTrajectories`: States, edits and loci.
    """
    sampler = sampler if sampler is not None else EditSampler()
    if not isinstance(num_edits, int) or num_edits < 1:
        raise LeWMConfigError("max_actions", num_edits, "must be a positive integer")
    if cluster_radius is not None and (not isinstance(cluster_radius, int) or cluster_radius < 1):
        raise LeWMConfigError(
            "cluster_radius", cluster_radius, "must be a positive integer or None"
        )
    if not 0.0 <= free_fraction <= 1.0:
        raise LeWMConfigError("free_edit_fraction", free_fraction, "must lie in [0, 1]")
    state = np.asarray(windows, dtype=np.int64)
    num, length = state.shape
    sampler._check_window(length, sampler.longest)
    locus = rng.integers(sampler.margin, length - sampler.margin, size=num)
    states, loci, batches = [state], [locus], []
    for _ in range(num_edits):
        near = None if cluster_radius is None else locus
        radius: int | np.ndarray | None = cluster_radius
        if near is not None and free_fraction > 0:
            # A radius of the window length leaves only the margins to respect.
            radius = np.where(rng.random(num) < free_fraction, length, cluster_radius)
        batch = sampler.sample(state, rng, near, radius)
        state = apply_edit_batch(state, batch, pad_token)
        locus = map_locus(locus, batch.ops, batch.positions, batch.lengths, length)
        states.append(state)
        loci.append(locus)
        batches.append(batch)
    width = max(b.tokens.shape[1] for b in batches)
    tokens = np.full((num, num_edits, width), -1, dtype=np.int64)
    for k, b in enumerate(batches):
        tokens[:, k, : b.tokens.shape[1]] = b.tokens
    return EditTrajectories(
        states=np.stack(states, axis=1),
        ops=np.stack([b.ops for b in batches], axis=1),
        positions=np.stack([b.positions for b in batches], axis=1),
        lengths=np.stack([b.lengths for b in batches], axis=1),
        tokens=tokens,
        locus=np.stack(loci, axis=1),
    )


__all__ = [
    "EditTrajectories",
    "sample_trajectories",
]
