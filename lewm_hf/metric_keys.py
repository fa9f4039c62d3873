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
# The phases a torchrun launch has finished (read when its workers are restarted).
LAUNCH_RECORD_FILE = "launch_record.json"
CURVES_PLOT = "curves.png"
GATE_CHECKPOINT = "gate_checkpoint"
DETERMINISM_FILE = "determinism.json"
RECIPE_FILE = "recipe.yaml"
MODEL_CARD_FILE = "README.md"
# The evaluation suite's numbers and settings (`recipes/evaluate.py`).
EVAL_RESULTS_FILE = "eval_results.json"
# A saved model or checkpoint (transformers' and peft's names; `lewm_hf.checkpoints`).
CONFIG_FILE = "config.json"
SAFE_WEIGHTS_FILE = "model.safetensors"
SAFE_WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_WEIGHTS_FILE = "pytorch_model.bin"
SHARDED_WEIGHTS_GLOB = "pytorch_model_fsdp*"
TRAINER_STATE_FILE = "trainer_state.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
# A cached corpus's metadata beside its data (`lewm_hf.data`): its kind and config, the walk
# graph and jumpers, the DNA regions of each record.
CORPUS_META_FILE = "corpus.json"
GRAPH_FILE = "graph.npz"
JUMPERS_FILE = "jumpers.json"
REGIONS_FILE = "regions.json"
# A trajectory dataset's metadata at its root (`lewm_hf.data.trajectories`): vocabulary size,
# number of actions, window length.
TRAJECTORY_INFO_FILE = "lewm_dataset.json"

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
COLLAPSE_PREFIX = "collapse/"
COLLAPSE_ALERTS = COLLAPSE_PREFIX + "alerts"
# `result.json`: each collapse statistic's curve (name without the prefix -> step, value).
COLLAPSE_STATISTICS = "collapse_statistics"

