"""World-model evaluation on held-out data (docs/design.md, section 9 (Evaluation)): action
discrimination, latent rollouts, surprise, and the health of the representation.

This module holds the settings ([`WorldModelEvalConfig`]) and the entry point
([`evaluate_world_model`]); each part lives in a module of its own: `held_out` (the held-out
walks and the items cut from them), `inference` (running the model: eval mode, chunked
encoding, prediction, imagination), `retrieval` (Recall@k, MRR and their chance levels),
`discrimination` (action discrimination and its candidates), `rollouts`, `surprise`, and
`latents` (the health metrics). Their public names are importable from here as well.

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
  current one, under the action actually taken) surprising; the separation is an AUROC. Teleports
  mostly leave the current block, so a model blind to its action separates them as well; the
  *hard negative* (the window of a valid out-neighbour other than the one the action chose)
  needs the action. Each AUROC comes with the copy score `||z_t - z_obs||^2` and the same model
  with the action shuffled (action-blind control, 0.5 in expectation on hard negatives).
- **Health**: effective rank, mean per-dimension variance and the SIGReg statistic of held-out
  latents (one state per item).

Shapes: `N` items, `T` history steps, `C` candidates (max out-degree), `K` rollout horizon,
`L` (= `w`) tokens per state, `D` d_state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import DatasetDict

from .. import metric_keys as K
from ..data.walks import WalkMetadata
from ..determinism import derive_seed
from ..errors import LeWMConfigError
from ..fields import option, validate_fields
from ..progress import progress
from .discrimination import (
    ActionCandidates,
    action_discrimination,
    move_action_candidates,
    shuffled_actions,
)
from .held_out import HeldOutWalks, held_out_walks, move_actions, neighbor_table, sample_spans
from .inference import Actions as Actions
from .inference import encode_states, evaluating, imagine_latents, predict_last
from .inference import model_device as model_device
from .latents import representation_health
from .retrieval import RECALL_KS as RECALL_KS
from .retrieval import chance_metrics, retrieval_metrics, retrieval_ranks
from .rollouts import latent_rollout
from .surprise import (
    auroc,
    hard_negative_vertices,
    surprise,
    surprise_from_latents,
    surprise_separation,
    teleport_vertices,
)

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
# Everything


def evaluate_world_model(
    model: Any,
    source: HeldOutWalks | WalkMetadata | DatasetDict | str | Path,
    config: WorldModelEvalConfig | None = None,
) -> dict[str, Any]:
    """Run every world-model evaluation on held-out walks; JSON-ready flat keys.

    Items: `num_items` spans of `w + H` vertices (history `s_0 .. s_{H-1}`, true next `s_H`) for
    action discrimination, surprise (true next state against a teleport from the same source
    under the same action, and against a hard negative: another out-neighbour's window) and health (the latents of the source states `s_{H-1}`);
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
        `eval_surprise_true`, `eval_surprise_teleport` (mean surprise of each);
        `eval_surprise_auroc_hard`, `eval_surprise_hard` and `eval_surprise_hard_num_items` (the
        items whose source has a second out-neighbour); `_copy` and `_shuffled` references of
        both AUROCs; item counts and `eval_world_model_seconds`.
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
    bar = progress(desc="world-model evaluation", total=4, unit="stage")
    with evaluating(model):
        spans = sample_spans(data.walks, w + history, config.num_items, rng)  # (N, w + H)
        cand = move_action_candidates(model, graph, spans, w, bs)
        disc = action_discrimination(model, cand, seed=config.seed, batch_size=bs)
        out.update({K.EVAL_ACTION_PREFIX + key: value for key, value in disc.items()})
        bar.update()

        # Surprise: the true next state against a teleport and against a hard negative (another
        # valid neighbour's window), both under the action taken, beside the copy score and the
        # same model with the action shuffled.
        rows = torch.arange(cand.target.shape[0], device=cand.target.device)
        z_true = cand.candidate_latents[rows, cand.target]
        source_window = spans[:, history - 1 : history - 1 + w]
        teleport = teleport_vertices(graph, source_window[:, -1], rng)
        teleport_window = np.concatenate([source_window[:, 1:], teleport[:, None]], axis=1)
        z_teleport = encode_states(model, torch.from_numpy(teleport_window), bs)
        shuffled = shuffled_actions(cand, config.seed, "surprise-shuffled-actions")
        tele = surprise_separation(
            model, cand.z_hist, cand.actions, shuffled, z_true, z_teleport, bs
        )
        out[K.EVAL_SURPRISE_AUROC] = tele["auroc"]
        out[K.EVAL_SURPRISE_AUROC_COPY] = tele["auroc_copy"]
        out[K.EVAL_SURPRISE_AUROC_SHUFFLED] = tele["auroc_shuffled"]
        out[K.EVAL_SURPRISE_TRUE] = tele["true"]
        out[K.EVAL_SURPRISE_TELEPORT] = tele["negative"]
        hard = hard_negative_vertices(graph, source_window[:, -1], spans[:, w + history - 1], rng)
        keep = np.flatnonzero(hard >= 0)  # sources of out-degree 1 have no hard negative
        if keep.size > 0:
            hard_rank, _ = graph.neighbor_rank(source_window[keep, -1], hard[keep])
            sel = torch.from_numpy(keep).to(rows.device)
            z_hard = cand.candidate_latents[sel, torch.from_numpy(hard_rank).to(rows.device)]
            sep = surprise_separation(
                model,
                cand.z_hist[sel],
                cand.actions.select(sel),
                shuffled.select(sel),
                z_true[sel],
                z_hard,
                bs,
            )
            out[K.EVAL_SURPRISE_AUROC_HARD] = sep["auroc"]
            out[K.EVAL_SURPRISE_AUROC_HARD_COPY] = sep["auroc_copy"]
            out[K.EVAL_SURPRISE_AUROC_HARD_SHUFFLED] = sep["auroc_shuffled"]
            out[K.EVAL_SURPRISE_HARD] = sep["negative"]
        out[K.EVAL_SURPRISE_HARD_NUM_ITEMS] = int(keep.size)
        bar.update()

        health = representation_health(cand.z_hist[:, -1], config.sigreg_num_slices, config.seed)
        out.update({K.EVAL_PREFIX + key: value for key, value in health.items()})
        bar.update()

        horizon = config.max_horizon
        spans = sample_spans(data.walks, w + horizon, config.num_rollouts, rng)
        states = torch.from_numpy(spans).unfold(1, w, 1)  # (N, K + 1, w)
        actions = torch.from_numpy(move_actions(graph, spans, w))
        rollout = latent_rollout(model, states, actions, bs)
        out.update({K.EVAL_ROLLOUT_PREFIX + key: value for key, value in rollout.items()})
        bar.update()
    bar.close()
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
    "hard_negative_vertices",
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
    "shuffled_actions",
    "surprise",
    "surprise_from_latents",
    "surprise_separation",
    "teleport_vertices",
]
