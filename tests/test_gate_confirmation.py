"""The compliance gate's confirmation: at a pass, the passing model is evaluated again on fresh
held-out walks with another sampling seed, and the gate passes only if that passes too."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from transformers import AutoModelForCausalLM, TrainerControl, TrainerState

from lewm_hf import metric_keys as K
from lewm_hf.data.walks import build_walk_corpus, generate_walks, load_walk_metadata
from lewm_hf.determinism import derive_seed
from lewm_hf.evaluation.compliance import ComplianceResult, evaluate_compliance
from lewm_hf.tasks.runner import run_recipe, validate_recipe
from lewm_hf.trainer.callbacks import ComplianceGateCallback
from lewm_hf.trainer.lewm_config import WalkLMTrainingArguments

EASY_GATE = {"gate_edge_threshold": 0.0, "gate_rule_threshold": 0.0, "gate_min_rule_checks": 0}


def lm_phase(**overrides) -> dict:
    """A tiny encoder phase: sampled-decoding gate on 32 sequences, evaluation every 2 steps."""
    phase = {
        "name": "encoder", "task": "lm", "model_type": "llama", "hidden_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
        "per_device_train_batch_size": 16, "per_device_eval_batch_size": 64,
        "learning_rate": 3e-3, "warmup_steps": 0, "eval_strategy": "steps", "eval_steps": 2,
        "save_strategy": "no", "gate_decoding": "sample", "gate_log_other_decoding": False,
        "gate_num_sequences": 32,
    }  # fmt: skip
    return {**phase, **overrides}


def test_gate_pass_records_a_confirmation_on_fresh_walks(tmp_path, cache_dir, write_walk_recipe):
    recipe = write_walk_recipe(tmp_path, cache_dir, [lm_phase(**EASY_GATE, max_steps=4)])
    enc = run_recipe(recipe)["phases"]["encoder"]
    out = tmp_path / "run" / "encoder"
    result = json.loads((out / K.RESULT_FILE).read_text())
    assert result[K.GATE_PASSED] and result[K.GATE_CONFIRMED] is True
    # The confirmation equals a direct evaluation of the gate checkpoint on fresh walks of the
    # graph with the confirmation's seeds, and differs from the gate's own evaluation.
    plan = validate_recipe(recipe)[0]
    corpus = build_walk_corpus(plan.args.data.corpus_config(), cache_dir)
    meta = load_walk_metadata(corpus)
    prompts = corpus["validation_walks"]["walk"]
    fresh = generate_walks(meta.graph, meta.jumpers, 32, len(prompts[0]),
                           seed=derive_seed(0, "gate-confirmation-walks"))  # fmt: skip
    kwargs = plan.args.training.compliance_kwargs("sample")
    kwargs["seed"] = derive_seed(0, "gate-confirmation")
    model = AutoModelForCausalLM.from_pretrained(out / K.GATE_CHECKPOINT)
    direct = evaluate_compliance(model, meta.graph, meta.jumpers, fresh, 8, **kwargs)
    assert result[K.GATE_CONFIRMED_RULE_COMPLIANCE] == pytest.approx(direct.rule_compliance)
    assert result[K.GATE_CONFIRMED_RULE_CHECKS] == direct.rule_checks
    assert result[K.GATE_CONFIRMED_DISTINCT_FRACTION] == pytest.approx(direct.distinct_fraction)
    assert (result[K.GATE_CONFIRMED_RULE_CHECKS], result[K.GATE_CONFIRMED_RULE_COMPLIANCE]) != (
        result[K.RULE_CHECKS], result[K.RULE_COMPLIANCE])  # fmt: skip
    for key in (K.GATE_CONFIRMED_RULE_COMPLIANCE, K.GATE_CONFIRMED_RULE_CHECKS):
        assert enc[key] == result[key]  # the phase summary (summary.json) holds them


def compliance(rule: float, checks: int) -> ComplianceResult:
    return ComplianceResult(
        edge_compliance=1.0, rule_compliance=rule, rule_checks=checks, edge_steps=1000,
        distinct_fraction=1.0, step_classes={}, num_sequences=10, length=32,
    )  # fmt: skip


class FakeTrainer:
    """What the callback uses of a `WalkLMTrainer`: its arguments, `log` and `save_model`."""

    def __init__(self, args: WalkLMTrainingArguments):
        self.args = args
        self.model = object()
        self.accelerator = SimpleNamespace(unwrap_model=lambda m: m)
        self.saved: list[str] = []
        self.state = TrainerState()

    def log(self, logs: dict) -> None:
        self.state.log_history.append({**logs, "step": self.state.global_step})

    def save_model(self, path: str) -> None:
        self.saved.append(path)


@pytest.mark.parametrize("confirm", [True, False])
def test_a_pass_that_the_confirmation_refutes_does_not_stop_training(tmp_path, confirm):
    args = WalkLMTrainingArguments(output_dir=str(tmp_path), gate_rule_threshold=0.8,
                                   gate_min_rule_checks=100, gate_confirm=confirm)  # fmt: skip
    trainer = FakeTrainer(args)
    gate = ComplianceGateCallback(trainer, None, [], SimpleNamespace(shape=(4, 32)), 8)
    gate.evaluate = lambda model, decoding: compliance(0.84, 500)  # the noisy maximum
    gate.confirm = lambda model, decoding: compliance(0.79, 480)  # fresh walks, another seed
    trainer.state.global_step = 750
    control = gate.on_evaluate(args, trainer.state, TrainerControl())
    logged = trainer.state.log_history[-1]
    if confirm:
        assert not control.should_training_stop and trainer.saved == []
        assert logged[K.EVAL_GATE_PASSED] == 0.0 and logged[K.EVAL_GATE_CONFIRMED] == 0.0
        assert "confirmation" in gate.last_failure
        result = gate.result(trainer.state)
        assert result[K.GATE_PASSED] is False and result[K.GATE_CONFIRMED] is False
        assert result[K.GATE_CONFIRMED_RULE_COMPLIANCE] == 0.79
        assert result[K.GATE_CONFIRMED_RULE_CHECKS] == 480
        # A later evaluation whose confirmation passes too passes the gate.
        gate.confirm = lambda model, decoding: compliance(0.86, 520)
        trainer.state.global_step = 1000
        control = gate.on_evaluate(args, trainer.state, TrainerControl())
        assert control.should_training_stop and len(trainer.saved) == 1
        result = gate.result(trainer.state)
        assert result[K.GATE_PASSED] and result["gate_step"] == 1000
        assert result[K.GATE_CONFIRMED_RULE_COMPLIANCE] == 0.86
    else:  # without confirmation, the first evaluation above the thresholds passes
        assert control.should_training_stop and len(trainer.saved) == 1
        assert K.EVAL_GATE_CONFIRMED not in logged
        assert gate.result(trainer.state)[K.GATE_CONFIRMED] is None