# ---- evaluation suite (`lewm_hf.evaluation`: `eval_results.json`, result.json) -------------
# The model card shows the action and planning keys where result.json has them.
# Action discrimination (`evaluate_world_model`): the model, then its references.
EVAL_ACTION_PREFIX = EVAL_PREFIX + "action_"
EVAL_ACTION_R1 = EVAL_ACTION_PREFIX + "r1"
EVAL_ACTION_R5 = EVAL_ACTION_PREFIX + "r5"
EVAL_ACTION_MRR = EVAL_ACTION_PREFIX + "mrr"
EVAL_ACTION_R1_COPY = EVAL_ACTION_R1 + "_copy"
EVAL_ACTION_R1_SHUFFLED = EVAL_ACTION_R1 + "_shuffled"
EVAL_ACTION_CHANCE = EVAL_ACTION_PREFIX + "chance"
# Surprise of a true move against a teleport.
EVAL_SURPRISE_AUROC = EVAL_PREFIX + "surprise_auroc"
EVAL_SURPRISE_TRUE = EVAL_PREFIX + "surprise_true"
EVAL_SURPRISE_TELEPORT = EVAL_PREFIX + "surprise_teleport"
# Surprise of the observed next state of another row (trajectory datasets, no graph).
EVAL_SURPRISE_OTHER_ROW = EVAL_PREFIX + "surprise_other_row"
# ... with its references: the copy score `||z_t - z_obs||^2` and the model with the action
# shuffled; and against hard negatives (another valid neighbour's window), which need the action.
EVAL_SURPRISE_AUROC_COPY = EVAL_SURPRISE_AUROC + "_copy"
EVAL_SURPRISE_AUROC_SHUFFLED = EVAL_SURPRISE_AUROC + "_shuffled"
EVAL_SURPRISE_AUROC_HARD = EVAL_SURPRISE_AUROC + "_hard"
EVAL_SURPRISE_AUROC_HARD_COPY = EVAL_SURPRISE_AUROC_HARD + "_copy"
EVAL_SURPRISE_AUROC_HARD_SHUFFLED = EVAL_SURPRISE_AUROC_HARD + "_shuffled"
EVAL_SURPRISE_HARD = EVAL_PREFIX + "surprise_hard"
EVAL_SURPRISE_HARD_NUM_ITEMS = EVAL_SURPRISE_HARD + "_num_items"
# Representation health of held-out latents.
EVAL_EFFECTIVE_RANK = EVAL_PREFIX + "effective_rank"
EVAL_VAR_PER_DIM = EVAL_PREFIX + "var_per_dim"
EVAL_SIGREG = EVAL_PREFIX + "sigreg"
# Latent rollouts (lists over horizons).
EVAL_ROLLOUT_PREFIX = EVAL_PREFIX + "rollout_"
EVAL_ROLLOUT_L2 = EVAL_ROLLOUT_PREFIX + "l2"
EVAL_ROLLOUT_L2_COPY = EVAL_ROLLOUT_L2 + "_copy"
EVAL_ROLLOUT_COS = EVAL_ROLLOUT_PREFIX + "cos"
EVAL_ROLLOUT_COS_COPY = EVAL_ROLLOUT_COS + "_copy"
EVAL_ROLLOUT_HORIZONS = EVAL_ROLLOUT_PREFIX + "horizons"
EVAL_ROLLOUT_NUM_ITEMS = EVAL_ROLLOUT_PREFIX + "num_items"
EVAL_WORLD_MODEL_SECONDS = EVAL_PREFIX + "world_model_seconds"
# Planning (`evaluate_planning`): dicts keyed by goal distance, then scalars.
EVAL_PLAN_PREFIX = EVAL_PREFIX + "plan_"
EVAL_PLAN_SUCCESS = EVAL_PLAN_PREFIX + "success"
EVAL_PLAN_SUCCESS_RANDOM = EVAL_PLAN_SUCCESS + "_random"
EVAL_PLAN_SUCCESS_PER_SEED = EVAL_PLAN_SUCCESS + "_per_seed"
EVAL_PLAN_SHORTEST_RATE = EVAL_PLAN_PREFIX + "shortest_rate"
EVAL_PLAN_CI = EVAL_PLAN_PREFIX + "ci"
EVAL_PLAN_CI_RANDOM = EVAL_PLAN_CI + "_random"
EVAL_PLANS_PER_SECOND = EVAL_PREFIX + "plans_per_second"
EVAL_PLAN_PLANNERS = EVAL_PLAN_PREFIX + "planners"
EVAL_PLAN_DISTINCT_PAIRS = EVAL_PLAN_PREFIX + "distinct_pairs"
EVAL_PLAN_MISSING_DISTANCES = EVAL_PLAN_PREFIX + "missing_distances"
EVAL_PLAN_TRIALS = EVAL_PLAN_PREFIX + "trials"
EVAL_PLAN_BUDGET_SLACK = EVAL_PLAN_PREFIX + "budget_slack"
EVAL_PLAN_SECONDS = EVAL_PLAN_PREFIX + "seconds"
# Steps of the successful episodes (mean executed steps, mean ratio steps / d), the planner's and
# random actions'; the goal form of the top-level planning numbers and every form's numbers
# (`{form: {key: {d: value}}}`); how the intervals were computed.
EVAL_PLAN_STEPS = EVAL_PLAN_PREFIX + "steps"
EVAL_PLAN_STEPS_RANDOM = EVAL_PLAN_STEPS + "_random"
EVAL_PLAN_STEPS_RATIO = EVAL_PLAN_STEPS + "_ratio"
EVAL_PLAN_STEPS_RATIO_RANDOM = EVAL_PLAN_STEPS_RATIO + "_random"
EVAL_PLAN_GOAL_FORM = EVAL_PLAN_PREFIX + "goal_form"
EVAL_PLAN_BY_GOAL_FORM = EVAL_PLAN_PREFIX + "by_goal_form"
EVAL_PLAN_CI_METHOD = EVAL_PLAN_CI + "_method"
# The planning numbers reported per distance (`{d: value}`) by every planner (graph or
# environment), and those only the graph planner adds (steps of the successful episodes).
EVAL_PLAN_PER_DISTANCE = (
    EVAL_PLAN_SUCCESS,
    EVAL_PLAN_SUCCESS_RANDOM,
    EVAL_PLAN_SHORTEST_RATE,
    EVAL_PLAN_CI,
    EVAL_PLAN_CI_RANDOM,
    EVAL_PLAN_SUCCESS_PER_SEED,
    EVAL_PLANS_PER_SECOND,
    EVAL_PLAN_PLANNERS,
    EVAL_PLAN_DISTINCT_PAIRS,
)
EVAL_PLAN_STEPS_PER_DISTANCE = (
    EVAL_PLAN_STEPS,
    EVAL_PLAN_STEPS_RANDOM,
    EVAL_PLAN_STEPS_RATIO,
    EVAL_PLAN_STEPS_RATIO_RANDOM,
)
# Planning in an environment (`evaluate_environment_planning`): which one, the longest plan
# searched per replanning, or why planning was not evaluated (no transition function).
EVAL_PLAN_ENVIRONMENT = EVAL_PLAN_PREFIX + "environment"
EVAL_PLAN_HORIZON = EVAL_PLAN_PREFIX + "horizon"
EVAL_PLAN_SKIPPED = EVAL_PLAN_PREFIX + "skipped"
# Action discrimination among the actions whose next states differ
# (`environment_action_discrimination`), and its value with every action a candidate.
EVAL_DISTINCT_ACTION_PREFIX = EVAL_PREFIX + "distinct_action_"
EVAL_DISTINCT_ACTION_R1 = EVAL_DISTINCT_ACTION_PREFIX + "r1"
EVAL_DISTINCT_ACTION_R1_COPY = EVAL_DISTINCT_ACTION_R1 + "_copy"
EVAL_DISTINCT_ACTION_R1_SHUFFLED = EVAL_DISTINCT_ACTION_R1 + "_shuffled"
EVAL_DISTINCT_ACTION_CHANCE = EVAL_DISTINCT_ACTION_PREFIX + "chance"
EVAL_DISTINCT_ACTION_R1_ALL = EVAL_DISTINCT_ACTION_R1 + "_all"
EVAL_DISTINCT_ACTION_CHANCE_ALL = EVAL_DISTINCT_ACTION_CHANCE + "_all"
# The whole suite (`run_evaluation_suite`).
EVAL_SETTINGS = EVAL_PREFIX + "settings"
EVAL_SECONDS = EVAL_PREFIX + "seconds"
# DNA edits (`snv_recovery`, `edit_action_discrimination`).
EVAL_SNV_RECOVERY_PREFIX = EVAL_PREFIX + "snv_recovery_"
EVAL_SNV_RECOVERY_R1 = EVAL_SNV_RECOVERY_PREFIX + "r1"
EVAL_SNV_RECOVERY_R1_COPY = EVAL_SNV_RECOVERY_R1 + "_copy"
EVAL_SNV_RECOVERY_CHANCE = EVAL_SNV_RECOVERY_PREFIX + "chance"
EVAL_SNV_RECOVERY_NUM_ITEMS = EVAL_SNV_RECOVERY_PREFIX + "num_items"
EVAL_EDIT_ACTION_PREFIX = EVAL_PREFIX + "edit_action_"
EVAL_EDIT_ACTION_R1 = EVAL_EDIT_ACTION_PREFIX + "r1"
EVAL_EDIT_ACTION_R1_COPY = EVAL_EDIT_ACTION_R1 + "_copy"
EVAL_EDIT_ACTION_CHANCE = EVAL_EDIT_ACTION_PREFIX + "chance"
# ... chance under the SNV draw's own prior (within `locus +- radius`), the action-shuffled
# controls, and edit-action Recall@1 of a perfect predictor (ties of identical next latents).
EVAL_SNV_RECOVERY_CHANCE_PRIOR = EVAL_SNV_RECOVERY_CHANCE + "_prior"
EVAL_SNV_RECOVERY_R1_SHUFFLED = EVAL_SNV_RECOVERY_R1 + "_shuffled"
EVAL_EDIT_ACTION_R1_SHUFFLED = EVAL_EDIT_ACTION_R1 + "_shuffled"
EVAL_EDIT_ACTION_R1_CEILING = EVAL_EDIT_ACTION_R1 + "_ceiling"
# Variant effect (`evaluate_variant_effect`): nonsense vs synonymous SNVs in called genes of the
# held-out region; AUROCs, each with `_ci` ([low, high], bootstrap 95%).
EVAL_VARIANT_PREFIX = EVAL_PREFIX + "variant_"
EVAL_VARIANT_AUROC_LM = EVAL_VARIANT_PREFIX + "auroc_lm"
EVAL_VARIANT_AUROC_LM_BY_CONTEXT = EVAL_VARIANT_AUROC_LM + "_by_context"
EVAL_VARIANT_AUROC_SURPRISE = EVAL_VARIANT_PREFIX + "auroc_surprise"
EVAL_VARIANT_AUROC_KMER = EVAL_VARIANT_PREFIX + "auroc_kmer"
EVAL_VARIANT_AUROC_KMER_BY_ORDER = EVAL_VARIANT_AUROC_KMER + "_by_order"
EVAL_VARIANT_KMER_ORDER = EVAL_VARIANT_PREFIX + "kmer_order"
EVAL_VARIANT_NUM_NONSENSE = EVAL_VARIANT_PREFIX + "num_nonsense"
EVAL_VARIANT_NUM_SYNONYMOUS = EVAL_VARIANT_PREFIX + "num_synonymous"
EVAL_VARIANT_SECONDS = EVAL_VARIANT_PREFIX + "seconds"
CI_SUFFIX = "_ci"

