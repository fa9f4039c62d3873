"""World-model evaluation on held-out data (docs/design.md, section 9 (Evaluation)): action
discrimination, latent rollouts, surprise, and the health of the representation.

Every number here is computed on held-out graph walks (never the training clips) and reported
beside a reference that says what it means:

- **Action discrimination**: from the true history of a state whose last vertex is `v`, the
  candidates are the true next latents under every action (every out-neighbour rank of `v`).
  The prediction for the true action must be nearest to the true next latent: candidates are
  ranked by squared L2 distance to the prediction, giving Recall@1, Recall@5 and MRR. Beside
  them: the *copy* baseline (rank the candidates by distance to `z_t`; this is **not** chance by
  construction, because the next window shares `w - 1` vertices with the current one and some
  neighbours may simply look like the current state), the *shuffled-action* baseline (predict
  with a uniformly random valid action, drawn independently of the true one, so that a perfect
  predictor lands at chance in expectation; excluding the true action would put a perfect
  predictor at 0 rather than at chance) and the analytic *chance* level `mean 1 / out-degree`.
  Ties in distance are scored by their expectation under a uniformly random tie-break, so a
  model whose latents do not separate the candidates scores exactly chance.
  The candidate set is a plain tensor bundle ([`ActionCandidates`]), so edit actions plug in
  with their own builder; [`move_action_candidates`] builds it for graph moves.
- **Rollouts**: autoregressive prediction from `z_0` alone for horizons `1 .. K`, feeding the
  predictions back; once more than `history_length` (H) latents are known the predictor sees the
  last H latents and actions (a sliding window). L2 and cosine to the true latents per horizon,
  against the copy baseline (`z_0` at every horizon).
- **Surprise**: the squared prediction error of the observed next state. A true move should be
  unsurprising, a *teleport* (a next window ending at a vertex that is no out-neighbour of the
  current one, under the action actually taken) surprising; the separation is an AUROC.
- **Health**: effective rank, mean per-dimension variance and the SIGReg statistic of held-out
  latents (one state per item).

Shapes: `N` items, `T` history steps, `C` candidates (max out-degree), `K` rollout horizon,
`L` (= `w`) tokens per state, `D` d_state.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import DatasetDict
from scipy.stats import rankdata
from torch import nn

from .. import metric_keys as K
from ..data.graphs import Graph
from ..data.walks import WalkMetadata, generate_walks, load_walk_metadata
from ..determinism import derive_seed
from ..errors import LeWMConfigError, LeWMInputError
from ..fields import option, validate_fields
from ..losses import sigreg, sigreg_generator
from ..modeling_actions import ActionInputs
from .latents import effective_rank

RECALL_KS = (1, 5)

# Action ids `(N, T)` (graph moves), or any actions.
Actions = torch.Tensor | ActionInputs


# ----------------------------------------------------------------------------------------------
# Settings


@dataclass
class WorldModelEvalConfig:
    """Sizes and seeds of [`evaluate_world_model`]; every field is checked once, here.

    Args:
        num_items (`int`, defaults to 512):
            Held-out source states for action discrimination, surprise and the health metrics.
        num_rollouts (`int`, defaults to 256): Held-out trajectories rolled out.
        max_horizon (`int`, defaults to 8): Rollout horizons `1 .. max_horizon`.
        num_walks (`int`, defaults to 256): Held-out walks generated on the graph (items are cut at
            random positions from them).
        walk_length (`int`, *optional*): Vertices per generated walk; the corpus's walk length if
            None. Must be at least `w + max(history_length, max_horizon)`.
        batch_size (`int`, defaults to 1024): States per encoder call (and rows per predictor call).
        sigreg_num_slices (`int`, defaults to 1024): Random slices of the SIGReg statistic.
        seed (`int`, defaults to 0): Base seed; walks, items, teleports, the shuffled actions and the
            SIGReg slices use distinct seeds derived from it.
    """

    num_items: int = option(512, help="Held-out source states (discrimination, surprise).", low=2)
    num_rollouts: int = option(256, help="Held-out trajectories rolled out.", low=1)
    max_horizon: int = option(8, help="Rollout horizons 1 .. max_horizon.", low=1)
    num_walks: int = option(256, help="Held-out walks generated on the graph.", low=1)
    walk_length: int | None = option(None, help="Vertices per walk; corpus's if None.", low=2)
    batch_size: int = option(1024, help="States per encoder call.", low=1)
    sigreg_num_slices: int = option(1024, help="Slices of the SIGReg statistic.", low=1)
    seed: int = option(0, help="Base seed of the evaluation.")

    def __post_init__(self) -> None:
        validate_fields(self)


# ----------------------------------------------------------------------------------------------
# Held-out data


@dataclass
class HeldOutWalks:
    """Held-out walks on a graph, and the state window.

    Args:
        graph (`Graph`): The graph the walks move on.
        walks (`np.ndarray`): `(num_walks, walk_length)` vertex ids; consecutive vertices are edges.
        window (`int`): The state window `w`.
    """

    graph: Graph
    walks: np.ndarray
    window: int

    def __post_init__(self) -> None:
        walks = np.asarray(self.walks)
        if walks.ndim != 2 or walks.shape[0] < 1 or not np.issubdtype(walks.dtype, np.integer):
            raise LeWMInputError(
                "walks", f"shape {walks.shape}, dtype {walks.dtype}", "must be (N, L) integers"
            )
        if not isinstance(self.window, int) or self.window < 1:
            raise LeWMConfigError("window", self.window, "must be a positive integer")
        self.walks = walks.astype(np.int64, copy=False)


def held_out_walks(
    source: HeldOutWalks | WalkMetadata | DatasetDict | str | Path,
    num_walks: int = 256,
    walk_length: int | None = None,
    seed: int = 0,
) -> HeldOutWalks:
    """Held-out walks for evaluation, generated on a corpus's graph with its jumper rules.

    The walks come from a seed derived from `seed` and the purpose `"world-model-eval"`, distinct
    from every seed that draws training walks or clips, so they are held out (on a small graph
    individual windows still recur, as they would in any fresh sample).

    Args:
        source (`HeldOutWalks`, `WalkMetadata`, `DatasetDict`, `str` or `Path`):
            Walks given as they are, or a walk / move corpus (or its folder, or its metadata) whose
            graph, jumpers and window define the walks.
        num_walks (`int`, defaults to 256): Walks to generate.
        walk_length (`int`, *optional*): Vertices per walk; the corpus's walk length if None.
        seed (`int`, defaults to 0): Base seed.

    Returns:
        `HeldOutWalks`: The walks, graph and window.
    """
    if isinstance(source, HeldOutWalks):
        return source
    meta = source if isinstance(source, WalkMetadata) else load_walk_metadata(source)
    length = meta.config.walk_length if walk_length is None else walk_length
    walks = generate_walks(
        meta.graph, meta.jumpers, num_walks, length, seed=derive_seed(seed, "world-model-eval")
    )
    return HeldOutWalks(meta.graph, walks, meta.config.context_window)


def neighbor_table(graph: Graph) -> np.ndarray:
    """Sorted out-neighbours of every vertex, padded with -1.

    Args:
        graph (`Graph`): The graph.

    Returns:
        `np.ndarray`: `(num_vertices, max_out_degree)` int64; row `v`, column `r` is the vertex
        that action (rank) `r` leads to from `v`, or -1 when `r >= out_degree[v]`.
    """
    degree = graph.out_degree
    table = np.full((graph.num_vertices, graph.max_out_degree), -1, dtype=np.int64)
    rows = np.repeat(np.arange(graph.num_vertices), degree)
    cols = np.arange(graph.num_edges) - np.repeat(graph.indptr[:-1], degree)
    table[rows, cols] = graph.indices
    return table


def sample_spans(walks: np.ndarray, length: int, num: int, rng: np.random.Generator) -> np.ndarray:
    """Cut `num` spans of `length` consecutive vertices at random walks and offsets.

    Args:
        walks (`np.ndarray`): `(num_walks, walk_length)` walks.
        length (`int`): Vertices per span (`<= walk_length`).
        num (`int`): Spans to cut.
        rng (`np.random.Generator`): Random source.

    Returns:
        `np.ndarray`: `(num, length)` int64 spans.
    """
    if length > walks.shape[1]:
        raise LeWMConfigError(
            "walk_length", walks.shape[1], f"spans of {length} vertices need longer walks"
        )
    rows = rng.integers(0, walks.shape[0], size=num)
    starts = rng.integers(0, walks.shape[1] - length + 1, size=num)
    return walks[rows[:, None], starts[:, None] + np.arange(length)].astype(np.int64)


def move_actions(graph: Graph, spans: np.ndarray, window: int) -> np.ndarray:
    """The move actions (neighbour ranks) along spans; `(N, S - window)` for spans `(N, S)`."""
    ranks, found = graph.neighbor_rank(spans[:, window - 1 : -1], spans[:, window:])
    if not found.all():
        row = int(np.flatnonzero(~found.all(axis=1))[0])
        raise LeWMInputError("spans", f"row {row}", "contains a move that is not a graph edge")
    return ranks.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Model plumbing


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


def _as_actions(actions: Actions) -> ActionInputs:
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
    acts = _as_actions(actions).to(z_hist.device)
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
    acts = _as_actions(actions).to(z_hist.device)
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


# ----------------------------------------------------------------------------------------------
# Action discrimination


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
        num, width = cand.candidate_mask.shape
        generator = torch.Generator().manual_seed(derive_seed(seed, "shuffled-actions"))
        noise = torch.rand(num, width, generator=generator).to(cand.candidate_mask.device)
        pick = noise.masked_fill(~cand.candidate_mask, -1.0).argmax(1)  # uniform valid (N,)
        rows = torch.arange(num, device=pick.device)
        shuffled = {}
        for name, value in cand.actions.items():
            value = value.clone()
            value[:, -1] = cand.candidate_actions[name][rows, pick]
            shuffled[name] = value
        z_shuffled = predict_last(model, cand.z_hist, ActionInputs(shuffled), batch_size)
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


# ----------------------------------------------------------------------------------------------
# Rollouts


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
    acts = _as_actions(actions)
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


# ----------------------------------------------------------------------------------------------
# Surprise


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


# ----------------------------------------------------------------------------------------------
# Health


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


# ----------------------------------------------------------------------------------------------
# Everything


def evaluate_world_model(
    model: Any,
    source: HeldOutWalks | WalkMetadata | DatasetDict | str | Path,
    config: WorldModelEvalConfig | None = None,
) -> dict[str, Any]:
    """Run every world-model evaluation on held-out walks; JSON-ready flat keys.

    Items: `num_items` spans of `w + H` vertices (history `s_0 .. s_{H-1}`, true next `s_H`) for
    action discrimination, surprise (true next state against a teleport from the same source
    under the same action) and health (the latents of the source states `s_{H-1}`);
    `num_rollouts` spans of `w + max_horizon` vertices for rollouts from `s_0`. Clips of a move
    corpus hold only `w + H` vertices, too short for horizons beyond H, hence the walks.

    Args:
        model: A [`LeWMModel`] (or any object with `encode`, `predict` and
            `config.history_length`), evaluated in eval mode and restored afterwards.
        source (`HeldOutWalks`, `WalkMetadata`, `DatasetDict`, `str` or `Path`):
            Held-out walks, or a walk / move corpus whose graph the walks are generated on (see
            [`held_out_walks`]).
        config (`WorldModelEvalConfig`, *optional*): Sizes and seeds; defaults if None.

    Returns:
        `dict[str, Any]`: `eval_action_r1`, `eval_action_r5`, `eval_action_mrr` and the same with
        `_copy` / `_shuffled`; `eval_action_chance` (Recall@1), `eval_action_chance_r5`,
        `eval_action_chance_mrr`; `eval_rollout_l2`, `eval_rollout_l2_copy`, `eval_rollout_cos`,
        `eval_rollout_cos_copy` (lists over horizons `1 .. max_horizon`);
        `eval_effective_rank`, `eval_var_per_dim`, `eval_sigreg`; `eval_surprise_auroc`,
        `eval_surprise_true`, `eval_surprise_teleport` (mean surprise of each); item counts and
        `eval_world_model_seconds`.
    """
    started = time.perf_counter()
    config = config if config is not None else WorldModelEvalConfig()
    data = held_out_walks(source, config.num_walks, config.walk_length, config.seed)
    graph, w = data.graph, data.window
    history = model.config.history_length
    need = w + max(history, config.max_horizon)
    if data.walks.shape[1] < need:
        raise LeWMConfigError(
            "walk_length", data.walks.shape[1], f"must be >= w + max(H, max_horizon) = {need}"
        )
    vocab = getattr(model.config, "action_vocab_size", None)
    if vocab is not None and graph.max_out_degree > vocab:
        raise LeWMConfigError(
            "action_vocab_size", vocab, f"below the graph's max out-degree {graph.max_out_degree}"
        )
    rng = np.random.default_rng(derive_seed(config.seed, "world-model-items"))
    bs = config.batch_size
    out: dict[str, Any] = {}
    with evaluating(model):
        spans = sample_spans(data.walks, w + history, config.num_items, rng)  # (N, w + H)
        cand = move_action_candidates(model, graph, spans, w, bs)
        disc = action_discrimination(model, cand, seed=config.seed, batch_size=bs)
        out.update({K.EVAL_ACTION_PREFIX + key: value for key, value in disc.items()})

        # Surprise: the true next state against a teleport, both under the action taken.
        rows = torch.arange(cand.target.shape[0], device=cand.target.device)
        z_true = cand.candidate_latents[rows, cand.target]
        source_window = spans[:, history - 1 : history - 1 + w]
        teleport = teleport_vertices(graph, source_window[:, -1], rng)
        teleport_window = np.concatenate([source_window[:, 1:], teleport[:, None]], axis=1)
        z_teleport = encode_states(model, torch.from_numpy(teleport_window), bs)
        s_true = surprise_from_latents(model, cand.z_hist, cand.actions, z_true, bs)
        s_tele = surprise_from_latents(model, cand.z_hist, cand.actions, z_teleport, bs)
        labels = torch.cat([torch.zeros_like(s_true), torch.ones_like(s_tele)]).bool()
        out[K.EVAL_SURPRISE_AUROC] = auroc(torch.cat([s_true, s_tele]), labels)
        out[K.EVAL_SURPRISE_TRUE] = s_true.mean().item()
        out[K.EVAL_SURPRISE_TELEPORT] = s_tele.mean().item()

        health = representation_health(cand.z_hist[:, -1], config.sigreg_num_slices, config.seed)
        out.update({K.EVAL_PREFIX + key: value for key, value in health.items()})

        horizon = config.max_horizon
        spans = sample_spans(data.walks, w + horizon, config.num_rollouts, rng)
        states = torch.from_numpy(spans).unfold(1, w, 1)  # (N, K + 1, w)
        actions = torch.from_numpy(move_actions(graph, spans, w))
        rollout = latent_rollout(model, states, actions, bs)
        out.update({K.EVAL_ROLLOUT_PREFIX + key: value for key, value in rollout.items()})
    out[K.EVAL_ROLLOUT_HORIZONS] = list(range(1, horizon + 1))
    out[K.EVAL_ROLLOUT_NUM_ITEMS] = config.num_rollouts
    out[K.EVAL_WORLD_MODEL_SECONDS] = time.perf_counter() - started
    return out


__all__ = [
    "ActionCandidates",
    "HeldOutWalks",
    "WorldModelEvalConfig",
    "action_discrimination",
    "auroc",
    "chance_metrics",
    "encode_states",
    "evaluate_world_model",
    "evaluating",
    "held_out_walks",
    "imagine_latents",
    "latent_rollout",
    "move_action_candidates",
    "move_actions",
    "neighbor_table",
    "predict_last",
    "representation_health",
    "retrieval_metrics",
    "retrieval_ranks",
    "sample_spans",
    "surprise",
    "surprise_from_latents",
    "teleport_vertices",
]
