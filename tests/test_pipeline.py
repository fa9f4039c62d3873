"""End-to-end recipe runs: the compliance gate, failure metadata, resume, two phases, CLI errors.

Every run is tiny (300 walks of 32 vertices on the `small` preset's graph with w = 8, a one-layer
Llama of width 32, a few steps), so the whole file runs in about a minute on two CPU cores.
"""

from __future__ import annotations

import json
import runpy
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _builders import TINY_PHASE_MODEL, held_out_batch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM

import lewm_hf  # noqa: F401  (registers the `lewm` model type)
from lewm_hf import metric_keys as K
from lewm_hf.errors import LeWMConfigError
from lewm_hf.losses import prediction_loss
from lewm_hf.reporting import format_summary
from lewm_hf.tasks.runner import run_recipe, validate_recipe

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "recipes" / "train.py"

# A gate that any model passes at its first evaluation, and one that no model passes.
EASY_GATE = {"gate_edge_threshold": 0.0, "gate_rule_threshold": 0.0, "gate_min_rule_checks": 0}
HARD_GATE = {"gate_min_rule_checks": 10**9}


def lm_phase(**overrides) -> dict:
    """A tiny encoder phase: sampled-decoding gate on 32 sequences, evaluation every 2 steps."""
    phase = {
        "name": "encoder",
        "task": "lm",
        "model_type": "llama",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 64,
        "learning_rate": 3e-3,
        "warmup_steps": 0,
        "eval_strategy": "steps",
        "eval_steps": 2,
        "save_strategy": "no",
        "gate_decoding": "sample",
        "gate_log_other_decoding": False,
        "gate_num_sequences": 32,
    }
    return {**phase, **overrides}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def same_weights(a: Path, b: Path) -> bool:
    """Whether two `model.safetensors` files hold bitwise equal tensors under the same names."""
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.fixture(scope="module")
def gate_run(tmp_path_factory, cache_dir, write_walk_recipe) -> tuple[Path, dict]:
    """An encoder phase whose gate passes at its first evaluation (step 2), saving every step
    with `save_total_limit=1`. Returns the recipe and the summary."""
    tmp_path = tmp_path_factory.mktemp("gate")
    phase = lm_phase(
        **EASY_GATE, max_steps=20, save_strategy="steps", save_steps=1, save_total_limit=1
    )
    recipe = write_walk_recipe(tmp_path, cache_dir, [phase])
    return recipe, run_recipe(recipe)


def test_gate_stops_training_and_checkpoint_survives_rotation(gate_run):
    recipe, summary = gate_run
    out = recipe.parent / "run" / "encoder"
    enc = summary["phases"]["encoder"]
    assert enc[K.GATE_PASSED] and enc["gate_step"] == 2 and enc["global_step"] == 2
    assert enc["model_path"] == str(out / K.GATE_CHECKPOINT)
    # checkpoint-1 was rotated away by save_total_limit=1; the gate checkpoint was not.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    gate_weights = out / K.GATE_CHECKPOINT / K.SAFE_WEIGHTS_FILE
    assert same_weights(gate_weights, out / "checkpoint-2" / K.SAFE_WEIGHTS_FILE)
    AutoModelForCausalLM.from_pretrained(out / K.GATE_CHECKPOINT)

    result = read_json(out / K.RESULT_FILE)
    assert result[K.GATE_PASSED] is True and result["gate_step"] == 2
    assert result["global_step"] == 2
    assert result["curves"][K.TRAIN_LOSS]["step"] == [1, 2]
    assert result["curves"][K.EDGE_COMPLIANCE]["step"] == [2]
    assert result["curves"][K.RULE_COMPLIANCE]["step"] == [2]
    assert "failure_reason" not in result
    assert read_json(recipe.parent / "run" / K.SUMMARY_FILE)["phases"]["encoder"][K.GATE_PASSED]


