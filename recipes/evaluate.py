"""Evaluate a saved world model: `python recipes/evaluate.py --model_path PATH [--config X.yaml]`.

Runs the world-model evaluation suite (`lewm_hf.evaluation.suite`: action discrimination against
the copy, shuffled and chance references, rollouts, surprise, planning stratified by distance
against random actions) on held-out walks of the model's graph, prints a table and writes
`eval_results.json` beside the model (or to `--output`): the numbers, the settings with their
seeds, and the command that reproduces them. The graph comes from the recipe (`--config`, by
default the world-model recipe `recipes/configs/walk_lewm.yaml`); its `evaluation:` and
`planning:` keys are used, except that planning defaults to the full 300 goals x 3 seeds unless
`--planning.<field>` flags say otherwise (e.g. `--planning.goals_per_distance 50`).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from transformers import AutoModel

import lewm_hf  # noqa: F401  (registers the `lewm` model type)
from lewm_hf import metric_keys as K
from lewm_hf.data.walks import build_walk_corpus, load_walk_metadata
from lewm_hf.errors import LeWMConfigError, LeWMError
from lewm_hf.evaluation.planning import PlanningConfig
from lewm_hf.evaluation.suite import EvaluationArguments, run_evaluation_suite
from lewm_hf.recipe import parse_cli_overrides
from lewm_hf.reporting import format_evaluation, write_json
from lewm_hf.tasks.runner import validate_recipe

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "walk_lewm.yaml"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(shlex.quote(a) for a in ["python", "recipes/evaluate.py", *argv])
    try:
        options = dict(parse_cli_overrides(argv))
        model_path = options.pop("model_path", None)
        if not model_path:
            raise LeWMConfigError("model_path", None, "give --model_path PATH")
        config = Path(str(options.pop("config", DEFAULT_CONFIG)))
        output = Path(str(options.pop("output", Path(str(model_path)) / K.EVAL_RESULTS_FILE)))
        plans = [p for p in validate_recipe(config) if p.task == "world_model"]
        if not plans:
            raise LeWMConfigError("config", str(config), "has no world-model phase")
        plan = plans[-1]
        full = PlanningConfig()
        recipe_args = getattr(plan.args, "evaluation", None) or EvaluationArguments()
        evaluation = dict(recipe_args.evaluation)
        planning = {"goals_per_distance": full.goals_per_distance, "seeds": full.seeds}
        for key, value in options.items():
            group, _, field = key.partition(".")
            if group not in ("evaluation", "planning") or not field:
                raise LeWMConfigError(key, value, "unknown option")
            (evaluation if group == "evaluation" else planning)[field] = value
        args = EvaluationArguments(evaluation=evaluation, planning=planning)
        corpus = build_walk_corpus(plan.args.data.corpus_config(), plan.args.data.corpus_cache_dir)
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
