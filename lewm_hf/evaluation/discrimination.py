"""Action discrimination: from the true history of a source state, the prediction under the true
action must be nearest to the true next latent among the next latents of every candidate action.

[`ActionCandidates`] is the candidate set as a plain tensor bundle, so any action type plugs in
with its own builder ([`move_action_candidates`] for graph moves; the edit evaluation builds its
own). [`action_discrimination`] scores the model beside the copy, shuffled-action and chance
references (see [`lewm_hf.evaluation.world_model`]).

Shapes: `N` items, `T` history steps, `C` candidates, `D` d_state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.graphs import Graph
from ..determinism import derive_seed
from ..errors import LeWMInputError
from ..modeling_actions import ActionInputs
from .held_out import move_actions, neighbor_table
from .inference import encode_states, evaluating, predict_last
from .retrieval import RECALL_KS, chance_metrics, retrieval_metrics, retrieval_ranks


@dataclass
class ActionCandidates:
    """Held-out items for action discrimination, in latent space.

    Item `n` has a true history `z_hist[n]` ending at the source state, the true actions
    `actions` (whose last step is the action actually taken), and `C` candidate actions with the
    true next latent each would lead to. Any action type fits ([`ActionInputs`]: `ids` for
    graph moves; ops / positions / tokens for edits).

    Args:
        z_hist (`torch.Tensor` of shape `(N, T, D)`): True latents up to the source state.
        actions ([`ActionInputs`]): True actions, `(N, T)`.
        candidate_latents (`torch.Tensor` of shape `(N, C, D)`): True next latent per candidate.
        candidate_actions ([`ActionInputs`]): The candidate last-step actions, `(N, C)`,
            with the same fields as `actions`.
        candidate_mask (`torch.BoolTensor` of shape `(N, C)`): Real candidates (padding False).
        target (`torch.LongTensor` of shape `(N,)`): Index of the true action among candidates.
    """

    z_hist: torch.Tensor
    actions: ActionInputs
    candidate_latents: torch.Tensor
    candidate_actions: ActionInputs
    candidate_mask: torch.Tensor
    target: torch.Tensor

    def validate(self) -> None:
        """Raise `LeWMInputError` unless the shapes agree and every target is a real candidate."""
        if self.z_hist.dim() != 3:
            raise LeWMInputError("z_hist", tuple(self.z_hist.shape), "must be (N, T, D)")
        num, steps, _ = self.z_hist.shape
        if self.candidate_latents.dim() != 3 or self.candidate_latents.shape[0] != num:
            raise LeWMInputError(
                "candidate_latents", tuple(self.candidate_latents.shape), f"must be ({num}, C, D)"
            )
        width = self.candidate_latents.shape[1]
        if tuple(self.candidate_mask.shape) != (num, width):
            raise LeWMInputError(
                "candidate_mask", tuple(self.candidate_mask.shape), f"must be ({num}, {width})"
            )
        for name in ("actions", "candidate_actions"):
            if not isinstance(getattr(self, name), ActionInputs):
                kind = type(getattr(self, name)).__name__
                raise LeWMInputError(name, kind, "must be an ActionInputs")
        if set(self.actions) != set(self.candidate_actions):
            raise LeWMInputError(
                "candidate_actions", sorted(self.candidate_actions), "must have the actions' fields"
            )
        if self.actions.shape != (num, steps):
            raise LeWMInputError("actions", self.actions.shape, f"must be ({num}, {steps})")
        for name, value in self.actions.items():
            cand = self.candidate_actions[name]
            if tuple(cand.shape) != (num, width, *value.shape[2:]):
                raise LeWMInputError(
                    f"candidate_actions.{name}", tuple(cand.shape), "must be (N, C, ...)"
                )
        if tuple(self.target.shape) != (num,):
            raise LeWMInputError("target", tuple(self.target.shape), f"must be ({num},)")
        rows = torch.arange(num, device=self.target.device)
        in_range = (self.target >= 0) & (self.target < width)
        ok = in_range & self.candidate_mask[rows, self.target.clamp(0, max(width - 1, 0))]
        if not bool(ok.all()):
            raise LeWMInputError("target", "masked or out of range", "must index a real candidate")


def move_action_candidates(
    model: Any, graph: Graph, spans: np.ndarray, window: int, batch_size: int = 1024
) -> ActionCandidates:
    """Action-discrimination items for graph moves.

    A span of `w + T` vertices gives the `T + 1` windows `s_0 .. s_T` and the actions
    `a_0 .. a_{T-1}`; the source state is `s_{T-1}`, ending at vertex `v`. The candidates are the
    windows `s_{T-1}[1:] + [u]` for every out-neighbour `u` of `v`, with action = rank of `u`
    (`C = max_out_degree`, ranks `>= out_degree[v]` masked; their latents are zero).

    Args:
        model: An object with `encode`.
        graph (`Graph`): The graph.
        spans (`np.ndarray`): `(N, w + T)` held-out vertex spans, `T >= 1`.
        window (`int`): The state window `w`.
        batch_size (`int`, defaults to 1024): States per encoder call.

    Returns:
        `ActionCandidates`: The items.
    """
    spans = np.asarray(spans, dtype=np.int64)
    steps = spans.shape[1] - window
    if spans.ndim != 2 or steps < 1:
        raise LeWMInputError("spans", spans.shape, f"must be (N, window + T) with window={window}")
    actions = move_actions(graph, spans, window)  # (N, T)
    states = torch.from_numpy(spans).unfold(1, window, 1)  # (N, T + 1, w)

    table = neighbor_table(graph)
    source = spans[:, steps - 1 : steps - 1 + window]  # (N, w): s_{T-1}
    cand_vertex = table[source[:, -1]]  # (N, C), -1 padded
    mask = cand_vertex >= 0
    base = np.broadcast_to(source[:, None, 1:], (*cand_vertex.shape, window - 1))
    windows = np.concatenate([base, cand_vertex[..., None]], axis=2)  # (N, C, w)
    with evaluating(model):
        z_hist = encode_states(model, states[:, :steps], batch_size)  # (N, T, D)
        cand_z = encode_states(model, torch.from_numpy(windows[mask]), batch_size)  # (M, D)
    # Outside inference mode, so that the returned tensors are ordinary ones.
    z_hist = z_hist.clone()
    device = z_hist.device
    mask_t = torch.from_numpy(mask).to(device)
    latents = z_hist.new_zeros(*mask.shape, z_hist.shape[-1])  # (N, C, D)
    latents[mask_t] = cand_z.clone()
    num, width = mask.shape
    return ActionCandidates(
        z_hist=z_hist,
        actions=ActionInputs(ids=torch.from_numpy(actions).to(device)),
        candidate_latents=latents,
        candidate_actions=ActionInputs(
            ids=torch.arange(width, device=device).expand(num, width).contiguous()
        ),
        candidate_mask=mask_t,
        target=torch.from_numpy(actions[:, -1]).to(device),
    )


def shuffled_actions(
    candidates: ActionCandidates, seed: int = 0, purpose: str = "shuffled-actions"
) -> ActionInputs:
    """The true actions with the last step replaced by a uniformly random *valid* candidate
    action, drawn independently of the true one (it may coincide with it): the action-blind
    control of action discrimination and of surprise.

    Args:
        candidates (`ActionCandidates`): The items and their candidate actions.
        seed (`int`, defaults to 0): Base seed of the draw.
        purpose (`str`, defaults to `"shuffled-actions"`): Derives the draw's seed from `seed`.

    Returns:
        [`ActionInputs`]: `(N, T)` actions, equal to `candidates.actions` but in the last step.
    """
    cand = candidates
    num, width = cand.candidate_mask.shape
    generator = torch.Generator().manual_seed(derive_seed(seed, purpose))
    noise = torch.rand(num, width, generator=generator).to(cand.candidate_mask.device)
    pick = noise.masked_fill(~cand.candidate_mask, -1.0).argmax(1)  # uniform valid (N,)
    rows = torch.arange(num, device=pick.device)
    shuffled = {}
    for name, value in cand.actions.items():
        value = value.clone()
        value[:, -1] = cand.candidate_actions[name][rows, pick]
        shuffled[name] = value
    return ActionInputs(shuffled)


def action_discrimination(
    model: Any,
    candidates: ActionCandidates,
    seed: int = 0,
    ks: tuple[int, ...] = RECALL_KS,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Action discrimination of a world model, with the copy, shuffled and chance references.

    The prediction `z_hat = predict(z_hist, true actions)[:, -1]` ranks the candidates' true
    next latents by squared L2 distance; the true action's next latent should come first.
    References on the same items and candidates:

    - `copy`: rank by distance to `z_t` (the source latent). Not chance by construction: the
      next window shares `w - 1` vertices with `z_t`'s window, so the encoder alone can already
      favour some neighbours.
    - `shuffled`: predict with a uniformly random *valid* action drawn independently of the true
      one (it may coincide with it), then rank as above. A perfect predictor scores chance in
      expectation, and a predictor that ignores its action scores as the model does.
    - `chance`: `mean 1 / (number of candidates)` (Recall@1; also given for Recall@k and MRR).

    Args:
        model: An object with `predict` (a [`LeWMModel`] or an oracle).
        candidates (`ActionCandidates`): The items (e.g. from [`move_action_candidates`]).
        seed (`int`, defaults to 0): Seed of the shuffled actions.
        ks (`tuple[int, ...]`, defaults to `(1, 5)`): Recall cut-offs.
        batch_size (`int`, defaults to 1024): Rows per predictor call.

    Returns:
        `dict[str, float]`: `r{k}`, `mrr` for the model; the same with suffixes `_copy` and
        `_shuffled`; `chance` (= chance Recall@1), `chance_r{k}`, `chance_mrr`; `num_items`.
    """
    candidates.validate()
    cand = candidates
    with evaluating(model):
        z_hat = predict_last(model, cand.z_hist, cand.actions, batch_size)  # (N, D)
        num = cand.candidate_mask.shape[0]
        shuffled = shuffled_actions(cand, seed)
        z_shuffled = predict_last(model, cand.z_hist, shuffled, batch_size)
    args = (cand.candidate_latents, cand.candidate_mask, cand.target)
    out = retrieval_metrics(*retrieval_ranks(z_hat, *args), ks)
    copy = retrieval_metrics(*retrieval_ranks(cand.z_hist[:, -1], *args), ks)
    shuf = retrieval_metrics(*retrieval_ranks(z_shuffled, *args), ks)
    chance = chance_metrics(cand.candidate_mask.sum(1), tuple(sorted({1, *ks})))
    for suffix, values in (("copy", copy), ("shuffled", shuf)):
        out.update({f"{key}_{suffix}": value for key, value in values.items()})
    out["chance"] = chance["r1"]
    out.update({f"chance_{key}": value for key, value in chance.items() if key != "r1"})
    out["num_items"] = num
    return out


__all__ = [
    "ActionCandidates",
    "action_discrimination",
    "move_action_candidates",
    "shuffled_actions",
]
