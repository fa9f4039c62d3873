"""Task `dna_lm`: the DNA encoder phase, a next-base causal LM on genome windows.

Windows come from `EditCorpusConfig`'s genome and window keys (`genome`, `fasta_path` or the
synthetic genome; `window_length`, `window_stride`, `holdout_fraction`, `max_n_fraction`), split
by region (`dna.split_windows`: the last `holdout_fraction` of each record is validation). The
edit keys of that class are unused here, so that both DNA phases read one set of corpus keys.

Reads top to bottom: arguments -> data -> model -> trainer -> train -> save -> report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from transformers import TrainingArguments

from .. import metric_keys as K
from ..data.collators import DataCollatorForWalkLM
from ..data.dna import DNA_VOCAB_SIZE, build_dna_tokenizer, split_windows
from ..data.edits import EditCorpusConfig, load_source_records
from ..data.walks import derive_seed
from ..determinism import prepare_run
from ..fields import option, validate_fields
from ..trainer.lewm_trainer import CausalLMTrainer
from .arguments import WalkLMModelArguments
from .base import PhaseContext, build_training_arguments
from .walk_lm import build_walk_lm


@dataclass
class DNACorpusCacheArguments:
    """Where DNA corpora are cached (the corpus itself is `EditCorpusConfig`'s keys).

    Args:
        corpus_cache_dir (`str`, *optional*): Corpus cache root (default `$LEWM_HF_CACHE` or
            `~/.cache/lewm_hf/corpora`).
    """

    corpus_cache_dir: str | None = option(None, help="Corpus cache root.")

    def __post_init__(self) -> None:
        validate_fields(self)


# Recipe targets: each key belongs to exactly one of them.
TARGETS = {
    "data": EditCorpusConfig,
    "cache": DNACorpusCacheArguments,
    "model": WalkLMModelArguments,
    "training": TrainingArguments,
}
# `seed` is the run's (the trainer's); the corpus seed is set from it.
OWNERS = {"seed": "training"}


@dataclass
class DNALMTaskArguments:
    """The parsed arguments of a `dna_lm` phase."""

    data: EditCorpusConfig
    cache: DNACorpusCacheArguments
    model: WalkLMModelArguments
    training: TrainingArguments


def corpus_config(data: dict[str, Any], training: Any) -> EditCorpusConfig:
    """The corpus keys, with the run's seed as the corpus seed."""
    return EditCorpusConfig(**{**data, "seed": training.seed})


def parse(parts: dict[str, dict[str, Any]], output_dir: Path, source: str) -> DNALMTaskArguments:
    """Build (and so validate) the phase's arguments from the recipe keys each target owns."""
    training = build_training_arguments(TrainingArguments, parts["training"], output_dir, source)
    return DNALMTaskArguments(
        data=corpus_config(parts["data"], training),
        cache=DNACorpusCacheArguments(**parts["cache"]),
        model=WalkLMModelArguments(**parts["model"]),
        training=training,
    )


def build_dna_windows(config: EditCorpusConfig) -> DatasetDict:
    """`train` and `validation` LM rows (`input_ids`, `window_length` bases), split by region."""
    records, source = load_source_records(config)
    windows = split_windows(
        records,
        config.window_length,
        config.window_stride,
        config.holdout_fraction,
        seed=derive_seed(config.seed, "phases"),
        max_n_fraction=config.max_n_fraction,
        source=source,
    )
    return DatasetDict(
        {
            split: Dataset.from_dict({"input_ids": win.ids.astype("int64").tolist()})
            for split, win in windows.items()
        }
    )


def main(args: DNALMTaskArguments, context: PhaseContext) -> dict[str, Any]:
    """Train a next-base LM on genome windows; evaluate on the held-out regions.

    Writes the model and the DNA tokenizer (`processing_class`), `result.json` and `curves.png`
    in the phase's output dir.

    Returns:
        `dict[str, Any]`: The phase summary (`final_train_loss`, `final_eval_loss`,
        `model_path`, ...).
    """
    start = time.time()
    training_args = args.training
    prepare_run(training_args, context.recipe)

    # Data
    with training_args.main_process_first(desc="dna windows"):
        windows = build_dna_windows(args.data)

    # Model (vocabulary = the DNA tokenizer's)
    model = build_walk_lm(args.model, DNA_VOCAB_SIZE, max_positions=args.data.window_length)

    # Trainer
    trainer = CausalLMTrainer(
        model=model,
        args=training_args,
        data_collator=DataCollatorForWalkLM(),
        train_dataset=windows["train"],
        eval_dataset=windows["validation"],
        processing_class=build_dna_tokenizer(),
    )

    # Train
    trainer.train(resume_from_checkpoint=context.resume)

    # Save
    trainer.save_model()

    # Evaluate
    evals = [e for e in trainer.state.log_history if K.EVAL_LOSS in e]
    if evals and evals[-1]["step"] == trainer.state.global_step:
        eval_loss = evals[-1][K.EVAL_LOSS]
    else:
        eval_loss = trainer.evaluate()[K.EVAL_LOSS]

    # Report
    result = trainer.build_result(context.name, final_eval_loss=eval_loss)
    trainer.write_result(result)
    losses = result["curves"][K.TRAIN_LOSS]["value"]
    out_dir = Path(training_args.output_dir)
    return {
        "task": "dna_lm",
        "output_dir": str(out_dir),
        "model_path": str(out_dir),
        "final_train_loss": losses[-1] if losses else None,
        "final_eval_loss": eval_loss,
        K.TRAIN_WINDOWS: len(windows["train"]),
        K.EVAL_WINDOWS: len(windows["validation"]),
        "global_step": trainer.state.global_step,
        "wall_time_s": time.time() - start,
    }
