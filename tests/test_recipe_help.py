"""`--help` of `recipes/train.py` and `recipes/evaluate.py`: every key with owner, type, default
and help, read from the task registry and the fields."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import yaml

from lewm_hf.data.walks import MoveTrajectoryConfig
from lewm_hf.evaluation.planning_config import PlanningConfig
from lewm_hf.recipe import key_owners
from lewm_hf.recipe_help import (
    class_options,
    describe_type,
    describe_value,
    recipe_help,
    task_groups,
)
from lewm_hf.tasks import TASKS
from lewm_hf.tasks.runner import RUNNER_KEYS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_main():
    return runpy.run_path(str(REPO / "recipes" / "train.py"))["main"]


@pytest.fixture(scope="module")
def evaluate_main():
    return runpy.run_path(str(REPO / "recipes" / "evaluate.py"))["main"]


def lines_of(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


def test_train_help_lists_the_default_recipe_keys(train_main, capsys):
    assert train_main(["--help"]) == 0
    out = capsys.readouterr().out
    lines = lines_of(out)
    assert "reg_weight (float | None, default: null; recipe: 5.0)" in lines
    assert "lora_r (int, default: 8)" in lines
    assert "gate_rule_threshold (float, default: 0.8)" in lines
    assert "planning.goals_per_distance (int, default: 300; recipe: 50)" in lines
    assert "evaluation.num_items (int, default: 512)" in lines
    # Per phase, then per owner; the trainer's own fields before the inherited ones.
    encoder, world_model = out.split("Phase 1/2: encoder (task lm)")[1].split("Phase 2/2")
    assert "world_model (task world_model)" in world_model
    assert "gate_rule_threshold" in encoder and "gate_rule_threshold" not in world_model
    own = world_model.index("training: LeWMTrainingArguments")
    inherited = world_model.index("training: TrainingArguments fields (inherited by")
    assert own < world_model.index("lora_r (") < inherited < world_model.index("learning_rate (")
    for owner in ("data:", "clips:", "model:", "config: LeWMConfig", "evaluation:"):
        assert owner in world_model
    # The runner's keys once, not among a task's; how to override.
    for key in ("config", *RUNNER_KEYS):
        assert any(line.startswith(f"{key} (") for line in lines), key
    assert "output_dir (str, default: outputs/<recipe file stem>; recipe: outputs/default)" in lines
    assert "resume_from_checkpoint (" not in world_model
    assert "--<phase>.key value" in out and "--world_model.learning_rate 1e-3." in out
    # -h is --help.
    assert train_main(["-h"]) == 0
    assert capsys.readouterr().out == out


def test_train_help_of_another_recipe_follows_its_tasks(train_main, capsys):
    config = str(REPO / "recipes" / "configs" / "dna_lewm.yaml")
    assert train_main(["--config", config, "--help"]) == 0
    out = capsys.readouterr().out
    lines = lines_of(out)
    assert "Phase 1/2: encoder (task dna_lm)" in out
    assert "Phase 2/2: world_model (task edit_world_model)" in out
    assert "reg_weight (float | None, default: null; recipe: 1.0)" in lines
    assert "lora_r (int, default: 8)" in lines
    assert "  data: DNASourceConfig\n" in out and "  data: EditCorpusConfig\n" in out
    # The edit model's own defaults, not LeWMConfig's.
    assert "action_position_origin ({window, locus}, default: locus)" in lines
    assert "pooling ({last, mean, centered}, default: centered; recipe: centered)" in lines
    assert "gate_rule_threshold" not in out  # no walk-LM phase
    # A training-arguments class that declares no field of its own is one group.
    assert "  training: CausalLMTrainingArguments\n" in out
    # Command-line overrides show as the recipe's values.
    assert train_main(["--help", "--config", config, "--world_model.lora_r", "4"]) == 0
    assert "lora_r (int, default: 8; recipe: 4)" in lines_of(capsys.readouterr().out)


def test_train_help_of_a_missing_recipe_is_an_error(train_main, tmp_path, capsys):
    assert train_main(["--config", str(tmp_path / "nope.yaml"), "--help"]) == 2
    assert "file not found" in capsys.readouterr().err


def test_evaluate_help_lists_its_options_and_defaults(evaluate_main, capsys):
    assert evaluate_main(["--help"]) == 0
    out = capsys.readouterr().out
    lines = lines_of(out)
    assert "--model_path (path, required)" in lines
    assert (
        "--config (path, default: <model_path>/recipe.yaml if present, else "
        "recipes/configs/walk_lewm.yaml)"
    ) in lines
    assert "--output (path, default: <model_path>/eval_results.json)" in lines
    # The full planning set the script uses, not the recipe's 50 goals x 1 seed.
    assert "--planning.goals_per_distance (int, default: 300)" in lines
    assert "--planning.seeds (list[int], default: [0, 1, 2])" in lines
    for field in ("num_items", "num_rollouts", "max_horizon", "seed"):
        assert any(line.startswith(f"--evaluation.{field} (") for line in lines), field
    assert "Goals per stratum and seed." in lines
    assert evaluate_main(["-h"]) == 0


def test_evaluate_help_shows_the_recipe_evaluation_settings(evaluate_main, tmp_path, capsys):
    recipe = tmp_path / "wm.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"task": "world_model", "evaluation": {"num_items": 64}, "planning": {"seeds": [0]}}
        )
    )
    assert evaluate_main(["--config", str(recipe), "--help"]) == 0
    lines = lines_of(capsys.readouterr().out)
    assert "--evaluation.num_items (int, default: 64)" in lines
    assert "--planning.seeds (list[int], default: [0, 1, 2])" in lines


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_help_lists_every_key_of_the_task_once(name):
    task = TASKS[name]
    owners = key_owners(task.TARGETS, task.OWNERS)
    listed = {}
    for title, options in task_groups(name):
        for option in options:
            assert option.name not in listed, option.name
            listed[option.name] = title
            assert option.help, f"{name}: {option.name} has no help"
    expected = {key for key in owners if key not in RUNNER_KEYS}
    assert set(listed) == expected
    for key, title in listed.items():
        assert title.startswith(owners[key][0] + ": "), (key, title)


def test_help_texts_fall_back_to_the_docstring_and_settings_list_their_fields():
    (history,) = class_options(MoveTrajectoryConfig, ["history_length"])
    assert (history.type, history.default, history.help) == ("int", "3", "Actions per clip (H).")
    options = {o.name: o for o in class_options(PlanningConfig, values={"seeds": [0]})}
    assert options["seeds"].value == "[0]" and options["goals_per_distance"].value is None
    assert options["planner"].type == "{auto, exhaustive, cem, tree}"


def test_types_and_values_read_as_recipe_yaml():
    assert describe_type(int | None) == "int | None"
    assert describe_type(list[int]) == "list[int]"
    assert describe_value(None) == "null"
    assert describe_value(True) == "true"
    assert describe_value([0, 1.5, "a"]) == "[0, 1.5, a]"
    assert describe_value({"k": None}) == "{k: null}"
    assert describe_value("") == '""'
    assert describe_value("1e-3") == '"1e-3"'  # a string, not the float
    assert describe_value("no") == "no"  # YAML 1.2: a string


def test_recipe_help_without_phases_is_one_phase(tmp_path):
    recipe = tmp_path / "lm.yaml"
    recipe.write_text("task: lm\nlearning_rate: 1.0e-3\n")
    text = recipe_help(recipe)
    assert "Phase 1/1: lm (task lm)" in text
    assert "learning_rate (float, default: 5e-05; recipe: 0.001)" in lines_of(text)
