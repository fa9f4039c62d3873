"""Names of logged metrics, result fields and output files, defined once.

Trainers log these keys, callbacks read them back from `TrainerState.log_history`, task runners
copy them into `result.json` and `summary.json`, and tests and reports look them up: every one of
them names a key through this module, so a rename happens in one place.
"""

from __future__ import annotations

EVAL_PREFIX = "eval_"

# ---- files -------------------------------------------------------------------------------
RESULT_FILE = "result.json"
SUMMARY_FILE = "summary.json"
CURVES_PLOT = "curves.png"
GATE_CHECKPOINT = "gate_checkpoint"
DETERMINISM_FILE = "determinism.json"
RECIPE_FILE = "recipe.yaml"
MODEL_CARD_FILE = "README.md"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"

# ---- parameters and adaptation (result.json of every world-model run) ----------------------
TRAINABLE_PARAMS = "trainable_params"
TOTAL_PARAMS = "total_params"
TRAINABLE_FRACTION = "trainable_fraction"
LORA = "lora"
# Prefix of the metrics of the starting model (a pretrained world model), evaluated on this
# run's data before training: `before_eval_pred_mse`, `before_eval_copy_mse`, ...
BEFORE_PREFIX = "before_"

# ---- training (logged by the Trainer and the trainers of this package) ---------------------
LOSS = "loss"
TRAIN_LOSS = "train_loss"
TRAIN_RUNTIME = "train_runtime"
LR_MULTIPLIER = "lr_multiplier"
# Optimizer steps skipped so far for a NaN / Inf loss (`LeWMTrainer`, `NonFiniteLossGuard`).
NONFINITE_STEPS = "nonfinite_steps"

# ---- world model (`LeWMTrainer`) -----------------------------------------------------------
PRED_LOSS = "pred_loss"
REG_LOSS = "reg_loss"
PRED_MSE = "pred_mse"
COPY_MSE = "copy_mse"
EVAL_LOSS = EVAL_PREFIX + LOSS
EVAL_PRED_LOSS = EVAL_PREFIX + PRED_LOSS
EVAL_REG_LOSS = EVAL_PREFIX + REG_LOSS
EVAL_PRED_MSE = EVAL_PREFIX + PRED_MSE
EVAL_COPY_MSE = EVAL_PREFIX + COPY_MSE
# Keys of `lewm_hf.evaluation` that the model card shows where result.json has them.
EVAL_ACTION_PREFIX = EVAL_PREFIX + "action_"
EVAL_ACTION_R1 = EVAL_ACTION_PREFIX + "r1"
EVAL_PLAN_PREFIX = EVAL_PREFIX + "plan_"
EVAL_PLAN_SUCCESS = EVAL_PLAN_PREFIX + "success"
COLLAPSE_PREFIX = "collapse/"
COLLAPSE_ALERTS = COLLAPSE_PREFIX + "alerts"

# ---- compliance gate (`WalkLMTrainer`) -----------------------------------------------------
EDGE_COMPLIANCE = "edge_compliance"
RULE_COMPLIANCE = "rule_compliance"
RULE_CHECKS = "rule_checks"
DISTINCT_FRACTION = "distinct_fraction"
GATE_PASSED = "gate_passed"
EVAL_EDGE_COMPLIANCE = EVAL_PREFIX + EDGE_COMPLIANCE
EVAL_RULE_COMPLIANCE = EVAL_PREFIX + RULE_COMPLIANCE
EVAL_RULE_CHECKS = EVAL_PREFIX + RULE_CHECKS
EVAL_DISTINCT_FRACTION = EVAL_PREFIX + DISTINCT_FRACTION
EVAL_GATE_PASSED = EVAL_PREFIX + GATE_PASSED


def decoding_name(decoding: str) -> str:
    """`sampled` or `greedy`: how metrics name a decoding."""
    return "sampled" if decoding == "sample" else "greedy"


def decoding_prefix(decoding: str) -> str:
    """Prefix of the compliance metrics of the decoding the gate does not use (logged beside)."""
    return f"{EVAL_PREFIX}{decoding_name(decoding)}_"


# ---- result curves: result.json's `curves.<name>` <- logged key ------------------------------
LM_CURVES = {
    "eval_loss": EVAL_LOSS,
    EDGE_COMPLIANCE: EVAL_EDGE_COMPLIANCE,
    RULE_COMPLIANCE: EVAL_RULE_COMPLIANCE,
    "sampled_edge_compliance": decoding_prefix("sample") + EDGE_COMPLIANCE,
    "sampled_rule_compliance": decoding_prefix("sample") + RULE_COMPLIANCE,
    "greedy_edge_compliance": decoding_prefix("greedy") + EDGE_COMPLIANCE,
    "greedy_rule_compliance": decoding_prefix("greedy") + RULE_COMPLIANCE,
}
WORLD_MODEL_CURVES = {
    PRED_LOSS: PRED_LOSS,
    REG_LOSS: REG_LOSS,
    EVAL_PRED_MSE: EVAL_PRED_MSE,
    EVAL_COPY_MSE: EVAL_COPY_MSE,
    LR_MULTIPLIER: LR_MULTIPLIER,
}
