"""Tasks: one runner per task, named in one registry.

A task is a module with `TARGETS` (recipe target name -> the class owning those keys), `OWNERS`
(the owner of any key two targets declare), `parse(parts, output_dir, source)` (build and so
validate the phase's arguments) and `main(args, context)` (run it top to bottom and return the
phase summary). A new task is a new module and one line in `TASKS`; `recipe.py` routes its keys
and `runner.run_recipe` runs it, with no change to the other tasks.
"""

from __future__ import annotations

from types import ModuleType

from ..errors import LeWMConfigError
from . import dna_lm, edit_world_model, walk_lm, world_model

TASKS: dict[str, ModuleType] = {
    "lm": walk_lm,
    "world_model": world_model,
    "dna_lm": dna_lm,
    "edit_world_model": edit_world_model,
}


def get_task(name: str, field: str = "task") -> ModuleType:
    """The task module registered under `name`.

    Raises:
        `LeWMConfigError`: for an unknown task, listing the registered ones.
    """
    if name not in TASKS:
        raise LeWMConfigError(field, name, f"must be one of {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "get_task"]
