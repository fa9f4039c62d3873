"""Recipe composition, command-line overrides and typed errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lewm_hf.errors import LeWMConfigError
from lewm_hf.pipeline import WalkDataArguments, WalkLMModelArguments
from lewm_hf.recipe import field_types, load_recipe, parse_cli_overrides, split_phase_keys
from lewm_hf.trainer.lewm_config import WalkLMTrainingArguments

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


LM_TARGETS = {
    "model": field_types(WalkLMModelArguments),
    "data": field_types(WalkDataArguments),
    "training": field_types(WalkLMTrainingArguments),
}


def test_defaults_deep_merge_later_wins(tmp_path):
    write(tmp_path / "base" / "a.yaml", "learning_rate: 0.1\ncorpus: {num_vertices: 40, seed: 1}\n")
    write(tmp_path / "base" / "b.yaml", "learning_rate: 0.2\ncorpus: {seed: 2}\n")
    top = write(
        tmp_path / "top.yaml",
        "defaults: [base/a.yaml, base/b.yaml]\nmax_steps: 5\ncorpus: {walk_length: 80}\n",
    )
    recipe = load_recipe(top)
    (phase,) = recipe.phases
    assert phase["learning_rate"] == 0.2  # later default wins
    assert phase["corpus"] == {"num_vertices": 40, "seed": 2, "walk_length": 80}  # deep merge
    assert phase["max_steps"] == 5
    assert recipe.sources["learning_rate"].endswith("b.yaml")
    assert recipe.sources["corpus.num_vertices"].endswith("a.yaml")
    assert recipe.sources["corpus.walk_length"].endswith("top.yaml")


def test_including_file_wins_over_defaults(tmp_path):
    write(tmp_path / "a.yaml", "learning_rate: 0.1\n")
    top = write(tmp_path / "top.yaml", "defaults: [a.yaml]\nlearning_rate: 0.3\n")
    assert load_recipe(top).phases[0]["learning_rate"] == 0.3


def test_cycle_detected(tmp_path):
    write(tmp_path / "a.yaml", "defaults: [b.yaml]\n")
    write(tmp_path / "b.yaml", "defaults: [a.yaml]\n")
    with pytest.raises(LeWMConfigError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_missing_default_names_file(tmp_path):
    top = write(tmp_path / "top.yaml", "defaults: [nope.yaml]\n")
    with pytest.raises(LeWMConfigError, match=r"nope\.yaml"):
        load_recipe(top)


def test_cli_overrides_every_phase_and_one_phase(tmp_path):
    top = write(
        tmp_path / "r.yaml",
        """
        learning_rate: 0.1
        phases:
          - {name: encoder, task: lm, max_steps: 3}
          - {name: world_model, task: world_model, max_steps: 4, learning_rate: 0.5}
        """,
    )
    overrides = parse_cli_overrides(["--learning_rate", "1e-3", "--world_model.max_steps=9"])
    recipe = load_recipe(top, overrides)
    assert [p["learning_rate"] for p in recipe.phases] == ["1e-3", "1e-3"]
    assert [p["max_steps"] for p in recipe.phases] == [3, 9]
    assert recipe.sources["phases.1.max_steps"] == "cli"
    # "1e-3" is a YAML string: the float field coerces it.
    parts = split_phase_keys(recipe, 0, LM_TARGETS)
    assert parts["training"]["learning_rate"] == pytest.approx(1e-3)


def test_phase_defaults_compose(tmp_path):
    write(tmp_path / "lm.yaml", "task: lm\nmax_steps: 7\nhidden_size: 32\n")
    top = write(
        tmp_path / "r.yaml",
        "seed: 3\nphases:\n  - {defaults: [lm.yaml], name: encoder, hidden_size: 16}\n",
    )
    recipe = load_recipe(top)
    assert recipe.phases[0]["max_steps"] == 7
    assert recipe.phases[0]["hidden_size"] == 16
    assert recipe.phases[0]["seed"] == 3


def test_unknown_key_names_path_and_file(tmp_path):
    top = write(tmp_path / "r.yaml", "learning_rat: 0.1\n")
    recipe = load_recipe(top)
    with pytest.raises(LeWMConfigError, match=r"learning_rat.*unknown key.*r\.yaml"):
        split_phase_keys(recipe, 0, LM_TARGETS)


def test_wrong_type_names_dotted_path(tmp_path):
    write(tmp_path / "lm.yaml", "max_steps: lots\n")
    top = write(tmp_path / "r.yaml", "phases:\n  - {defaults: [lm.yaml]}\n  - {task: lm}\n")
    recipe = load_recipe(top)
    with pytest.raises(LeWMConfigError, match=r"phases\.0\.max_steps.*expected int.*lm\.yaml"):
        split_phase_keys(recipe, 0, LM_TARGETS)


def test_bool_is_not_int(tmp_path):
    top = write(tmp_path / "r.yaml", "hidden_size: true\n")
    with pytest.raises(LeWMConfigError, match="hidden_size"):
        split_phase_keys(load_recipe(top), 0, LM_TARGETS)


def test_cli_flag_without_value_is_true():
    assert parse_cli_overrides(["--bf16", "--x", "3"]) == [("bf16", True), ("x", 3)]
    with pytest.raises(LeWMConfigError, match="cli"):
        parse_cli_overrides(["positional"])


def test_not_a_mapping(tmp_path):
    top = write(tmp_path / "r.yaml", "- a\n- b\n")
    with pytest.raises(LeWMConfigError, match="mapping"):
        load_recipe(top)


@pytest.mark.parametrize("name", ["walk_lm.yaml", "default.yaml", "walk_lewm.yaml"])
def test_shipped_recipes_parse(name):
    from lewm_hf.pipeline import validate_recipe

    validate_recipe(REPO / "recipes" / "configs" / name)
