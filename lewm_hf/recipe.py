"""YAML recipes: composition, command-line overrides and typed parsing into argument dataclasses.

A recipe is a YAML mapping. Its keys are model, data and trainer arguments, flat. Composition:

- `defaults: [a.yaml, b.yaml]` lists files (paths relative to the including file) merged
  before the including file's own keys: mappings merge deeply, later wins, the including file
  last. Cycles are detected and reported with the chain of files.
- `phases:` is a list of phase mappings run in order; each phase may have its own `defaults:`.
  Top-level keys other than `phases` are shared by every phase (a phase's own value wins).
  A recipe without `phases:` is one phase.
- Command-line flags override YAML values: `--learning_rate 1e-3` sets the key at the top level
  and in every phase; `--encoder.learning_rate 1e-3` sets it in the phase named `encoder` only.
  Values are parsed as YAML scalars (`true`, `3`, `1e-3`, `[a, b]`).

Each key has exactly one owner among a task's targets (its argument and config classes): a key
that two targets accept is an error unless the task's explicit owner map settles it. Every value
is checked against the type of the field it lands in; an unknown key or a wrong type raises
`LeWMConfigError` naming the dotted path and the file that set it.
YAML is read with `yaml.safe_load` only, with YAML 1.2 booleans: only `true` / `false` (any case)
are booleans, so `save_strategy: no` or `--save_strategy no` is the string `"no"`, not False.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from transformers import PreTrainedConfig

from .errors import LeWMConfigError
from .fields import check_type, own_field_types

RESERVED_KEYS = ("defaults", "phases", "name", "task")


class RecipeLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` with YAML 1.2 booleans and floats: `yes`, `no`, `on`, `off` stay strings
    (`save_strategy: no` is a valid `TrainingArguments` value), and `1e-3` is a float."""


_BOOL = "tag:yaml.org,2002:bool"
_FLOAT = "tag:yaml.org,2002:float"
RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
RecipeLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
# The int resolver must not run before the float one for a leading digit (`1e-3`).
for _first in "-+0123456789":
    RecipeLoader.yaml_implicit_resolvers[_first].sort(key=lambda item: item[0] != _FLOAT)


def safe_load(text: str) -> Any:
    """`yaml.load` with `RecipeLoader` (safe: no Python tags, YAML 1.2 booleans)."""
    return yaml.load(text, Loader=RecipeLoader)


@dataclass
class Recipe:
    """A composed recipe.

    Args:
        path (`Path`): The recipe file.
        shared (`dict`): Top-level keys shared by every phase.
        phases (`list[dict]`): The phases' merged flat mappings (shared keys included).
        sources (`dict[str, str]`): For each dotted key path, the file that set it (or `"cli"`).
        own_keys (`list[set[str]]`): Per phase, the keys the phase sets itself (not shared).
    """

    path: Path
    shared: dict[str, Any]
    phases: list[dict[str, Any]]
    sources: dict[str, str]
    own_keys: list[set[str]] = dataclasses.field(default_factory=list)

    def source(self, dotted: str) -> str:
        """The file that set `dotted` (falls back to the recipe file)."""
        return self.sources.get(dotted, str(self.path))

    def dotted(self, index: int, key: str) -> str:
        """How a phase's key is named in errors: `phases.<i>.<key>`, or `key` for one phase."""
        return f"phases.{index}.{key}" if len(self.phases) > 1 else key

    def phase_source(self, index: int, key: str) -> str:
        """The file that set a phase's key."""
        return self.sources.get(f"phases.{index}.{key}", self.source(key))


def _deep_merge(
    base: dict[str, Any],
    new: dict[str, Any],
    base_src: dict[str, str],
    new_src: dict[str, str],
    prefix: str = "",
) -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value, base_src, new_src, dotted + ".")
        else:
            base[key] = value
            for k in [k for k in base_src if k == dotted or k.startswith(dotted + ".")]:
                del base_src[k]
            for k, v in new_src.items():
                if k == dotted or k.startswith(dotted + "."):
                    base_src[k] = v


