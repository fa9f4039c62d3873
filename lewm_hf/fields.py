"""Field declarations shared by every argument and config class, and the one validation of them.

Each setting with a fixed set of values is a `Literal` alias defined here once (`PredLoss`,
`Regularizer`, ...) and used as the annotation of the field that owns it; each numeric range is
declared on its field with `option(..., low=..., high=...)`. `validate_fields` checks both for
a dataclass instance (every `LeWMConfig`, training-arguments class and settings dataclass of the
package calls it from `__post_init__`), and the recipe parser checks types from the same
annotations (`type_accepts`), so a rule is written once and enforced wherever a value enters.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import math
import types
import typing
from dataclasses import MISSING
from typing import Any, Literal

from .errors import LeWMConfigError

# ---- choices ----------------------------------------------------------------------------
PredLoss = Literal["mse", "cos_mse"]
Regularizer = Literal["sigreg", "kl", "none"]
LossPhase = Literal["phase1", "phase2"]
LRSchedule = Literal["wsd", "cosine", "constant"]
ContextRule = Literal["window", "chunked"]
Decoding = Literal["greedy", "sample"]
CollapseAction = Literal["warn", "stop"]
Pooling = Literal["last", "mean", "centered"]
EncoderMode = Literal["train", "frozen"]
# Where an edit action's position is counted from (`LeWMConfig.action_position_origin`): the
# window's first token, or the locus of the state the edit applies to.
PositionOrigin = Literal["window", "locus"]
# The parts of a `LeWMModel` that LoRA can adapt (`LeWMTrainingArguments.lora_targets`).
LoRATarget = Literal["encoder", "predictor", "action_encoder"]
# Planning (`PlanningConfig`): planner, episode cost and CEM's initial action ranks.
Planner = Literal["auto", "exhaustive", "cem", "tree"]
PlanCost = Literal["min", "final"]
RankPrior = Literal["degree", "uniform"]
# Planning goal windows: another held-out walk's window ending at the goal, or the start window
# followed by a shortest path (`lewm_hf.evaluation.planning_problems`).
GoalForm = Literal["walk", "path"]
# FASTA reading (`DNASourceConfig.iupac`): refuse IUPAC ambiguity codes, or read them as N.
IupacPolicy = Literal["error", "n"]
# How a private hook of a library is checked (`lewm_hf.trainer.private_api.PrivateHook`).
HookKind = Literal["method", "class", "attribute"]
# Every clip of a walk (`MoveTrajectoryConfig.clips_per_walk`, beside a count).
AllClips = Literal["all"]
# The actions of a trajectory dataset (`lewm_hf.data.trajectories.TrajectoryInfo.action_type`).
ActionType = Literal["discrete", "edit"]


def choices(alias: Any) -> tuple[Any, ...]:
    """The values of a `Literal` alias."""
    return typing.get_args(alias)


def check_choice(name: str, value: Any, alias: Any) -> Any:
    """Raise `LeWMConfigError` unless `value` is one of the alias's values; return it."""
    allowed = choices(alias)
    if value not in allowed:
        raise LeWMConfigError(name, value, f"must be one of {', '.join(map(str, allowed))}")
    return value


def is_int_in(value: Any, low: int, high: int | None = None) -> bool:
    """Whether `value` is an `int` (never a `bool`) with `low <= value` (and `<= high`)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return value >= low and (high is None or value <= high)


# ---- ranges -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Range:
    """An interval `low <= x <= high` (either side may be open or absent).

    Args:
        low (`float`, *optional*): Lower bound.
        high (`float`, *optional*): Upper bound.
        low_open (`bool`, defaults to `False`): `low < x` instead of `low <= x`.
        high_open (`bool`, defaults to `False`): `x < high` instead of `x <= high`.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"must lie in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        return f"must be {'<' if self.high_open else '<='} {self.high:g}"


def option(
    default: Any = MISSING,
    *,
    help: str,
    default_factory: Any = MISSING,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    settings: type | None = None,
) -> Any:
    """A dataclass field with a `help` text and, optionally, a numeric range.

    Args:
        default (`Any`, *optional*): The default value.
        help (`str`): What the field does (shown by `HfArgumentParser` and in the docs).
        default_factory (`Callable`, *optional*): Factory of a mutable default.
        low, high (`float`, *optional*): Bounds checked by `validate_fields`.
        low_open, high_open (`bool`, defaults to `False`): Exclude the bound itself.
        settings (`type`, *optional*): For a mapping of field overrides (e.g. `planning: {...}`),
            the dataclass whose fields it takes; `lewm_hf.recipe_help` lists them.

    Returns:
        `dataclasses.Field`: The field.
    """
    metadata: dict[str, Any] = {"help": help}
    if low is not None or high is not None:
        metadata["range"] = Range(low, high, low_open, high_open)
    if settings is not None:
        metadata["settings"] = settings
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---- types ------------------------------------------------------------------------------
def type_accepts(tp: Any, value: Any) -> tuple[bool, Any]:
    """Whether `value` fits the annotation `tp`; returns `(ok, value coerced to tp)`.

    YAML and command-line values arrive as `int`, `float`, `str`, `bool`, lists and dicts: an
    integer or a numeric string is accepted for a `float` (`1e-3` parses as a string in YAML 1.1),
    a `bool` is never an `int`, and a `Literal` accepts exactly its values.
    """
    if tp is Any or tp is object:
        return True, value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, coerced = type_accepts(arg, value)
            if ok:
                return True, coerced
        return False, value
    if origin is Literal:
        return value in typing.get_args(tp), value
    if tp is type(None):
        return value is None, value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return (isinstance(value, tp) or value in {m.value for m in tp}), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(tp)
        if args and origin is list:
            coerced = []
            for item in value:
                ok, c = type_accepts(args[0], item)
                if not ok:
                    return False, value
                coerced.append(c)
            return True, coerced
        return True, list(value) if (origin is list or tp is list) else tuple(value)
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value  # an annotation this parser does not model: accepted as is


