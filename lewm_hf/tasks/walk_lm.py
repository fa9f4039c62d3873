"""Task `lm`: the encoder phase, a causal LM on random walks stopped by the compliance gate, or
on any tokenized corpus (`dataset_name`), stopped early on `eval_loss`.

The rows come from the walk corpus (the corpus keys; the gate checks generated walks against
its graph) or, with `dataset_name`, from a dataset on the Hub or on disk (`LMDatasetArguments`,
`lewm_hf.data.hub_datasets`): there is no graph then, so a `gate_*` or corpus key is an error,
and `early_stopping_patience` is the way to stop early.

Reads top to bottom: arguments -> data -> model -> trainer -> train -> save -> report -> publish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    EarlyStoppingCallback,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .. import metric_keys as K
from ..checkpoints import check_checkpoint_fits, check_model_dir
from ..data.collators import DataCollatorForWalkLM
from ..data.hub_datasets import (
    INPUT_IDS,
    check_token_range,
    lm_rows,
    load_dataset_splits,
    select_split,
)
from ..data.walks import build_walk_corpus, load_walk_metadata
from ..determinism import prepare_run
from ..errors import LeWMConfigError
from ..hub import publish
from ..reporting import console
from ..trainer.lewm_config import WalkLMTrainingArguments
from ..trainer.lewm_trainer import CausalLMTrainer, WalkLMTrainer
from .arguments import LMDatasetArguments, WalkCorpusArguments, WalkLMModelArguments
from .base import PhaseContext, build_training_arguments

# Recipe targets: each key belongs to exactly one of them.
TARGETS = {
    "data": WalkCorpusArguments,
    "dataset": LMDatasetArguments,
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
    dataset: LMDatasetArguments = field(default_factory=LMDatasetArguments)


def parse(parts: dict[str, dict[str, Any]], output_dir: Path, source: str) -> WalkLMTaskArguments:
    """Build (and so validate) the phase's arguments from the recipe keys each target owns."""
    model = WalkLMModelArguments(**parts["model"])
    check_lm_start(model, parts["model"])
    dataset = LMDatasetArguments(**parts.get("dataset", {}))
    check_lm_source(dataset, parts)
    return WalkLMTaskArguments(
        data=WalkCorpusArguments(**parts["data"]),
        model=model,
        training=build_training_arguments(
            WalkLMTrainingArguments, parts["training"], output_dir, source
        ),
        dataset=dataset,
    )


def check_lm_source(dataset: LMDatasetArguments, parts: dict[str, dict[str, Any]]) -> None:
    """One source of LM rows: the walk corpus (with its gate) or `dataset_name`, not a mix.

    Raises:
        `LeWMConfigError`: for a dataset key without `dataset_name`, and beside `dataset_name`
            a walk-corpus key or a `gate_*` key (the gate checks walks on the corpus's graph,
            which a dataset does not have: use `early_stopping_patience`).
    """
    if dataset.dataset_name is None:
        for key, value in parts.get("dataset", {}).items():
            if key != "dataset_name":
                raise LeWMConfigError(
                    key, value, "describes a dataset source: set dataset_name as well"
                )
        return
    for key, value in parts["data"].items():
        raise LeWMConfigError(
            key,
            value,
            f"is a walk-corpus key, and the rows come from dataset_name={dataset.dataset_name}: "
            "remove it",
        )
    for key, value in parts["training"].items():
        if key.startswith("gate_"):
            raise LeWMConfigError(
                key,
                value,
                "the compliance gate checks generated walks against a graph, and a dataset "
                f"source (dataset_name={dataset.dataset_name}) has none: remove it (use "
                "early_stopping_patience to stop on eval_loss)",
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
    if args.dataset.dataset_name is not None:
        return run_dataset_lm(args, context)
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
        callbacks=early_stopping_callbacks(training_args),
    )
    trainer = context.prepare_trainer(trainer)

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
        "final_train_loss": losses[-1] if losses else None,
        "global_step": trainer.state.global_step,
        "wall_time_s": time.time() - start,
    }


def early_stopping_callbacks(args: WalkLMTrainingArguments) -> list[EarlyStoppingCallback]:
    """transformers' `EarlyStoppingCallback` when `early_stopping_patience` is set, else none."""
    if args.early_stopping_patience is None:
        return []
    return [
        EarlyStoppingCallback(
            early_stopping_patience=args.early_stopping_patience,
            early_stopping_threshold=args.early_stopping_threshold,
        )
    ]


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """A tokenizer saved on disk, loaded without the network.

    Raises:
        `LeWMConfigError`: naming `tokenizer_name` when it cannot be loaded.
    """
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as err:
        raise LeWMConfigError(
            "tokenizer_name", name, f"a tokenizer saved on disk (loaded offline): {err}"
        ) from err