def _record_sources(obj: Any, file: str, prefix: str, out: dict[str, str]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            _record_sources(value, file, f"{prefix}{key}.", out)
    out[prefix.rstrip(".")] = file


def _read_yaml(path: Path, included_from: str | None) -> dict[str, Any]:
    if not path.is_file():
        raise LeWMConfigError(
            "defaults" if included_from else "config", str(path), "file not found", included_from
        )
    try:
        data = safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise LeWMConfigError("config", str(path), f"invalid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LeWMConfigError("config", str(path), "a recipe must be a YAML mapping")
    return data


def _compose_mapping(
    data: dict[str, Any], file: Path, stack: tuple[Path, ...], prefix: str = ""
) -> tuple[dict[str, Any], dict[str, str]]:
    """Resolve `defaults:` of one mapping read from `file`."""
    defaults = data.get("defaults", [])
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise LeWMConfigError(f"{prefix}defaults", defaults, "must be a list of paths", str(file))
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for entry in defaults:
        child = (file.parent / entry).resolve()
        if child in stack:
            chain = " -> ".join(str(p) for p in (*stack, child))
            raise LeWMConfigError(f"{prefix}defaults", entry, f"cycle: {chain}", str(file))
        child_data, child_src = _load_file(child, stack, str(file))
        _deep_merge(merged, child_data, sources, child_src)
    own = {k: v for k, v in data.items() if k != "defaults"}
    own_src: dict[str, str] = {}
    _record_sources(own, str(file), "", own_src)
    own_src.pop("", None)
    _deep_merge(merged, own, sources, own_src)
    return merged, sources


def _load_file(
    path: Path, stack: tuple[Path, ...], included_from: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    path = path.resolve()
    data = _read_yaml(path, included_from)
    stack = (*stack, path)
    phases = data.get("phases")
    if phases is not None:
        if not isinstance(phases, list) or not all(isinstance(p, dict) for p in phases):
            raise LeWMConfigError("phases", phases, "must be a list of mappings", str(path))
        resolved = []
        phase_sources: dict[str, str] = {}
        for i, phase in enumerate(phases):
            p_data, p_src = _compose_mapping(phase, path, stack, f"phases.{i}.")
            resolved.append(p_data)
            phase_sources.update({f"phases.{i}.{k}": v for k, v in p_src.items()})
        data = {**data, "phases": resolved}
        merged, sources = _compose_mapping(data, path, stack)
        sources.update(phase_sources)
        return merged, sources
    return _compose_mapping(data, path, stack)


def parse_cli_overrides(argv: list[str]) -> list[tuple[str, Any]]:
    """Parse `--key value`, `--key=value` and bare `--flag` (true) into (key, value) pairs.

    Args:
        argv (`list[str]`): The arguments after the script name, without `--config`.

    Returns:
        `list[tuple[str, Any]]`: Keys (possibly dotted) and YAML-parsed values, in order.
    """
    out: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or len(token) == 2:
            raise LeWMConfigError("cli", token, "expected --key value")
        key = token[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            raw = argv[i + 1]
            i += 2
        else:
            raw = "true"
            i += 1
        try:
            value = safe_load(raw)
        except yaml.YAMLError:
            value = raw
        out.append((key.replace("-", "_"), value))
    return out


def load_recipe(path: str | Path, overrides: list[tuple[str, Any]] | None = None) -> Recipe:
    """Compose a recipe file and apply command-line overrides.

    Args:
        path (`str` or `Path`): The recipe YAML.
        overrides (`list[tuple[str, Any]]`, *optional*): From `parse_cli_overrides`.

    Returns:
        `Recipe`: Shared keys and one merged flat mapping per phase.
    """
    path = Path(path).resolve()
    data, sources = _load_file(path, (), None)
    phases_raw = data.pop("phases", None)
    shared = data
    if phases_raw is None:
        phases_raw = [{}]
    elif not phases_raw:
        raise LeWMConfigError("phases", [], "is empty: list at least one phase", str(path))
    phases = []
    own_keys = [set(phase) for phase in phases_raw]
    for i, phase in enumerate(phases_raw):
        merged = {**shared, **phase}
        for key in shared:
            if key not in phase and key in sources:
                sources[f"phases.{i}.{key}"] = sources[key]
        phases.append(merged)
    names = [phase_name(p, i) for i, p in enumerate(phases)]
    for key, value in overrides or []:
        head, _, rest = key.partition(".")
        if rest and head in names:
            i = names.index(head)
            phases[i][rest] = value
            own_keys[i].add(rest)
            sources[f"phases.{i}.{rest}"] = "cli"
        elif rest:
            raise LeWMConfigError(
                "cli", f"--{key}", f"unknown phase {head!r}; the phases are {names}", str(path)
            )
        else:
            shared[key] = value
            sources[key] = "cli"
            for i, phase in enumerate(phases):
                phase[key] = value
                sources[f"phases.{i}.{key}"] = "cli"
    return Recipe(path=path, shared=shared, phases=phases, sources=sources, own_keys=own_keys)


def phase_name(phase: dict[str, Any], index: int) -> str:
    """A phase's name: its `name`, else its `task`, else `phase<i>`."""
    return str(phase.get("name", phase.get("task", f"phase{index}")))


def recipe_fields(cls: type) -> dict[str, Any]:
    """The recipe keys a target class accepts, with their annotations.

    A `PreTrainedConfig` subclass (`LeWMConfig`) accepts only the fields it declares itself, not
    the generic `PreTrainedConfig` ones (`dtype`, `id2label`, ...); any other dataclass (the
    `TrainingArguments` subclasses included) accepts every init field.
    """
    if issubclass(cls, PreTrainedConfig):
        return dict(own_field_types(cls))
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def key_owners(
    targets: dict[str, type], owners: dict[str, str] | None = None
) -> dict[str, tuple[str, Any]]:
    """Map every recipe key of a task to its one owner (target name) and annotation.

    Args:
        targets (`dict[str, type]`): Target name -> class, as a task declares them.
        owners (`dict[str, str]`, *optional*): The task's explicit owner map for keys that more
            than one target declares (e.g. `history_length`: the clips own it and the model
            reads it from them).

    Returns:
        `dict[str, tuple[str, Any]]`: Key -> (owner, annotation).

    Raises:
        `LeWMConfigError`: for a key that two targets accept and the owner map does not settle,
            or an owner map entry naming an unknown target or a target without that key.
    """
    owners = owners or {}
    accepted: dict[str, list[str]] = {}
    fields = {name: recipe_fields(cls) for name, cls in targets.items()}
    for name, keys in fields.items():
        for key in keys:
            accepted.setdefault(key, []).append(name)
    out: dict[str, tuple[str, Any]] = {}
    for key, names in accepted.items():
        if key in owners:
            owner = owners[key]
            if owner not in names:
                raise LeWMConfigError(f"owners.{key}", owner, f"must be one of {names}")
        elif len(names) > 1:
            raise LeWMConfigError(
                key, names, "is accepted by several targets; list its owner in the task's OWNERS"
            )
        else:
            owner = names[0]
        out[key] = (owner, fields[owner][key])
    return out


def split_phase_keys(
    recipe: Recipe,
    index: int,
    owners: dict[str, tuple[str, Any]],
    targets: tuple[str, ...],
    ignore: tuple[str, ...] = RESERVED_KEYS,
) -> dict[str, dict[str, Any]]:
    """Route a phase's flat keys to their one owner, checking names and types.

    Args:
        recipe (`Recipe`): The composed recipe.
        index (`int`): The phase index.
        owners (`dict[str, tuple[str, Any]]`): From `key_owners`: key -> (owner, annotation).
        targets (`tuple[str, ...]`): Every target name (each gets a mapping, maybe empty).
        ignore (`tuple[str, ...]`): Keys handled by the caller.

    Returns:
        `dict[str, dict[str, Any]]`: Per target, the (type-checked, coerced) keyword arguments.

    Raises:
        `LeWMConfigError`: for an unknown key or a value of the wrong type, naming the dotted
            path (`phases.<i>.<key>`) and the file that set it.
    """
    out: dict[str, dict[str, Any]] = {name: {} for name in targets}
    for key, value in recipe.phases[index].items():
        if key in ignore:
            continue
        dotted = recipe.dotted(index, key)
        source = recipe.phase_source(index, key)
        if key not in owners:
            raise LeWMConfigError(dotted, value, "unknown key", source)
        owner, annotation = owners[key]
        out[owner][key] = check_type(dotted, annotation, value, source)
    return out
