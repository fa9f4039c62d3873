"""The world-model evaluation suite: what the world-model task runs after training and what
`recipes/evaluate.py` runs on a saved model, one code path for both.

It runs `evaluate_world_model` (action discrimination against the copy, shuffled and chance
references, rollouts, surprise, latent health) and `evaluate_planning` (goal reaching by
planning in latent space, stratified by true distance, against random actions) on held-out
walks of the model's graph, and returns one flat JSON-ready mapping with the settings.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from .. import metric_keys as K
from ..data.walks import WalkMetadata
from ..errors import LeWMConfigError
from ..fields import option, validate_fields
from .held_out import held_out_walks
from .planning import PlanningConfig, evaluate_planning
from .world_model import WorldModelEvalConfig, evaluate_world_model


@dataclass
class EvaluationArguments:
    """Which evaluations a world-model phase runs after training, and their settings.

    Args:
        run_evaluation (`bool`, defaults to `True`): Run the suite at the end of the phase.
        evaluation (`dict`, defaults to `{}`): `WorldModelEvalConfig` field overrides.
        planning (`dict`, defaults to `{}`): `PlanningConfig` field overrides.
    """

    run_evaluation: bool = option(True, help="Evaluate the world model after training.")
    evaluation: dict = option(
        default_factory=dict, help="WorldModelEvalConfig overrides.", settings=WorldModelEvalConfig
    )
    planning: dict = option(
        default_factory=dict, help="PlanningConfig overrides.", settings=PlanningConfig
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        self.configs()  # a bad nested field fails when the recipe is parsed

    def configs(self) -> tuple[WorldModelEvalConfig, PlanningConfig]:
        """The settings these arguments describe (typed errors name the nested key)."""
        out = []
        for name, cls, values in (
            ("evaluation", WorldModelEvalConfig, self.evaluation),
            ("planning", PlanningConfig, self.planning),
        ):
            try:
                out.append(cls(**values))
            except TypeError as err:
                raise LeWMConfigError(name, values, f"unknown field: {err}") from err
            except LeWMConfigError as err:
                raise LeWMConfigError(
                    f"{name}.{err.field}", err.value, err.reason, element=err.element
                ) from err
        return out[0], out[1]


def run_evaluation_suite(
    model: Any, source: WalkMetadata | Any, args: EvaluationArguments
) -> dict[str, Any]:
    """Evaluate a world model on held-out walks of its graph.

    Args:
        model (`LeWMModel`): The model (evaluated in eval mode, restored afterwards).
        source (`WalkMetadata` or a corpus `DatasetDict`): The graph, jumpers and window.
        args (`EvaluationArguments`): The settings.

    Returns:
        `dict[str, Any]`: Every `eval_*` number, plus `eval_settings` (both configs, seeds
        included) and `eval_seconds`.
    """
    started = time.perf_counter()
    eval_config, plan_config = args.configs()
    results = evaluate_world_model(model, source, eval_config)
    walks = held_out_walks(source, eval_config.num_walks, eval_config.walk_length, eval_config.seed)
    results.update(evaluate_planning(model, walks.graph, walks.window, walks.walks, plan_config))
    results[K.EVAL_SETTINGS] = {"evaluation": asdict(eval_config), "planning": asdict(plan_config)}
    results[K.EVAL_SECONDS] = time.perf_counter() - started
    return results


__all__ = ["EvaluationArguments", "run_evaluation_suite"]
