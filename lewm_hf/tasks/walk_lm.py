"""Task `lm`: the encoder phase, a causal LM on random walks stopped by the compliance gate.

Reads top to bottom: arguments -> data -> model -> trainer -> train -> save -> report -> publish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .. import metric_keys as K
from ..checkpoints import check_checkpoint_fits, check_model_dir
from ..data.walks import build_walk_corpus, load_walk_metadata
from ..determinism import prepare_run
from ..errors import LeWMConfigError
from ..hub import publish
from ..reporting import console
from ..trainer.lewm_config import WalkLMTrainingArguments
from ..trainer.lewm_trainer import WalkLMTrainer
from .arguments import WalkCorpusArguments, WalkLMModelArguments
from .base import PhaseContext, build_training_arguments

# Recipe targets: each key belongs to exactly one of them.
TARGETS = {
    "data": WalkCorpusArguments,
    "model": WalkLMModelArguments,
    "training": WalkLMTrainingArguments,
}
OWNERS: dict[str, str] = {}


@dataclass
class WalkLMTaskArguments:
    """The parsed arguments of an `lm` phase."""

    data: WalkCorpusArguments
    model: WalkLMModelArguments
    training: WalkLMTrainingArguments


def parse(parts: dict[str, dict[str, Any]], output_dir: Path, source: str) -> WalkLMTaskArguments:
    """Build (and so validate) the phase's arguments from the recipe keys each target owns."""
    model = WalkLMModelArguments(**parts["model"])
    check_lm_start(model, parts["model"])
    return WalkLMTaskArguments(
        data=WalkCorpusArguments(**parts["data"]),
        model=model,
        training=build_training_arguments(
            WalkLMTrainingArguments, parts["training"], output_dir, source
        ),
    )


# Model keys that size a new LM: with `model_name_or_path` the checkpoint's config decides them,
# so a recipe may only repeat its values.
LM_ARCHITECTURE_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)


def check_lm_start(model_args: WalkLMModelArguments, explicit: dict[str, Any]) -> None:
    """With `model_name_or_path`, the recipe's model keys are applied or rejected, never dropped.

    The architecture keys (`LM_ARCHITECTURE_KEYS`) the recipe sets must equal the checkpoint's;
    `model_config_overrides` must name fields of its config (they are applied on load).

    Args:
        model_args (`WalkLMModelArguments`): The parsed model arguments.
        explicit (`dict[str, Any]`): The model keys the recipe sets.

    Raises:
        `LeWMConfigError`: for a missing or unreadable checkpoint, or a key it fixes otherwise.
    """
    if not model_args.model_name_or_path:
        return
    path = Path(model_args.model_name_or_path)
    if not (path / K.CONFIG_FILE).is_file():
        raise LeWMConfigError("model_name_or_path", str(path), "no config.json there")
    saved = check_model_dir(path, "model_name_or_path")  # missing, truncated or corrupt weights
    for key in LM_ARCHITECTURE_KEYS:
        if key in explicit and saved.get(key) != explicit[key]:
            raise LeWMConfigError(
                key, explicit[key], f"is fixed by model_name_or_path={path} ({saved.get(key)!r})"
            )
    for key, value in model_args.model_config_overrides.items():
        if key not in saved:
            raise LeWMConfigError(
                f"model_config_overrides.{key}",
                value,
                f"is not a field of the config of model_name_or_path={path}",
            )


def build_walk_lm(
    model_args: WalkLMModelArguments, vocab_size: int, max_positions: int
) -> PreTrainedModel:
    """Build the encoder-phase causal LM, or load `model_name_or_path` with the recipe's
    `model_config_overrides` applied (`check_lm_start` has checked the other keys).

    Args:
        model_args (`WalkLMModelArguments`): The model arguments.
        vocab_size (`int`): Vocabulary size (the graph's vertices, the DNA tokenizer's).
        max_positions (`int`): Longest context the model will see.

    Returns:
        `PreTrainedModel`: A causal LM.
    """
    if model_args.model_name_or_path:
        return AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path, **model_args.model_config_overrides
        )
    kwargs = {
        "vocab_size": vocab_size,
        "hidden_size": model_args.hidden_size,
        "num_hidden_layers": model_args.num_hidden_layers,
        "num_attention_heads": model_args.num_attention_heads,
        "intermediate_size": model_args.intermediate_size,
        "max_position_embeddings": max_positions,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        **model_args.model_config_overrides,
    }
    try:
        config = AutoConfig.for_model(model_args.model_type, **kwargs)
    except ValueError as err:
        raise LeWMConfigError("model_type", model_args.model_type, str(err)) from err
    return AutoModelForCausalLM.from_config(config)


