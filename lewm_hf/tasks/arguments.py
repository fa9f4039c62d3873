"""Argument classes that tasks share or that are not a trainer's or a model config's own.

Each recipe key belongs to exactly one class among a task's targets (`lewm_hf.recipe.key_owners`
checks it): corpus keys here, clip keys in `MoveTrajectoryConfig`, model keys in `LeWMConfig` or
the task's model arguments, trainer keys in the training arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..data.edits import DNASourceConfig
from ..data.walks import WalkCorpusConfig
from ..errors import LeWMConfigError
from ..fields import option, validate_fields


@dataclass
class WalkCorpusArguments:
    """Which walk corpus a task uses.

    Args:
        corpus_preset (`str`, defaults to `"small"`): A `WalkCorpusConfig` preset (`small`, `anchor`).
        corpus (`dict`, defaults to `{}`): `WalkCorpusConfig` field overrides.
        corpus_cache_dir (`str`, *optional*): Corpus cache root (default `$LEWM_HF_CACHE` or
            `~/.cache/lewm_hf/corpora`).
    """

    corpus_preset: str = option("small", help="WalkCorpusConfig preset: small or anchor.")
    corpus: dict = option(default_factory=dict, help="WalkCorpusConfig field overrides.")
    corpus_cache_dir: str | None = option(None, help="Corpus cache root.")

    def __post_init__(self) -> None:
        validate_fields(self)
        self.corpus_config()  # a bad preset or corpus field fails when the recipe is parsed

    def corpus_config(self) -> WalkCorpusConfig:
        """The `WalkCorpusConfig` these arguments describe."""
        valid = {f.name for f in dataclasses.fields(WalkCorpusConfig)}
        for key, value in self.corpus.items():
            if key not in valid:
                raise LeWMConfigError(f"corpus.{key}", value, "unknown corpus field")
        return WalkCorpusConfig.preset(self.corpus_preset, **self.corpus)


@dataclass
class DNACorpusCacheArguments:
    """Where DNA corpora are cached (the corpus itself is `DNASourceConfig`'s or
    `EditCorpusConfig`'s keys).

    Args:
        corpus_cache_dir (`str`, *optional*): Corpus cache root (default `$LEWM_HF_CACHE` or
            `~/.cache/lewm_hf/corpora`).
    """

    corpus_cache_dir: str | None = option(None, help="Corpus cache root.")

    def __post_init__(self) -> None:
        validate_fields(self)


def dna_corpus_config(
    cls: type[DNASourceConfig], data: dict[str, Any], training: Any
) -> DNASourceConfig:
    """A phase's DNA corpus config (`DNASourceConfig` or `EditCorpusConfig`), with the run's seed
    (`training.seed`) as the corpus seed."""
    return cls(**{**data, "seed": training.seed})


@dataclass
class WalkLMModelArguments:
    """The encoder-phase model: any `transformers` causal LM, built from a config or loaded.

    Args:
        model_name_or_path (`str`, *optional*): A local checkpoint to start from instead.
        model_type (`str`, defaults to `"llama"`): Architecture (`AutoConfig.for_model`).
        hidden_size (`int`, defaults to 128), num_hidden_layers (`int`, defaults to 4),
        num_attention_heads (`int`, defaults to 4), intermediate_size (`int`, defaults to 512):
            Size of the default CPU-sized model.
        model_config_overrides (`dict`, defaults to `{}`): Any other config fields.
    """

    model_name_or_path: str | None = option(None, help="Local checkpoint to start from.")
    model_type: str = option("llama", help="transformers architecture (AutoConfig.for_model).")
    hidden_size: int = option(128, help="Hidden size.", low=1)
    num_hidden_layers: int = option(4, help="Layers.", low=1)
    num_attention_heads: int = option(4, help="Attention heads.", low=1)
    intermediate_size: int = option(512, help="MLP width.", low=1)
    model_config_overrides: dict = option(default_factory=dict, help="Other config fields.")

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass
class LMDatasetArguments:
    """Where the encoder phase's LM rows come from when they are not the walk corpus.

    With `dataset_name` the `lm` task trains its causal LM on any tokenized corpus
    (`lewm_hf.data.hub_datasets`): rows of token ids in an `input_ids` column, or a text column
    (`dataset_text_field`) tokenized by a local tokenizer (`tokenizer_name`). The compliance
    gate needs a graph, so with a dataset there is none (a `gate_*` key is an error);
    `early_stopping_patience` stops on `eval_loss` instead.

    Args:
        dataset_name (`str`, *optional*): A Hub id, a `save_to_disk` folder, a data folder, a
            data file or glob (`.parquet`, `.jsonl`, `.json`, `.arrow`, `.csv`), or a builder
            name (`parquet`, `json`, ...) with `data_files`. None: the walk corpus.
        dataset_config (`str`, *optional*): The dataset's configuration.
        dataset_train_split (`str`, defaults to `"train"`): The training split.
        dataset_test_split (`str`, *optional*, defaults to `"test"`): The evaluation split
            (null: no evaluation).
        data_files (`str`, `list[str]` or `dict`, *optional*): `load_dataset`'s data files.
        dataset_text_field (`str`, *optional*): A text column to tokenize (with
            `tokenizer_name`) instead of `input_ids`.
        tokenizer_name (`str`, *optional*): A tokenizer saved on disk (loaded offline, saved
            beside the model).
        max_length (`int`, *optional*): Rows of several lengths are packed into rows of this
            many tokens (needed then); longer rows of one length are cut to it.
        vocab_size (`int`, *optional*): The new LM's vocabulary (default: the tokenizer's
            length, else the largest token id + 1); every token id must lie below it.
    """

    dataset_name: str | None = option(None, help="Hub id, save_to_disk folder or data files.")
    dataset_config: str | None = option(None, help="The dataset's configuration.")
    dataset_train_split: str = option("train", help="Training split.")
    dataset_test_split: str | None = option("test", help="Evaluation split (null: none).")
    data_files: str | list[str] | dict | None = option(None, help="load_dataset data_files.")
    dataset_text_field: str | None = option(None, help="Text column (with tokenizer_name).")
    tokenizer_name: str | None = option(None, help="Local tokenizer for dataset_text_field.")
    max_length: int | None = option(None, help="Pack rows into rows of this length.", low=2)
    vocab_size: int | None = option(None, help="Vocabulary of a new LM.", low=1)

    def __post_init__(self) -> None:
        validate_fields(self)
        if (self.dataset_text_field is None) != (self.tokenizer_name is None):
            given, missing = (
                ("dataset_text_field", "tokenizer_name")
                if self.tokenizer_name is None
                else ("tokenizer_name", "dataset_text_field")
            )
            raise LeWMConfigError(
                given, getattr(self, given), f"needs {missing} too (text is tokenized by it)"
            )


@dataclass
class WorldModelArguments:
    """Where the world model's state encoder comes from; the other model keys are `LeWMConfig`'s.

    Args:
        encoder_path (`str`, *optional*, defaults to `"previous"`): `"previous"` (the previous
            phase's model: its gate checkpoint when the gate passed), a local path, or null to
            build the encoder from `LeWMConfig.encoder_config` (a tiny Llama by default).
        model_name_or_path (`str`, *optional*): A whole saved `LeWMModel` to start from instead
            (a local folder, a Hub id, or `"previous"`: the previous phase's world model), e.g.
            to adapt it with LoRA; `encoder_path` must then be null (the saved model has its
            encoder). Its architecture comes from its `config.json`: a recipe may set only the
            loss keys, `dropout` and `encoder_mode` differently; any other `LeWMConfig` key must
            equal the saved value (else an error names it).
        grow_action_vocab (`bool`, defaults to `True`): With `model_name_or_path`, when the
            data has more actions than the saved model's `action_vocab_size` (a graph of larger
            out-degree), give its action embedding rows for the new ones
            (`LeWMModel.grow_action_vocab`): the new rows train in full, the saved rows are kept
            (under LoRA bitwise, as every base weight). False: such data is an error. Only the
            domains whose actions are ids counted by the data (graph moves) can grow; the edit
            domain's action tokens are the DNA tokenizer's, fixed. Setting it without
            `model_name_or_path` is an error (a new model is sized for its data).
    """

    encoder_path: str | None = option(
        "previous", help="previous, a local path, or null (with model_name_or_path: null)."
    )
    model_name_or_path: str | None = option(
        None, help="A saved LeWMModel to start from (local path, Hub id or previous)."
    )
    grow_action_vocab: bool = option(
        True,
        help="With model_name_or_path: add action-embedding rows for data with more actions.",
    )

    def __post_init__(self) -> None:
        validate_fields(self)


__all__ = [
    "DNACorpusCacheArguments",
    "LMDatasetArguments",
    "WalkCorpusArguments",
    "WalkLMModelArguments",
    "WorldModelArguments",
    "dna_corpus_config",
]
