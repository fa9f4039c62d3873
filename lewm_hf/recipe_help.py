"""`--help` of the recipe scripts: every key a recipe's tasks accept, with its owner, type, default
and help text.

Nothing here is written per key: the keys and their owners come from the task registry
(`lewm_hf.tasks.TASKS`, each task's `TARGETS` and `OWNERS`, through `lewm_hf.recipe.key_owners`),
the types from the owners' annotations, the defaults from the dataclass fields (`default` or
`default_factory`) and the help texts from their `metadata["help"]` (`lewm_hf.fields.option`,
`transformers.TrainingArguments`), else from the owner's docstring (`name (`type`): text`). A
mapping of settings (`planning: {...}`) declared with `option(..., settings=cls)` lists the
fields of `cls` beneath it (`planning.goals_per_distance`).

As in TRL's configs, the keys are grouped per phase, then per owner; a training-arguments class
lists its own fields first and the inherited `TrainingArguments` fields in a group of their own.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Iterable
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from .fields import own_field_types
from .recipe import key_owners, load_recipe, phase_name, safe_load
from .tasks import TASKS, get_task
from .tasks.runner import DEFAULT_TASK, RUNNER_KEYS

WIDTH = 100
# The `default` of an `OptionHelp` without one.
REQUIRED = "required"
# What the runner does with the keys it handles itself (`lewm_hf.tasks.runner.RUNNER_KEYS`), and
# the command line's `config`: (type, default, help).
RUNNER_KEY_HELP: dict[str, tuple[str, str, str]] = {
    "config": (
        "path",
        "the script's default recipe",
        "The recipe YAML (command line only: --config X.yaml).",
    ),
    "defaults": (
        "list[str]",
        "[]",
        "Recipe files merged before this file's (or this phase's) own keys, paths relative to "
        "it; mappings merge deeply, later wins.",
    ),
    "phases": (
        "list[dict]",
        "one phase: the whole file",
        "The phases, run in order; top-level keys are shared by every phase (a phase's own "
        "value wins).",
    ),
    "name": (
        "str",
        "the task, else phase<i>",
        "Phase name: its output folder and the prefix of its command-line keys (--<name>.key).",
    ),
    "task": ("str", DEFAULT_TASK, "The phase's task: one of {tasks}."),
    "output_dir": (
        "str",
        "outputs/<recipe file stem>",
        "The run's output folder; each phase writes to <output_dir>/<name>.",
    ),
    "resume_from_checkpoint": (
        "bool | str",
        "null",
        "true: resume each phase from its last checkpoint-* folder; or a checkpoint folder.",
    ),
}


@dataclass
class OptionHelp:
    """One documented key.

    Args:
        name (`str`): The key (dotted for a field of a settings mapping).
        type (`str`): Its type, readable.
        default (`str`): Its default, as YAML.
        help (`str`): What it does.
        value (`str`, *optional*): The value the recipe sets, as YAML (None: not set).
        children (`list[OptionHelp]`): The fields of a settings mapping.
    """

    name: str
    type: str
    default: str
    help: str
    value: str | None = None
    children: list[OptionHelp] = dataclasses.field(default_factory=list)


# ---- types, values and help texts ---------------------------------------------------------
def describe_type(tp: Any) -> str:
    """A readable annotation: `int | None`, `{mse, cos_mse}` for a `Literal`, `list[int]`."""
    if tp is type(None):
        return "None"
    if tp is Any:
        return "Any"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return "{" + ", ".join(str(a) for a in args) + "}"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe_type(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(describe_type(a) for a in args)}]" if args else name
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def describe_value(value: Any) -> str:
    """A value as it is written in a recipe (YAML flow style): `null`, `true`, `[0, 1]`."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        try:
            plain = value != "" and safe_load(value) == value and value.strip() == value
        except yaml.YAMLError:
            plain = False
        return value if plain else '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(describe_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def field_default(field: dataclasses.Field) -> Any:
    """A field's default (`default`, else `default_factory()`), or `MISSING` when required."""
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return MISSING


def _docstring_help(cls: type, name: str) -> str:
    """The text of `name`'s entry in the `Args:` of `cls`'s (or a base's) docstring."""
    pattern = re.compile(rf"^(\s*){re.escape(name)} \((.*)$")
    for klass in cls.__mro__:
        lines = inspect.cleandoc(klass.__dict__.get("__doc__") or "").splitlines()
        for i, line in enumerate(lines):
            match = pattern.match(line)
            if match is None or "):" not in match.group(2):
                continue
            indent = len(match.group(1))
            parts = [match.group(2).split("):", 1)[1]]
            for following in lines[i + 1 :]:
                if not following.strip() or len(following) - len(following.lstrip()) <= indent:
                    break
                parts.append(following)
            return " ".join(" ".join(parts).split())
    return ""


