"""Task `dna_lm`: the DNA encoder phase, a next-base causal LM on genome windows.

Windows come from the `DNASourceConfig` keys (`genome`, `fasta_path` or the synthetic genome;
`window_length`, `window_stride`, `holdout_fraction`, `max_n_fraction`), split by region
(`dna.split_windows`: the last `holdout_fraction` of each record is validation). The edit
world model reads the same keys (its `EditCorpusConfig` extends them), so a two-phase recipe
sets them once at the top; the edit keys reach only the edit phase, and an edit key set on a
`dna_lm` phase itself is an unknown key there.

Reads top to bottom: arguments -> data -> model -> trainer -> train -> save -> evaluate ->
report -> publish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import DatasetDict

from .. import metric_keys as K
from ..checkpoints import check_checkpoint_fits
from ..data.collators import DataCollatorForWalkLM
from ..data.dna import DNA_VOCAB_SIZE, build_dna_tokenizer
from ..data.edits.corpus import DNASourceConfig, build_window_corpus, load_source_records
from ..determinism import prepare_run
from ..evaluation.variant_effect import VariantEffectArguments, evaluate_variant_effect
from ..hub import publish
from ..trainer.lewm_config import CausalLMTrainingArguments
from ..trainer.lewm_trainer import CausalLMTrainer
from .arguments import DNACorpusCacheArguments, WalkLMModelArguments, dna_corpus_config
from .base import PhaseContext, build_training_arguments
from .walk_lm import build_walk_lm, check_lm_start

# Recipe targets: each key belongs to exactly one of them.
TARGETS = {
    "data": DNASourceConfig,
    "cache": DNACorpusCacheArguments,
    "model": WalkLMModelArguments,
    "training": CausalLMTrainingArguments,
    "variant": VariantEffectArguments,
}
# `seed` is the run's (the trainer's); the corpus seed is set from it.
OWNERS = {"seed": "training"}


@dataclass
class DNALMTaskArguments:
    """The parsed arguments of a `dna_lm` phase."""

    data: DNASourceConfig
    cache: DNACorpusCacheArguments
    model: WalkLMModelArguments
    training: CausalLMTrainingArguments
    variant: VariantEffectArguments


def parse(parts: dict[str, dict[str, Any]], output_dir: Path, source: str) -> DNALMTaskArguments:
    """Build (and so validate) the phase's arguments from the recipe keys each target owns."""
    training = build_training_arguments(
        CausalLMTrainingArguments, parts["training"], output_dir, source
    )
    model = WalkLMModelArguments(**parts["model"])
    check_lm_start(model, parts["model"])
    return DNALMTaskArguments(
        data=dna_corpus_config(DNASourceConfig, parts["data"], training),
        cache=DNACorpusCacheArguments(**parts["cache"]),
        model=model,
        training=training,
        variant=VariantEffectArguments(**parts["variant"]),
    )


def build_dna_windows(config: DNASourceConfig, cache_dir: str | None = None) -> DatasetDict:
    """`train` and `validation` LM rows (`input_ids`, `window_length` bases), split by region:
    the window corpus (`build_window_corpus`), memory-mapped from the corpus cache."""
    return build_window_corpus(config, cache_dir)


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
        windows = build_dna_windows(args.data, args.cache.corpus_cache_dir)

    # Model (vocabulary = the DNA tokenizer's)
    model = build_walk_lm(args.model, DNA_VOCAB_SIZE, max_positions=args.data.window_length)
    if context.resume:
        check_checkpoint_fits(context.resume, model, "resume_from_checkpoint")

    # Trainer
    trainer = CausalLMTrainer(
        model=model,
        args=training_args,
        data_collator=DataCollatorForWalkLM(),
        train_dataset=windows["train"],
        eval_dataset=windows["validation"],
        processing_class=build_dna_tokenizer(),
    )
    trainer = context.prepare_trainer(trainer)

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
    # Nonsense vs synonymous SNVs of called genes in the held-out region (log-likelihood ratio)
    variant = {}
    if args.variant.run_variant_effect:
        lm = trainer.accelerator.unwrap_model(trainer.model)
        records, _ = load_source_records(args.data)
        data = args.data
        variant = evaluate_variant_effect(
            records, data.holdout_fraction, data.window_length, args.variant, lm=lm
        )

    # Report
    result = trainer.build_result(context.name, final_eval_loss=eval_loss, **variant)
    trainer.write_result(result)

    # Publish: the model card, and the Hub upload with `push_to_hub`
    publish(trainer)
    losses = result["curves"][K.TRAIN_LOSS]["value"]
    out_dir = Path(training_args.output_dir)
    return {
        "task": "dna_lm",
        "output_dir": str(out_dir),
        "model_path": str(out_dir),
        "final_train_loss": losses[-1] if losses else None,
        "final_eval_loss": eval_loss,
        **variant,
        K.TRAIN_WINDOWS: len(windows["train"]),
        K.EVAL_WINDOWS: len(windows["validation"]),
        "global_step": trainer.state.global_step,
        "wall_time_s": time.time() - start,
    }