# ---- phase summaries (summary.json `phases.<name>`): items of the data a phase used --------
TRAIN_WINDOWS = "train_windows"
EVAL_WINDOWS = EVAL_PREFIX + "windows"
TRAIN_ROWS = "train_rows"
TRAIN_CLIPS = "train_clips"
EVAL_CLIPS = EVAL_PREFIX + "clips"
EVAL_ROWS = EVAL_PREFIX + "rows"

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
# The confirmation at a pass: the passing model again, on fresh held-out walks with another
# sampling seed (`gate_confirmed_*` in result.json and the phase summary, `eval_gate_confirmed_*`
# in the logs); the gate passes only if the confirmation passes too.
GATE_CONFIRMED_PREFIX = "gate_confirmed_"
GATE_CONFIRMED = "gate_confirmed"
GATE_CONFIRMED_EDGE_COMPLIANCE = GATE_CONFIRMED_PREFIX + EDGE_COMPLIANCE
GATE_CONFIRMED_RULE_COMPLIANCE = GATE_CONFIRMED_PREFIX + RULE_COMPLIANCE
GATE_CONFIRMED_RULE_CHECKS = GATE_CONFIRMED_PREFIX + RULE_CHECKS
GATE_CONFIRMED_DISTINCT_FRACTION = GATE_CONFIRMED_PREFIX + DISTINCT_FRACTION
EVAL_GATE_CONFIRMED = EVAL_PREFIX + GATE_CONFIRMED
EVAL_GATE_CONFIRMED_PREFIX = EVAL_PREFIX + GATE_CONFIRMED_PREFIX


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
