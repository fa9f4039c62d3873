"""Recipe composition, command-line overrides and typed errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lewm_hf.configuration_lewm import LeWMConfig
from lewm_hf.errors import LeWMConfigError
from lewm_hf.recipe import (
    key_owners,
    load_recipe,
    parse_cli_overrides,
    recipe_fields,
    split_phase_keys,
)
from lewm_hf.tasks import TASKS, walk_lm
from lewm_hf.tasks.arguments import WalkCorpusArguments
from lewm_hf.tasks.runner import validate_recipe
from lewm_hf.trainer.lewm_config import LeWMTrainingArguments

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


LM_OWNERS = key_owners(walk_lm.TARGETS, walk_lm.OWNERS)


def split_lm(recipe, index=0):
    return split_phase_keys(recipe, index, LM_OWNERS, tuple(walk_lm.TARGETS))


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
    assert [p["learning_rate"] for p in recipe.phases] == [1e-3, 1e-3]  # YAML 1.2 float
    assert [p["max_steps"] for p in recipe.phases] == [3, 9]
    assert recipe.sources["phases.1.max_steps"] == "cli"
    parts = split_lm(recipe)
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
        split_lm(recipe)


def test_wrong_type_names_dotted_path(tmp_path):
    write(tmp_path / "lm.yaml", "max_steps: lots\n")
    top = write(tmp_path / "r.yaml", "phases:\n  - {defaults: [lm.yaml]}\n  - {task: lm}\n")
    recipe = load_recipe(top)
    with pytest.raises(LeWMConfigError, match=r"phases\.0\.max_steps.*expected int.*lm\.yaml"):
        split_lm(recipe)


def test_bool_is_not_int(tmp_path):
    top = write(tmp_path / "r.yaml", "hidden_size: true\n")
    with pytest.raises(LeWMConfigError, match="hidden_size"):
        split_lm(load_recipe(top))


def test_cli_flag_without_value_is_true():
    assert parse_cli_overrides(["--bf16", "--x", "3"]) == [("bf16", True), ("x", 3)]
    with pytest.raises(LeWMConfigError, match="cli"):
        parse_cli_overrides(["positional"])


def test_yaml_1_1_booleans_stay_strings(tmp_path):
    # `no` is a valid `save_strategy`; YAML 1.1 would read it (and yes/on/off) as a boolean.
    top = write(tmp_path / "r.yaml", "save_strategy: no\neval_strategy: 'no'\nbf16: false\n")
    overrides = parse_cli_overrides(["--logging_strategy", "no", "--fp16", "False"])
    assert overrides == [("logging_strategy", "no"), ("fp16", False)]
    parts = split_lm(load_recipe(top, overrides))["training"]
    assert parts["save_strategy"] == "no" and parts["eval_strategy"] == "no"
    assert parts["logging_strategy"] == "no"
    assert parts["bf16"] is False and parts["fp16"] is False
    assert parse_cli_overrides(["--x", "yes", "--y", "on", "--z", "2.5e-4"]) == [
        ("x", "yes"),
        ("y", "on"),
        ("z", 2.5e-4),
    ]


def test_not_a_mapping(tmp_path):
    top = write(tmp_path / "r.yaml", "- a\n- b\n")
    with pytest.raises(LeWMConfigError, match="mapping"):
        load_recipe(top)


def test_shipped_recipes_parse_to_their_values():
    configs = REPO / "recipes" / "configs"
    (lm,) = validate_recipe(configs / "walk_lm.yaml")
    assert (lm.task, lm.args.training.eval_steps, lm.args.data.corpus["chunk_length"]) == (
        "lm",
        250,
        64,
    )
    assert (lm.args.training.gate_decoding, lm.args.training.gate_temperature) == ("sample", 1.0)
    (wm,) = validate_recipe(configs / "walk_lewm.yaml")
    assert wm.args.config["reg_weight"] == 5.0 and wm.args.config["loss_phase"] == "phase2"
    assert wm.args.model.encoder_path is None and wm.args.domain.clips.history_length == 3
    encoder, world = validate_recipe(configs / "default.yaml")
    assert (encoder.name, world.name) == ("encoder", "world_model")
    assert world.args.model.encoder_path == "previous"
    assert world.args.config["encoder_mode"] == "frozen"
    assert world.output_dir == Path("outputs/default/world_model")


def test_every_task_key_has_one_owner():
    # A key that two targets of a task declare must be settled by the task's owner map; this
    # walks every target's fields, so a new field that collides with another fails here.
    for name, task in TASKS.items():
        declared: dict[str, list[str]] = {}
        for target, cls in task.TARGETS.items():
            for key in recipe_fields(cls):
                declared.setdefault(key, []).append(target)
        shared = {k: v for k, v in declared.items() if len(v) > 1}
        assert set(shared) == set(task.OWNERS), (name, shared)
        for key, owner in task.OWNERS.items():
            assert owner in shared[key]
        owners = key_owners(task.TARGETS, task.OWNERS)
        assert set(owners) == set(declared)


def test_key_of_two_targets_is_an_error():
    # Before the loss keys had one owner, `reg_weight` was both a training argument and a
    # config field, and the first target in dict order silently won.
    @__import__("dataclasses").dataclass
    class Clashing:
        reg_weight: float = 0.1

    with pytest.raises(LeWMConfigError, match=r"reg_weight.*several targets"):
        key_owners({"config": LeWMConfig, "training": Clashing})
    owners = key_owners({"config": LeWMConfig, "training": Clashing}, {"reg_weight": "config"})
    assert owners["reg_weight"][0] == "config"


def test_loss_keys_belong_to_the_model_config(tmp_path):
    top = write(tmp_path / "r.yaml", "task: world_model\nreg_weight: 3.0\nloss_phase: phase1\n")
    (plan,) = validate_recipe(top)
    assert plan.args.config == {"reg_weight": 3.0, "loss_phase": "phase1"}
    for key in ("reg_weight", "regularizer", "pred_loss", "loss_phase", "sigreg_num_slices"):
        assert key in recipe_fields(LeWMConfig)
        assert key not in recipe_fields(LeWMTrainingArguments)


def test_empty_phases_is_an_error(tmp_path):
    top = write(tmp_path / "r.yaml", "phases: []\n")
    with pytest.raises(LeWMConfigError, match=r"phases.*empty"):
        load_recipe(top)


def test_unknown_phase_prefix_is_an_error(tmp_path):
    top = write(tmp_path / "r.yaml", "phases:\n  - {name: encoder}\n")
    with pytest.raises(LeWMConfigError, match=r"--decoder\.max_steps.*unknown phase 'decoder'"):
        load_recipe(top, parse_cli_overrides(["--decoder.max_steps", "3"]))


def test_unknown_task_is_an_error(tmp_path):
    top = write(tmp_path / "r.yaml", "task: nope\n")
    with pytest.raises(LeWMConfigError, match=r"task='nope'.*lm"):
        validate_recipe(top)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("gate_decoding", "beam", r"gate_decoding.*greedy, sample"),
        ("gate_edge_threshold", 1.5, r"gate_edge_threshold=1\.5.*\[0, 1\]"),
        ("corpus_preset", "huge", r"preset='huge'"),
    ],
)
def test_bad_choices_and_ranges_stop_parsing(tmp_path, key, value, match):
    top = write(tmp_path / "r.yaml", f"task: lm\n{key}: {value}\n")
    with pytest.raises(LeWMConfigError, match=match):
        validate_recipe(top)


def test_corpus_arguments_reject_unknown_corpus_field():
    with pytest.raises(LeWMConfigError, match=r"corpus\.vertices"):
        WalkCorpusArguments(corpus={"vertices": 3})
