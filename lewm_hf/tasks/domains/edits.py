"""The edit domain (task `edit_world_model`): DNA edit trajectories.

States are genome windows, actions edits `(op, pos, tokens)` (SUB / INS / DEL, action tokens
over the DNA vocabulary), and states are pooled around the edit locus (`pooling: centered`).
Rows come from `build_edit_corpus` (train / validation split by genome region).

Action coding (`LeWMConfig.action_position_origin`, `action_reference_offset`). A centered
state shows the predictor the tokens around its locus, not where the locus lies in the window,
and it keeps the base at any one of them poorly. So by default an action's position is given
relative to the locus of the state it edits (`action_position_origin: locus`): with window
positions the predictor cannot tell an edit inside the pooled tokens from one far from them.
And a `SUB` action also names the bases it replaces, shifted past the DNA vocabulary
(`action_reference_offset`, `DNA_VOCAB_SIZE` by default), as a `DEL` action already names what
it deletes. Both are `LeWMConfig` fields, so a saved model keeps its own coding, and the
collator and the evaluation code actions alike (`edits.code_edit_actions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ... import metric_keys as K
from ...configuration_lewm import LeWMConfig
from ...data.collators import DataCollatorForLeWM
from ...data.dna import DNA_END_ID, DNA_VOCAB_SIZE, build_dna_tokenizer
from ...data.edits import EditCorpusConfig, build_edit_corpus, code_edit_actions
from ...data.edits.corpus import load_source_records
from ...errors import LeWMConfigError
from ...evaluation.edits import EditEvaluationArguments, action_coding, evaluate_edit_model
from ...evaluation.variant_effect import VariantEffectArguments, evaluate_variant_effect
from ...fields import PositionOrigin
from ...modeling_actions import ActionInputs
from ...trainer.lewm_config import LeWMTrainingArguments
from ..arguments import DNACorpusCacheArguments, dna_corpus_config
from . import WorldModelData

# `LeWMConfig` defaults of an edit model (a recipe may set them otherwise); `action_vocab_size`
# defaults to the DNA vocabulary, twice over when SUB actions carry the replaced bases.
EDIT_MODEL_DEFAULTS = {
    "num_action_ops": 3,
    "pooling": "centered",
    "action_position_origin": "locus",
    "action_reference_offset": DNA_VOCAB_SIZE,
}


@dataclass
class EditActionCollator:
    """`DataCollatorForLeWM` on edit rows, with the actions coded as the model reads them
    (`edits.code_edit_actions`; action `k` edits state `k`, whose locus is `locus[:, k]`).

    Args:
        collator (`DataCollatorForLeWM`): Collates the edit rows.
        position_origin (`str`, defaults to `"window"`): `LeWMConfig.action_position_origin`.
        reference_offset (`int`, *optional*): `LeWMConfig.action_reference_offset`.
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


@dataclass
class EditArguments:
    """The edit domain's arguments.

    Args:
        data (`EditCorpusConfig`): The edit corpus (its seed is the run's).
        cache (`DNACorpusCacheArguments`): Where corpora are cached.
        evaluation (`EditEvaluationArguments`): SNV recovery and edit discrimination.
        variant (`VariantEffectArguments`): The variant-effect benchmark (surprise).
    """

    data: EditCorpusConfig
    cache: DNACorpusCacheArguments
    evaluation: EditEvaluationArguments
    variant: VariantEffectArguments


