"""Choices and metric keys are each declared once.

Every setting with a fixed set of values is a `Literal` alias of `lewm_hf.fields`, and every logged
metric, result key and file name is a constant of `lewm_hf.metric_keys`: the package itself
spells neither a `Literal[...]` nor an `eval_*` key anywhere else.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import typing
from pathlib import Path

from transformers import Trainer, TrainingArguments

import lewm_hf
from lewm_hf import fields
from lewm_hf import metric_keys as K

PACKAGE = Path(lewm_hf.__file__).resolve().parent


def package_sources() -> list[tuple[str, ast.AST]]:
    return [
        (str(path.relative_to(PACKAGE.parent)), ast.parse(path.read_text(), filename=str(path)))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def package_classes() -> list[type]:
    """The classes that the modules of `lewm_hf` define."""
    classes = []
    for info in pkgutil.walk_packages(lewm_hf.__path__, "lewm_hf."):
        module = importlib.import_module(info.name)
        classes += [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type) and obj.__module__ == module.__name__
        ]
    return classes


def setting_names() -> set[str]:
    """Names of settings, which are field names and not metric keys: the fields of the package's
    dataclasses and of `TrainingArguments`, and the arguments of `Trainer`."""
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    names |= set(inspect.signature(Trainer.__init__).parameters)
    for cls in package_classes():
        if dataclasses.is_dataclass(cls):
            names |= {f.name for f in dataclasses.fields(cls)}
    return names


def test_eval_keys_are_spelled_only_in_metric_keys():
    settings = setting_names()
    found = [
        f"{path}:{node.lineno}: {node.value!r}"
        for path, tree in package_sources()
        if path != "lewm_hf/metric_keys.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith(K.EVAL_PREFIX)
        and node.value not in settings
    ]
    assert not found, "use a constant of lewm_hf.metric_keys:\n" + "\n".join(found)


def test_literal_choices_are_declared_only_in_fields():
    def is_literal(node: ast.AST) -> bool:
        name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
        return name == "Literal"

    found = [
        f"{path}:{node.lineno}"
        for path, tree in package_sources()
        if path != "lewm_hf/fields.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript) and is_literal(node.value)
    ]
    assert not found, "declare the choice as a Literal alias in lewm_hf.fields:\n" + "\n".join(
        found
    )


def test_every_choice_alias_annotates_a_field():
    aliases = {
        name: alias
        for name, alias in vars(fields).items()
        if typing.get_origin(alias) is typing.Literal
    }

    def aliases_in(tp: typing.Any) -> set[str]:
        found = {name for name, alias in aliases.items() if tp == alias}
        for arg in typing.get_args(tp):
            found |= aliases_in(arg)
        return found

    used: set[str] = set()
    for cls in package_classes():
        if dataclasses.is_dataclass(cls):
            for tp in fields.own_field_types(cls).values():
                used |= aliases_in(tp)
    assert used == set(aliases), f"aliases annotating no field: {sorted(set(aliases) - used)}"


def test_metric_keys_are_distinct():
    values: dict[str, str] = {}
    for name, value in vars(K).items():
        if name.isupper() and isinstance(value, str):
            assert value not in values, f"{name} and {values[value]} are both {value!r}"
            values[value] = name
