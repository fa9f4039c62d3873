"""World-model evaluation on any trajectory dataset: held-out rows only, no graph, no genome.

A dataset gives observed transitions and nothing else (no transition function to ask what
another action would have done), so every number here is computed from held-out rows
(`lewm_hf.data.trajectories`) with discrete actions, beside its reference:

- **Action discrimination** among all `num_actions` actions: for a held-out transition
  `s_t -a-> s_{t+1}` (with its true history, at most `history_length` steps), the model predicts
  the next latent under every action `c` in `[0, num_actions)`; the candidates are ranked by
  squared L2 distance to the observed `z_{t+1}`, and the true action should come first
  (Recall@1, Recall@5, MRR; ties at their expected rank, `lewm_hf.evaluation.retrieval`).
  References on the same items: *copy* (every action predicts `z_t`, so all candidates tie:
  exactly chance, the check that ties are scored fairly), *shuffled* (the same ranking scored
  for a uniformly random action instead of the true one: a model that reads its action lands at
  chance in expectation) and the analytic *chance* `1 / num_actions`. The keys are the walk
  suite's action keys (`eval_action_*`).
- **Rollouts** from `z_0` of held-out rows, feeding predictions back, per horizon against copy
  (`lewm_hf.evaluation.rollouts`).
- **Surprise**: the prediction error of the observed next state against that of the observed
  next state of another held-out row (token-identical states left out), as an AUROC
  (`lewm_hf.evaluation.surprise`), beside the walk suite's references on the same items: the
  copy score `||z_t - z_obs||^2` (`_copy`: no predictor at all) and an action-blind control
  (`_shuffled`: the same model with the last actions permuted across the items, so each item
  is predicted under another item's action, as likely as the policy took it). Chance is 0.5.
- **Health** of the held-out source latents (`lewm_hf.evaluation.latents`).

The held-out latent MSE against copy (`eval_pred_mse`, `eval_copy_mse`) is the trainer's own
evaluation on the same split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from .. import metric_keys as K
from ..data.trajectory_clips import TrajectoryClips, trajectory_clips
from ..determinism import derive_seed
from ..errors import LeWMConfigError
from ..fields import option, validate_fields
from .inference import encode_states, evaluating, predict_last
from .latents import representation_health
from .retrieval import RECALL_KS, chance_metrics, retrieval_metrics, retrieval_ranks
from .rollouts import latent_rollout
from .surprise import auroc, surprise_from_latents


@dataclass
class TrajectoryEvalConfig:
    """Sizes and seed of [`evaluate_trajectory_model`].

    Args:
        num_items (`int`, defaults to 512): Held-out transitions for action discrimination,
            surprise and health.
        num_rollouts (`int`, defaults to 256): Held-out rows rolled out.
        max_horizon (`int`, defaults to 8): Longest rollout horizon (at most the rows' length).
        batch_size (`int`, defaults to 1024): States per encoder call, rows per predictor call.
        sigreg_num_slices (`int`, defaults to 1024): Slices of the SIGReg statistic.
        seed (`int`, defaults to 0): Seed of the items, the shuffled actions and the other rows.
    """

    num_items: int = option(512, help="Held-out transitions evaluated.", low=2)
    num_rollouts: int = option(256, help="Held-out rows rolled out.", low=1)
    max_horizon: int = option(8, help="Longest rollout horizon.", low=1)
    batch_size: int = option(1024, help="States per encoder call.", low=1)
    sigreg_num_slices: int = option(1024, help="Slices of the SIGReg statistic.", low=1)
    seed: int = option(0, help="Seed of the evaluation.")

    def __post_init__(self) -> None:
        validate_fields(self)


def trajectory_rows(
    clips: TrajectoryClips, indices: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Clips of a validated discrete trajectory split as `(states (K + 1, L), actions (K,))`,
    trailing padding (`action_mask`) removed."""
    return [
        (np.asarray(r["input_ids"], dtype=np.int64), np.asarray(r["actions"], dtype=np.int64))
        for r in clips.read(indices)
    ]


def action_ranking(
    model: Any,
    z_hist: torch.Tensor,
    actions: torch.Tensor,
    z_next: torch.Tensor,
    num_actions: int,
    seed: int = 0,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Action discrimination among all actions from observed transitions (module docstring).

    Args:
        model: An object with `predict`.
        z_hist (`torch.Tensor` of shape `(N, T, D)`): True latents up to the source state.
        actions (`torch.LongTensor` of shape `(N, T)`): True actions; the last one was taken.
        z_next (`torch.Tensor` of shape `(N, D)`): The observed next latents.
        num_actions (`int`): Candidate actions `0 .. num_actions - 1`.
        seed (`int`, defaults to 0): Seed of the shuffled actions.
        batch_size (`int`, defaults to 1024): Rows per predictor call.

    Returns:
        `dict[str, float]`: `r1`, `r5`, `mrr`, the same with `_copy` and `_shuffled`, `chance`
        (Recall@1), `chance_r5`, `chance_mrr`, `num_items`.
    """
    num, steps, dim = z_hist.shape
    with evaluating(model):
        candidates = torch.arange(num_actions, device=actions.device)
        tried = actions.unsqueeze(1).repeat(1, num_actions, 1)  # (N, C, T)
        tried[:, :, -1] = candidates
        hist = z_hist.unsqueeze(1).expand(num, num_actions, steps, dim).reshape(-1, steps, dim)
        preds = predict_last(model, hist, tried.reshape(-1, steps), batch_size)
    preds = preds.view(num, num_actions, -1)
    mask = torch.ones(num, num_actions, dtype=torch.bool, device=preds.device)
    target = actions[:, -1].to(preds.device)
    z_next = z_next.to(preds.device)
    generator = torch.Generator().manual_seed(derive_seed(seed, "shuffled-actions"))
    shuffled = torch.randint(num_actions, (num,), generator=generator).to(preds.device)
    copy = z_hist[:, -1:].to(preds.device).expand(num, num_actions, dim)
    out = retrieval_metrics(*retrieval_ranks(z_next, preds, mask, target), RECALL_KS)
    for suffix, cands, tgt in (("copy", copy, target), ("shuffled", preds, shuffled)):
        values = retrieval_metrics(*retrieval_ranks(z_next, cands, mask, tgt), RECALL_KS)
        out.update({f"{key}_{suffix}": value for key, value in values.items()})
    chance = chance_metrics(mask.sum(1), tuple(sorted({1, *RECALL_KS})))
    out["chance"] = chance["r1"]
    out.update({f"chance_{key}": value for key, value in chance.items() if key != "r1"})
    out["num_items"] = num
    return out


def evaluate_trajectory_model(
    model: Any,
    held_out: Dataset | TrajectoryClips,
    num_actions: int,
    config: TrajectoryEvalConfig | None = None,
) -> dict[str, Any]:
    """Evaluate a world model on held-out trajectory rows (see the module docstring).

    Items, rollouts and surprise are drawn from the held-out clips (`trajectory_clips` with the
    model's `history_length`: the clips training evaluates on), so a split of long episodes is
    evaluated on the windows the model was trained to read.

    Args:
        model: A [`LeWMModel`] (or an object with `encode`, `predict`, `config.history_length`).
        held_out (`Dataset` or `TrajectoryClips`): A validated split with discrete actions (cut
            into back-to-back clips of `history_length` actions), or its clips.
        num_actions (`int`): The dataset's number of actions.
        config (`TrajectoryEvalConfig`, *optional*): Sizes and seed; defaults if None.

    Returns:
        `dict[str, Any]`: `eval_action_*` (as the walk suite's), `eval_rollout_*` (lists over
        horizons), `eval_surprise_auroc` with its references `eval_surprise_auroc_copy` and
        `eval_surprise_auroc_shuffled`, `eval_surprise_true`, `eval_surprise_other_row`,
        `eval_effective_rank`, `eval_var_per_dim`, `eval_sigreg`, item counts and
        `eval_world_model_seconds`.
    """
    started = time.perf_counter()
    config = config if config is not None else TrajectoryEvalConfig()
    vocab = getattr(model.config, "action_vocab_size", None)
    if vocab is not None and num_actions > vocab:
        raise LeWMConfigError(
            "action_vocab_size", vocab, f"below the dataset's num_actions {num_actions}"
        )
    history = model.config.history_length
    bs = config.batch_size
    rng = np.random.default_rng(derive_seed(config.seed, "trajectory-items"))
    if not isinstance(held_out, TrajectoryClips):
        held_out = trajectory_clips(held_out, history)
    steps = held_out.lengths

    # Items: a random row, a random transition in it, its history of at most H steps.
    rows = rng.integers(0, len(held_out), size=config.num_items)
    data = trajectory_rows(held_out, rows)
    ends = np.asarray([rng.integers(1, len(a) + 1) for _, a in data])  # scored step e: a_{e-1}
    starts = np.maximum(ends - history, 0)
    groups: dict[int, list[int]] = {}
    for i, (e, s) in enumerate(zip(ends, starts, strict=True)):
        groups.setdefault(int(e - s), []).append(i)
    out: dict[str, Any] = {}
    with evaluating(model):
        z_src, z_nexts, next_tokens, parts, weights = [], [], [], [], []
        for _, items in sorted(groups.items()):
            hist = torch.as_tensor(
                np.stack([data[i][0][starts[i] : ends[i]] for i in items])
            )  # (n, T, L)
            acts = torch.as_tensor(np.stack([data[i][1][starts[i] : ends[i]] for i in items]))
            nxt = np.stack([data[i][0][ends[i]] for i in items])  # (n, L)
            z_hist = encode_states(model, hist, bs)
            z_next = encode_states(model, torch.as_tensor(nxt), bs)
            acts = acts.to(z_hist.device)
            parts.append(action_ranking(model, z_hist, acts, z_next, num_actions, config.seed, bs))
            weights.append(len(items))
            z_src.append((z_hist, acts))
            z_nexts.append(z_next)
            next_tokens.append(nxt)
        total = sum(weights)
        for key in parts[0]:
            if key != "num_items":
                out[K.EVAL_ACTION_PREFIX + key] = (
                    sum(p[key] * w for p, w in zip(parts, weights, strict=True)) / total
                )
        out[K.EVAL_ACTION_PREFIX + "num_items"] = total

        # Surprise: the observed next state against the observed next state of another row,
        # scored by the model, by copy and by the model under another item's last action.
        z_next_all = torch.cat(z_nexts)  # (N, D), group by group
        tokens_all = np.concatenate(next_tokens)
        shift = rng.integers(1, total, size=total) if total > 1 else np.zeros(1, np.int64)
        other = (np.arange(total) + shift) % total
        differs = torch.as_tensor((tokens_all != tokens_all[other]).any(axis=1))
        last = torch.cat([acts[:, -1] for _, acts in z_src])  # (N,), group by group
        shuffle = np.random.default_rng(derive_seed(config.seed, "surprise-shuffled-actions"))
        last_shuffled = last[torch.as_tensor(shuffle.permutation(total), device=last.device)]
        scores: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {
            name: ([], []) for name in ("model", "copy", "shuffled")
        }
        at = 0
        for (z_hist, acts), z_next in zip(z_src, z_nexts, strict=True):
            n = z_hist.shape[0]
            z_o = z_next_all[torch.as_tensor(other[at : at + n])]
            blind = acts.clone()
            blind[:, -1] = last_shuffled[at : at + n]
            for slot, z_obs in enumerate((z_next, z_o)):
                for name, taken in (("model", acts), ("shuffled", blind)):
                    scores[name][slot].append(
                        surprise_from_latents(model, z_hist, taken, z_obs, bs)
                    )
                copy = (z_obs.float() - z_hist[:, -1].float()).pow(2).sum(-1)
                scores["copy"][slot].append(copy)
            at += n
        s_true_t = torch.cat(scores["model"][0])
        keep = differs.to(s_true_t.device)
        s_other_t = torch.cat(scores["model"][1])[keep]
        if s_other_t.numel():
            labels = torch.cat([torch.zeros_like(s_true_t), torch.ones_like(s_other_t)]).bool()
            for name, key in (
                ("model", K.EVAL_SURPRISE_AUROC),
                ("copy", K.EVAL_SURPRISE_AUROC_COPY),
                ("shuffled", K.EVAL_SURPRISE_AUROC_SHUFFLED),
            ):
                true, negative = (torch.cat(part).to(keep.device) for part in scores[name])
                out[key] = auroc(torch.cat([true, negative[keep]]), labels)
            out[K.EVAL_SURPRISE_OTHER_ROW] = s_other_t.mean().item()
        out[K.EVAL_SURPRISE_TRUE] = s_true_t.mean().item()

        sources = torch.cat([z[:, -1] for z, _ in z_src])
        health = representation_health(sources, config.sigreg_num_slices, config.seed)
        out.update({K.EVAL_PREFIX + key: value for key, value in health.items()})

        # Rollouts from s_0 over the longest horizon the rows allow.
        horizon = int(min(config.max_horizon, steps.max()))
        long_rows = np.flatnonzero(steps >= horizon)
        picked = rng.choice(long_rows, size=min(config.num_rollouts, long_rows.size), replace=False)
        rolled = trajectory_rows(held_out, np.sort(picked))
        states = torch.as_tensor(np.stack([s[: horizon + 1] for s, _ in rolled]))
        actions = torch.as_tensor(np.stack([a[:horizon] for _, a in rolled]))
        rollout = latent_rollout(model, states, actions, bs)
        out.update({K.EVAL_ROLLOUT_PREFIX + key: value for key, value in rollout.items()})
    out[K.EVAL_ROLLOUT_HORIZONS] = list(range(1, horizon + 1))
    out[K.EVAL_ROLLOUT_NUM_ITEMS] = len(rolled)
    out[K.EVAL_WORLD_MODEL_SECONDS] = time.perf_counter() - started
    return out


__all__ = [
    "TrajectoryEvalConfig",
    "action_ranking",
    "evaluate_trajectory_model",
    "trajectory_rows",
]
