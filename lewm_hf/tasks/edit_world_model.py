"""Task `edit_world_model`: a LeWM world model on DNA edit trajectories.

The state encoder is the previous phase's DNA LM (`encoder_path: previous`), a path, or a fresh
tiny Llama (null); the actions are edits `(op, pos, tokens)` (`num_action_ops=3`, action tokens
over the DNA vocabulary), and states are pooled around the edit locus (`pooling: centered`).
Rows come from `build_edit_corpus` (train/validation split by genome region).

Action coding (`EditActionArguments`). A centered state shows the predictor the tokens around
its locus, not where the locus lies in the window, and it keeps the base at any one of them
poorly. So by default an action's position is given relative to the locus of the state it edits
(`action_position_origin: locus`): with window positions the predictor cannot tell an edit
inside the pooled tokens from one far from them. And a `SUB` action also names the bases it
replaces (`sub_reference_tokens`), as a `DEL` action already names what it deletes. Both are
saved in the model's config, and the evaluation codes its candidate actions the same way
(`edits.code_edit_actions`).

Reads top to bottom: arguments -> data -> model -> trainer -> train -> save -> evaluate -> report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import metric_keys as K
from ..configuration_lewm import LeWMConfig
from ..data.collators import DataCollatorForLeWM
from ..data.dna import DNA_END_ID, DNA_VOCAB_SIZE, build_dna_tokenizer
from ..data.edits import (
    EditCorpusConfig,
    PositionOrigin,
    build_edit_corpus,
    code_edit_actions,
)
from ..determinism import prepare_run
from ..errors import LeWMConfigError
from ..evaluation.edits import (
    ACTION_POSITION_ORIGIN,
    ACTION_REFERENCE_OFFSET,
    EditEvaluationArguments,
    action_coding,
    evaluate_edit_model,
)
from ..fields import option, validate_fields
from ..modeling_actions import ActionInputs
from ..modeling_lewm import LeWMModel
from ..trainer.lewm_config import LeWMTrainingArguments
from ..trainer.lewm_trainer import LeWMTrainer
from .arguments import WorldModelArguments
from .base import PhaseContext, build_training_arguments
from .dna_lm import DNACorpusCacheArguments, corpus_config
from .world_model import resolve_encoder_path, resolve_model_path


@dataclass
class EditActionArguments:
    """How an edit reaches the predictor as an action (saved in the model's config; a saved
    model keeps its own).

    Args:
        action_position_origin (`str`, defaults to `"locus"`): `"locus"`: the position relative
            to the locus of the state the edit applies to (needs `pooling: centered` and
            `max_action_position > 2 * window_length`); `"window"`: the position in the window.
        sub_reference_tokens (`bool`, defaults to `True`): A `SUB` action also carries the
            tokens it replaces, shifted past the DNA vocabulary (needs `action_vocab_size >=
            2 * DNA_VOCAB_SIZE`, the default then).
    """

    action_position_origin: PositionOrigin = option(
        "locus", help="Action positions relative to the state's locus, or to the window."
    )
    sub_reference_tokens: bool = option(
        True, help="SUB actions also name the bases they replace; false: only the new ones."
    )

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass
class EditActionCollator:
    """`DataCollatorForLeWM` on edit rows, with the actions coded as the model reads them
    (`edits.code_edit_actions`; action `k` edits state `k`, whose locus is `locus[:, k]`).

    Args:
        collator (`DataCollatorForLeWM`): Collates the edit rows.
        position_origin (`str`, defaults to `"window"`): See `EditActionArguments`.
        reference_offset (`int`, *optional*): Shift of `SUB` reference tokens (None: none).
    """

    collator: DataCollatorForLeWM
    position_origin: PositionOrigin = "window"
    reference_offset: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(features)
        coded = code_edit_actions(
            batch["actions"].to_batch(),
            batch["input_ids"][:, :-1],  # (B, K, L)
            batch["locus"][:, :-1],  # (B, K)
            self.position_origin,
            self.reference_offset,
            self.collator.edit_end_token,
        )
        return {**batch, "actions": ActionInputs.from_batch(coded)}


# Recipe targets: each key belongs to exactly one of them.
TARGETS = {
    "data": EditCorpusConfig,
    "cache": DNACorpusCacheArguments,
    "model": WorldModelArguments,
    "config": LeWMConfig,
    "actions": EditActionArguments,
    "training": LeWMTrainingArguments,
    "evaluation": EditEvaluationArguments,
}
# `seed` is the run's (the trainer's); the corpus seed is set from it.
OWNERS = {"seed": "training"}
# LeWMConfig defaults of an edit model (a recipe may set them otherwise); `action_vocab_size`
# defaults to the DNA vocabulary, twice over with `sub_reference_tokens`.
EDIT_MODEL_DEFAULTS = {
    "num_action_ops": 3,
    "pooling": "centered",
}


@dataclass
class EditWorldModelTaskArguments:
    """The parsed arguments of an `edit_world_model` phase."""

    data: EditCorpusConfig
    cache: DNACorpusCacheArguments
    model: WorldModelArguments
    config: dict[str, Any]
    actions: EditActionArguments
    training: LeWMTrainingArguments
    evaluation: EditEvaluationArguments


def parse(
    parts: dict[str, dict[str, Any]], output_dir: Path, source: str
) -> EditWorldModelTaskArguments:
    """Build (and so validate) the phase's arguments from the recipe keys each target owns."""
    training = build_training_arguments(
        LeWMTrainingArguments, parts["training"], output_dir, source
    )
    data = corpus_config(parts["data"], training)
    actions = EditActionArguments(**parts["actions"])
    vocab = 2 * DNA_VOCAB_SIZE if actions.sub_reference_tokens else DNA_VOCAB_SIZE
    config = {**EDIT_MODEL_DEFAULTS, "action_vocab_size": vocab, **parts["config"]}
    checked = LeWMConfig(**config)  # every model key is checked before anything runs
    # Saved with the model (extra config attributes), so that its actions are coded alike later.
    config[ACTION_POSITION_ORIGIN] = actions.action_position_origin
    config[ACTION_REFERENCE_OFFSET] = DNA_VOCAB_SIZE if actions.sub_reference_tokens else None
    if data.max_actions > checked.history_length:
        raise LeWMConfigError(
            "max_actions", data.max_actions, f"must be <= history_length={checked.history_length}"
        )
    relative = actions.action_position_origin == "locus"
    if relative and checked.pooling != "centered":
        raise LeWMConfigError(
            "action_position_origin",
            actions.action_position_origin,
            f"needs pooling: centered (got {checked.pooling}); use window",
        )
    # Window positions lie in [0, L]; locus-relative ones in [1, 2L].
    top = 2 * data.window_length if relative else data.window_length
    if checked.max_action_position <= top:
        raise LeWMConfigError(
            "max_action_position",
            checked.max_action_position,
            f"must exceed {top} (window_length={data.window_length}, "
            f"action_position_origin={actions.action_position_origin})",
        )
    if checked.num_action_ops < 3 or checked.action_vocab_size < vocab:
        raise LeWMConfigError(
            "num_action_ops",
            (checked.num_action_ops, checked.action_vocab_size),
            f"edits need num_action_ops >= 3 and action_vocab_size >= {vocab} "
            f"(sub_reference_tokens={actions.sub_reference_tokens})",
        )
    return EditWorldModelTaskArguments(
        data=data,
        cache=DNACorpusCacheArguments(**parts["cache"]),
        model=WorldModelArguments(**parts["model"]),
        config=config,
        actions=actions,
        training=training,
        evaluation=EditEvaluationArguments(**parts["evaluation"]),
    )