def field_help(cls: type, field: dataclasses.Field) -> str:
    """A field's help: its `metadata["help"]`, else its entry in the class docstring."""
    text = field.metadata.get("help") or _docstring_help(cls, field.name)
    return " ".join(str(text).replace("%%", "%").split())


def _type_hints(cls: type, fields: dict[str, dataclasses.Field]) -> dict[str, Any]:
    """The resolved annotations of `cls`, else (a name it cannot resolve) the fields' own."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {name: f.type for name, f in fields.items()}


def _dataclass_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}


def class_options(
    cls: type,
    names: Iterable[str] | None = None,
    annotations: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    prefix: str = "",
) -> list[OptionHelp]:
    """The documented fields of a dataclass.

    Args:
        cls (`type`): The dataclass (an arguments class, a config, a settings dataclass).
        names (`Iterable[str]`, *optional*): The fields to list, in order; all init fields if None.
        annotations (`dict[str, Any]`, *optional*): Their annotations (the resolved type hints
            of `cls` if None or missing).
        values (`dict[str, Any]`, *optional*): The values a recipe sets (shown beside defaults).
        defaults (`dict[str, Any]`, *optional*): Defaults that replace the class's (e.g. a
            script's own).
        prefix (`str`, defaults to `""`): Put before each name (`"planning."`).

    Returns:
        `list[OptionHelp]`: One entry per field; a settings mapping's entry lists the fields of
        its settings class as children.
    """
    fields = _dataclass_fields(cls)
    values = values or {}
    defaults = defaults or {}
    if names is None:
        names = [name for name, f in fields.items() if f.init]
    names = list(names)
    annotations = dict(annotations or {})
    if any(name not in annotations for name in names):
        annotations = {**_type_hints(cls, fields), **annotations}
    out = []
    for name in names:
        field = fields.get(name)
        default = defaults.get(name, field_default(field) if field is not None else MISSING)
        option = OptionHelp(
            name=prefix + name,
            type=describe_type(annotations.get(name, Any)),
            default=REQUIRED if default is MISSING else describe_value(default),
            help=field_help(cls, field) if field is not None else "",
            value=describe_value(values[name]) if name in values else None,
        )
        settings = field.metadata.get("settings") if field is not None else None
        if settings is not None:
            nested = values.get(name)
            option.children = class_options(
                settings,
                values=nested if isinstance(nested, dict) else None,
                prefix=f"{prefix}{name}.",
            )
        out.append(option)
    return out


def format_option(option: OptionHelp, indent: int = 2, flag: str = "") -> list[str]:
    """The lines of one key: `name (type, default: X; recipe: Y)`, then its help and fields.

    Args:
        option (`OptionHelp`): The key.
        indent (`int`, defaults to 2): Spaces before the name.
        flag (`str`, defaults to `""`): Put before the name (`"--"` for command-line options).

    Returns:
        `list[str]`: The lines.
    """
    default = "required" if option.default == REQUIRED else f"default: {option.default}"
    head = f"{' ' * indent}{flag}{option.name} ({option.type}, {default}"
    if option.value is not None:
        head += f"; recipe: {option.value}"
    lines = [head + ")"]
    pad = " " * (indent + 4)
    if option.help:
        lines += textwrap.wrap(
            option.help,
            WIDTH,
            initial_indent=pad,
            subsequent_indent=pad,
            break_on_hyphens=False,
        )
    if option.children:
        lines.append(f"{pad}Its fields:")
        for child in option.children:
            lines += format_option(child, indent + 4, flag)
    return lines


def format_group(title: str, options: list[OptionHelp], indent: int = 2, flag: str = "") -> str:
    """A titled group of keys (empty string for no keys)."""
    if not options:
        return ""
    lines = [" " * (indent - 2) + title]
    for option in options:
        lines += format_option(option, indent, flag)
    return "\n".join(lines)


# ---- recipes --------------------------------------------------------------------------------
def _inherited_title(cls: type) -> str:
    """The name of the first base of `cls` that is not `lewm_hf`'s (`TrainingArguments`)."""
    for klass in cls.__mro__[1:]:
        if not klass.__module__.startswith("lewm_hf") and dataclasses.is_dataclass(klass):
            return klass.__name__
    return "inherited"


