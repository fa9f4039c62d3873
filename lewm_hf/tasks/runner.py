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
from .base import PhaseContext, PhaseHooks, RestoredRun, resolve_resume

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


class ElasticRestartHooks(PhaseHooks):
    """The restart of a torchrun launch whose workers the elastic agent restarted
    (`torchrun --max-restarts K`): no flag is needed to resume.

    - A phase an earlier attempt of the same launch finished is not run again: its summary is
      read from `launch_record.json` in the run's output dir, which the main process writes
      after each phase. The first attempt of a launch starts a new record (so a record left by
      another launch is never used), and a record of another `run_id` is ignored.
    - The first phase not finished resumes from its newest whole checkpoint
      (`last_complete_checkpoint`), unless the recipe names one (`resume_from_checkpoint`).

    Args:
        root (`Path`): The run's output dir.
        plans (`list[PhasePlan]`): The recipe's phases.
        launch (`ElasticLaunch`): This process's launch (`lewm_hf.distributed.elastic_launch`).
    """

    def __init__(self, root: Path, plans: list[PhasePlan], launch: ElasticLaunch) -> None:
        self.path = root / K.LAUNCH_RECORD_FILE
        self.plans = plans
        self.launch = launch
        self.is_main = int(os.environ.get("RANK", "0")) == 0

    def _read(self) -> dict[str, Any]:
        record = json.loads(self.path.read_text()) if self.path.is_file() else None
        if not isinstance(record, dict) or record.get("run_id") != self.launch.run_id:
            return {"run_id": self.launch.run_id, "phases": {}}
        return record

    def restore(self) -> RestoredRun | None:
        if self.launch.restart_count == 0:
            if self.is_main and self.path.is_file():
                self.path.unlink()
            return None
        finished = dict(self._read()["phases"])
        attempt = self.launch.restart_count
        for plan in self.plans:
            if plan.name in finished:
                console(f"restart {attempt} of this launch: phase {plan.name} had finished")
                continue
            if plan.resume not in (None, False):
                return RestoredRun(finished=finished)
            checkpoint = last_complete_checkpoint(plan.output_dir, "resume_from_checkpoint")
            where = f"resumes from {checkpoint}" if checkpoint else "starts over (no checkpoint)"
            console(f"restart {attempt} of this launch: phase {plan.name} {where}")
            return RestoredRun(finished=finished, phase=plan.name, checkpoint=checkpoint)
        return RestoredRun(finished=finished)

    def phase_finished(self, context: PhaseContext, summary: dict[str, Any]) -> None:
        if not self.is_main:
            return
        record = self._read()
        record["phases"][context.name] = summary
        write_json(self.path, record)


def run_recipe(
    config: str | Path,
    overrides: list[tuple[str, Any]] | None = None,
    hooks: PhaseHooks | None = None,
) -> dict[str, Any]:
    """Run every phase of a recipe and write `summary.json` in its output dir.

    Every phase is parsed (and so validated) before the first one runs. Every launcher runs
    this same function in each process (`accelerate launch`, torchrun, a Ray Train worker).

    Args:
        config (`str` or `Path`): The recipe YAML.
        overrides (`list[tuple[str, Any]]`, *optional*): Command-line overrides.
        hooks (`PhaseHooks`, *optional*): What the launcher adds: a restart point (phases that
            had finished are skipped, the interrupted one resumes from the launcher's
            checkpoint) and a change to each phase's trainer. None: nothing.

    Returns:
        `dict[str, Any]`: The summary: `phases.<name>.*`, `wall_time_s`, `output_dir`, `config`.
    """
    start = time.time()
    recipe = load_recipe(config, overrides)
    root = run_root(recipe)
    plans = [parse_phase(recipe, i, root) for i in range(len(recipe.phases))]
    check_hub_repos(plans)
    summary: dict[str, Any] = {"config": str(recipe.path), "output_dir": str(root), "phases": {}}
    if hooks is None:
        launch = elastic_launch()
        hooks = PhaseHooks() if launch is None else ElasticRestartHooks(root, plans, launch)
    restored = hooks.restore()
    previous = None
    for index, plan in enumerate(plans):
        if restored is not None and plan.name in restored.finished:
            console(f"== phase {index + 1}/{len(plans)}: {plan.name} finished before the restart")
            previous = restored.finished[plan.name]
            summary["phases"][plan.name] = previous
            hooks.phase_finished(PhaseContext(name=plan.name, index=index), previous)
            continue
        console(
            f"== phase {index + 1}/{len(plans)}: {plan.name} ({plan.task}) -> {plan.output_dir}"
        )
        if restored is not None and restored.phase == plan.name and restored.checkpoint:
            resume = resolve_resume(restored.checkpoint, plan.output_dir)
        else:
            resume = resolve_resume(plan.resume, plan.output_dir)
        context = PhaseContext(
            name=plan.name,
            index=index,
            previous=previous,
            resume=resume,
            recipe=plan.keys,
            hooks=hooks,
        )
        # A task without training arguments (`env_rollouts` writes data) shows its bars.
        training = getattr(plan.args, "training", None)
        set_progress_disabled(getattr(training, "disable_tqdm", False))
        previous = get_task(plan.task).main(plan.args, context)
        summary["phases"][plan.name] = previous
        hooks.phase_finished(context, previous)
    summary["wall_time_s"] = time.time() - start
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(root / K.SUMMARY_FILE, summary)
    return summary


__all__ = [
    "ElasticRestartHooks",
    "PhasePlan",
    "parse_phase",
    "run_recipe",
    "run_root",
    "validate_recipe",
]