def type_name(tp: Any) -> str:
    """A readable name of an annotation, for error messages."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (list, tuple) and typing.get_args(tp):
        return f"{origin.__name__} of {type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def type_error(tp: Any, value: Any) -> tuple[str, Any, str]:
    """Where and why `value` does not fit `tp` (a value that `type_accepts` refused).

    The first refused item of a list is named by its index, recursively (`[0]`), so that
    `lora_targets: [nothing]` reads `lora_targets[0]='nothing': must be one of ...` rather than
    `expected list`; a list given for `list[X] | None` is judged as a list of `X`.

    Args:
        tp (`Any`): The annotation.
        value (`Any`): The refused value.

    Returns:
        `tuple[str, Any, str]`: The subscript of the refused part (`""`: the value itself), that
        part, and what was expected.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType) and isinstance(value, (list, tuple)):
        lists = [arg for arg in typing.get_args(tp) if typing.get_origin(arg) is list]
        if len(lists) == 1:
            return type_error(lists[0], value)
    if origin is list and typing.get_args(tp) and isinstance(value, (list, tuple)):
        item_tp = typing.get_args(tp)[0]
        for index, item in enumerate(value):
            if not type_accepts(item_tp, item)[0]:
                element, part, reason = type_error(item_tp, item)
                return f"[{index}]{element}", part, reason
    if origin is Literal:
        return "", value, "must be " + type_name(tp)
    return "", value, f"expected {type_name(tp)}"


def check_type(name: str, tp: Any, value: Any, source: str | None = None) -> Any:
    """`value` coerced to the annotation `tp` (see `type_accepts`), or a typed error.

    Args:
        name (`str`): The field (or dotted recipe path) named in the error.
        tp (`Any`): The annotation.
        value (`Any`): The value.
        source (`str`, *optional*): The file the value came from.

    Returns:
        `Any`: The coerced value.

    Raises:
        `LeWMConfigError`: naming `name`, the refused part of the value (`element`: its index
            in a list) and what was expected (`type_error`).
    """
    ok, coerced = type_accepts(tp, value)
    if not ok:
        element, part, reason = type_error(tp, value)
        raise LeWMConfigError(name, part, reason, source, element=element)
    return coerced


@functools.cache
def own_field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of the fields that `lewm_hf` classes in `cls`'s MRO declare.

    Inherited fields of `TrainingArguments` or `PreTrainedConfig` are left out: transformers
    validates those itself.
    """
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("lewm_hf"):
            continue
        for name, tp in inspect.get_annotations(klass, eval_str=True).items():
            if typing.get_origin(tp) is typing.ClassVar or tp is typing.ClassVar:
                continue
            out[name] = tp
    return out


def validate_fields(obj: Any) -> None:
    """Check every field that a `lewm_hf` class declares: its type, `Literal` choices and range.

    Args:
        obj (`Any`): A dataclass instance (an arguments class, a config, a settings dataclass).

    Raises:
        `LeWMConfigError`: naming the first bad field and its value.
    """
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, tp in own_field_types(type(obj)).items():
        if name not in fields:
            continue
        value = getattr(obj, name)
        coerced = check_type(name, tp, value)
        if coerced is not value and isinstance(coerced, float):
            setattr(obj, name, coerced)
            value = coerced
        bounds = fields[name].metadata.get("range")
        if bounds is not None and value is not None and not bounds.contains(value):
            raise LeWMConfigError(name, value, bounds.describe())


__all__ = [
    "ActionType",
    "AllClips",
    "CollapseAction",
    "ContextRule",
    "Decoding",
    "EncoderMode",
    "GoalForm",
    "HookKind",
    "IupacPolicy",
    "LRSchedule",
    "LoRATarget",
    "LossPhase",
    "PlanCost",
    "Planner",
    "Pooling",
    "PositionOrigin",
    "PredLoss",
    "Range",
    "RankPrior",
    "Regularizer",
    "check_choice",
    "check_type",
    "choices",
    "is_int_in",
    "option",
    "own_field_types",
    "type_accepts",
    "type_error",
    "type_name",
    "validate_fields",
]
