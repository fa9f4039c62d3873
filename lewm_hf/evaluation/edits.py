"""Evaluation of DNA edit world models on held-out windows.

- `snv_recovery`: from a source window and its edited window (one SNV near the locus), rank all
  single-base substitutions of the window (every position, every other base: about `3L`) by
  the distance of their *predicted* latent to the *observed* (encoded) edited latent; Recall@1
  of the true SNV (`eval_snv_recovery_r1`). A model that ignores its action ranks every
  candidate alike, so one reference is chance `1 / (3L)` (`eval_snv_recovery_chance`); but the
  SNV is drawn within `locus +- radius`, and a guess that knows this scores `1 / (3 (2 radius +
  1))` (`eval_snv_recovery_chance_prior`, the chance under the draw's own prior), the level to
  beat. The action-blind control (`eval_snv_recovery_r1_shuffled`) is the same model with the
  candidates' actions shuffled (their predictions permuted within each item). The copy baseline
  (`eval_snv_recovery_r1_copy`) ranks the candidates' *true* next latents (each candidate
  window encoded) by distance to the source latent `z_t`: it asks whether the true edit is the
  one that moves the latent least, which it is not by construction.
- `edit_action_candidates` + `action_discrimination`: for a held-out source state and its true
  first edit, candidates are the true edit, the substitutions of the other bases at the same
  position, and random other edits (SUB/INS/DEL from the corpus sampler), each with its true
  next state encoded; rank by distance to the prediction (`eval_edit_action_r1`, with copy,
  shuffled and chance references). Candidates that lead to the same next state (window and
  locus) as an earlier one are the same transition and are masked. Distinct states can still
  share a latent (an edit the centered, causal encoder does not see); no predictor can tell
  those apart, and `eval_edit_action_r1_ceiling` (Recall@1 of a perfect predictor, whose
  prediction is the true next latent; latents equal up to float rounding are ties) says how
  much of Recall@1 that leaves to gain.

Candidate actions are coded as the model was trained to read them (`action_coding`: the
`action_position_origin` and `action_reference_offset` fields of its `LeWMConfig`, through
`edits.code_edit_actions`, as in training): positions relative to the source state's locus or
to the window, and `SUB` actions with or without the bases they replace.

Everything runs batched under `torch.inference_mode` and is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import metric_keys as K
from ..data.dna import DNA_EDIT_ALPHABET, DNA_END_ID, N_ID
from ..data.edits.actions import code_edit_actions
from ..data.edits.corpus import edits_from_row
from ..data.edits.ops import Edit, EditOp, apply_edit, map_locus
from ..data.edits.sampling import EditSampler
from ..determinism import derive_seed
from ..fields import PositionOrigin, option, validate_fields
from ..modeling_actions import ActionInputs
from ..progress import progress
from .discrimination import ActionCandidates, action_discrimination
from .inference import evaluating, model_device
from .retrieval import chance_metrics, retrieval_metrics, retrieval_ranks

# Windows per encoder call of the evaluation: the attention of a batch of windows takes
# `batch * heads * L^2` floats per layer (4096 windows of 64 bases, 4 heads: 270 MB for each
# score tensor), so a fixed, small batch keeps the evaluation's memory flat; the results do
# not depend on it.
ENCODE_BATCH_SIZE = 256


def action_coding(model: Any) -> tuple[PositionOrigin, int | None]:
    """The action coding `model` was trained with: its config's `action_position_origin` and
    `action_reference_offset` (declared `LeWMConfig` fields)."""
    return model.config.action_position_origin, model.config.action_reference_offset


@dataclass
class EditEvaluationArguments:
    """DNA evaluation after training (`lewm_hf.evaluation.edits`).

    Args:
        run_evaluation (`bool`, defaults to True): Run SNV recovery and edit discrimination.
        eval_items (`int`, defaults to 256): Held-out source windows evaluated.
        eval_copy_items (`int`, defaults to 32): Items of the SNV copy baseline (it encodes
            every candidate window: `~3L` encoder calls per item).
        eval_random_edits (`int`, defaults to 16): Random other edits per discrimination item.
        eval_seed (`int`, defaults to 0): Seed of the evaluation's draws.
    """

    run_evaluation: bool = option(True, help="Run the DNA evaluation after training.")
    eval_items: int = option(256, help="Held-out source windows evaluated.", low=1)
    eval_copy_items: int = option(32, help="Items of the SNV copy baseline.", low=0)
    eval_random_edits: int = option(16, help="Random other edits per item.", low=0)
    eval_seed: int = option(0, help="Seed of the evaluation.", low=0)

    def __post_init__(self) -> None:
        validate_fields(self)


def _actions(ops: torch.Tensor, positions: torch.Tensor, bases: torch.Tensor) -> dict:
    """Single-base edits `(...)` as `action_*` entries (`ActionInputs.from_batch`; what
    `code_edit_actions` codes), with tokens `[base, <end>]`."""
    tokens = torch.stack([bases, torch.full_like(bases, DNA_END_ID)], dim=-1)
    return {
        "action_ops": ops,
        "action_positions": positions,
        "action_tokens": tokens,
        "action_token_mask": torch.ones_like(tokens, dtype=torch.bool),
    }


def draw_snvs(
    windows: np.ndarray, loci: np.ndarray, radius: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One SNV per window within `locus +- radius`: positions `(N,)` and alternative bases."""
    length = windows.shape[1]
    lo = np.clip(loci - radius, 0, length - 1)
    hi = np.clip(loci + radius, 0, length - 1)
    pos = lo + (rng.random(len(loci)) * (hi - lo + 1)).astype(np.int64)
    alphabet = np.asarray(DNA_EDIT_ALPHABET)
    ref = windows[np.arange(len(pos)), pos]
    alts = np.empty(len(pos), dtype=np.int64)
    for i, r in enumerate(ref):
        choices = alphabet[alphabet != r]
        alts[i] = choices[rng.integers(len(choices))]
    return pos, alts