def task_groups(
    task_name: str, values: dict[str, Any] | None = None, field: str = "task"
) -> list[tuple[str, list[OptionHelp]]]:
    """A task's keys grouped by owner: `(title, options)` per group, in `TARGETS` order.

    A target's own fields (those that `lewm_hf` classes declare) come first; the fields it
    inherits from a base outside `lewm_hf` (a `TrainingArguments` subclass's) form a group of
    their own. The keys the runner handles (`output_dir`, `resume_from_checkpoint`) are left out.

    Args:
        task_name (`str`): A key of `lewm_hf.tasks.TASKS`.
        values (`dict[str, Any]`, *optional*): The phase's recipe values (shown beside defaults).
        field (`str`, defaults to `"task"`): How the task key is named in an error.

    Returns:
        `list[tuple[str, list[OptionHelp]]]`: The groups.

    Raises:
        `LeWMConfigError`: for an unknown task, or a task whose targets share a key.
    """
    task = get_task(task_name, field)
    owners = key_owners(task.TARGETS, task.OWNERS)
    # Defaults the task sets otherwise than the class (e.g. an edit model's `pooling`).
    task_defaults = getattr(task, "DEFAULTS", {})
    groups = []
    for target, cls in task.TARGETS.items():
        defaults = task_defaults.get(target)
        keys = [k for k, (owner, _) in owners.items() if owner == target and k not in RUNNER_KEYS]
        annotations = {k: owners[k][1] for k in keys}
        own = [k for k in own_field_types(cls) if k in annotations]
        inherited = [k for k in keys if k not in own]
        if own:
            groups.append(
                (
                    f"{target}: {cls.__name__}",
                    class_options(cls, own, annotations, values, defaults),
                )
            )
        if inherited:
            title = f"{target}: {cls.__name__}"
            if own:
                title = f"{target}: {_inherited_title(cls)} fields (inherited by {cls.__name__})"
            groups.append((title, class_options(cls, inherited, annotations, values, defaults)))
    return groups


def _runner_options(values: dict[str, Any]) -> list[OptionHelp]:
    options = []
    for key in ("config", *RUNNER_KEYS):
        tp, default, text = RUNNER_KEY_HELP.get(key, ("Any", "null", "Handled by the runner."))
        options.append(
            OptionHelp(
                name=key,
                type=tp,
                default=default,
                help=text.format(tasks=", ".join(TASKS)),
                value=describe_value(values[key]) if key in values else None,
            )
        )
    return options


def recipe_help(
    config: str | Path,
    overrides: list[tuple[str, Any]] | None = None,
    prog: str = "recipes/train.py",
) -> str:
    """The `--help` text of a recipe: the command line, the runner keys, and per phase every key
    of its task, grouped by owner, with type, default, the recipe's value and help.

    Args:
        config (`str` or `Path`): The recipe YAML (its phases name the tasks).
        overrides (`list[tuple[str, Any]]`, *optional*): Command-line overrides (their values
            show as the recipe's).
        prog (`str`, defaults to `"recipes/train.py"`): The script, for the usage line.

    Returns:
        `str`: The text.

    Raises:
        `LeWMConfigError`: for a recipe that cannot be composed or names an unknown task.
    """
    recipe = load_recipe(config, overrides)
    names = [phase_name(phase, i) for i, phase in enumerate(recipe.phases)]
    example = names[-1]
    overview = [
        f"usage: python {prog} [--config RECIPE.yaml] [--key value ...] [--<phase>.key value ...]",
        "",
        f"Recipe: {recipe.path}",
        f"Phases, run in order: {', '.join(names)}.",
        "",
        "Command line:",
        "  -h, --help",
        "      Show this help (for the recipe given by --config) and exit.",
        "  --config RECIPE.yaml",
        "      The recipe to run.",
        "  --key value",
        "      Set a recipe key in every phase whose task has it (and at the top level). Values",
        "      are read as YAML: 3, 1e-3, true, null, [a, b], {k: v}. --key=value works too; a",
        "      bare --flag is true.",
        "  --<phase>.key value",
        f"      Set a key in the phase named <phase> only (here: {', '.join(names)}), e.g.",
        f"      --{example}.learning_rate 1e-3.",
        "  A settings mapping (e.g. planning) is set whole: --planning '{goals_per_distance: 10}'",
        "  replaces the recipe's mapping; list its other fields in the same value to keep them.",
    ]
    parts = ["\n".join(overview), format_group("Runner keys:", _runner_options(recipe.shared))]
    for i, phase in enumerate(recipe.phases):
        task_name = phase.get("task", DEFAULT_TASK)
        header = (
            f"Phase {i + 1}/{len(recipe.phases)}: {names[i]} (task {task_name}): in the recipe "
            f"`key: value`, on the command line --key value or --{names[i]}.key value"
        )
        values = {k: v for k, v in phase.items() if k not in RUNNER_KEYS}
        groups = task_groups(task_name, values, recipe.dotted(i, "task"))
        lines = textwrap.wrap(header, WIDTH, subsequent_indent="  ")
        parts.append("\n".join(lines))
        parts += [format_group(title, options, indent=4) for title, options in groups]
    return "\n\n".join(part for part in parts if part) + "\n"


__all__ = [
    "REQUIRED",
    "WIDTH",
    "OptionHelp",
    "class_options",
    "describe_type",
    "describe_value",
    "field_default",
    "field_help",
    "format_group",
    "format_option",
    "recipe_help",
    "task_groups",
]
