"""Every task through the one runner per kind of job: publish, keys on a saved model, bad starts.

- Each task pushes its final model and its own card (`push_to_hub` at the offline Hub boundary
  of `test_hub`), with a shared `hub_model_id` split into one repo per phase.
- A recipe key on a saved model is applied (the output's `config.json` carries it) or rejected
  (a typed error naming it), never dropped, in every task.
- A start the runner cannot honour is a typed error naming the key: another task's checkpoint
  to resume from, an LM given as a world model, an `encoder_path` beside a whole saved model,
  edit-action keys on a walk world model.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import yaml
from _builders import TINY_CORPUS as CORPUS
from _builders import write_walk_recipe as write_recipe
from huggingface_hub import ModelCard
from test_dna_tasks import RECIPE as DNA_RECIPE
from test_hub import TINY_WORLD_MODEL, files_in, hub  # noqa: F401
from transformers import AutoConfig, AutoModelForCausalLM

import lewm_hf  # noqa: F401  (registers the `lewm` model type)
from lewm_hf import LeWMConfig, LeWMModel
from lewm_hf.data.trajectories import TrajectoryInfo, write_trajectories
from lewm_hf.errors import LeWMConfigError
from lewm_hf.tasks import TASKS
from lewm_hf.tasks.runner import run_recipe, validate_recipe

REPO = Path(__file__).resolve().parents[1]

TINY_LM = {
    "name": "encoder",
    "task": "lm",
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_steps": 2,
    "per_device_train_batch_size": 8,
    "eval_strategy": "no",
    "save_strategy": "no",
}
# What each task's card says it is (`lewm_hf.hub.CARDS`).
CARD_WORDS = {
    "lm": "random walks",
    "world_model": "graph-walk vertices",
    "dna_lm": "genome windows",
    "edit_world_model": "DNA edits",
    "trajectory_world_model": "trajectory dataset",
}


def dna_recipe(tmp_path: Path, cache_dir: str) -> Path:
    path = tmp_path / "dna.yaml"
    path.write_text(DNA_RECIPE.format(out=tmp_path / "dna_out", cache=cache_dir))
    return path


def check_pushed(folder: Path, out: Path, task: str, repo: str) -> None:
    """The final model (weights, config), its result and card were pushed; no checkpoint."""
    files = files_in(folder)
    assert {"model.safetensors", "config.json", "README.md", "result.json"} <= files
    assert not any(f.startswith("checkpoint-") for f in files), files
    for file in ("model.safetensors", "README.md", "result.json"):
        assert (folder / file).read_bytes() == (out / file).read_bytes(), file
    card = ModelCard.load(folder / "README.md")
    assert CARD_WORDS[task] in card.text, task
    assert repo in card.text  # the loading snippet names the repo


# Tasks that write data and train no model (nothing to push, no saved model to start from).
DATA_TASKS = {"env_rollouts"}


def test_every_task_pushes_its_final_model_and_card(tmp_path, cache_dir, hub):  # noqa: F811
    # The walk tasks through the runner, the DNA tasks through the entry script's flags.
    walks = write_recipe(tmp_path / "walks", cache_dir, [TINY_LM, {**TINY_WORLD_MODEL}])
    summary = run_recipe(walks, [("push_to_hub", True), ("hub_model_id", "me/walks")])
    for name, phase in summary["phases"].items():
        out = Path(phase["output_dir"])
        check_pushed(hub.root / f"me/walks-{name}", out, phase["task"], f"me/walks-{name}")
    train_main = runpy.run_path(str(REPO / "recipes" / "train.py"))["main"]
    dna = dna_recipe(tmp_path, cache_dir)
    flags = ["--config", str(dna), "--push_to_hub", "true", "--hub_model_id", "me/dna"]
    assert train_main(flags) == 0
    for name, task in (("encoder", "dna_lm"), ("world_model", "edit_world_model")):
        out = tmp_path / "dna_out" / name
        check_pushed(hub.root / f"me/dna-{name}", out, task, f"me/dna-{name}")
    # The trajectory task pushes in tests/test_trajectories.py (its offline Hub round trip).
    tested = {"dna_lm", "edit_world_model", "trajectory_world_model"}
    assert {p["task"] for p in summary["phases"].values()} | tested == set(TASKS) - DATA_TASKS
    # The DNA phases ship their tokenizer; the DNA world model's card has its evaluation rows.
    assert "tokenizer.json" in files_in(hub.root / "me/dna-encoder")
    card = ModelCard.load(hub.root / "me/dna-world_model" / "README.md")
    assert "eval_snv_recovery_r1" in card.text and "eval_edit_action_r1" in card.text
    assert "dna" in card.data.tags and "graph-walks" not in card.data.tags


def test_a_phase_own_hub_model_id_is_kept_and_two_equal_ones_are_refused(tmp_path, cache_dir):
    recipe = write_recipe(
        tmp_path, cache_dir, [{**TINY_LM, "hub_model_id": "me/lm"}, {**TINY_WORLD_MODEL}]
    )
    plans = validate_recipe(recipe, [("push_to_hub", True)])
    assert [p.args.training.hub_model_id for p in plans] == ["me/lm", "run-world_model"]
    # The control: the same repo set in both phases is refused.
    recipe = write_recipe(
        tmp_path,
        cache_dir,
        [{**TINY_LM, "hub_model_id": "me/x"}, {**TINY_WORLD_MODEL, "hub_model_id": "me/x"}],
    )
    with pytest.raises(LeWMConfigError) as info:
        validate_recipe(recipe, [("push_to_hub", True)])
    assert info.value.field == "hub_model_id"


# ---- recipe keys on a saved model: applied or rejected -----------------------------------
def save_lm(folder: Path, vocab_size: int) -> Path:
    config = AutoConfig.for_model(
        "llama",
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def save_world_model(folder: Path, **kwargs) -> Path:
    config = LeWMConfig(
        d_state=16,
        d_model=32,
        predictor_layers=1,
        predictor_heads=2,
        projector_hidden=32,
        action_hidden=16,
        sigreg_num_slices=16,
        **kwargs,
    )
    LeWMModel(config).save_pretrained(folder)
    return folder


def lm_phase(task: str, path: Path, **keys) -> dict:
    return {
        "name": "start",
        "task": task,
        "model_name_or_path": str(path),
        "max_steps": 1,
        "per_device_train_batch_size": 4,
        "eval_strategy": "no",
        "save_strategy": "no",
        **keys,
    }


def wm_phase(task: str, path: Path, **keys) -> dict:
    phase = {
        "name": "start",
        "task": task,
        "model_name_or_path": str(path),
        "encoder_path": None,
        "max_steps": 1,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 16,
        "eval_strategy": "no",
        "save_strategy": "no",
        "collapse_monitor_steps": 0,
        "run_evaluation": False,
        **keys,
    }
    if task == "world_model":
        phase.update(num_clips=32, eval_clips=16, history_length=2)
    if task == "trajectory_world_model":  # the dataset `save_trajectory_world_model` wrote
        phase.update(dataset_name=str(path.parent / "trajectories"))
    return phase


def save_trajectory_world_model(folder: Path) -> Path:
    """A saved world model and, beside it, a trajectory dataset it reads (10 tokens, 3 actions,
    rows of 2 actions)."""
    rng = np.random.default_rng(0)
    info = TrajectoryInfo(vocab_size=10, num_actions=3, window_length=4)
    for split in ("train", "test"):
        rows = {"input_ids": rng.integers(0, 10, (8, 3, 4)), "actions": rng.integers(0, 3, (8, 2))}
        write_trajectories(rows, info, folder.parent / "trajectories", split)
    return save_world_model(folder, vocab_size=10, history_length=2, action_vocab_size=3)


DNA_CORPUS = {
    "synthetic_records": 1,
    "synthetic_length": 2000,
    "window_length": 32,
    "window_stride": 16,
    "margin": 6,
    "max_actions": 2,
    "max_indel_len": 3,
    "mnv_max_len": 3,
}


DNA_SOURCE_KEYS = ("synthetic_records", "synthetic_length", "window_length", "window_stride")


def one_phase_recipe(tmp_path: Path, cache_dir: str, phase: dict) -> Path:
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "seed": 0,
        "disable_tqdm": True,
        "report_to": "none",
        "corpus_cache_dir": cache_dir,
        **phase,
    }
    if phase["task"] in ("lm", "world_model"):
        recipe.update(corpus_preset="small", corpus=CORPUS)
    elif phase["task"] == "trajectory_world_model":  # a dataset, no corpus
        del recipe["corpus_cache_dir"]
    elif phase["task"] == "dna_lm":  # the genome and its windows only (`DNASourceConfig`)
        recipe.update({k: DNA_CORPUS[k] for k in DNA_SOURCE_KEYS})
    else:
        recipe.update(DNA_CORPUS)
    path = tmp_path / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


# Per task: the saved model, a key applied on top of it (and where the output shows it), a key
# the saved model fixes (with a value it does not have).
SAVED_CASES = {
    "lm": (
        lambda d: save_lm(d, 100),
        lm_phase,
        {"model_config_overrides": {"rms_norm_eps": 1e-3}},
        ("rms_norm_eps", 1e-3),
        {"hidden_size": 32},
    ),
    "dna_lm": (
        lambda d: save_lm(d, 7),
        lm_phase,
        {"model_config_overrides": {"rms_norm_eps": 1e-3}},
        ("rms_norm_eps", 1e-3),
        {"num_hidden_layers": 3},
    ),
    "world_model": (
        lambda d: save_world_model(d, vocab_size=100, history_length=2, action_vocab_size=64),
        wm_phase,
        {"reg_weight": 0.25},
        ("reg_weight", 0.25),
        {"d_state": 8},
    ),
    "edit_world_model": (
        lambda d: save_world_model(
            d,
            vocab_size=7,
            history_length=2,
            num_action_ops=3,
            pooling="centered",
            action_position_origin="locus",
            action_reference_offset=7,
            action_vocab_size=14,
        ),
        wm_phase,
        {"reg_weight": 0.25},
        ("reg_weight", 0.25),
        {"action_position_origin": "window"},
    ),
    "trajectory_world_model": (
        save_trajectory_world_model,
        wm_phase,
        {"reg_weight": 0.25},
        ("reg_weight", 0.25),
        {"d_state": 8},
    ),
}


@pytest.mark.parametrize("task", sorted(SAVED_CASES))
def test_a_recipe_key_on_a_saved_model_is_applied_or_rejected(tmp_path, cache_dir, task):
    assert set(SAVED_CASES) == set(TASKS) - DATA_TASKS
    save, phase, applied, (field, value), fixed = SAVED_CASES[task]
    saved = save(tmp_path / "saved")
    summary = run_recipe(one_phase_recipe(tmp_path / "a", cache_dir, phase(task, saved, **applied)))
    out = Path(summary["phases"]["start"]["output_dir"])
    assert json.loads((out / "config.json").read_text())[field] == value
    # The control: without the key the saved value stays (so the check above can fail).
    assert json.loads((saved / "config.json").read_text())[field] != value
    with pytest.raises(LeWMConfigError) as info:
        run_recipe(one_phase_recipe(tmp_path / "b", cache_dir, phase(task, saved, **fixed)))
    assert info.value.field == next(iter(fixed)), str(info.value)
    assert "is fixed by model_name_or_path" in str(info.value)


# ---- bad starts ---------------------------------------------------------------------------
def test_model_name_or_path_of_an_lm_is_not_a_world_model(tmp_path, cache_dir):
    lm = save_lm(tmp_path / "lm", 100)
    recipe = one_phase_recipe(tmp_path, cache_dir, wm_phase("world_model", lm))
    with pytest.raises(LeWMConfigError) as info:
        run_recipe(recipe)
    assert info.value.field == "model_name_or_path"
    assert "is not a LeWM world model" in str(info.value) and "encoder_path" in str(info.value)


def test_resuming_from_another_tasks_checkpoint_is_a_typed_error(tmp_path, cache_dir):
    # An LM checkpoint (a Trainer checkpoint of the encoder phase) for a world-model phase.
    lm = write_recipe(
        tmp_path / "lm", cache_dir, [{**TINY_LM, "save_strategy": "steps", "save_steps": 2}]
    )
    summary = run_recipe(lm)
    checkpoint = Path(summary["phases"]["encoder"]["output_dir"]) / "checkpoint-2"
    assert checkpoint.is_dir()
    world = write_recipe(tmp_path / "wm", cache_dir, [{**TINY_WORLD_MODEL, "max_steps": 2}])
    with pytest.raises(LeWMConfigError) as info:
        run_recipe(world, [("resume_from_checkpoint", str(checkpoint))])
    assert info.value.field == "resume_from_checkpoint"
    assert "'llama'" in str(info.value) and "'lewm'" in str(info.value)


def test_resuming_from_a_world_model_of_another_size_is_a_typed_error(tmp_path, cache_dir):
    small = {**TINY_WORLD_MODEL, "max_steps": 2, "save_strategy": "steps", "save_steps": 2}
    summary = run_recipe(write_recipe(tmp_path / "a", cache_dir, [small]))
    checkpoint = Path(summary["phases"]["world_model"]["output_dir"]) / "checkpoint-2"
    wider = write_recipe(tmp_path / "b", cache_dir, [{**small, "d_state": 8}])
    with pytest.raises(LeWMConfigError) as info:
        run_recipe(wider, [("resume_from_checkpoint", str(checkpoint))])
    assert info.value.field == "resume_from_checkpoint" and "shape" in str(info.value)


def test_encoder_path_beside_a_whole_saved_model_is_refused(tmp_path, cache_dir):
    saved = tmp_path / "saved"
    recipe = one_phase_recipe(
        tmp_path, cache_dir, wm_phase("world_model", saved, encoder_path="some/encoder")
    )
    with pytest.raises(LeWMConfigError) as info:
        validate_recipe(recipe)
    assert info.value.field == "encoder_path"


def test_an_edit_key_on_a_dna_lm_phase_is_unknown_there(tmp_path, cache_dir):
    # A two-phase DNA recipe sets the corpus keys once; the edit keys reach the edit phase only.
    plans = validate_recipe(dna_recipe(tmp_path, cache_dir))
    assert plans[1].args.domain.data.max_actions == 2 and not hasattr(plans[0].args.data, "margin")
    with pytest.raises(LeWMConfigError) as info:
        validate_recipe(dna_recipe(tmp_path, cache_dir), [("encoder.margin", 3)])
    assert info.value.field == "phases.0.margin" and "unknown key" in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("action_position_origin", "locus"),
        ("action_reference_offset", 8),
        ("num_action_ops", 3),
        ("pooling", "centered"),
    ],
)
def test_edit_action_keys_on_a_walk_world_model_are_refused(tmp_path, cache_dir, key, value):
    phase = {**TINY_WORLD_MODEL, key: value}
    with pytest.raises(LeWMConfigError) as info:
        validate_recipe(write_recipe(tmp_path, cache_dir, [phase]))
    assert info.value.field == key


def test_a_script_only_training_flag_is_refused_in_every_task(tmp_path, cache_dir):
    # `do_predict` is read by training scripts, never by a Trainer: no task may accept it.
    walks = write_recipe(tmp_path / "walks", cache_dir, [TINY_LM, {**TINY_WORLD_MODEL}])
    dna = dna_recipe(tmp_path, cache_dir)
    for recipe in (walks, dna):
        for phase in ("encoder", "world_model"):
            with pytest.raises(LeWMConfigError) as info:
                validate_recipe(recipe, [(f"{phase}.do_predict", True)])
            assert info.value.field == "do_predict", str(info.value)
    # The control: an honoured field is accepted in every phase.
    for recipe in (walks, dna):
        plans = validate_recipe(recipe, [("weight_decay", 0.125)])
        assert [p.args.training.weight_decay for p in plans] == [0.125, 0.125]