def snv_recovery(
    model: Any,
    windows: np.ndarray,
    loci: np.ndarray,
    radius: int,
    seed: int = 0,
    copy_items: int = 32,
    batch_size: int = 4096,
    encode_batch_size: int = ENCODE_BATCH_SIZE,
) -> dict[str, float]:
    """Recall@1 (and MRR) of the true SNV among all single-base substitutions of a window.

    Args:
        model: A `LeWMModel` (or an object with `encode(input_ids, locus=...)` and `predict`).
        windows (`np.ndarray`): `(N, L)` held-out source windows.
        loci (`np.ndarray`): `(N,)` their loci (centre of `centered` pooling).
        radius (`int`): The SNV is drawn within `locus +- radius`.
        seed (`int`, defaults to 0): Seed of the SNVs.
        copy_items (`int`, defaults to 32): Items of the copy baseline (0: none).
        batch_size (`int`, defaults to 4096): Rows per predictor call.
        encode_batch_size (`int`, defaults to `ENCODE_BATCH_SIZE`): Windows per encoder call
            (the copy baseline encodes `copy_items * 3L` candidate windows).

    Returns:
        `dict[str, float]`: `eval_snv_recovery_r1`, `_r5`, `_mrr`, `_r1_copy` (on the first
        `copy_items` items), `_r1_shuffled` (the candidates' predictions permuted within each
        item), `_chance` (mean `1 / candidates`), `_chance_prior` (mean `1 / candidates within
        locus +- radius`, where the SNV is drawn), `_num_items`.
    """
    windows = np.asarray(windows, dtype=np.int64)
    loci = np.asarray(loci, dtype=np.int64)
    num, length = windows.shape
    rng = np.random.default_rng(derive_seed(seed, "snv-recovery"))
    pos, alt = draw_snvs(windows, loci, radius, rng)
    edited = windows.copy()
    edited[np.arange(num), pos] = alt
    alphabet = torch.tensor(DNA_EDIT_ALPHABET)
    width = length * len(alphabet)
    cand_pos = torch.arange(length).repeat_interleave(len(alphabet))  # (C,)
    cand_base = alphabet.repeat(length)  # (C,)
    win_t = torch.from_numpy(windows)
    mask = cand_base.unsqueeze(0) != win_t[:, cand_pos]  # (N, C): the reference is no edit
    target = torch.from_numpy(pos * len(alphabet)) + (
        torch.from_numpy(alt).unsqueeze(1) == alphabet
    ).long().argmax(1)
    device = model_device(model)
    loc_t = torch.from_numpy(loci).to(device)
    acts = _actions(
        torch.full((num * width, 1), int(EditOp.SUB), dtype=torch.long),
        cand_pos.repeat(num).unsqueeze(1),
        cand_base.repeat(num).unsqueeze(1),
    )  # (N * C, 1) single-step actions, window positions
    acts = code_edit_actions(
        acts,
        win_t.repeat_interleave(width, 0).unsqueeze(1),  # (N * C, 1, L): the state each edits
        torch.from_numpy(loci).repeat_interleave(width).unsqueeze(1),  # (N * C, 1)
        *action_coding(model),
    )
    acts = ActionInputs.from_batch(acts).to(device)
    with evaluating(model):
        z_src = model.encode(win_t.to(device), locus=loc_t).float()  # (N, D)
        z_obs = model.encode(torch.from_numpy(edited).to(device), locus=loc_t).float()
        z_rep = z_src.repeat_interleave(width, 0).unsqueeze(1)  # (N * C, 1, D)
        preds = torch.cat(
            [
                model.predict(z_rep[rows], acts.select(rows))[:, -1].float()
                for rows in progress(
                    [slice(i, i + batch_size) for i in range(0, num * width, batch_size)],
                    desc="SNV recovery",
                    unit="batch",
                )
            ]
        ).view(num, width, -1)
        mask_d, target_d = mask.to(device), target.to(device)
        metrics = retrieval_metrics(*retrieval_ranks(z_obs, preds, mask_d, target_d))
        out = {K.EVAL_SNV_RECOVERY_PREFIX + key: value for key, value in metrics.items()}
        out[K.EVAL_SNV_RECOVERY_CHANCE] = chance_metrics(mask.sum(1))["r1"]
        lo = torch.from_numpy(np.clip(loci - radius, 0, length - 1))
        hi = torch.from_numpy(np.clip(loci + radius, 0, length - 1))
        prior = (cand_pos >= lo.unsqueeze(1)) & (cand_pos <= hi.unsqueeze(1)) & mask  # (N, C)
        out[K.EVAL_SNV_RECOVERY_CHANCE_PRIOR] = chance_metrics(prior.sum(1))["r1"]
        # Each candidate is scored with the prediction of a uniformly random valid candidate's
        # action, drawn independently of its own (it may coincide with it).
        generator = torch.Generator().manual_seed(derive_seed(seed, "snv-shuffled"))
        order = torch.rand(num, width, generator=generator).masked_fill(~mask, 2.0).argsort(1)
        draw = torch.rand(num, width, generator=generator) * mask.sum(1, keepdim=True)
        perm = order.gather(1, draw.long().clamp(max=width - 1))  # valid candidates first
        shuffled = preds.gather(1, perm.to(device).unsqueeze(-1).expand_as(preds))
        out[K.EVAL_SNV_RECOVERY_R1_SHUFFLED] = retrieval_metrics(
            *retrieval_ranks(z_obs, shuffled, mask_d, target_d)
        )["r1"]
        out[K.EVAL_SNV_RECOVERY_NUM_ITEMS] = num
        m = min(copy_items, num)
        if m > 0:
            cand = win_t[:m].unsqueeze(1).repeat(1, width, 1)  # (m, C, L)
            cand[:, torch.arange(width), cand_pos] = cand_base
            cand_loc = loc_t[:m].repeat_interleave(width)
            flat = cand.view(-1, length).to(device)
            z_cand = torch.cat(
                [
                    model.encode(
                        flat[i : i + encode_batch_size],
                        locus=cand_loc[i : i + encode_batch_size],
                    )
                    for i in progress(
                        range(0, flat.shape[0], encode_batch_size), desc="SNV copy", unit="batch"
                    )
                ]
            ).float()
            z_cand = z_cand.view(m, width, -1)
            copy = retrieval_metrics(*retrieval_ranks(z_src[:m], z_cand, mask_d[:m], target_d[:m]))
            out[K.EVAL_SNV_RECOVERY_R1_COPY] = copy["r1"]
    return out