def test_resume_after_gate_pass_keeps_gate_checkpoint(gate_run, tmp_path):
    recipe, _ = gate_run
    root = tmp_path / "run"
    shutil.copytree(recipe.parent / "run", root)
    gate_before = tmp_path / "gate_before.safetensors"
    shutil.copy(root / "encoder" / K.GATE_CHECKPOINT / K.SAFE_WEIGHTS_FILE, gate_before)

    summary = run_recipe(recipe, [("output_dir", str(root)), ("resume_from_checkpoint", True)])

    enc = summary["phases"]["encoder"]
    assert enc[K.GATE_PASSED] and enc["gate_step"] == 2
    assert enc["global_step"] == 2  # no training past the pass
    assert same_weights(gate_before, root / "encoder" / K.GATE_CHECKPOINT / K.SAFE_WEIGHTS_FILE)


def test_failed_gate_writes_failure_metadata(tmp_path, cache_dir, write_walk_recipe):
    run_recipe(write_walk_recipe(tmp_path, cache_dir, [lm_phase(**HARD_GATE, max_steps=4)]))

    out = tmp_path / "run" / "encoder"
    result = read_json(out / K.RESULT_FILE)
    assert result[K.GATE_PASSED] is False
    assert "too few rule checks" in result["failure_reason"]
    assert isinstance(result["final_edge_compliance"], float)
    assert isinstance(result["final_rule_compliance"], float)
    assert result["curves"][K.EDGE_COMPLIANCE]["step"] == [2, 4]
    assert result["curves"][K.RULE_COMPLIANCE]["step"] == [2, 4]
    assert result["curves"][K.TRAIN_LOSS]["step"] == [1, 2, 3, 4]
    assert not (out / K.GATE_CHECKPOINT).exists()
    summary = read_json(tmp_path / "run" / K.SUMMARY_FILE)
    assert summary["phases"]["encoder"][K.GATE_PASSED] is False
    assert "too few rule checks" in summary["phases"]["encoder"]["failure_reason"]