def build_dataset_rows(
    args: LMDatasetArguments,
) -> tuple[DatasetDict, int, PreTrainedTokenizerBase | None]:
    """The LM rows of a dataset source: `train` (and `validation` from the test split), the
    vocabulary they need, and the tokenizer of a text column (else None).

    Returns:
        `tuple[DatasetDict, int, PreTrainedTokenizerBase | None]`: The rows (`input_ids`), the
        vocabulary size (`vocab_size`, else the tokenizer's length, else the largest id + 1)
        and the tokenizer.

    Raises:
        `LeWMConfigError`: for a dataset that does not load, a missing or empty split, a
            missing column, ragged rows without `max_length`, or a token id outside the
            vocabulary (naming the split, row and column).
    """
    splits = load_dataset_splits(args.dataset_name, args.dataset_config, args.data_files)
    tokenizer = load_tokenizer(args.tokenizer_name) if args.tokenizer_name else None
    wanted = {"train": (args.dataset_train_split, "dataset_train_split")}
    if args.dataset_test_split is not None:
        wanted["validation"] = (args.dataset_test_split, "dataset_test_split")
    rows = {}
    for role, (split, key) in wanted.items():
        dataset = select_split(splits, split, key)
        rows[role] = lm_rows(
            dataset, split, args.dataset_text_field, tokenizer, max_length=args.max_length
        )
    if args.vocab_size is not None:
        vocab, where = args.vocab_size, "vocab_size"
    elif tokenizer is not None:
        vocab, where = len(tokenizer), f"the tokenizer {args.tokenizer_name}"
    else:
        vocab = 1 + max(max(row) for split_rows in rows.values() for row in split_rows)
        where = "the largest id + 1"
    for role, (split, _) in wanted.items():
        check_token_range(rows[role], vocab, split, where)
    corpus = DatasetDict(
        {role: Dataset.from_dict({INPUT_IDS: split_rows}) for role, split_rows in rows.items()}
    )
    return corpus, vocab, tokenizer


def run_dataset_lm(args: WalkLMTaskArguments, context: PhaseContext) -> dict[str, Any]:
    """Train the encoder-phase LM on a dataset source (`dataset_name`): no gate, early stopping
    on `eval_loss` with `early_stopping_patience`.

    Writes the model (and the tokenizer of a text column), `result.json` and `curves.png` in
    the phase's output dir.

    Returns:
        `dict[str, Any]`: The phase summary (`final_train_loss`, `final_eval_loss`,
        `stopped_early`, `model_path`, ...).

    Raises:
        `LeWMConfigError`: as `build_dataset_rows`, and for a `model_name_or_path` whose
            vocabulary does not cover the token ids.
    """
    start = time.time()
    training_args = args.training
    prepare_run(training_args, context.recipe)

    # Data
    with training_args.main_process_first(desc="lm dataset"):
        corpus, vocab, tokenizer = build_dataset_rows(args.dataset)
    row_length = len(corpus["train"][0][INPUT_IDS])
    has_eval = "validation" in corpus
    if not has_eval and _plain_strategy(training_args.eval_strategy) != "no":
        raise LeWMConfigError(
            "eval_strategy",
            _plain_strategy(training_args.eval_strategy),
            "evaluates on dataset_test_split, which is null: set eval_strategy: 'no' or name "
            "a test split",
        )

    # Model
    model = build_walk_lm(args.model, vocab, max_positions=row_length)
    if model.config.vocab_size < vocab:
        raise LeWMConfigError(
            "model_name_or_path",
            args.model.model_name_or_path,
            f"its vocabulary ({model.config.vocab_size}) does not cover the dataset's token "
            f"ids (up to {vocab - 1})",
        )
    if context.resume:
        check_checkpoint_fits(context.resume, model, "resume_from_checkpoint")

    # Trainer
    callbacks = early_stopping_callbacks(training_args)
    trainer = CausalLMTrainer(
        model=model,
        args=training_args,
        data_collator=DataCollatorForWalkLM(),
        train_dataset=corpus["train"],
        eval_dataset=corpus["validation"] if has_eval else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )

    # Train
    trainer.train(resume_from_checkpoint=context.resume)

    # Save
    trainer.save_model()

    # Evaluate: the last evaluation when it ran on the final weights, else one more
    eval_loss = None
    if has_eval:
        evals = [e for e in trainer.state.log_history if K.EVAL_LOSS in e]
        if evals and evals[-1]["step"] == trainer.state.global_step:
            eval_loss = evals[-1][K.EVAL_LOSS]
        else:
            eval_loss = trainer.evaluate()[K.EVAL_LOSS]
    stopped = bool(callbacks) and (
        callbacks[0].early_stopping_patience_counter >= callbacks[0].early_stopping_patience
    )

    # Report
    extra = {
        "final_eval_loss": eval_loss,
        "stopped_early": stopped,
        "best_metric": trainer.state.best_metric,
        "vocab_size": vocab,
        "row_length": row_length,
    }
    result = trainer.build_result(context.name, **extra)
    trainer.write_result(result)

    # Publish: the model card, and the Hub upload with `push_to_hub`
    publish(trainer)
    losses = result["curves"][K.TRAIN_LOSS]["value"]
    out_dir = Path(training_args.output_dir)
    return {
        "task": "lm",
        "output_dir": str(out_dir),
        "model_path": str(out_dir),
        "dataset_name": args.dataset.dataset_name,
        "final_train_loss": losses[-1] if losses else None,
        **extra,
        K.TRAIN_WINDOWS: len(corpus["train"]),
        K.EVAL_WINDOWS: len(corpus["validation"]) if has_eval else 0,
        "global_step": trainer.state.global_step,
        "wall_time_s": time.time() - start,
    }


def _plain_strategy(value: Any) -> str:
    return getattr(value, "value", value)