def edit_action_candidates(
    model: Any,
    rows: list[dict[str, Any]],
    sampler: EditSampler,
    radius: int | None,
    num_random: int = 16,
    seed: int = 0,
    end_token: int = DNA_END_ID,
    batch_size: int = ENCODE_BATCH_SIZE,
) -> ActionCandidates:
    """Action-discrimination items of held-out edit-corpus rows (their first edit).

    Candidates: the true edit; `SUB` of each other base at its position (single base, the
    reference excluded, the true edit's own substitution skipped); `num_random` random edits of
    the corpus sampler near the locus. Each candidate's true next window is encoded (at the
    locus mapped through it). A candidate whose next state (window and mapped locus) equals an
    earlier candidate's is masked: the same transition (a duplicate edit, or e.g. deleting
    either base of an `AA` run); the true edit, first, is always kept.

    Args:
        model: A `LeWMModel` (or an object with `encode(input_ids, locus=...)`, `predict` and
            `config.action_position_origin` / `config.action_reference_offset`).
        rows (`list[dict[str, Any]]`): Held-out edit-corpus rows (`input_ids`, `locus`, edits).
        sampler (`EditSampler`): Draws the random other edits.
        radius (`int`, *optional*): Random edits touch `locus +- radius` (anywhere if None).
        num_random (`int`, defaults to 16): Random other edits per item.
        seed (`int`, defaults to 0): Seed of the random edits.
        end_token (`int`, defaults to `DNA_END_ID`): Closes every action's tokens.
        batch_size (`int`, defaults to `ENCODE_BATCH_SIZE`, 256): Windows per encoder call.

    Returns:
        `ActionCandidates`: `z_hist` `(N, 1, D)`; candidates `(N, C)` coded as the model reads
        them, the true edit at index 0 (`target` all zeros).
    """
    rng = np.random.default_rng(derive_seed(seed, "edit-candidates"))
    sources = np.stack([np.asarray(r["input_ids"][0], dtype=np.int64) for r in rows])
    loci = np.asarray([int(r["locus"][0]) for r in rows], dtype=np.int64)
    length = sources.shape[1]
    true_edits = [edits_from_row(r)[0] for r in rows]
    randoms = [
        sampler.sample(sources, rng, loci, radius).to_edits() for _ in range(num_random)
    ]  # num_random lists of N
    cands: list[list[Edit]] = []
    for i, edit in enumerate(true_edits):
        items = [edit]
        ref = int(sources[i, edit.pos])
        for base in DNA_EDIT_ALPHABET:
            sub = Edit(EditOp.SUB, edit.pos, (base,))
            if base != ref and sub != edit:
                items.append(sub)
        items.extend(r[i] for r in randoms)
        cands.append(items)
    width = max(len(c) for c in cands)
    tok_width = 1 + max(e.length for c in cands for e in c)
    num = len(rows)
    ops = torch.zeros(num, width, dtype=torch.long)
    positions = torch.zeros(num, width, dtype=torch.long)
    tokens = torch.zeros(num, width, tok_width, dtype=torch.long)
    token_mask = torch.zeros(num, width, tok_width, dtype=torch.bool)
    mask = torch.zeros(num, width, dtype=torch.bool)
    next_states = np.full((num, width, length), N_ID, dtype=np.int64)
    next_loci = np.zeros((num, width), dtype=np.int64)
    for i, items in enumerate(cands):
        seen = set()  # next states (window, locus) already among the candidates
        for j, e in enumerate(items):
            state = apply_edit(sources[i], e)
            locus = map_locus(loci[i], int(e.op), e.pos, e.length, length)
            key = (state.tobytes(), int(locus))
            if key in seen:  # the same transition as an earlier candidate (or the same edit)
                continue
            seen.add(key)
            row = [*e.tokens, end_token]
            ops[i, j], positions[i, j] = int(e.op), e.pos
            tokens[i, j, : len(row)] = torch.tensor(row)
            token_mask[i, j, : len(row)] = True
            mask[i, j] = True
            next_states[i, j] = state
            next_loci[i, j] = locus
    device = model_device(model)
    flat = torch.from_numpy(next_states[mask.numpy()])
    flat_loc = torch.from_numpy(next_loci[mask.numpy()]).to(device)
    with evaluating(model):
        z_src = model.encode(
            torch.from_numpy(sources).to(device), locus=torch.from_numpy(loci).to(device)
        ).float()
        z_next = torch.cat(
            [
                model.encode(
                    flat[i : i + batch_size].to(device), locus=flat_loc[i : i + batch_size]
                )
                for i in progress(
                    range(0, flat.shape[0], batch_size), desc="edit actions", unit="batch"
                )
            ]
        ).float()
    z_src, z_next = z_src.clone(), z_next.clone()  # ordinary tensors, outside inference mode
    latents = z_src.new_zeros(num, width, z_src.shape[-1])
    mask_d = mask.to(device)
    latents[mask_d] = z_next
    cand_actions = {
        "action_ops": ops,
        "action_positions": positions,
        "action_tokens": tokens,
        "action_token_mask": token_mask,
    }
    cand_actions = code_edit_actions(
        cand_actions,
        torch.from_numpy(sources).unsqueeze(1).expand(-1, width, -1),  # (N, C, L)
        torch.from_numpy(loci).unsqueeze(1).expand(-1, width),  # (N, C)
        *action_coding(model),
        end_token,
    )
    cand_actions = ActionInputs.from_batch(cand_actions).to(device)
    return ActionCandidates(
        z_hist=z_src.unsqueeze(1),
        actions=cand_actions.select(steps=slice(0, 1)),
        candidate_latents=latents,
        candidate_actions=cand_actions,
        candidate_mask=mask_d,
        target=torch.zeros(num, dtype=torch.long, device=device),
    )