def build_edit_world_model(
    args: EditWorldModelTaskArguments, encoder_path: str | None, model_path: str | None
) -> LeWMModel:
    """The saved model in `model_path`, else a new one around `encoder_path`'s encoder (or a
    fresh DNA-vocabulary encoder when it is None)."""
    if model_path:
        return LeWMModel.from_pretrained(model_path)
    kwargs = dict(args.config)
    if encoder_path:
        return LeWMModel.from_encoder_pretrained(encoder_path, **kwargs)
    kwargs.setdefault("vocab_size", DNA_VOCAB_SIZE)
    return LeWMModel(LeWMConfig(**kwargs))


def main(args: EditWorldModelTaskArguments, context: PhaseContext) -> dict[str, Any]:
    """Train a LeWM world model on edit trajectories and evaluate it on held-out regions.

    Returns:
        `dict[str, Any]`: The phase summary (`eval_pred_mse`, `eval_copy_mse`,
        `eval_snv_recovery_r1`, `eval_edit_action_r1`, ...).
    """
    start = time.time()
    training_args = args.training
    seeds = prepare_run(training_args, context.recipe)

    # Data
    with training_args.main_process_first(desc="edit corpus"):
        corpus = build_edit_corpus(args.data, args.cache.corpus_cache_dir)

    # Model
    model_path = resolve_model_path(args.model.model_name_or_path, context)
    encoder_path = None if model_path else resolve_encoder_path(args.model.encoder_path, context)
    model = build_edit_world_model(args, encoder_path, model_path)

    # Trainer (actions coded as the model reads them: a saved model keeps its own coding)
    collator = EditActionCollator(
        DataCollatorForLeWM(edit_end_token=DNA_END_ID, max_edit_len=args.data.max_edit_len),
        *action_coding(model),
    )
    trainer = LeWMTrainer(
        model=model,
        args=training_args,
        data_collator=collator,
        train_dataset=corpus["train"],
        eval_dataset=corpus["validation"],
        processing_class=build_dna_tokenizer(),
    )

    # Train
    trainer.train(resume_from_checkpoint=context.resume)

    # Save
    trainer.save_model()

    # Evaluate: held-out MSE against the copy baseline, then SNV recovery and discrimination.
    metrics = trainer.final_metrics()
    final = {
        key: metrics.get(key)
        for key in (K.EVAL_PRED_MSE, K.EVAL_COPY_MSE, K.EVAL_PRED_LOSS, K.EVAL_REG_LOSS)
    }
    if args.evaluation.run_evaluation:
        evaluated = trainer.accelerator.unwrap_model(trainer.model)
        held_out = corpus["validation"]
        rows = [held_out[i] for i in range(min(len(held_out), args.evaluation.eval_items))]
        radius = args.data.cluster_radius or evaluated.config.pool_radius
        final.update(
            evaluate_edit_model(evaluated, rows, args.data.sampler(), radius, args.evaluation)
        )

    # Report
    result = trainer.build_result(context.name, **final, seeds=vars(seeds))
    trainer.write_result(result)
    pred = result["curves"][K.PRED_LOSS]["value"]
    return {
        "task": "edit_world_model",
        "output_dir": training_args.output_dir,
        "model_path": training_args.output_dir,
        "encoder_path": encoder_path,
        "model_name_or_path": model_path,
        **final,
        "final_pred_loss": pred[-1] if pred else None,
        "train_rows": len(corpus["train"]),
        "eval_rows": len(corpus["validation"]),
        "collapse_alerts": len(result.get("collapse_alerts", [])),
        "global_step": trainer.state.global_step,
        "wall_time_s": time.time() - start,
    }
