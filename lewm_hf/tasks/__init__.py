"""Tasks: one runner per kind of job, named in one registry.

A task has `TARGETS` (recipe target name -> the class owning those keys), `OWNERS` (the owner
of any key two targets declare), `parse(parts, output_dir, source)` (build and so validate the
phase's arguments) and `main(args, context)` (run it top to bottom and return the phase
summary). The LM tasks are modules; the world-model tasks are the one world-model runner
(`world_model.WorldModelTask`) given a domain (`domains`). A new kind of trajectory data is a
new domain and one line in `TASKS`; `recipe.py` routes its keys and `runner.run_recipe` runs it,
with no change to the other tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from ..errors import LeWMConfigError
from . import dna_lm, env_rollouts, walk_lm
from .base import PhaseContext
from .domains.edits import EDITS
from .domains.trajectories import TRAJECTORIES
from .domains.walks import WALKS
from .world_model import WorldModelTask


class Task(Protocol):
    """What the recipe runner needs of a task (a module or a `WorldModelTask`)."""

    TARGETS: dict[str, type]
    OWNERS: dict[str, str]

    def parse(self, parts: dict[str, dict[str, Any]], output_dir: Path, source: str) -> Any: ...

    def main(self, args: Any, context: PhaseContext) -> dict[str, Any]: ...


TASKS: dict[str, Task] = {
    "lm": walk_lm,
    "world_model": WorldModelTask(WALKS),
    "dna_lm": dna_lm,
    "edit_world_model": WorldModelTask(EDITS),
    "trajectory_world_model": WorldModelTask(TRAJECTORIES),
    "env_rollouts": env_rollouts,
}


def get_task(name: str, field: str = "task") -> Task:
    """The task registered under `name`.

    Raises:
        `LeWMConfigError`: for an unknown task, listing the registered ones.
    """
    if name not in TASKS:
        raise LeWMConfigError(field, name, f"must be one of {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Task", "get_task"]