def evaluate_edit_model(
    model: Any,
    rows: list[dict[str, Any]],
    sampler: EditSampler,
    radius: int,
    args: EditEvaluationArguments,
) -> dict[str, float]:
    """SNV recovery and edit-action discrimination on held-out edit-corpus rows.

    Returns:
        `dict[str, float]`: `eval_snv_recovery_*` and `eval_edit_action_*` (`r1`, `r5`, `mrr`,
        `r1_copy`, `r1_shuffled`, `chance`, ..., and `r1_ceiling`: a perfect predictor's).
    """
    rows = rows[: args.eval_items]
    windows = np.stack([np.asarray(r["input_ids"][0], dtype=np.int64) for r in rows])
    loci = np.asarray([int(r["locus"][0]) for r in rows], dtype=np.int64)
    out = snv_recovery(model, windows, loci, radius, args.eval_seed, args.eval_copy_items)
    cands = edit_action_candidates(
        model, rows, sampler, radius, args.eval_random_edits, args.eval_seed
    )
    metrics = action_discrimination(model, cands, seed=args.eval_seed)
    out.update({K.EVAL_EDIT_ACTION_PREFIX + key: value for key, value in metrics.items()})
    out[K.EVAL_EDIT_ACTION_R1_CEILING] = perfect_predictor_r1(cands)
    return out


