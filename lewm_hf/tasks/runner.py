"""Run a recipe: parse every phase (so every key is checked first), then run them in order.

Each phase runs its task's `main` (`lewm_hf.tasks`) with the previous phase's summary, in
`<output_dir>/<phase name>`; the run's `summary.json` is written once, at the end.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import metric_keys as K
from ..checkpoints import last_complete_checkpoint
from ..distributed import ElasticLaunch, elastic_launch
from ..errors import LeWMConfigError
from ..progress import set_progress_disabled
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


def launch_record(root: Path, launch: ElasticLaunch | None) -> dict[str, dict[str, Any]]:
    """The phases an earlier attempt of this torchrun launch finished (name -> summary).

    The first attempt (and any run outside torchrun) starts a new record: its main process
    removes one left by another launch. A restarted attempt reads the record of its own launch
    (the same `run_id`); a record of another launch is ignored.

    Args:
        root (`Path`): The run's output dir.
        launch (`ElasticLaunch` or `None`): This process's launch (`elastic_launch()`).

    Returns:
        `dict[str, dict]`: the finished phases' summaries (empty outside a restart).
    """
    path = root / K.LAUNCH_RECORD_FILE
    if launch is None or launch.restart_count == 0:
        if int(os.environ.get("RANK", "0")) == 0 and path.is_file():
            path.unlink()
        return {}
    record = json.loads(path.read_text()) if path.is_file() else None
    if not isinstance(record, dict) or record.get("run_id") != launch.run_id:
        return {}
    return dict(record.get("phases", {}))


def record_phase(
    root: Path, launch: ElasticLaunch | None, name: str, phase_summary: dict[str, Any]
) -> None:
    """Add a finished phase to the launch record (main process of a torchrun launch only)."""
    if launch is None or int(os.environ.get("RANK", "0")) != 0:
        return
    path = root / K.LAUNCH_RECORD_FILE
    record = json.loads(path.read_text()) if path.is_file() else None
    if not isinstance(record, dict) or record.get("run_id") != launch.run_id:
        record = {"run_id": launch.run_id, "phases": {}}
    record["phases"][name] = phase_summary
    write_json(path, record)


def restart_resume(plan: PhasePlan, launch: ElasticLaunch | None) -> str | None:
    """The checkpoint a phase resumes from: the recipe's `resume_from_checkpoint`, else, in a
    restarted torchrun attempt, the phase's newest whole checkpoint (no flag needed)."""
    if plan.resume not in (None, False) or launch is None or launch.restart_count == 0:
        return resolve_resume(plan.resume, plan.output_dir)
    checkpoint = last_complete_checkpoint(plan.output_dir, "resume_from_checkpoint")
    attempt = launch.restart_count
    if checkpoint is None:
        console(f"   restart {attempt} of this launch: no checkpoint yet, the phase starts over")
    else:
        console(f"   restart {attempt} of this launch: resuming from {checkpoint}")
    return checkpoint


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
    launch = elastic_launch()
    finished = launch_record(root, launch)
    previous = None
    for index, plan in enumerate(plans):
        console(
            f"== phase {index + 1}/{len(plans)}: {plan.name} ({plan.task}) -> {plan.output_dir}"
        )
        if plan.name in finished:
            # A restarted torchrun worker: an earlier attempt of this launch finished the phase.
            console("   finished by an earlier attempt of this launch: reusing its results")
            previous = finished[plan.name]
            summary["phases"][plan.name] = previous
            continue
        context = PhaseContext(
            name=plan.name,
            index=index,
            previous=previous,
            resume=restart_resume(plan, launch),
            recipe=plan.keys,
        )
        set_progress_disabled(getattr(plan.args.training, "disable_tqdm", False))
        previous = get_task(plan.task).main(plan.args, context)
        summary["phases"][plan.name] = previous
        record_phase(root, launch, plan.name, previous)
    summary["wall_time_s"] = time.time() - start
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(root / K.SUMMARY_FILE, summary)
    return summary


__all__ = [
    "PhasePlan",
    "launch_record",
    "parse_phase",
    "record_phase",
    "restart_resume",
    "run_recipe",
    "run_root",
    "validate_recipe",
]
