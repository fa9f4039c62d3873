"""Model card and Hub upload of a run.

At the end of every phase the task runner calls `publish(trainer)`: on the main process it
writes `README.md`, a `huggingface_hub.ModelCard` built from the files of the output dir
(`result.json`, `recipe.yaml`, `determinism.json`, `config.json` or `adapter_config.json`,
`curves.png`), and, with `push_to_hub: true`, uploads the output dir through the Trainer's own
`push_to_hub` (`hub_model_id`, `hub_strategy`, `hub_private_repo`, `hub_token`,
`hub_revision` from the recipe). The upload holds the model (or the adapters), a tokenizer
where there is one, `result.json`, the plots, `recipe.yaml`, `determinism.json` and the card;
`checkpoint-*` folders only when `hub_strategy` asks (`checkpoint`: `last-checkpoint/`,
`all_checkpoints`: every one).

A world model that does not beat the copy baseline (`eval_pred_mse >= eval_copy_mse`, the
prediction `z_hat = z_t`) gets a warning at the top of its card, and pushing it warns
(`CopyBaselineWarning`).

The trainers of this package defer the Trainer's push-on-`save_model` to `publish` (`HubMixin`),
so the one end-of-run commit carries `result.json` and the final card.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from . import metric_keys as K
from .reporting import atomic_write_text

DEFAULT_LICENSE = "apache-2.0"
ADAPTER_TAGS = ("peft", "lora")


@dataclass(frozen=True)
class CardText:
    """What a task's model card says about its model and data.

    Args:
        world_model (`bool`): A `LeWMModel` (else a causal LM).
        tags (`tuple[str, ...]`): Hub tags.
        what (`str`): The card's opening paragraph.
        dataset (`Callable[[dict], str]`): The data's name, from the resolved recipe.
        settings (`tuple[str, ...]`): Recipe keys shown under "Evaluation settings".
    """

    world_model: bool
    tags: tuple[str, ...]
    what: str
    dataset: Callable[[dict[str, Any]], str]
    settings: tuple[str, ...]


def _walk_dataset(recipe: dict[str, Any]) -> str:
    preset = recipe.get("corpus_preset", "small")
    seed = (recipe.get("corpus") or {}).get("seed", 0)
    return f"graph walks ({preset} preset, corpus seed {seed})"


def _genome_dataset(recipe: dict[str, Any]) -> str:
    source = recipe.get("genome") or recipe.get("fasta_path") or "a synthetic genome"
    return f"DNA windows of {source} (held out by region)"


def _trajectory_dataset(recipe: dict[str, Any]) -> str:
    name = recipe.get("dataset_name") or "a trajectory dataset"
    config = recipe.get("dataset_config")
    return f"{name} ({config})" if config else str(name)


_WALK_SETTINGS = ("corpus_preset", "corpus", "per_device_eval_batch_size", "eval_strategy")
_DNA_SETTINGS = ("genome", "fasta_path", "window_length", "holdout_fraction", "seed")
# Per task name (`lewm_hf.tasks.TASKS`).
CARDS = {
    "lm": CardText(
        world_model=False,
        tags=("lewm_hf", "causal-lm", "graph-walks"),
        what=(
            "A causal LM on random walks of a degree-corrected stochastic block model graph "
            "(vertices are tokens), trained until generated walks follow the graph's edges and "
            "jumper rules (the compliance gate); the encoder phase of a `lewm_hf` world model."
        ),
        dataset=_walk_dataset,
        settings=(*_WALK_SETTINGS, "eval_steps", "gate_"),
    ),
    "world_model": CardText(
        world_model=True,
        tags=("lewm", "lewm_hf", "world-model", "jepa", "graph-walks"),
        what=(
            "A LeWM-style action-conditioned JEPA world model (`lewm_hf.LeWMModel`): an HF "
            "backbone encodes a state (a window of graph-walk vertices) into a latent, and a "
            "causal AdaLN-zero transformer predicts the next latent from the history of latents "
            "and moves (neighbour ranks), trained with a latent prediction loss and SIGReg."
        ),
        dataset=_walk_dataset,
        settings=(*_WALK_SETTINGS, "eval_steps", "eval_clips", "history_length", "trajectory_seed"),
    ),
    "dna_lm": CardText(
        world_model=False,
        tags=("lewm_hf", "causal-lm", "dna"),
        what=(
            "A causal LM of next bases on genome windows (tokens: A, C, G, T, N and specials); "
            "the encoder phase of a `lewm_hf` DNA edit world model."
        ),
        dataset=_genome_dataset,
        settings=(*_DNA_SETTINGS, "per_device_eval_batch_size"),
    ),
    "edit_world_model": CardText(
        world_model=True,
        tags=("lewm", "lewm_hf", "world-model", "jepa", "dna"),
        what=(
            "A LeWM-style action-conditioned JEPA world model (`lewm_hf.LeWMModel`) of DNA "
            "edits: an HF backbone encodes a genome window, pooled around the edit locus, into a "
            "latent, and a causal AdaLN-zero transformer predicts the latent after each edit "
            "(SNVs, indels, MNVs as actions: operation, position, bases), trained with a latent "
            "prediction loss and SIGReg."
        ),
        dataset=_genome_dataset,
        settings=(*_DNA_SETTINGS, "eval_items", "max_actions", "cluster_radius"),
    ),
    "trajectory_world_model": CardText(
        world_model=True,
        tags=("lewm", "lewm_hf", "world-model", "jepa", "trajectories"),
        what=(
            "A LeWM-style action-conditioned JEPA world model (`lewm_hf.LeWMModel`) trained on a "
            "trajectory dataset (`lewm_hf.data.trajectories`): an HF backbone encodes a state (a "
            "window of token ids) into a latent, and a causal AdaLN-zero transformer predicts the "
            "next latent from the history of latents and discrete actions, trained with a latent "
            "prediction loss and SIGReg."
        ),
        dataset=_trajectory_dataset,
        settings=(
            "dataset_name",
            "dataset_config",
            "dataset_train_split",
            "dataset_test_split",
            "history_length",
            "evaluation",
        ),
    ),
}
# The `lm` task on a dataset source (`dataset_name`): no graph, no gate.
LM_DATASET_CARD = CardText(
    world_model=False,
    tags=("lewm_hf", "causal-lm"),
    what=(
        "A causal LM on a tokenized corpus, stopped on its held-out loss; the encoder phase of "
        "a `lewm_hf` world model."
    ),
    dataset=lambda recipe: str(recipe.get("dataset_name")),
    settings=("dataset_name", "dataset_config", "dataset_test_split", "max_length"),
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CopyBaselineWarning(UserWarning):
    """Pushing a world model whose held-out prediction error is not below the copy baseline's."""


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_yaml(path: Path) -> dict[str, Any] | None:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def beats_copy(result: dict[str, Any] | None) -> bool | None:
    """Whether a world model's `eval_pred_mse` is below its `eval_copy_mse` (None when the
    result has no such pair, e.g. an encoder phase)."""
    if not result:
        return None
    pred, copy = result.get(K.EVAL_PRED_MSE), result.get(K.EVAL_COPY_MSE)
    if pred is None or copy is None:
        return None
    return pred < copy


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.exists(name) and bool(_HUB_ID.match(name))