def main(args: WalkLMTaskArguments, context: PhaseContext) -> dict[str, Any]:
    """Train a walk LM until the compliance gate passes (or the budget ends).

    Writes the final model, `result.json`, `curves.png` and (on a pass) `gate_checkpoint/` in
    the phase's output dir.

    Args:
        args (`WalkLMTaskArguments`): The parsed arguments.
        context (`PhaseContext`): Phase name and resume checkpoint.

    Returns:
        `dict[str, Any]`: The phase summary (`gate_passed`, compliance, losses, `model_path`).
    """
    start = time.time()
    training_args = args.training
    prepare_run(training_args, context.recipe)

    # Data
    corpus_config = args.data.corpus_config()
    with training_args.main_process_first(desc="walk corpus"):
        corpus = build_walk_corpus(corpus_config, args.data.corpus_cache_dir)
    meta = load_walk_metadata(corpus)
    window = corpus_config.context_window

    # Model: a checkpoint in which the gate already passed is not trained further.
    passed_state = WalkLMTrainer.gate_passed_in(context.resume) if context.resume else None
    if passed_state is not None:
        model = AutoModelForCausalLM.from_pretrained(context.resume)
    else:
        max_positions = max(2 * window + 2, corpus_config.row_length)
        model = build_walk_lm(args.model, meta.graph.num_vertices, max_positions=max_positions)
    if context.resume:
        check_checkpoint_fits(context.resume, model, "resume_from_checkpoint")

    # Trainer
    trainer = WalkLMTrainer(
        model=model,
        args=training_args,
        graph=meta.graph,
        jumpers=meta.jumpers,
        prompt_walks=np.asarray(corpus["validation_walks"]["walk"]),
        context_window=window,
        train_dataset=corpus["train"],
        eval_dataset=corpus["validation"],
    )

    # Train
    if passed_state is None:
        trainer.train(resume_from_checkpoint=context.resume)
    else:
        trainer.state = passed_state
        console(f"[resume] {context.name}: the gate passed in {context.resume}; not training on")

    # Save
    trainer.save_model()

    # Report
    result = trainer.build_result(context.name)
    trainer.write_result(result)

    # Publish: the model card, and the Hub upload with `push_to_hub`
    publish(trainer)
    out_dir = Path(training_args.output_dir)
    passed = result[K.GATE_PASSED]
    prefix = "" if passed else "final_"
    losses = result["curves"][K.TRAIN_LOSS]["value"]
    # Rule compliance under each decoding: the gate's is `rule_compliance`, the other one's is
    # prefixed with its name (`sampled_` or `greedy_`).
    by_decoding = {
        K.decoding_name(training_args.gate_decoding): result.get(prefix + K.RULE_COMPLIANCE)
    }
    if training_args.other_decoding is not None:
        other = K.decoding_name(training_args.other_decoding)
        by_decoding[other] = result.get(f"{prefix}{other}_{K.RULE_COMPLIANCE}")
    return {
        "task": "lm",
        "output_dir": str(out_dir),
        "model_path": str(out_dir / K.GATE_CHECKPOINT if passed else out_dir),
        K.GATE_PASSED: passed,
        "gate_step": result.get("gate_step"),
        "gate_decoding": training_args.gate_decoding,
        "failure_reason": result.get("failure_reason"),
        **{
            key: result.get(prefix + key)
            for key in (
                K.EDGE_COMPLIANCE,
                K.RULE_COMPLIANCE,
                K.RULE_CHECKS,
                K.DISTINCT_FRACTION,
            )
        },
        **{f"{name}_{K.RULE_COMPLIANCE}": value for name, value in by_decoding.items()},
        **{
            key: result.get(key)
            for key in (
                K.GATE_CONFIRMED,
                K.GATE_CONFIRMED_RULE_COMPLIANCE,
                K.GATE_CONFIRMED_RULE_CHECKS,
                K.GATE_CONFIRMED_DISTINCT_FRACTION,
            )
        },
        "final_train_loss": losses[-1] if losses else None,
        "global_step": trainer.state.global_step,
        "wall_time_s": time.time() - start,
    }
