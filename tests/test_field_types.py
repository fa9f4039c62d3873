"""A value of the wrong type names the refused item of a list, through the recipe parser and
through `validate_fields`."""

from __future__ import annotations

from typing import Literal

import pytest

from lewm_hf import LeWMTrainingArguments
from lewm_hf.errors import LeWMConfigError
from lewm_hf.evaluation.planning_config import PlanningConfig
from lewm_hf.evaluation.suite import EvaluationArguments
from lewm_hf.fields import check_type
from lewm_hf.tasks.runner import validate_recipe

LORA_CHOICES = "must be one of encoder, predictor, action_encoder"


def test_bad_lora_target_through_the_recipe():
    with pytest.raises(LeWMConfigError) as info:
        validate_recipe("recipes/configs/walk_lewm_lora.yaml", [("lora_targets", ["nothing"])])
    assert info.value.field == "lora_targets" and info.value.element == "[0]"
    assert str(info.value).startswith(f"lora_targets[0]='nothing': {LORA_CHOICES}")
    assert "expected list" not in str(info.value)


def test_bad_lora_target_on_the_arguments(tmp_path):
    with pytest.raises(LeWMConfigError) as info:
        LeWMTrainingArguments(output_dir=str(tmp_path), lora_targets=["predictor", "nothing"])
    assert info.value.field == "lora_targets" and info.value.value == "nothing"
    assert str(info.value) == f"lora_targets[1]='nothing': {LORA_CHOICES}"


def test_a_list_field_given_a_scalar_says_list():
    with pytest.raises(LeWMConfigError) as info:
        validate_recipe("recipes/configs/walk_lewm_lora.yaml", [("lora_targets", "predictor")])
    assert info.value.field == "lora_targets" and info.value.element == ""
    assert "expected list of one of encoder, predictor, action_encoder" in str(info.value)


def test_bad_item_of_a_string_list():
    with pytest.raises(LeWMConfigError, match=r"lora_target_modules\[1\]=3: expected str"):
        validate_recipe("recipes/configs/walk_lewm_lora.yaml", [("lora_target_modules", ["q", 3])])


@pytest.mark.parametrize(
    ("annotation", "value", "message"),
    [
        (list[Literal["a", "b"]] | None, ["a", "c"], "f[1]='c': must be one of a, b"),
        (list[list[int]], [[1], [2, "x"]], "f[1][1]='x': expected int"),
        (Literal["x", "y"], "z", "f='z': must be one of x, y"),
        (list[int], 3, "f=3: expected list of int"),
    ],
)
def test_check_type_names_the_refused_item(annotation, value, message):
    with pytest.raises(LeWMConfigError) as info:
        check_type("f", annotation, value)
    assert info.value.field == "f" and str(info.value) == message


def test_check_type_accepts_and_coerces():
    assert check_type("f", list[float] | None, [1, "2e-3"]) == [1.0, 2e-3]
    assert check_type("f", list[Literal["a", "b"]] | None, None) is None


def test_validate_fields_and_the_evaluation_suite_name_the_refused_item():
    with pytest.raises(LeWMConfigError, match=r"^seeds\[1\]='x': expected int$") as info:
        PlanningConfig(seeds=[0, "x"])
    assert info.value.field == "seeds"
    with pytest.raises(LeWMConfigError, match=r"^planning\.seeds\[1\]='x': expected int$"):
        EvaluationArguments(planning={"seeds": [0, "x"]}).configs()