# ---- card sections -----------------------------------------------------------------------
def _world_model_tables(result: dict[str, Any]) -> list[str]:
    pred, copy = result.get(K.EVAL_PRED_MSE), result.get(K.EVAL_COPY_MSE)
    ratio = pred / copy if pred is not None and copy else None
    lines = [
        "| held-out latent MSE | this model | copy baseline (`z_hat = z_t`) | ratio |",
        "|---|---|---|---|",
        f"| `{K.EVAL_PRED_MSE}` / `{K.EVAL_COPY_MSE}` | {_fmt(pred)} | {_fmt(copy)} | "
        f"{_fmt(ratio)} |",
    ]
    before_pred = result.get(K.BEFORE_PREFIX + K.EVAL_PRED_MSE)
    if before_pred is not None:
        before_copy = result.get(K.BEFORE_PREFIX + K.EVAL_COPY_MSE)
        before_ratio = before_pred / before_copy if before_copy else None
        lines.append(
            f"| before adaptation (the starting model on this data) | {_fmt(before_pred)} | "
            f"{_fmt(before_copy)} | {_fmt(before_ratio)} |"
        )
    action = {
        k: v
        for k, v in result.items()
        if k.startswith(K.EVAL_ACTION_PREFIX) and isinstance(v, (int, float))
    }
    if K.EVAL_ACTION_R1 in action:
        lines += [
            "",
            "Action discrimination (the prediction must be nearest to the true next latent "
            "among those of every alternative action):",
            "",
            "| metric | this model | copy | shuffled actions | chance |",
            "|---|---|---|---|---|",
        ]
        for name in ("r1", "r5", "mrr"):
            key = K.EVAL_ACTION_PREFIX + name
            if key not in action:
                continue
            chance = action.get(
                K.EVAL_ACTION_PREFIX + ("chance" if name == "r1" else f"chance_{name}")
            )
            lines.append(
                f"| `{key}` | {_fmt(action[key])} | {_fmt(action.get(key + '_copy'))} | "
                f"{_fmt(action.get(key + '_shuffled'))} | {_fmt(chance)} |"
            )
    lines += _planning_table(result)
    lines += _rollout_table(result)
    lines += _surprise_table(result)
    lines += _edit_tables(result)
    lines += _variant_effect_table(result)
    return lines