# Squared distance, relative to the candidates' mean squared norm, below which two latents are
# the same latent up to float rounding (see `perfect_predictor_r1`).
LATENT_TIE_RTOL = 1e-6


def perfect_predictor_r1(candidates: ActionCandidates, rtol: float = LATENT_TIE_RTOL) -> float:
    """Recall@1 of a perfect predictor (its prediction is the true next latent): the ceiling of
    `eval_edit_action_r1`.

    Candidates whose latent lies within float rounding of the true one (squared distance at most
    `rtol` times the candidates' mean squared norm) are ties, broken uniformly at random: a
    shifted window whose pooled tokens are the same (an indel away from the locus, trimmed on
    the locus's side) is encoded at other absolute positions, and its latent differs from the
    unshifted one by rounding alone, which no predictor can be asked to resolve. An exact-equality
    tie would let the perfect predictor win those by the rounding's luck.

    Args:
        candidates (`ActionCandidates`): The discrimination items.
        rtol (`float`, defaults to `LATENT_TIE_RTOL`): Relative tolerance of a tie.

    Returns:
        `float`: The ceiling Recall@1.
    """
    latents, mask = candidates.candidate_latents.float(), candidates.candidate_mask
    rows = torch.arange(candidates.target.shape[0], device=latents.device)
    perfect = latents[rows, candidates.target]  # (N, D)
    dist = (latents - perfect.unsqueeze(1)).pow(2).sum(-1)  # (N, C)
    scale = latents[mask].pow(2).sum(-1).mean()
    ties = ((dist <= rtol * scale) & mask).sum(1) - 1  # the target itself excluded
    return retrieval_metrics(torch.zeros_like(ties), ties)["r1"]


__all__ = [
    "ENCODE_BATCH_SIZE",
    "EditEvaluationArguments",
    "action_coding",
    "draw_snvs",
    "edit_action_candidates",
    "evaluate_edit_model",
    "perfect_predictor_r1",
    "snv_recovery",
]
