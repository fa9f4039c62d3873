"""Evaluate a saved world model: `python recipes/evaluate.py --model_path PATH [--config X.yaml]`.

Runs the world-model evaluation suite (`lewm_hf.evaluation.suite`: action discrimination against
the copy, shuffled and chance references, rollouts, surprise, planning stratified by distance
against random actions) on held-out walks of the model's graph, prints a table and writes
`eval_results.json` beside the model (or to `--output`): the numbers, the settings with their
seeds, and the command that reproduces them. The graph comes from the recipe (`--config`, by
default the world-model recipe `recipes/configs/walk_lewm.yaml`), and so do the `evaluation:`
settings and the `planning:` ones (its distances, step budget and goal forms), except that
planning runs the full `PlanningConfig` sample (300 goals x 3 seeds at every distance), not the
recipe's lighter one, unless `--planning.<field>` flags say otherwise (e.g.
`--planning.goals_per_distance 50`). Planning reports both goal forms (goal windows from other
held-out walks, and the start window followed by a shortest path) with success, bootstrap
intervals over (start, goal) pairs, distinct pairs and steps at every distance. On the `wide`
graph (diameter 6): `--config recipes/configs/walk_lewm_wide.yaml`. `--help` (or `-h`) lists
every option with its type, default and help.
"""

from __future__ import annotations

import shlex
import sys
import textwrap
from pathlib import Path
from typing import Any

from transformers import AutoModel

import lewm_hf  # noqa: F401  (registers the `lewm` model type)
from lewm_hf import metric_keys as K
from lewm_hf.data.walks import build_walk_corpus, load_walk_metadata
from lewm_hf.errors import LeWMConfigError, LeWMError
from lewm_hf.evaluation.planning_config import PlanningConfig
from lewm_hf.evaluation.suite import EvaluationArguments, run_evaluation_suite
from lewm_hf.evaluation.world_model import WorldModelEvalConfig
from lewm_hf.recipe import parse_cli_overrides
from lewm_hf.recipe_help import REQUIRED, WIDTH, OptionHelp, class_options, format_group
from lewm_hf.reporting import format_evaluation, write_json
from lewm_hf.tasks.runner import PhasePlan, validate_recipe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "recipes" / "configs" / "walk_lewm.yaml"
HELP_FLAGS = ("-h", "--help")


def recipe_settings(config: Path) -> tuple[PhasePlan, dict[str, Any], dict[str, Any]]:
    """The recipe's last world-model phase and the settings this script starts from: the
    recipe's `evaluation:` keys, and its `planning:` keys with the full sample (`PlanningConfig`'s
    goals and seeds, not the recipe's lighter ones)."""
    plans = [p for p in validate_recipe(config) if p.task == "world_model"]
    if not plans:
        raise LeWMConfigError("config", str(config), "has no world-model phase")
    plan = plans[-1]
    full = PlanningConfig()
    recipe_args = plan.args.domain.evaluation
    planning = {
        **recipe_args.planning,
        "goals_per_distance": full.goals_per_distance,
        "seeds": full.seeds,
    }
    return plan, dict(recipe_args.evaluation), planning


def usage(config: Path) -> str:
    """The `--help` text: the options, and every `--evaluation.<field>` and `--planning.<field>`
    with the default this script uses for `config`."""
    _, evaluation, planning = recipe_settings(config)
    options = [
        OptionHelp("model_path", "path", REQUIRED, "The saved world model (a folder)."),
        OptionHelp(
            "config",
            "path",
            str(DEFAULT_CONFIG.relative_to(REPO)),
            "The recipe whose last world-model phase gives the graph and the evaluation: keys.",
        ),
        OptionHelp(
            "output", "path", f"<model_path>/{K.EVAL_RESULTS_FILE}", "Where to write results."
        ),
    ]
    parts = [
        "usage: python recipes/evaluate.py --model_path PATH [--config RECIPE.yaml] "
        "[--output FILE]\n"
        "                                  [--evaluation.<field> V ...] [--planning.<field> V ...]",
        (__doc__ or "").strip().split("\n", 1)[1].strip(),
        textwrap.fill(
            "Values are read as YAML (3, true, null, [1, 2]); --key=value works too. The "
            f"defaults below are those for the recipe {config}.",
            WIDTH,
        ),
        format_group("Options:", options, flag="--")
        + "\n  -h, --help\n      Show this help (for --config's recipe) and exit.",
        format_group(
            "Evaluation settings (WorldModelEvalConfig; defaults: the recipe's evaluation: "
            "keys, else the class's):",
            class_options(WorldModelEvalConfig, defaults=evaluation, prefix="evaluation."),
            flag="--",
        ),
        format_group(
            "Planning settings (PlanningConfig; defaults: the recipe's planning: keys with the "
            "full sample of goals and seeds):",
            class_options(PlanningConfig, defaults=planning, prefix="planning."),
            flag="--",
        ),
    ]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in HELP_FLAGS for arg in argv):
        try:
            options = dict(parse_cli_overrides([a for a in argv if a not in HELP_FLAGS]))
            print(usage(Path(str(options.get("config", DEFAULT_CONFIG)))), end="")
        except LeWMError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    command = " ".join(shlex.quote(a) for a in ["python", "recipes/evaluate.py", *argv])
    try:
        options = dict(parse_cli_overrides(argv))
        model_path = options.pop("model_path", None)
        if not model_path:
            raise LeWMConfigError("model_path", None, "give --model_path PATH")
        config = Path(str(options.pop("config", DEFAULT_CONFIG)))
        output = Path(str(options.pop("output", Path(str(model_path)) / K.EVAL_RESULTS_FILE)))
        plan, evaluation, planning = recipe_settings(config)
        for key, value in options.items():
            group, _, field = key.partition(".")
            if group not in ("evaluation", "planning") or not field:
                raise LeWMConfigError(key, value, "unknown option")
            (evaluation if group == "evaluation" else planning)[field] = value
        args = EvaluationArguments(evaluation=evaluation, planning=planning)
        corpus = build_walk_corpus(
            plan.args.domain.data.corpus_config(), plan.args.domain.data.corpus_cache_dir
        )
        model = AutoModel.from_pretrained(str(model_path))
        results = run_evaluation_suite(model, load_walk_metadata(corpus), args)
    except LeWMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: model_path: {err}", file=sys.stderr)
        return 2
    results["model_path"] = str(model_path)
    results["config"] = str(config)
    results["command"] = command
    write_json(output, results)
    print(format_evaluation(results))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
