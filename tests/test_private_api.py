"""The private hooks of transformers, peft and torch that lewm_hf uses: each exists in the
installed versions, the table lists every one the code uses, and the libraries are bounded."""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from lewm_hf import LeWMTrainer
from lewm_hf.errors import LeWMDependencyError
from lewm_hf.trainer import private_api
from lewm_hf.trainer.private_api import (
    PRIVATE_HOOKS,
    PrivateHook,
    check_private_api,
    describe_missing,
    hook_present,
    library_version,
)

ROOT = Path(__file__).resolve().parents[1]
# The code that uses the libraries' private hooks: the trainers and the BatchNorm they swap in.
SCANNED = [
    *sorted((ROOT / "lewm_hf" / "trainer").glob("*.py")),
    ROOT / "lewm_hf" / "distributed.py",
]
PRIVATE = re.compile(r"^_[A-Za-z]\w*$")


@pytest.mark.parametrize("hook", PRIVATE_HOOKS, ids=lambda h: h.qualified_name)
def test_hook_exists_in_the_installed_library(hook):
    assert hook_present(hook) is True, describe_missing(hook)


def _used_names(path: Path) -> tuple[set[str], set[str]]:
    """(every attribute, method or string-looked-up name used, the private names defined here:
    functions, classes and `self._x = ...` assignments)."""
    used: set[str] = set()
    defined: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            used.add(node.attr)
            if isinstance(node.ctx, ast.Store) and getattr(node.value, "id", None) == "self":
                defined.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            used.add(node.name)
            defined.add(node.name)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            used.add(node.args[1].value)
    return used, defined


def _library_sources() -> str:
    modules = {hook.owner for hook in PRIVATE_HOOKS} | {"transformers.trainer", "peft.peft_model"}
    texts = []
    for owner in sorted(modules):
        obj = private_api._resolve(owner)
        texts.append(inspect.getsource(sys.modules[getattr(obj, "__module__", owner)]))
    return "\n".join(texts)


def test_table_lists_every_private_name_the_code_uses():
    used: set[str] = set()
    defined: set[str] = set()
    for path in SCANNED:
        names, own = _used_names(path)
        used |= names
        defined |= own
    # lewm_hf's own private names (defined anywhere in the package) are not hooks ...
    for path in (ROOT / "lewm_hf").rglob("*.py"):
        defined |= _used_names(path)[1]
    library = set(re.findall(r"\b_[A-Za-z]\w*", _library_sources()))
    private = {n for n in used if PRIVATE.match(n)}
    # ... unless a library defines them too: an override or an attribute of the Trainer's.
    hooks = {n for n in private if n not in defined or n in library}
    listed = {hook.name for hook in PRIVATE_HOOKS}
    assert hooks <= listed, f"private names used but not in private_api: {sorted(hooks - listed)}"
    assert listed <= used, f"listed in private_api but unused: {sorted(listed - used)}"


def test_libraries_with_hooks_are_bounded_below_their_next_major():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    for library in sorted({hook.library for hook in PRIVATE_HOOKS}):
        spec = requirements[library].specifier
        uppers = [s for s in spec if s.operator == "<"]
        assert uppers, f"{library} has private hooks in use and no upper bound: {spec}"
        installed = Version(importlib.metadata.version(library))
        assert installed in spec, f"installed {library} {installed} is outside {spec}"
        assert Version(uppers[0].version) <= Version(f"{installed.major + 1}"), (
            f"{library}'s bound {spec} allows a major version after the tested {installed}"
        )
        assert library in private_api.TESTED_VERSIONS


def test_missing_hook_fails_at_start_up_naming_hook_and_version(monkeypatch, tmp_path):
    gone = PrivateHook("_hook_from_the_future", "transformers.trainer.Trainer", "method", "a test")
    monkeypatch.setattr(private_api, "PRIVATE_HOOKS", (*PRIVATE_HOOKS, gone))
    check_private_api.cache_clear()
    try:
        with pytest.raises(LeWMDependencyError) as info:
            check_private_api()
        message = str(info.value)
        assert "transformers.trainer.Trainer._hook_from_the_future" in message
        assert f"transformers {library_version('transformers')}" in message
        assert info.value.hook == gone.qualified_name and info.value.library == "transformers"
        with pytest.raises(LeWMDependencyError, match="_hook_from_the_future"):
            from _builders import tiny_training_args

            LeWMTrainer(model=None, args=tiny_training_args(tmp_path / "out"))
    finally:
        check_private_api.cache_clear()


def test_missing_attribute_and_owner_are_reported():
    assert (
        hook_present(PrivateHook("_no_such", "transformers.trainer.Trainer", "attribute", ""))
        is False
    )
    assert (
        hook_present(PrivateHook("_x", "transformers.no_such_module.Thing", "method", "")) is False
    )
    assert hook_present(PrivateHook("_no_such", "torch.nn.modules.batchnorm", "class", "")) is False
