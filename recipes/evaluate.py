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

A model trained by a `trajectory_world_model` phase (any trajectory dataset) is evaluated
without a graph (`lewm_hf.evaluation.trajectories`, or the edit suite for edit actions) on
the held-out split of its recipe's dataset, cut into the clips training used; its
`--evaluation.<field>` flags are `TrajectoryEvalConfig`'s, and there is no planning. Without
`--config`, the recipe is the one saved beside the model (`<model_path>/recipe.yaml`, written
by every phase), else `recipes/configs/walk_lewm.yaml`.
"""

from __future__ import annotations

import shlex
import sys
import textwrap
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from transformers import AutoModel

import lewm_hf  # noqa: F401  (registers the `lewm` model type)
from lewm_hf import metric_keys as K
from lewm_hf.data.walks import build_walk_corpus, load_walk_metadata
from lewm_hf.errors import LeWMConfigError, LeWMError
from lewm_hf.evaluation.planning_config import PlanningConfig
from lewm_hf.evaluation.suite import EvaluationArguments, run_evaluation_suite
from lewm_hf.evaluation.trajectories import TrajectoryEvalConfig
from lewm_hf.evaluation.world_model import WorldModelEvalConfig
from lewm_hf.recipe import parse_cli_overrides
from lewm_hf.recipe_help import REQUIRED, WIDTH, OptionHelp, class_options, format_group
from lewm_hf.reporting import format_evaluation, write_json
from lewm_hf.tasks.domains.trajectories import TRAJECTORIES, TrajectoryEvaluationArguments
from lewm_hf.tasks.runner import PhasePlan, validate_recipe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "recipes" / "configs" / "walk_lewm.yaml"
HELP_FLAGS = ("-h", "--help")
# The phases this script evaluates: walks (with planning) and trajectory datasets (no graph).
EVALUATED_TASKS = ("world_model", TRAJECTORIES.name)


def default_config(model_path: Any) -> Path:
    """The recipe saved beside the model (`recipe.yaml`), else the walk world-model recipe."""
    saved = Path(str(model_path)) / K.RECIPE_FILE if model_path else None
    return saved if saved is not None and saved.is_file() else DEFAULT_CONFIG


def recipe_settings(config: Path) -> tuple[PhasePlan, dict[str, Any], dict[str, Any]]:
    """The recipe's last world-model phase (`world_model` or `trajectory_world_model`) and the
    settings this script starts from: the recipe's `evaluation:` keys, and for walks its
    `planning:` keys with the full sample (`PlanningConfig`'s goals and seeds, not the recipe's
    lighter ones)."""
    plans = [p for p in validate_recipe(config) if p.task in EVALUATED_TASKS]
    if not plans:
        raise LeWMConfigError("config", str(config), f"has no phase of task {EVALUATED_TASKS}")
    plan = plans[-1]
    if plan.task == TRAJECTORIES.name:
        return plan, dict(plan.args.domain.evaluation.evaluation), {}
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
    plan, evaluation, planning = recipe_settings(config)
    trajectories = plan.task == TRAJECTORIES.name
    options = [
        OptionHelp("model_path", "path", REQUIRED, "The saved world model (a folder)."),
        OptionHelp(
            "config",
            "path",
            f"<model_path>/{K.RECIPE_FILE} if present, else {DEFAULT_CONFIG.relative_to(REPO)}",
            "The recipe whose last world-model phase gives the graph (or the dataset) and the "
            "evaluation: keys.",
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
    ]
    if trajectories:
        parts.append(
            format_group(
                "Evaluation settings (TrajectoryEvalConfig; defaults: the recipe's evaluation: "
                "keys, else the class's; a trajectory dataset has no planning):",
                class_options(TrajectoryEvalConfig, defaults=evaluation, prefix="evaluation."),
                flag="--",
            )
        )
        return "\n\n".join(parts) + "\n"
    parts += [
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


def evaluate_trajectory_phase(
    plan: PhasePlan, model_path: str, evaluation: dict[str, Any]
) -> dict[str, Any]:
    """Evaluate a saved `trajectory_world_model` model on its recipe's held-out split.

    The dataset is read and checked as training read it, the model must fit it (the task's own
    config checks), the held-out rows are cut into the clips of the model's `history_length`
    (the recipe's `clip_stride`), and the task's evaluation runs with `evaluation` settings.

    Args:
        plan (`PhasePlan`): The recipe's phase.
        model_path (`str`): The saved world model.
        evaluation (`dict`): `TrajectoryEvalConfig` fields.

    Returns:
        `dict[str, Any]`: The evaluation's numbers and `eval_settings` (the settings, with the
        dataset and its held-out split).
    """
    settings = TrajectoryEvaluationArguments(evaluation=evaluation)
    args = replace(plan.args.domain, evaluation=settings)
    data = TRAJECTORIES.build_data(args)
    model = AutoModel.from_pretrained(model_path)
    TRAJECTORIES.check_config(model.config, args, data)
    data = TRAJECTORIES.fit_data(model, args, data)
    results = TRAJECTORIES.evaluate(model, args, data)
    source = args.data
    results[K.EVAL_SETTINGS] = {
        "evaluation": asdict(settings.config()),
        "dataset": {
            "dataset_name": source.dataset_name,
            "dataset_config": source.dataset_config,
            "dataset_test_split": source.dataset_test_split,
            "dataset_revision": source.dataset_revision,
            "clip_stride": source.clip_stride,
            "history_length": model.config.history_length,
        },
    }
    return results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in HELP_FLAGS for arg in argv):
        try:
            options = dict(parse_cli_overrides([a for a in argv if a not in HELP_FLAGS]))
            config = options.get("config") or default_config(options.get("model_path"))
            print(usage(Path(str(config))), end="")
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
        config = Path(str(options.pop("config", None) or default_config(model_path)))
        output = Path(str(options.pop("output", Path(str(model_path)) / K.EVAL_RESULTS_FILE)))
        plan, evaluation, planning = recipe_settings(config)
        groups = ("evaluation",) if plan.task == TRAJECTORIES.name else ("evaluation", "planning")
        for key, value in options.items():
            group, _, field = key.partition(".")
            if group not in groups or not field:
                raise LeWMConfigError(
                    key, value, f"unknown option (a {plan.task} phase takes {groups})"
                )
            (evaluation if group == "evaluation" else planning)[field] = value
        if plan.task == TRAJECTORIES.name:
            results = evaluate_trajectory_phase(plan, str(model_path), evaluation)
        else:
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