def _interval(value: Any) -> str:
    """`[low, high]` of a two-number interval, else `-`."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"[{_fmt(value[0])}, {_fmt(value[1])}]"
    return "-"


def _by_distance(result: dict[str, Any], key: str) -> dict[str, Any]:
    value = result.get(key)
    return value if isinstance(value, dict) else {}


def _planning_table(result: dict[str, Any]) -> list[str]:
    """Planning success by true goal distance `d`, with its interval, beside random actions."""
    success = result.get(K.EVAL_PLAN_SUCCESS)
    if not isinstance(success, dict) or not success:
        return []
    ci = _by_distance(result, K.EVAL_PLAN_CI)
    random = _by_distance(result, K.EVAL_PLAN_SUCCESS_RANDOM)
    ci_random = _by_distance(result, K.EVAL_PLAN_CI_RANDOM)
    pairs = _by_distance(result, K.EVAL_PLAN_DISTINCT_PAIRS)
    shortest = _by_distance(result, K.EVAL_PLAN_SHORTEST_RATE)
    lines = [
        "",
        "Planning (reach a goal vertex at true shortest-path distance `d`, checked on the true "
        "graph; 95% intervals), beside random valid moves with the same budget:",
        "",
        "| d | success | interval | random | random interval | shortest-path rate | "
        "distinct (start, goal) pairs |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in sorted(success, key=lambda k: int(k) if str(k).isdigit() else str(k)):
        lines.append(
            f"| {d} | {_fmt(success[d])} | {_interval(ci.get(d))} | {_fmt(random.get(d))} | "
            f"{_interval(ci_random.get(d))} | {_fmt(shortest.get(d))} | {_fmt(pairs.get(d))} |"
        )
    missing = result.get(K.EVAL_PLAN_MISSING_DISTANCES)
    if missing:
        lines += [
            "",
            f"No goal at distance {', '.join(str(d) for d in missing)} in held-out walks.",
        ]
    return lines


def _rollout_table(result: dict[str, Any]) -> list[str]:
    """Rollout error by horizon, against the copy baseline (`z_0` at every horizon)."""
    l2, l2_copy = result.get(K.EVAL_ROLLOUT_L2), result.get(K.EVAL_ROLLOUT_L2_COPY)
    if not isinstance(l2, list) or not isinstance(l2_copy, list):
        return []
    cos = result.get(K.EVAL_ROLLOUT_COS) or [None] * len(l2)
    cos_copy = result.get(K.EVAL_ROLLOUT_COS_COPY) or [None] * len(l2)
    horizons = result.get(K.EVAL_ROLLOUT_HORIZONS) or list(range(1, len(l2) + 1))
    lines = [
        "",
        "Latent rollouts from `z_0` (predictions fed back), against copy (`z_0` at every horizon):",
        "",
        "| horizon | L2 | L2 copy | cosine | cosine copy |",
        "|---|---|---|---|---|",
    ]
    for h, a, b, c, e in zip(horizons, l2, l2_copy, cos, cos_copy, strict=False):
        lines.append(f"| {h} | {_fmt(a)} | {_fmt(b)} | {_fmt(c)} | {_fmt(e)} |")
    return lines


def _surprise_table(result: dict[str, Any]) -> list[str]:
    """Surprise AUROCs for teleports and hard negatives, beside copy and the shuffled action."""
    rows = [
        ("teleport (a non-neighbour)", K.EVAL_SURPRISE_AUROC),
        ("hard negative (another valid neighbour)", K.EVAL_SURPRISE_AUROC_HARD),
    ]
    if K.EVAL_SURPRISE_OTHER_ROW in result:  # a trajectory dataset: no teleports
        rows[0] = ("another row's observed next state", K.EVAL_SURPRISE_AUROC)
    rows = [(name, key) for name, key in rows if key in result]
    if not rows:
        return []
    lines = [
        "",
        "Surprise (AUROC of the prediction error, true next state against a negative; an "
        "action-blind model scores 0.5 on hard negatives):",
        "",
        "| negative | this model | copy `‖z_t - z_obs‖²` | shuffled action |",
        "|---|---|---|---|",
    ]
    for name, key in rows:
        lines.append(
            f"| {name} | {_fmt(result[key])} | {_fmt(result.get(key + '_copy'))} | "
            f"{_fmt(result.get(key + '_shuffled'))} |"
        )
    return lines


def _edit_tables(result: dict[str, Any]) -> list[str]:
    """SNV recovery and edit discrimination, with their references and chance levels."""
    lines: list[str] = []
    if K.EVAL_SNV_RECOVERY_R1 in result:
        snv = K.EVAL_SNV_RECOVERY_PREFIX
        lines += [
            "",
            "SNV recovery (the true SNV among every single-base substitution of the window):",
            "",
            "| metric | this model | copy | shuffled actions | chance (all substitutions) | "
            "chance (the draw's prior, `locus ± radius`) |",
            "|---|---|---|---|---|---|",
            f"| `{K.EVAL_SNV_RECOVERY_R1}` | {_fmt(result[K.EVAL_SNV_RECOVERY_R1])} | "
            f"{_fmt(result.get(K.EVAL_SNV_RECOVERY_R1_COPY))} | "
            f"{_fmt(result.get(K.EVAL_SNV_RECOVERY_R1_SHUFFLED))} | "
            f"{_fmt(result.get(K.EVAL_SNV_RECOVERY_CHANCE))} | "
            f"{_fmt(result.get(K.EVAL_SNV_RECOVERY_CHANCE_PRIOR))} |",
        ]
        lines += [
            f"| `{snv}{name}` | {_fmt(result[snv + name])} | - | - | - | - |"
            for name in ("r5", "mrr")
            if snv + name in result
        ]
    if K.EVAL_EDIT_ACTION_R1 in result:
        edit = K.EVAL_EDIT_ACTION_PREFIX
        lines += [
            "",
            "Edit discrimination (the true edit among the other bases at its position and "
            "random edits; a perfect predictor's Recall@1 is the ceiling left by edits the "
            "encoder cannot tell apart):",
            "",
            "| metric | this model | copy | shuffled actions | chance | perfect predictor |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("r1", "r5", "mrr"):
            key = edit + name
            if key not in result:
                continue
            chance = result.get(edit + ("chance" if name == "r1" else f"chance_{name}"))
            ceiling = result.get(K.EVAL_EDIT_ACTION_R1_CEILING) if name == "r1" else None
            lines.append(
                f"| `{key}` | {_fmt(result[key])} | {_fmt(result.get(key + '_copy'))} | "
                f"{_fmt(result.get(key + '_shuffled'))} | {_fmt(chance)} | {_fmt(ceiling)} |"
            )
    return lines


def _variant_effect_table(result: dict[str, Any]) -> list[str]:
    """Nonsense vs synonymous AUROCs with their bootstrap intervals."""
    rows = [
        (f"k-mer Markov baseline (order {result.get(K.EVAL_VARIANT_KMER_ORDER)})",
         K.EVAL_VARIANT_AUROC_KMER),
        ("DNA LM log-likelihood ratio", K.EVAL_VARIANT_AUROC_LM),
        ("world-model surprise", K.EVAL_VARIANT_AUROC_SURPRISE),
    ]  # fmt: skip
    rows = [(name, key) for name, key in rows if key in result]
    if not rows:
        return []
    lines = [
        "",
        f"Variant effect: {_fmt(result.get(K.EVAL_VARIANT_NUM_NONSENSE))} nonsense against "
        f"{_fmt(result.get(K.EVAL_VARIANT_NUM_SYNONYMOUS))} synonymous SNVs in the held-out "
        "region's genes (pyrodigal calls); chance is 0.5:",
        "",
        "| score | AUROC | 95% bootstrap interval |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {_fmt(result[key])} | {_interval(result.get(key + K.CI_SUFFIX))} |"
        for name, key in rows
    ]
    return lines


def _lm_tables(result: dict[str, Any]) -> list[str]:
    prefix = "" if result.get(K.GATE_PASSED) else "final_"
    rows = [
        (K.GATE_PASSED, result.get(K.GATE_PASSED)),
        ("gate_step", result.get("gate_step")),
        *[
            (key, result.get(prefix + key))
            for key in (K.EDGE_COMPLIANCE, K.RULE_COMPLIANCE, K.RULE_CHECKS, K.DISTINCT_FRACTION)
        ],
        ("final_eval_loss", result.get("final_eval_loss")),
    ]
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| `{k}` | {_fmt(v)} |" for k, v in rows if v is not None]
    if result.get("failure_reason"):
        lines += ["", f"Gate failure: {result['failure_reason']}"]
    return lines + _variant_effect_table(result)


def _eval_results(result: dict[str, Any], card: CardText, dataset_name: str) -> list[EvalResult]:
    """model-index entries: the metrics of the tables, with the values of result.json."""
    if card.world_model:
        task_type, task_name = "world-modeling", "Next-latent prediction"
        keys = [K.EVAL_PRED_MSE, K.EVAL_COPY_MSE, K.EVAL_ACTION_R1]
        keys += [k for k in sorted(result) if k.startswith(K.EVAL_PLAN_SUCCESS)]
        keys += [K.EVAL_SURPRISE_AUROC, K.EVAL_SURPRISE_AUROC_HARD]
        keys += [K.EVAL_SNV_RECOVERY_R1, K.EVAL_EDIT_ACTION_R1, K.EVAL_VARIANT_AUROC_SURPRISE]
    else:
        task_type, task_name = "text-generation", "Next-token prediction"
        prefix = "" if result.get(K.GATE_PASSED) else "final_"
        keys = [prefix + K.EDGE_COMPLIANCE, prefix + K.RULE_COMPLIANCE, "final_eval_loss"]
        keys += [K.EVAL_VARIANT_AUROC_LM]
    out = []
    for key in keys:
        value = result.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        out.append(
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type="lewm-" + card.tags[-1],
                dataset_name=dataset_name,
                dataset_split="validation",
                metric_type=key,
                metric_name=key,
                metric_value=value,
            )
        )
    return out


def _evaluation_settings(recipe: dict[str, Any], card: CardText) -> list[str]:
    shown = {
        k: v
        for k, v in recipe.items()
        if any(k == s or (s.endswith("_") and k.startswith(s)) for s in card.settings)
    }
    if not shown:
        return ["Library defaults (see `recipe.yaml`)."]
    return ["```yaml", yaml.safe_dump(shown, sort_keys=False).rstrip(), "```"]


def build_model_card(output_dir: str | os.PathLike, hub_model_id: str | None = None) -> ModelCard:
    """The model card of a run's output dir (see the module docstring).

    Args:
        output_dir (`str` or `os.PathLike`): The phase's output dir.
        hub_model_id (`str`, *optional*): The repo id, shown in the loading snippet.

    Returns:
        `ModelCard`: The card (metadata: license, tags, library, base model, model-index).
    """
    out = Path(output_dir)
    result = _read_json(out / K.RESULT_FILE) or {}
    recipe = _read_yaml(out / K.RECIPE_FILE) or {}
    record = _read_json(out / K.DETERMINISM_FILE) or {}
    adapter = _read_json(out / K.ADAPTER_CONFIG_FILE)
    config = _read_json(out / K.CONFIG_FILE) or {}
    task = recipe.get("task") or (
        "world_model" if adapter or config.get("model_type") == "lewm" else "lm"
    )
    card = LM_DATASET_CARD if task == "lm" and recipe.get("dataset_name") else CARDS[task]
    name = (hub_model_id or out.resolve().name).split("/")[-1]
    repo = hub_model_id or str(out)
    base = (adapter or {}).get("base_model_name_or_path")
    dataset_name = card.dataset(recipe)

    tags = list(card.tags)
    if adapter:
        tags += list(ADAPTER_TAGS)
    data = ModelCardData(
        license=DEFAULT_LICENSE,
        tags=tags,
        library_name="peft" if adapter else "transformers",
        base_model=base if adapter and _is_hub_id(base) else None,
        model_name=name,
        eval_results=_eval_results(result, card, dataset_name) or None,
    )

    body: list[str] = []
    if card.world_model and beats_copy(result) is False:
        body += [
            "> [!WARNING]",
            f"> **This world model does not beat the copy baseline**: its held-out latent MSE "
            f"({_fmt(result.get(K.EVAL_PRED_MSE))}) is not below that of predicting no change "
            f"({_fmt(result.get(K.EVAL_COPY_MSE))}). Do not use it as a world model.",
            "",
        ]
    body += [f"# {name}", ""]
    what = card.what
    if adapter:
        what += (
            f" This repository holds LoRA adapters (peft) for the base world model "
            f"`{base}`: {', '.join(adapter.get('target_modules') or [])[:300]}, plus the "
            f"modules saved in full ({', '.join(adapter.get('modules_to_save') or [])})."
        )
    body += [what, ""]

    body += ["## Results", "", f"On held-out data of {dataset_name}.", ""]
    if result:
        body += _world_model_tables(result) if card.world_model else _lm_tables(result)
    else:
        body += ["No `result.json` in this run."]
    if result.get(K.TRAINABLE_PARAMS) is not None:
        body += [
            "",
            f"Trainable parameters: {result[K.TRAINABLE_PARAMS]:,} of "
            f"{result[K.TOTAL_PARAMS]:,} ({100 * result[K.TRAINABLE_FRACTION]:.2f}%).",
        ]
    body += [""]
    if (out / K.CURVES_PLOT).is_file():
        body += ["## Training curves", "", f"![training curves]({K.CURVES_PLOT})", ""]

    body += ["## How to load", "", "```python"]
    if card.world_model and adapter:
        body += [
            "import lewm_hf  # registers the `lewm` model type with AutoConfig / AutoModel",
            "from peft import AutoPeftModel",
            "",
            f'model = AutoPeftModel.from_pretrained("{repo}")  # base: {base}',
            "merged = model.merge_and_unload()  # a plain LeWMModel",
        ]
    elif card.world_model:
        body += [
            "import lewm_hf  # registers the `lewm` model type with AutoConfig / AutoModel",
            "from transformers import AutoModel",
            "",
            f'model = AutoModel.from_pretrained("{repo}")  # a LeWMModel',
            "z = model.encode(input_ids)  # (N, L) state windows -> (N, d_state) latents",
        ]
    else:
        body += [
            "from transformers import AutoModelForCausalLM",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
        ]
    body += ["```", ""]
    if adapter and not _is_hub_id(base):
        body += [
            f"The adapters' base model `{base}` is a local path: load it from there, or push it "
            "and set `base_model_name_or_path` in `adapter_config.json`.",
            "",
        ]

    body += ["## Reproduce", ""]
    if record.get("command"):
        body += ["```bash", record["command"], "```", ""]
    body += [
        f"The resolved recipe of this run is [`{K.RECIPE_FILE}`]({K.RECIPE_FILE}); seeds, "
        f"determinism flags and library versions are in [`{K.DETERMINISM_FILE}`]"
        f"({K.DETERMINISM_FILE}).",
        "",
    ]
    if record.get("seeds"):
        body += [
            "Seeds: " + ", ".join(f"`{k}` {v}" for k, v in record["seeds"].items()) + ".",
            "",
        ]
    body += ["### Evaluation settings", "", *_evaluation_settings(recipe, card), ""]
    if recipe:
        body += [
            "### Recipe",
            "",
            "```yaml",
            yaml.safe_dump(recipe, sort_keys=False).rstrip(),
            "```",
            "",
        ]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)
    return ModelCard(content)


def write_model_card(output_dir: str | os.PathLike, hub_model_id: str | None = None) -> Path:
    """Write `README.md` (the card of `build_model_card`) in the output dir, atomically."""
    path = Path(output_dir) / K.MODEL_CARD_FILE
    atomic_write_text(path, str(build_model_card(output_dir, hub_model_id)))
    return path


class HubMixin:
    """Trainer mixin: the card is this module's, and the push happens once, at the end.

    - `create_model_card` (which `Trainer.push_to_hub` calls before uploading) writes the card
      of `build_model_card`, replacing the Trainer's generic one.
    - `save_model` saves without pushing: with `push_to_hub` the Trainer would push on every
      explicit `save_model()`, before the run's `result.json` and card exist; `publish` pushes
      instead. Checkpoint pushes (`hub_strategy`) are the Trainer's, unchanged.
    """

    def create_model_card(self, **kwargs: Any) -> None:
        if not self.is_world_process_zero():
            return
        write_model_card(self.args.output_dir, self.hub_model_id or self.args.hub_model_id)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call=True)


def publish(trainer: Any, commit_message: str = "End of training") -> Path | None:
    """End of a run: write the card (main process) and, with `push_to_hub`, push the output dir.

    Call it after `write_result`, so the card and the upload carry the final `result.json`.

    Args:
        trainer (`Trainer`): A trainer of this package (with `HubMixin`).
        commit_message (`str`, *optional*): Message of the final commit.

    Returns:
        `Path` of the card on the main process, else None.

    Warns:
        `CopyBaselineWarning`: when pushing a world model that does not beat the copy baseline.
    """
    out = Path(trainer.args.output_dir)
    card = None
    if trainer.is_world_process_zero():
        card = write_model_card(out, trainer.hub_model_id or trainer.args.hub_model_id)
    if trainer.args.push_to_hub:
        result = _read_json(out / K.RESULT_FILE)
        if trainer.is_world_process_zero() and beats_copy(result) is False:
            warnings.warn(
                CopyBaselineWarning(
                    f"pushing {out} to {trainer.hub_model_id}: the world model does not beat "
                    f"the copy baseline (eval_pred_mse {result[K.EVAL_PRED_MSE]:.4g} >= "
                    f"eval_copy_mse {result[K.EVAL_COPY_MSE]:.4g}); its card says so"
                ),
                stacklevel=2,
            )
        trainer.push_to_hub(commit_message=commit_message)
    return card


__all__ = [
    "CopyBaselineWarning",
    "HubMixin",
    "beats_copy",
    "build_model_card",
    "publish",
    "write_model_card",
]
