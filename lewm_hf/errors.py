"""Typed errors raised where bad input enters the library.

Every error names the offending field (a config field, a dotted recipe path, or a file) and the
value it received, so that a user can fix the input without reading a traceback.
"""

from __future__ import annotations

from typing import Any


class LeWMError(Exception):
    """Base class of every error raised by `lewm_hf`."""


class LeWMConfigError(LeWMError, ValueError):
    """A configuration field has a bad value.

    Args:
        field (`str`): Name (or dotted path) of the field.
        value (`Any`): The value that was received.
        reason (`str`): What is wrong with it, in a few words.
        source (`str`, *optional*): The file the value came from.
        element (`str`, *optional*): Where in the field's value the bad `value` sits, as a
            subscript (`"[0]"`: the first item of a list field); the message then reads
            `lora_targets[0]='nothing': ...` while `field` stays `lora_targets`.
    """

    def __init__(
        self,
        field: str,
        value: Any,
        reason: str,
        source: str | None = None,
        *,
        element: str = "",
    ):
        self.field = field
        self.value = value
        self.reason = reason
        self.source = source
        self.element = element
        where = f" (in {source})" if source else ""
        super().__init__(f"{field}{element}={value!r}: {reason}{where}")


class LeWMInputError(LeWMError, ValueError):
    """Input data (a tensor, a sequence, a file) is malformed.

    Args:
        field (`str`): Name of the argument or file.
        value (`Any`): The value, or a short description of it.
        reason (`str`): What is wrong with it.
    """

    def __init__(self, field: str, value: Any, reason: str):
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={value!r}: {reason}")


class LeWMGraphError(LeWMError, RuntimeError):
    """A graph or jumper set with the requested properties could not be built."""


class LeWMCollapseError(LeWMError, RuntimeError):
    """Training stopped because the collapse monitor raised an alert with action `stop`."""


class LeWMNonFiniteLossError(LeWMError, RuntimeError):
    """Training stopped after `max_nonfinite_steps` consecutive steps with a NaN or Inf loss.

    Each of those steps was skipped (no optimizer update), so the last checkpoint holds the
    weights of the last finite step.
    """


class LeWMDependencyError(LeWMError, RuntimeError):
    """An installed library lacks a private hook that `lewm_hf` relies on
    (`lewm_hf.trainer.private_api`).

    Args:
        library (`str`): The distribution (`transformers`, `peft`, `torch`).
        version (`str`): Its installed version.
        hook (`str`): The dotted name of the missing hook.
        reason (`str`): What it was used for and what to do.
    """

    def __init__(self, library: str, version: str, hook: str, reason: str):
        self.library = library
        self.version = version
        self.hook = hook
        self.reason = reason
        super().__init__(reason)


class LeWMDatasetError(LeWMInputError):
    """A trajectory dataset breaks its format (`lewm_hf.data.trajectories`).

    Args:
        column (`str`): The column (or metadata field) at fault.
        row (`int`, *optional*): The first offending row of the split (None: the whole split).
        value (`Any`): What was found there.
        expected (`str`): What the format expects.
        split (`str`, *optional*): The split the row belongs to.
    """

    def __init__(
        self,
        column: str,
        row: int | None,
        value: Any,
        expected: str,
        split: str | None = None,
    ):
        self.column = column
        self.row = row
        self.expected = expected
        self.split = split
        where = f"split {split!r}, " if split is not None else ""
        where += f"row {row}, " if row is not None else ""
        super().__init__(column, value, f"{where}expected {expected}")
