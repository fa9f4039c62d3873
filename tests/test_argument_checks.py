"""Settings a trainer would accept and then ignore are typed errors."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from _builders import W, tiny_training_args
from _builders import tiny_clips as clip_dataset
from _builders import tiny_lewm_model as tiny_model
from transformers import TrainingArguments

from lewm_hf import LeWMTrainer, LeWMTrainingArguments, WalkLMTrainingArguments
from lewm_hf.errors import LeWMConfigError
from lewm_hf.tasks.runner import validate_recipe
from lewm_hf.trainer.lewm_config import (
    LEWM_UNSUPPORTED_VALUES,
    LEWM_UNUSED_ARGUMENTS,
    WALK_LM_UNUSED_ARGUMENTS,
    check_model_arguments,
)
from lewm_hf.trainer.lewm_trainer import IGNORED_TRAINER_ARGUMENTS

# A value other than the default for every field of the unused-argument tables.
NON_DEFAULT = {
    "do_train": True,
    "do_predict": True,
    "resume_from_checkpoint": "outputs/checkpoint-10",
    "lr_scheduler_type": "linear",  # TrainingArguments' own default: still not followed
    "lr_scheduler_kwargs": {"num_cycles": 2},
    "optim_target_modules": ["qkv"],
    "label_smoothing_factor": 0.1,
    "label_names": ["labels"],
    "prediction_loss_only": True,
    "include_for_metrics": ["loss"],
    "batch_eval_metrics": True,
    "eval_accumulation_steps": 4,
    "eval_do_concat_batches": False,
    "eval_use_gather_object": True,
    "average_tokens_across_devices": False,
    "use_liger_kernel": True,
    "liger_kernel_config": {"rope": True},
    "use_cache": True,
}
TABLES = [
    (LeWMTrainingArguments, LEWM_UNUSED_ARGUMENTS),
    (WalkLMTrainingArguments, WALK_LM_UNUSED_ARGUMENTS),
]
CASES = [(cls, name) for cls, table in TABLES for name in table]


def build(cls, tmp_path, **kwargs):
    return cls(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)


def make_args(folder, **overrides):
    """The tiny training arguments, writing under `folder/out`."""
    return tiny_training_args(folder / "out", **overrides)


@pytest.mark.parametrize(("cls", "name"), CASES, ids=[f"{c.__name__}-{n}" for c, n in CASES])
def test_unused_field_is_an_error_naming_it(cls, name, tmp_path):
    with pytest.raises(LeWMConfigError) as info:
        build(cls, tmp_path, **{name: NON_DEFAULT[name]})
    assert info.value.field == name
    assert str(info.value).startswith(f"{name}=")
    assert info.value.reason == cls.unused_arguments[name]


def test_every_table_entry_is_an_inherited_field_with_a_test_value():
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    for _, table in TABLES:
        assert set(table) <= inherited, set(table) - inherited
        assert set(table) <= set(NON_DEFAULT), set(table) - set(NON_DEFAULT)


@pytest.mark.parametrize("value", ["linear", "cosine", "constant", "warmup_stable_decay"])
def test_lr_scheduler_type_on_a_world_model_says_to_use_lr_schedule(value, tmp_path):
    with pytest.raises(LeWMConfigError, match="use lr_schedule") as info:
        build(LeWMTrainingArguments, tmp_path, lr_scheduler_type=value)
    assert info.value.field == "lr_scheduler_type" and info.value.value == value
    assert "wsd, cosine or constant" in str(info.value)


def test_lr_scheduler_type_through_a_recipe():
    with pytest.raises(LeWMConfigError, match=r"lr_scheduler_type='linear'.*lr_schedule"):
        validate_recipe("recipes/configs/walk_lewm.yaml", [("lr_scheduler_type", "linear")])


def test_walk_lm_follows_lr_scheduler_type(tmp_path):
    args = build(WalkLMTrainingArguments, tmp_path, lr_scheduler_type="linear")
    assert args.lr_scheduler_type == "linear"


@pytest.mark.parametrize("value", sorted(LEWM_UNSUPPORTED_VALUES["optim"][0]))
def test_optimizer_building_its_own_groups_is_an_error(value, tmp_path):
    with pytest.raises(LeWMConfigError, match="per-part groups") as info:
        build(LeWMTrainingArguments, tmp_path, optim=value)
    assert info.value.field == "optim" and info.value.value == value


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": 1e-3},
        {"optim": "sgd", "optim_args": "momentum=0.9"},
        {"adam_beta1": 0.8, "adam_beta2": 0.95, "adam_epsilon": 1e-6, "weight_decay": 0.1},
        {"lr_schedule": "cosine", "warmup_steps": 0.1},
        {"train_sampling_strategy": "group_by_length"},
        {"remove_unused_columns": True},
        {"metric_for_best_model": "eval_pred_mse", "greater_is_better": False},
        {"neftune_noise_alpha": 5.0},
        {"include_num_input_tokens_seen": "all"},
        {"torch_empty_cache_steps": 10},
    ],
    ids=lambda kwargs: "-".join(kwargs),
)
def test_honoured_fields_are_accepted(kwargs, tmp_path):
    args = build(LeWMTrainingArguments, tmp_path, **kwargs)
    for name, value in kwargs.items():
        assert getattr(getattr(args, name), "value", getattr(args, name)) == value
    assert args.lr_scheduler_type is None  # defaults: nothing refused


def test_honoured_fields_of_the_walk_lm_are_accepted(tmp_path):
    kwargs = {"label_smoothing_factor": 0.1, "lr_scheduler_kwargs": {"num_cycles": 0.5}}
    args = build(WalkLMTrainingArguments, tmp_path, lr_scheduler_type="cosine", **kwargs)
    assert args.label_smoothing_factor == 0.1


def test_model_dependent_arguments(tmp_path):
    frozen = SimpleNamespace(config=SimpleNamespace(encoder_mode="frozen"))
    trained = SimpleNamespace(config=SimpleNamespace(encoder_mode="train"))
    noisy = build(LeWMTrainingArguments, tmp_path, neftune_noise_alpha=5.0)
    check_model_arguments(noisy, trained, feature_cache=False)
    with pytest.raises(LeWMConfigError, match="encoder_mode is frozen") as info:
        check_model_arguments(noisy, frozen, feature_cache=False)
    assert info.value.field == "neftune_noise_alpha"
    counting = build(LeWMTrainingArguments, tmp_path, include_num_input_tokens_seen=True)
    check_model_arguments(counting, frozen, feature_cache=False)
    with pytest.raises(LeWMConfigError, match="frozen_feature_cache") as info:
        check_model_arguments(counting, frozen, feature_cache=True)
    assert info.value.field == "include_num_input_tokens_seen" and info.value.value == "all"


def test_feature_cache_with_token_count_is_refused_by_the_trainer(tmp_path):
    args = make_args(tmp_path, include_num_input_tokens_seen="all")
    with pytest.raises(LeWMConfigError, match="include_num_input_tokens_seen"):
        LeWMTrainer(
            model=tiny_model(encoder_mode="frozen"),
            args=args,
            train_dataset=clip_dataset(8),
            window=W,
        )


@pytest.mark.parametrize("name", sorted(IGNORED_TRAINER_ARGUMENTS))
def test_trainer_arguments_it_would_not_call_are_errors(name, tmp_path):
    with pytest.raises(LeWMConfigError) as info:
        LeWMTrainer(model=tiny_model(), args=make_args(tmp_path), window=W, **{name: len})
    assert info.value.field == name


def test_optimizer_cls_and_kwargs_is_built_on_the_part_groups(tmp_path):
    args = make_args(tmp_path, predictor_lr_multiplier=0.5)
    trainer = LeWMTrainer(
        model=tiny_model(),
        args=args,
        window=W,
        optimizer_cls_and_kwargs=(torch.optim.SGD, {"momentum": 0.9}),
    )
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD)
    assert {g["momentum"] for g in optimizer.param_groups} == {0.9}
    assert {g["lr"] for g in optimizer.param_groups} == {args.learning_rate, args.learning_rate / 2}


def test_optimizer_factory_is_an_error(tmp_path):
    def factory():  # what the Trainer calls with the model (Muon, Dion)
        raise AssertionError("never built")

    trainer = LeWMTrainer(
        model=tiny_model(),
        args=make_args(tmp_path),
        window=W,
        optimizer_cls_and_kwargs=(factory, {}),
    )
    with pytest.raises(LeWMConfigError, match="builds its own parameter groups") as info:
        trainer.create_optimizer()
    assert info.value.field == "optimizer_cls_and_kwargs"