KILL_AT_STEP_3 = """
import os, signal, sys
from lewm_hf.tasks.runner import run_recipe
from lewm_hf.trainer.callbacks import ComplianceGateCallback

def on_save(self, args, state, control, **kwargs):
    # Called right after the Trainer wrote checkpoint-<step> (weights, optimizer, RNG, state).
    if state.global_step == 3:
        os.kill(os.getpid(), signal.SIGKILL)

ComplianceGateCallback.on_save = on_save
run_recipe(sys.argv[1])
"""


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, cache_dir, write_walk_recipe):
    phase = lm_phase(**HARD_GATE, max_steps=6, eval_steps=3, save_strategy="steps", save_steps=3)
    full = write_walk_recipe(tmp_path / "full", cache_dir, [phase])
    killed = write_walk_recipe(tmp_path / "killed", cache_dir, [phase])
    script = tmp_path / "kill_at_step_3.py"
    script.write_text(KILL_AT_STEP_3)

    proc = subprocess.run(
        [sys.executable, str(script), str(killed)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    killed_out = tmp_path / "killed" / "run" / "encoder"
    assert (killed_out / "checkpoint-3" / K.TRAINER_STATE_FILE).is_file()
    assert not (killed_out / K.RESULT_FILE).exists()

    resumed = run_recipe(killed, [("resume_from_checkpoint", True)])
    run_recipe(full)

    assert resumed["phases"]["encoder"]["global_step"] == 6
    full_out = tmp_path / "full" / "run" / "encoder"
    assert same_weights(full_out / K.SAFE_WEIGHTS_FILE, killed_out / K.SAFE_WEIGHTS_FILE)
    loss_full = read_json(full_out / K.RESULT_FILE)["curves"]
    loss_resumed = read_json(killed_out / K.RESULT_FILE)["curves"]
    assert loss_resumed[K.TRAIN_LOSS]["step"] == [1, 2, 3, 4, 5, 6]
    assert loss_resumed[K.TRAIN_LOSS] == loss_full[K.TRAIN_LOSS]
    assert loss_resumed[K.EDGE_COMPLIANCE]["step"] == [3, 6]
    assert loss_resumed[K.EDGE_COMPLIANCE] == loss_full[K.EDGE_COMPLIANCE]


WORLD_MODEL_PHASE = {
    "name": "world_model",
    "task": "world_model",
    "encoder_path": "previous",
    "encoder_mode": "frozen",
    **TINY_PHASE_MODEL,
    "num_clips": 128,
    "eval_clips": 32,
    "max_steps": 4,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "save_strategy": "no",
    "run_evaluation": False,
}


def held_out_mse(model_dir: Path, recipe: Path, cache_dir: str) -> tuple[float, float]:
    """Independent re-evaluation of a saved world model: pred and copy MSE on the held-out clips
    (one batch of 32, as the trainer's evaluation)."""
    batch = held_out_batch(recipe, cache_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        out = model(**batch)
    pred = prediction_loss(out.predictions, out.targets, None, "mse").item()
    copy = prediction_loss(out.latents[:, :-1], out.targets, None, "mse").item()
    return pred, copy


def test_two_phase_recipe_cli(tmp_path, cache_dir, write_walk_recipe):
    world_model = dict(WORLD_MODEL_PHASE)
    encoder = lm_phase(**EASY_GATE, max_steps=10)
    recipe = write_walk_recipe(tmp_path, cache_dir, [encoder, world_model])

    # An unprefixed flag reaches the phases whose task has the key (here the world model).
    proc = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "--config", str(recipe), "--reg_weight", "3.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    summary = read_json(run / K.SUMMARY_FILE)
    assert format_summary(summary) in proc.stdout
    assert summary["phases"]["encoder"][K.GATE_PASSED] is True
    wm = summary["phases"]["world_model"]
    assert wm["encoder_path"] == str(run / "encoder" / K.GATE_CHECKPOINT)
    # The reported numbers are those of the saved model on the held-out clips.
    pred, copy = held_out_mse(run / "world_model", recipe, cache_dir)
    assert wm[K.EVAL_PRED_MSE] == pytest.approx(pred, rel=1e-5)
    assert wm[K.EVAL_COPY_MSE] == pytest.approx(copy, rel=1e-5)
    assert read_json(run / "world_model" / K.CONFIG_FILE)["reg_weight"] == 3.0
    assert wm["reg_weight"] == 3.0
    for name in ("encoder", "world_model"):
        assert (run / name / K.RESULT_FILE).is_file()
        assert (run / name / K.CURVES_PLOT).is_file()

    wm_dir = run / "world_model"
    assert read_json(wm_dir / K.CONFIG_FILE)["model_type"] == "lewm"
    model = AutoModel.from_pretrained(wm_dir)
    assert type(model).__name__ == "LeWMModel"
    # The frozen encoder is exactly the gate checkpoint's backbone (`model.*` of the causal LM).
    gate = load_file(run / "encoder" / K.GATE_CHECKPOINT / K.SAFE_WEIGHTS_FILE)
    saved = load_file(wm_dir / K.SAFE_WEIGHTS_FILE)
    encoder = {k.removeprefix("encoder."): v for k, v in saved.items() if k.startswith("encoder.")}
    backbone = {k.removeprefix("model."): v for k, v in gate.items() if k.startswith("model.")}
    assert encoder.keys() == backbone.keys()
    for key in encoder:
        assert torch.equal(encoder[key], backbone[key]), key


def test_cli_unknown_key_and_missing_config_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: lm\nlearning_rat: 0.1\n")
    proc = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "learning_rat" in proc.stderr and str(bad) in proc.stderr

    # The same entry point in-process (saves a second interpreter start).
    main = runpy.run_path(str(TRAIN_SCRIPT))["main"]
    missing = tmp_path / "nope.yaml"
    assert main(["--config", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


SHIPPED_TASKS = {
    "default.yaml": ["lm", "world_model"],
    "dna_lewm.yaml": ["dna_lm", "edit_world_model"],
    "dna_lewm_genome.yaml": ["dna_lm", "edit_world_model"],
    "anchor.yaml": ["lm", "world_model"],
    "walk_lm.yaml": ["lm"],
    "walk_lewm.yaml": ["world_model"],
    "walk_lewm_lora.yaml": ["world_model"],
    "walk_lewm_wide.yaml": ["lm", "world_model"],
    "taxi_lewm.yaml": ["env_rollouts", "trajectory_world_model"],
}


def test_every_shipped_recipe_is_listed():
    assert sorted(p.name for p in (REPO / "recipes" / "configs").glob("*.yaml")) == sorted(
        SHIPPED_TASKS
    )


@pytest.mark.parametrize("config", sorted(SHIPPED_TASKS))
def test_shipped_recipes_validate(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative output dirs must not land in the repo
    plans = validate_recipe(REPO / "recipes" / "configs" / config)
    assert [plan.task for plan in plans] == SHIPPED_TASKS[config]
    assert not any(tmp_path.iterdir())  # validating creates nothing


def test_bad_corpus_field_fails_before_training(tmp_path, cache_dir, write_walk_recipe):
    recipe = write_walk_recipe(tmp_path, cache_dir, [lm_phase(corpus={"num_blocks": 3})])
    with pytest.raises(LeWMConfigError, match="num_blocks"):
        run_recipe(recipe)
    assert not (tmp_path / "run").exists()


def test_format_summary_rows():
    summary = {
        "output_dir": "out",
        "wall_time_s": 12.34,
        "phases": {
            "encoder": {
                "task": "lm",
                K.GATE_PASSED: True,
                K.EDGE_COMPLIANCE: 1.0,
                K.RULE_COMPLIANCE: 0.9621,
                "final_train_loss": 2.68214,
                "global_step": 500,
                "wall_time_s": 205.61,
            },
            "lm2": {
                "task": "lm",
                K.GATE_PASSED: False,
                "failure_reason": "too few rule checks (3 < 100)",
                K.EDGE_COMPLIANCE: None,
                K.RULE_COMPLIANCE: None,
                "final_train_loss": None,
                "global_step": 4,
                "wall_time_s": 1.0,
            },
            "world_model": {
                "task": "world_model",
                K.EVAL_PRED_MSE: 1.671,
                K.EVAL_COPY_MSE: 102.4,
                "final_pred_loss": 4.498,
                "final_reg_loss": 1.678,
                "global_step": 939,
                "wall_time_s": 170.9,
            },
        },
    }
    lines = format_summary(summary).splitlines()
    assert lines[0].split() == "phase task steps final loss gate / eval time (s)".split()
    assert set(lines[1]) == {"-", " "}
    assert lines[2].split() == "encoder lm 500 2.682 passed (edge 1, rule 0.9621) 205.6".split()
    assert "failed: too few rule checks (3 < 100) (edge -, rule -)" in lines[3]
    assert lines[4].split()[:7] == [
        "world_model",
        "world_model",
        "939",
        "pred",
        "4.498",
        "reg",
        "1.678",
    ]
    assert "pred MSE 1.671 vs copy 102.4 (ratio 0.01632)" in lines[4]
    assert lines[-1] == "total wall time 12.3s; outputs in out"


def test_format_summary_rows_of_the_dna_phases():
    summary = {
        "output_dir": "out",
        "wall_time_s": 96.7,
        "phases": {
            "encoder": {
                "task": "dna_lm",
                "final_train_loss": 1.3671,
                "final_eval_loss": 1.3619,
                "global_step": 150,
                "wall_time_s": 14.28,
            },
            "world_model": {
                "task": "edit_world_model",
                K.EVAL_PRED_MSE: 1.196,
                K.EVAL_COPY_MSE: 5.478,
                "final_pred_loss": 1.031,
                "final_reg_loss": 2.403,
                K.EVAL_SNV_RECOVERY_R1: 0.8555,
                K.EVAL_SNV_RECOVERY_R1_COPY: 0.0,
                K.EVAL_SNV_RECOVERY_CHANCE: 0.005208,
                K.EVAL_EDIT_ACTION_R1: 0.6399,
                K.EVAL_EDIT_ACTION_R1_COPY: 0.06406,
                K.EVAL_EDIT_ACTION_CHANCE: 0.05693,
                "global_step": 2000,
                "wall_time_s": 82.41,
            },
        },
    }
    lines = format_summary(summary).splitlines()
    assert lines[2].split() == "encoder dna_lm 150 1.367 eval loss 1.362 14.28".split()
    assert "pred MSE 1.196 vs copy 5.478 (ratio 0.2183)" in lines[3]
    assert lines[4] == (
        "world_model evaluation: SNV recovery R@1 0.8555 (copy 0, chance 0.005208); "
        "edit action R@1 0.6399 (copy 0.06406, chance 0.05693)"
    )


def test_world_model_encoder_from_scratch_and_from_a_local_path(
    gate_run, tmp_path, cache_dir, write_walk_recipe
):
    recipe_gate, _ = gate_run
    gate_dir = recipe_gate.parent / "run" / "encoder" / K.GATE_CHECKPOINT
    fresh = write_walk_recipe(
        tmp_path / "fresh", cache_dir, [{**WORLD_MODEL_PHASE, "encoder_path": None, "max_steps": 2}]
    )
    summary = run_recipe(fresh)["phases"]["world_model"]
    assert summary["encoder_path"] is None
    config = read_json(tmp_path / "fresh" / "run" / "world_model" / K.CONFIG_FILE)
    # The default tiny Llama, sized to the graph's 100 vertices.
    assert config["encoder_config"]["vocab_size"] == 100
    assert config["encoder_config"]["hidden_size"] == 64

    local = write_walk_recipe(
        tmp_path / "local",
        cache_dir,
        [{**WORLD_MODEL_PHASE, "encoder_path": str(gate_dir), "max_steps": 2}],
    )
    summary = run_recipe(local)["phases"]["world_model"]
    assert summary["encoder_path"] == str(gate_dir)
    saved = load_file(tmp_path / "local" / "run" / "world_model" / K.SAFE_WEIGHTS_FILE)
    gate = load_file(gate_dir / K.SAFE_WEIGHTS_FILE)
    for key, value in gate.items():
        if key.startswith("model."):
            assert torch.equal(saved["encoder." + key.removeprefix("model.")], value), key


def test_greedy_gate_with_sampled_logging(tmp_path, cache_dir, write_walk_recipe):
    phase = lm_phase(**EASY_GATE, max_steps=2, gate_decoding="greedy", gate_log_other_decoding=True)
    recipe = write_walk_recipe(tmp_path, cache_dir, [phase])
    enc = run_recipe(recipe)["phases"]["encoder"]
    out = tmp_path / "run" / "encoder"
    result = read_json(out / K.RESULT_FILE)
    # The gate's numbers are greedy decoding's; sampled decoding is logged beside them, and
    # both equal a direct evaluation of the gate checkpoint with the gate's settings.
    from lewm_hf.data.walks import build_walk_corpus, load_walk_metadata
    from lewm_hf.evaluation.compliance import evaluate_compliance

    plan = validate_recipe(recipe)[0]
    corpus = build_walk_corpus(plan.args.data.corpus_config(), cache_dir)
    meta = load_walk_metadata(corpus)
    model = AutoModelForCausalLM.from_pretrained(out / K.GATE_CHECKPOINT)
    prompts = corpus["validation_walks"]["walk"]
    for decoding, key in (("greedy", K.RULE_COMPLIANCE), ("sample", "sampled_rule_compliance")):
        direct = evaluate_compliance(
            model,
            meta.graph,
            meta.jumpers,
            prompts,
            8,
            **plan.args.training.compliance_kwargs(decoding),
        )
        assert result[key] == pytest.approx(direct.rule_compliance, abs=1e-12), decoding
    assert enc["greedy_rule_compliance"] == result[K.RULE_COMPLIANCE]
    assert enc["sampled_rule_compliance"] == result["sampled_rule_compliance"]
    assert result["gate"]["decoding"] == "greedy"
    assert result["curves"]["sampled_rule_compliance"]["step"] == [2]
    assert result["curves"]["greedy_rule_compliance"]["step"] == []


def test_empty_phases_exit_2(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("phases: []\n")
    main = runpy.run_path(str(TRAIN_SCRIPT))["main"]
    assert main(["--config", str(recipe)]) == 2
    assert "phases=[]: is empty" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()