class EditDomain:
    """DNA edit trajectories (see the module docstring)."""

    name = "edit_world_model"
    description = "edit corpus"
    targets: ClassVar[dict[str, type]] = {
        "data": EditCorpusConfig,
        "cache": DNACorpusCacheArguments,
        "evaluation": EditEvaluationArguments,
        "variant": VariantEffectArguments,
    }
    # `seed` is the run's (the trainer's); the corpus seed is set from it.
    owners: ClassVar[dict[str, str]] = {"seed": "training"}
    help_defaults: ClassVar[dict[str, Any]] = {
        **EDIT_MODEL_DEFAULTS,
        "action_vocab_size": 2 * DNA_VOCAB_SIZE,
    }

    def parse(
        self, parts: dict[str, dict[str, Any]], training: LeWMTrainingArguments
    ) -> EditArguments:
        return EditArguments(
            data=dna_corpus_config(EditCorpusConfig, parts["data"], training),
            cache=DNACorpusCacheArguments(**parts["cache"]),
            evaluation=EditEvaluationArguments(**parts["evaluation"]),
            variant=VariantEffectArguments(**parts["variant"]),
        )

    def config_defaults(
        self, args: EditArguments, config: dict[str, Any], data: WorldModelData | None
    ) -> dict[str, Any]:
        offset = config.get("action_reference_offset", DNA_VOCAB_SIZE)
        vocab = DNA_VOCAB_SIZE if offset is None else offset + DNA_VOCAB_SIZE
        return {**EDIT_MODEL_DEFAULTS, "action_vocab_size": vocab}

    def fresh_vocab_size(self, data: WorldModelData) -> int:
        return DNA_VOCAB_SIZE

    def check_config(
        self, config: LeWMConfig, args: EditArguments, data: WorldModelData | None
    ) -> None:
        corpus = args.data
        if corpus.max_actions > config.history_length:
            raise LeWMConfigError(
                "max_actions",
                corpus.max_actions,
                f"must be <= history_length={config.history_length}",
            )
        check_edit_coding(config, corpus.window_length)

    def build_data(self, args: EditArguments) -> WorldModelData:
        corpus = build_edit_corpus(args.data, args.cache.corpus_cache_dir)
        return WorldModelData(
            train=corpus["train"],
            validation=corpus["validation"],
            summary={K.TRAIN_ROWS: len(corpus["train"]), K.EVAL_ROWS: len(corpus["validation"])},
        )

    def trainer_kwargs(
        self, model: Any, args: EditArguments, data: WorldModelData
    ) -> dict[str, Any]:
        return edit_trainer_kwargs(model, args.data.max_edit_len)

    def before_evaluation(
        self, model: Any, args: EditArguments, data: WorldModelData
    ) -> dict[str, Any]:
        return self.evaluate(model, args, data) if args.evaluation.run_evaluation else {}

    def evaluate(self, model: Any, args: EditArguments, data: WorldModelData) -> dict[str, Any]:
        held_out = data.validation
        rows = [held_out[i] for i in range(min(len(held_out), args.evaluation.eval_items))]
        radius = args.data.cluster_radius or model.config.pool_radius
        out = evaluate_edit_model(model, rows, args.data.sampler(), radius, args.evaluation)
        if args.variant.run_variant_effect:
            records, _ = load_source_records(args.data)
            corpus = args.data
            out.update(
                evaluate_variant_effect(
                    records,
                    corpus.holdout_fraction,
                    corpus.window_length,
                    args.variant,
                    world_model=model,
                )
            )
        return out


def edit_trainer_kwargs(model: Any, max_edit_len: int) -> dict[str, Any]:
    """The trainer arguments of edit rows: `EditActionCollator` with the model's own action
    coding (`action_coding`), and the DNA tokenizer saved beside the model.

    Args:
        model: The world model (its `LeWMConfig` gives the coding).
        max_edit_len (`int`): Longest edit accepted.

    Returns:
        `dict[str, Any]`: `data_collator` and `processing_class`.
    """
    collator = DataCollatorForLeWM(edit_end_token=DNA_END_ID, max_edit_len=max_edit_len)
    return {
        "data_collator": EditActionCollator(collator, *action_coding(model)),
        "processing_class": build_dna_tokenizer(),
    }


def check_edit_coding(config: LeWMConfig, window_length: int) -> None:
    """Raise `LeWMConfigError` when `config` cannot code edits of windows of `window_length`
    tokens (pooling and position origin, position range, reference offset, action vocabulary).

    Args:
        config (`LeWMConfig`): The model's configuration.
        window_length (`int`): Tokens per state.
    """
    origin = config.action_position_origin
    relative = origin == "locus"
    if relative and config.pooling != "centered":
        raise LeWMConfigError(
            "action_position_origin",
            origin,
            f"needs pooling: centered (got {config.pooling}); use window",
        )
    # Window positions lie in [0, L]; locus-relative ones in [1, 2L].
    top = 2 * window_length if relative else window_length
    if config.max_action_position <= top:
        raise LeWMConfigError(
            "max_action_position",
            config.max_action_position,
            f"must exceed {top} (window_length={window_length}, action_position_origin={origin})",
        )
    offset = config.action_reference_offset
    if offset is not None and offset < DNA_VOCAB_SIZE:
        raise LeWMConfigError(
            "action_reference_offset",
            offset,
            f"must be >= {DNA_VOCAB_SIZE} (the DNA vocabulary) so that replaced bases are "
            "told apart from written ones, or null",
        )
    vocab = DNA_VOCAB_SIZE if offset is None else offset + DNA_VOCAB_SIZE
    if config.num_action_ops < 3 or config.action_vocab_size < vocab:
        raise LeWMConfigError(
            "num_action_ops",
            (config.num_action_ops, config.action_vocab_size),
            f"edits need num_action_ops >= 3 and action_vocab_size >= {vocab} "
            f"(action_reference_offset={offset})",
        )


EDITS = EditDomain()

__all__ = [
    "EDITS",
    "EDIT_MODEL_DEFAULTS",
    "EditActionCollator",
    "EditArguments",
    "EditDomain",
    "check_edit_coding",
    "edit_trainer_kwargs",
]
