"""The trajectory-dataset domain (task `trajectory_world_model`): any dataset in the format.

The rows come from a trajectory dataset (`lewm_hf.data.trajectories`: a Hub id, a local
folder, a `save_to_disk` folder, or `data_files` of a packaged builder), named with TRL's keys
`dataset_name`, `dataset_config`, `dataset_train_split`, `dataset_test_split` and `data_files`.
Actions are discrete ids (one action token each, as graph moves are) or edits (coded, collated
and evaluated as the edit domain does, `lewm_hf.tasks.domains.edits`); the model's action
vocabulary defaults to the dataset's `num_actions`, its history length to the longest row, and
an encoder built from scratch to the dataset's `vocab_size` (an `encoder_path` checkpoint must
cover it). Rows longer than the history are cut into clips (`clip_stride`,
`lewm_hf.data.trajectory_clips.trajectory_clips`). The evaluation needs nothing but held-out clips
(`lewm_hf.evaluation.trajectories`).

This is a task of its own rather than `world_model` switched by `dataset_name`: the walk keys
(corpus, clips, planning) would do nothing with a dataset, and a task whose targets do not
declare them makes them unknown keys, reported before anything runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from typing import Any, ClassVar

import numpy as np
import pyarrow.compute as pc

from ... import metric_keys as K
from ...configuration_lewm import LeWMConfig
from ...data.collators import DataCollatorForLeWM
from ...data.dna import DNA_VOCAB_SIZE
from ...data.edits import EditCorpusConfig, EditSampler
from ...data.edits.ops import DEFAULT_MAX_EDIT_LEN
from ...data.environments import ENVIRONMENTS
from ...data.trajectories import (
    TrajectoryInfo,
    load_trajectory_dataset,
    real_steps,
    select_split,
    validate_trajectories,
)
from ...data.trajectory_clips import (
    ACTION_WISE,
    CLIP_OFFSET,
    CLIP_ROW,
    CLIP_SPLIT,
    STATE_WISE,
    TrajectoryClips,
    trajectory_clips,
)
from ...errors import LeWMConfigError
from ...evaluation.edits import EditEvaluationArguments, evaluate_edit_model
from ...evaluation.planning_env import EnvironmentEvaluationArguments, evaluate_in_environment
from ...evaluation.trajectories import TrajectoryEvalConfig, evaluate_trajectory_model
from ...fields import option, validate_fields
from ...modeling_actions import ActionInputs
from ...trainer.lewm_config import LeWMTrainingArguments
from . import WorldModelData
from .edits import EDITS, check_edit_coding, edit_trainer_kwargs
from .walks import MOVE_ACTION_FIXED


@dataclass
class TrajectoryDatasetArguments:
    """Where the trajectories come from (TRL's dataset keys).

    Args:
        dataset_name (`str`): A Hub dataset id (`owner/name`), a local folder (data files, or a
            `save_to_disk` folder), or a packaged builder (`parquet`, `json`, `arrow`)
            with `data_files`.
        dataset_config (`str`, *optional*): The dataset's config name.
        dataset_train_split (`str`, defaults to `"train"`): The training split.
        dataset_test_split (`str`, defaults to `"test"`): The held-out split (evaluation during
            and after training).
        data_files (`str`, `list` or `dict`, *optional*): `load_dataset`'s `data_files`.
        dataset_revision (`str`, *optional*): The Hub revision (a branch, tag or commit).
        clip_stride (`int`, *optional*): Rows longer than the model's `history_length` are cut
            into clips of `history_length` actions starting every `clip_stride` actions
            (`lewm_hf.data.trajectory_clips.trajectory_clips`); null: `history_length`, back-to-back
            clips, each transition a prediction target once per epoch.
    """

    dataset_name: str | None = option(
        None, help="Hub id, local folder, or parquet / json / arrow with data_files."
    )
    dataset_config: str | None = option(None, help="The dataset's config name.")
    dataset_train_split: str = option("train", help="The training split.")
    dataset_test_split: str = option("test", help="The held-out split.")
    data_files: str | list | dict | None = option(None, help="load_dataset's data_files.")
    dataset_revision: str | None = option(None, help="The Hub revision.")
    clip_stride: int | None = option(
        None, help="Actions between clip starts of long rows (null: history_length).", low=1
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        if not self.dataset_name:
            raise LeWMConfigError(
                "dataset_name",
                self.dataset_name,
                "is required: a Hub dataset id, a local folder, or parquet / json / arrow "
                "with data_files",
            )
        if self.dataset_train_split == self.dataset_test_split:
            raise LeWMConfigError(
                "dataset_test_split",
                self.dataset_test_split,
                "must differ from dataset_train_split (held-out rows are never trained on)",
            )


@dataclass
class TrajectoryEvaluationArguments:
    """The evaluation of a trajectory world model after training.

    Args:
        run_evaluation (`bool`, defaults to `True`): Evaluate after training.
        evaluation (`dict`, defaults to `{}`): `TrajectoryEvalConfig` field overrides.
    """

    run_evaluation: bool = option(True, help="Evaluate the world model after training.")
    evaluation: dict = option(
        default_factory=dict, help="TrajectoryEvalConfig overrides.", settings=TrajectoryEvalConfig
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        self.config()  # a bad nested field fails when the recipe is parsed

    def config(self) -> TrajectoryEvalConfig:
        """The settings (typed errors name the nested key)."""
        try:
            return TrajectoryEvalConfig(**self.evaluation)
        except TypeError as err:
            raise LeWMConfigError("evaluation", self.evaluation, f"unknown field: {err}") from err
        except LeWMConfigError as err:
            raise LeWMConfigError(
                f"evaluation.{err.field}", err.value, err.reason, element=err.element
            ) from err


@dataclass
class TrajectoryArguments:
    """The trajectory domain's arguments.

    Args:
        data (`TrajectoryDatasetArguments`): The dataset.
        evaluation (`TrajectoryEvaluationArguments`): The evaluation.
        environment (`EnvironmentEvaluationArguments`): The evaluation in the environment the
            dataset names, if any (`lewm_hf.evaluation.planning_env`).
    """

    data: TrajectoryDatasetArguments
    evaluation: TrajectoryEvaluationArguments
    environment: EnvironmentEvaluationArguments = dataclasses.field(
        default_factory=EnvironmentEvaluationArguments
    )


@dataclass
class TrajectoryDataInfo:
    """What the evaluation and the config checks need besides the rows.

    Args:
        info (`TrajectoryInfo`): The dataset's metadata.
        max_steps (`int`): The most real actions in a row (train and held-out).
        clips (`tuple[TrajectoryClips, ...]`, defaults to `()`): The train and held-out clips,
            once the model is known (`TrajectoryDomain.fit_data`).
        max_edit_len (`int`, defaults to 16): The longest edit accepted (edit actions: at
            least the dataset's longest).
    """

    info: TrajectoryInfo
    max_steps: int
    clips: tuple[TrajectoryClips, ...] = dataclass_field(default_factory=tuple)
    max_edit_len: int = DEFAULT_MAX_EDIT_LEN


@dataclass
class TrajectoryCollator:
    """`DataCollatorForLeWM` on trajectory rows, honouring `action_mask`, or on clips.

    A row's padded actions (mask 0) and their states are dropped first, then the collator pads
    the batch to its longest row. A batch whose rows all have the same number of real actions
    carries no mask, so it runs the model's unpadded path exactly as move clips do. Rows of a
    clip index (`clip_split`, `clip_row`, `clip_offset`: `TrajectoryClips.as_dataset`) are
    read from `clips[clip_split]` first.

    Args:
        collator (`DataCollatorForLeWM` or `EditActionCollator`): Collates the rows (edit rows:
            the edit domain's collator, which codes the edits as the model reads them).
        clips (`tuple[TrajectoryClips, ...]`, defaults to `()`): The clips of each split tag.
        discrete (`bool`, defaults to `True`): Discrete actions (an all-real batch then drops
            its mask); edit batches keep theirs, as the edit domain's do.
    """

    collator: Any
    clips: tuple[TrajectoryClips, ...] = ()
    discrete: bool = True

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if CLIP_ROW in features[0]:  # one read per split of the batch
            read: dict[int, dict[str, Any]] = {}
            for tag in {f[CLIP_SPLIT] for f in features}:
                at = [i for i, f in enumerate(features) if f[CLIP_SPLIT] == tag]
                rows = [features[i][CLIP_ROW] for i in at]
                offsets = [features[i][CLIP_OFFSET] for i in at]
                read.update(zip(at, self.clips[tag].read_at(rows, offsets), strict=True))
            features = [read[i] for i in range(len(features))]
        rows = []
        for f in features:
            mask = f.get("action_mask")
            k = len(f["actions" if self.discrete else "edit_ops"]) if mask is None else sum(mask)
            row = {n: f[n][: int(k) + 1] for n in STATE_WISE if n in f}
            rows.append({**row, **{n: f[n][: int(k)] for n in ACTION_WISE if n in f}})
        batch = self.collator(rows)
        actions = batch["actions"]
        if self.discrete and actions.mask is not None and bool(actions.mask.all()):
            batch["actions"] = ActionInputs(ids=actions["ids"])
        return batch


class TrajectoryDomain:
    """Any trajectory dataset with discrete actions (see the module docstring)."""

    name = "trajectory_world_model"
    description = "trajectory dataset"
    targets: ClassVar[dict[str, type]] = {
        "data": TrajectoryDatasetArguments,
        "evaluation": TrajectoryEvaluationArguments,
        "environment": EnvironmentEvaluationArguments,
    }
    owners: ClassVar[dict[str, str]] = {}
    help_defaults: ClassVar[dict[str, Any]] = {
        "action_vocab_size": "the dataset's num_actions",
        "history_length": "the dataset's longest row (K); longer rows are cut into clips",
        "vocab_size": "the dataset's vocab_size (a fresh encoder)",
    }

    def parse(
        self, parts: dict[str, dict[str, Any]], training: LeWMTrainingArguments
    ) -> TrajectoryArguments:
        return TrajectoryArguments(
            data=TrajectoryDatasetArguments(**parts["data"]),
            evaluation=TrajectoryEvaluationArguments(**parts["evaluation"]),
            environment=EnvironmentEvaluationArguments(**parts["environment"]),
        )

    def config_defaults(
        self, args: TrajectoryArguments, config: dict[str, Any], data: WorldModelData | None
    ) -> dict[str, Any]:
        if data is None:
            return {}
        if data.info.info.action_type == "edit":
            return {
                **EDITS.config_defaults(None, config, None),
                "history_length": data.info.max_steps,
            }
        return {
            "action_vocab_size": data.info.info.num_actions,
            "history_length": data.info.max_steps,
        }

    def fresh_vocab_size(self, data: WorldModelData) -> int:
        return data.info.info.vocab_size

    def check_config(
        self, config: LeWMConfig, args: TrajectoryArguments, data: WorldModelData | None
    ) -> None:
        if data is None:  # the action type is the dataset's
            return
        info, name = data.info.info, args.data.dataset_name
        if info.action_type == "edit":
            check_edit_coding(config, info.window_length)
        else:
            for key, value in MOVE_ACTION_FIXED.items():
                if getattr(config, key) != value:
                    raise LeWMConfigError(
                        key,
                        getattr(config, key),
                        f"{name} holds discrete actions, one token each: {key} must be "
                        f"{value!r} (it codes edit actions)",
                    )
            if config.pooling == "centered":
                raise LeWMConfigError(
                    "pooling", config.pooling, "discrete-action states have no locus"
                )
            if config.action_vocab_size < info.num_actions:
                raise LeWMConfigError(
                    "action_vocab_size",
                    config.action_vocab_size,
                    f"must be >= the {info.num_actions} actions of {name}",
                )
        if config.vocab_size is not None and config.vocab_size < info.vocab_size:
            raise LeWMConfigError(
                "vocab_size",
                config.vocab_size,
                f"the state encoder's vocabulary must cover the {info.vocab_size} token ids of "
                f"{name}: give an encoder_path whose vocabulary covers them, or encoder_path: "
                "null to build one from the dataset",
            )
        stride = args.data.clip_stride
        if stride is not None and stride > config.history_length:
            raise LeWMConfigError(
                "clip_stride",
                stride,
                f"must be <= history_length={config.history_length}: a larger stride would "
                "skip the transitions between clips",
            )

    def build_data(self, args: TrajectoryArguments) -> WorldModelData:
        source = args.data
        dataset, info = load_trajectory_dataset(
            source.dataset_name, source.dataset_config, source.data_files, source.dataset_revision
        )
        if info.action_type == "edit" and info.vocab_size > DNA_VOCAB_SIZE:
            raise LeWMConfigError(
                "dataset_name",
                source.dataset_name,
                f"holds edit actions over {info.vocab_size} tokens: edits are coded as the edit "
                f"domain codes them, over the DNA vocabulary (vocab_size <= {DNA_VOCAB_SIZE})",
            )
        splits = {}
        for field, split in (
            ("dataset_train_split", source.dataset_train_split),
            ("dataset_test_split", source.dataset_test_split),
        ):
            rows = select_split(dataset, split, field, source.dataset_name)
            validate_trajectories(rows, info, split)
            splits[field] = rows
        train, held_out = splits["dataset_train_split"], splits["dataset_test_split"]
        max_steps = int(max(real_steps(train).max(), real_steps(held_out).max()))
        max_edit_len = DEFAULT_MAX_EDIT_LEN
        if info.action_type == "edit":
            max_edit_len = max(max_edit_len, longest_edit(train), longest_edit(held_out))
        return WorldModelData(
            train=train,
            validation=held_out,
            info=TrajectoryDataInfo(info=info, max_steps=max_steps, max_edit_len=max_edit_len),
            summary={K.TRAIN_ROWS: len(train), K.EVAL_ROWS: len(held_out)},
        )

    def fit_data(
        self, model: Any, args: TrajectoryArguments, data: WorldModelData
    ) -> WorldModelData:
        """Cut rows longer than the model's `history_length` into clips (`clip_stride`).

        A split whose rows all fit stays as it is (its clips are its rows); another becomes its
        clip index, read by the collator. The evaluation uses the same held-out clips.
        """
        history, stride = model.config.history_length, args.data.clip_stride
        clips = tuple(
            trajectory_clips(split, history, stride, tag)
            for tag, split in enumerate((data.train, data.validation))
        )
        train, held_out = (c.source if c.whole_rows else c.as_dataset() for c in clips)
        summary = {**data.summary, K.TRAIN_CLIPS: len(clips[0]), K.EVAL_CLIPS: len(clips[1])}
        info = replace(data.info, clips=clips)
        return replace(data, train=train, validation=held_out, info=info, summary=summary)

    def trainer_kwargs(
        self, model: Any, args: TrajectoryArguments, data: WorldModelData
    ) -> dict[str, Any]:
        if data.info.info.action_type == "edit":
            kwargs = edit_trainer_kwargs(model, data.info.max_edit_len)
            collator = TrajectoryCollator(kwargs["data_collator"], data.info.clips, discrete=False)
            return {**kwargs, "data_collator": collator}
        return {"data_collator": TrajectoryCollator(DataCollatorForLeWM(), data.info.clips)}

    def before_evaluation(
        self, model: Any, args: TrajectoryArguments, data: WorldModelData
    ) -> dict[str, Any]:
        if not args.evaluation.run_evaluation:
            return {}
        metrics = self.evaluate(model, args, data)
        if data.info.info.action_type == "edit":  # the edit suite, as the edit domain reports it
            return metrics
        return {k: v for k, v in metrics.items() if k.startswith(K.EVAL_ACTION_PREFIX)}

    def evaluate(
        self, model: Any, args: TrajectoryArguments, data: WorldModelData
    ) -> dict[str, Any]:
        held_out = data.info.clips[1] if data.info.clips else data.validation
        config = args.evaluation.config()
        if data.info.info.action_type == "edit":
            return evaluate_edit_rows(model, held_out, data.info.info.window_length, config)
        metrics = evaluate_trajectory_model(model, held_out, data.info.info.num_actions, config)
        # A dataset of a registered environment is also evaluated in it: planning executed by
        # the environment's own step, discrimination among distinct next states.
        environment = data.info.info.environment
        if args.environment.environment_evaluation and environment in ENVIRONMENTS:
            metrics.update(
                evaluate_in_environment(
                    model, environment, data.validation, args.environment, config.seed
                )
            )
        return metrics


def longest_edit(split: Any) -> int:
    """The most tokens of one edit of a validated edit split (from the Arrow buffers)."""
    column = split.with_format("arrow")[:].column("edit_tokens").combine_chunks().flatten()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    return int(lengths.max()) if len(lengths) else 0


def edit_sampler(window_length: int) -> EditSampler:
    """The random other edits of the edit evaluation on a dataset: the edit corpus's default
    mixture, `margin` the corpus default or a quarter of the window, whichever is smaller."""
    margin = min(EditCorpusConfig.__dataclass_fields__["margin"].default, window_length // 4)
    return EditSampler(margin=margin)


def evaluate_edit_rows(
    model: Any, held_out: Any, window_length: int, config: TrajectoryEvalConfig
) -> dict[str, Any]:
    """The edit domain's evaluation (SNV recovery, edit-action discrimination against copy,
    shuffled and chance) on the first `num_items` held-out clips, its seed `config.seed`.

    Args:
        model: The world model.
        held_out (`TrajectoryClips` or `Dataset`): The held-out clips (or rows).
        window_length (`int`): Tokens per state.
        config (`TrajectoryEvalConfig`): Sizes and seed.

    Returns:
        `dict[str, Any]`: `eval_snv_recovery_*` and `eval_edit_action_*`.
    """
    count = min(len(held_out), config.num_items)
    if isinstance(held_out, TrajectoryClips):
        rows = held_out.read(np.arange(count))
    else:
        rows = [held_out[i] for i in range(count)]
    args = EditEvaluationArguments(eval_items=config.num_items, eval_seed=config.seed)
    radius = model.config.pool_radius
    return evaluate_edit_model(model, rows, edit_sampler(window_length), radius, args)


TRAJECTORIES = TrajectoryDomain()

__all__ = [
    "TRAJECTORIES",
    "TrajectoryArguments",
    "TrajectoryCollator",
    "TrajectoryDataInfo",
    "TrajectoryDatasetArguments",
    "TrajectoryDomain",
    "TrajectoryEvaluationArguments",
]
