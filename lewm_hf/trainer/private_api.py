"""Every private hook of transformers, peft and torch that `lewm_hf` relies on, in one table.

The trainers override private `Trainer` methods and read its private attributes, the LoRA
code replaces a private peft method, and the distributed BatchNorm and the non-finite step
guard use torch internals. None of these is a public API: a minor release may rename one.
`pyproject.toml` therefore bounds each of these libraries below its next major version,
`tests/test_private_api.py` checks that every hook below exists in the installed versions
(and that this table lists every private name the trainer code uses), and
`LeWMTrainer.__init__` calls `check_private_api`, so a missing hook fails at start-up, naming
the hook and the installed version, instead of misbehaving in the middle of a run.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import inspect
import re
from dataclasses import dataclass
from typing import Any

from ..errors import LeWMDependencyError
from ..fields import HookKind

# The versions the test suite ran with when this table was last checked.
TESTED_VERSIONS = {"transformers": "5.25.0", "peft": "0.21.2", "torch": "2.13.0"}


@dataclass(frozen=True)
class PrivateHook:
    """One private name of a library that `lewm_hf` uses.

    Args:
        name (`str`): The attribute, method or class name (`_tr_loss`).
        owner (`str`): The dotted path of the class (or module) that defines it.
        kind (`str`): How its presence is checked: `"method"` (an attribute of the owner class),
            `"class"` (a class of the owner module) or `"attribute"` (an instance attribute that
            the owner's code sets or reads: its source names `self.<name>` or `"<name>"`).
        why (`str`): What `lewm_hf` uses it for.
    """

    name: str
    owner: str
    kind: HookKind
    why: str

    @property
    def library(self) -> str:
        """The distribution that ships the owner (`transformers`, `peft`, `torch`)."""
        return self.owner.split(".", 1)[0]

    @property
    def qualified_name(self) -> str:
        return f"{self.owner}.{self.name}"


_TRAINER = "transformers.trainer.Trainer"

PRIVATE_HOOKS: tuple[PrivateHook, ...] = (
    # ---- transformers.Trainer (lewm_hf/trainer/lewm_trainer.py) ----
    PrivateHook(
        "_save_checkpoint",
        _TRAINER,
        "method",
        "overridden: count deferred non-finite steps (and stop after a run of them) before "
        "a checkpoint is written",
    ),
    PrivateHook(
        "_load_callback_state",
        _TRAINER,
        "method",
        "overridden: restore the collapse monitor and the non-finite guard in place on resume",
    ),
    PrivateHook(
        "_init_training_state",
        _TRAINER,
        "method",
        "overridden: a resumed run that already reached max_steps runs no further step",
    ),
    PrivateHook(
        "_set_signature_columns_if_needed",
        _TRAINER,
        "method",
        "overridden: remove_unused_columns=True keeps the collator's clip columns",
    ),
    PrivateHook(
        "_signature_columns",
        _TRAINER,
        "attribute",
        "extended with the collator's columns (see _set_signature_columns_if_needed)",
    ),
    PrivateHook(
        "_prepare_inputs",
        _TRAINER,
        "method",
        "called by prediction_step to move an evaluation batch to the device",
    ),
    PrivateHook(
        "_created_lr_scheduler",
        _TRAINER,
        "attribute",
        "set by create_scheduler, as Trainer's does, so a second train() builds a new schedule",
    ),
    PrivateHook(
        "_tr_loss",
        _TRAINER,
        "attribute",
        "the logging window's summed loss: the stand-in logged for a non-finite loss",
    ),
    PrivateHook(
        "_globalstep_last_logged",
        _TRAINER,
        "attribute",
        "the logging window's first step: divides _tr_loss into the window's mean",
    ),
    # ---- peft (lewm_hf/trainer/lora.py) ----
    PrivateHook(
        "_get_base_model_class",
        "peft.peft_model.PeftModel",
        "method",
        "replaced on the wrapped model so adapter_config.json records transformers' AutoModel "
        "(peft's import allow-list refuses lewm_hf)",
    ),
    # ---- torch (lewm_hf/trainer/, lewm_hf/distributed.py) ----
    PrivateHook(
        "_BatchNorm",
        "torch.nn.modules.batchnorm",
        "class",
        "the base class of every BatchNorm layer: snapshot of running statistics for a skipped "
        "step, LoRA's modules_to_save, the global-batch BatchNorm swap",
    ),
    PrivateHook(
        "_parameters",
        "torch.nn.Module",
        "attribute",
        "GlobalBatchNorm1d.from_batchnorm registers the missing affine parameters as None",
    ),
    PrivateHook(
        "_buffers",
        "torch.nn.Module",
        "attribute",
        "GlobalBatchNorm1d.from_batchnorm registers the missing running statistics as None",
    ),
    PrivateHook(
        "_check_input_dim",
        "torch.nn.BatchNorm1d",
        "method",
        "GlobalBatchNorm1d.forward checks its input's shape as BatchNorm1d does",
    ),
    PrivateHook(
        "found_inf",
        "torch.optim.Adam",
        "attribute",
        "read by the fused Adam / AdamW step (GradScaler's protocol): a non-finite step is "
        "skipped on the device, without a host synchronisation",
    ),
    PrivateHook(
        "found_inf",
        "torch.optim.SGD",
        "attribute",
        "read by the fused SGD step, as for Adam",
    ),
)


def _resolve(path: str) -> Any:
    """The module or class a dotted path names (`transformers.trainer.Trainer`)."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            obj = getattr(obj, part)
        return obj
    raise ImportError(path)


def library_version(library: str) -> str:
    """The installed version of a distribution, or `"unknown"`."""
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def hook_present(hook: PrivateHook) -> bool | None:
    """Whether the installed library still has `hook`; None when its source cannot be read
    (an `"attribute"` hook is looked up in the owner's source)."""
    try:
        owner = _resolve(hook.owner)
    except (ImportError, AttributeError):
        return False
    if hook.kind == "method":
        return callable(getattr(owner, hook.name, None))
    if hook.kind == "class":
        return inspect.isclass(getattr(owner, hook.name, None))
    try:
        source = inspect.getsource(owner)
    except (OSError, TypeError):
        return None
    name = re.escape(hook.name)
    return re.search(rf"\bself\.{name}\b|[\"']{name}[\"']", source) is not None


def missing_hooks() -> list[PrivateHook]:
    """The hooks of `PRIVATE_HOOKS` that the installed libraries lack (unreadable sources are
    not counted as missing)."""
    return [hook for hook in PRIVATE_HOOKS if hook_present(hook) is False]


def describe_missing(hook: PrivateHook) -> str:
    """A one-line account of a missing hook: what it was, which version lacks it, what to do."""
    installed = library_version(hook.library)
    tested = TESTED_VERSIONS.get(hook.library, "?")
    return (
        f"{hook.qualified_name} ({hook.kind}) is missing from {hook.library} {installed}; "
        f"lewm_hf uses it: {hook.why}. Tested with {hook.library} {tested}: install a version "
        "within the bounds of lewm_hf's pyproject.toml"
    )


@functools.cache
def check_private_api() -> None:
    """Fail early, and clearly, when an installed library lacks a hook that `lewm_hf` uses.

    Raises:
        `LeWMDependencyError`: naming the first missing hook, its library and version.
    """
    missing = missing_hooks()
    if missing:
        hook = missing[0]
        raise LeWMDependencyError(
            hook.library, library_version(hook.library), hook.qualified_name, describe_missing(hook)
        )


__all__ = [
    "PRIVATE_HOOKS",
    "TESTED_VERSIONS",
    "PrivateHook",
    "check_private_api",
    "describe_missing",
    "hook_present",
    "library_version",
    "missing_hooks",
]
