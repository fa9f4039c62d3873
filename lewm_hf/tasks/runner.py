"""Run a recipe: parse every phase (so every key is checked first), then run them in order.

Each phase runs its task's `main` (`lewm_hf.tasks`) with the previous phase's summary, in
`<output_dir>/<phase name>`; the run's `summary.json` is written once, at the end.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import metric_keys as K
from ..errors import LeWMConfigError
from ..recipe import Recipe, key_owners, load_recipe, phase_name, split_phase_keys
from ..reporting import console, write_json
from . import TASKS, get_task
from .base import PhaseContext, resolve_resume

# Keys the runner handles itself (never routed to a task's targets).
RUNNER_KEYS = ("defaults", "phases", "name", "task", "output_dir", "resume_from_checkpoint")
# The task of a phase without a `task:` key.
DEFAULT_TASK = "lm"


@dataclass
class PhasePlan:
    """One parsed phase of a recipe, ready to run.

    Args:
        name (`str`): Phase name.
        task (`str`): Task name (a key of `lewm_hf.tasks.TASKS`).
        output_dir (`Path`): Where the phase writes.
        args (`Any`): The task's parsed arguments.
        resume (`Any`): The recipe's `resume_from_checkpoint` (resolved when the phase starts).
        keys (`dict`, *optional*): The phase's resolved recipe keys (`recipe.yaml` of the run).
    """

    name: str
    task: str
    output_dir: Path
    args: Any
    resume: Any = None
    keys: dict[str, Any] | None = None


def _phase_owners(recipe: Recipe, index: int) -> dict[str, tuple[str, Any]]:
    task = get_task(recipe.phases[index].get("task", DEFAULT_TASK), recipe.dotted(index, "task"))
    return key_owners(task.TARGETS, task.OWNERS)


def parse_phase(recipe: Recipe, index: int, root: Path) -> PhasePlan:
    """Parse phase `index` of a recipe into its task's arguments (every key checked).

    A shared key (top level or an unprefixed command-line flag, e.g. `--reg_weight 3`) reaches
    the phases whose task has it; it is unknown, and an error, only if no phase's task has it.
    A shared `hub_model_id` in a recipe of several phases becomes `<hub_model_id>-<phase name>`
    in each phase that does not set its own.

    Args:
        recipe (`Recipe`): The composed recipe.
        index (`int`): Phase index.
        root (`Path`): The run's output dir; the phase writes to `root / <name>`.

    Returns:
        `PhasePlan`: The phase, ready to run.
    """
    phase = recipe.phases[index]
    name = phase_name(phase, index)
    task_name = phase.get("task", DEFAULT_TASK)
    task = get_task(task_name, recipe.dotted(index, "task"))
    owners = key_owners(task.TARGETS, task.OWNERS)
    others = [_phase_owners(recipe, i) for i in range(len(recipe.phases)) if i != index]
    for_other_phases = tuple(
        key
        for key in recipe.shared
        if key not in owners
        and key not in recipe.own_keys[index]
        and any(key in other for other in others)
    )
    shared_repo = recipe.shared.get("hub_model_id")
    if shared_repo and len(recipe.phases) > 1 and "hub_model_id" not in recipe.own_keys[index]:
        # One repo per phase: a shared `hub_model_id` names the run, each phase pushes to
        # `<hub_model_id>-<phase name>` (the same rule as without one: `<run>-<phase>`).
        phase["hub_model_id"] = f"{shared_repo}-{name}"
    try:
        parts = split_phase_keys(
            recipe, index, owners, tuple(task.TARGETS), RUNNER_KEYS + for_other_phases
        )
    except LeWMConfigError as err:
        raise _with_task_hint(err, task_name) from err
    output_dir = root / name
    args = task.parse(parts, output_dir, recipe.phase_source(index, "name"))
    keys = {"name": name, "task": task_name, **{k: v for k, v in phase.items() if k != "defaults"}}
    return PhasePlan(
        name, task_name, output_dir, args, phase.get("resume_from_checkpoint"), keys=keys
    )


def _with_task_hint(err: LeWMConfigError, task_name: str) -> LeWMConfigError:
    """An unknown key's error, naming the tasks that do read it (`dataset_name` on a
    `world_model` phase: task `trajectory_world_model` reads it)."""
    key = err.field.rsplit(".", 1)[-1]
    readers = [
        name
        for name, other in TASKS.items()
        if name != task_name and key in key_owners(other.TARGETS, other.OWNERS)
    ]
    if err.reason != "unknown key" or not readers:
        return err
    reason = f"unknown key for task {task_name} (read by task {', '.join(readers)})"
    return LeWMConfigError(err.field, err.value, reason, err.source)


def check_hub_repos(plans: list[PhasePlan]) -> None:
    """Each phase that pushes to the Hub needs its own repo.

    Raises:
        `LeWMConfigError`: when two phases push to the same `hub_model_id`.
    """
    seen: dict[str, str] = {}
    for plan in plans:
        training = getattr(plan.args, "training", None)
        if training is None or not training.push_to_hub:
            continue
        repo = training.hub_model_id
        if repo in seen:
            raise LeWMConfigError(
                "hub_model_id",
                repo,
                f"phases {seen[repo]!r} and {plan.name!r} would push to the same repo: set it "
                f"per phase (--{plan.name}.hub_model_id ...)",
            )
        seen[repo] = plan.name


def run_root(recipe: Recipe) -> Path:
    """The run's output dir: the recipe's `output_dir`, else `outputs/<recipe file stem>`."""
    return Path(str(recipe.shared.get("output_dir") or Path("outputs") / recipe.path.stem))


def validate_recipe(
    config: str | Path, overrides: list[tuple[str, Any]] | None = None
) -> list[PhasePlan]:
    """Compose and parse every phase of a recipe without running anything.

    Raises:
        `LeWMConfigError`: for any bad key, type or value, naming its path and file.
    """
    recipe = load_recipe(config, overrides)
    root = run_root(recipe)
    plans = [parse_phase(recipe, i, root) for i in range(len(recipe.phases))]
    check_hub_repos(plans)
    return plans


def run_recipe(
    config: str | Path, overrides: list[tuple[str, Any]] | None = None
) -> dict[str, Any]:
    """Run every phase of a recipe and write `summary.json` in its output dir.

    Every phase is parsed (and so validated) before the first one runs.

    Args:
        config (`str` or `Path`): The recipe YAML.
        overrides (`list[tuple[str, Any]]`, *optional*): Command-line overrides.

    Returns:
        `dict[str, Any]`: The summary: `phases.<name>.*`, `wall_time_s`, `output_dir`, `config`.
    """
    start = time.time()
    recipe = load_recipe(config, overrides)
    root = run_root(recipe)
    plans = [parse_phase(recipe, i, root) for i in range(len(recipe.phases))]
    check_hub_repos(plans)
    summary: dict[str, Any] = {"config": str(recipe.path), "output_dir": str(root), "phases": {}}
    previous = None
    for index, plan in enumerate(plans):
        console(
            f"== phase {index + 1}/{len(plans)}: {plan.name} ({plan.task}) -> {plan.output_dir}"
        )
        context = PhaseContext(
            name=plan.name,
            index=index,
            previous=previous,
            resume=resolve_resume(plan.resume, plan.output_dir),
            recipe=plan.keys,
        )
        previous = get_task(plan.task).main(plan.args, context)
        summary["phases"][plan.name] = previous
    summary["wall_time_s"] = time.time() - start
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(root / K.SUMMARY_FILE, summary)
    return summary


__all__ = ["PhasePlan", "parse_phase", "run_recipe", "run_root", "validate_recipe"]
