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

# ---- training (logged by the Trainer and the trainers of this package) ---------------------
LOSS = "loss"
TRAIN_LOSS = "train_loss"
TRAIN_RUNTIME = "train_runtime"
LR_MULTIPLIER = "lr_multiplier"

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
