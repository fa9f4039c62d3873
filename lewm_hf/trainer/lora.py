"""LoRA for LeWM world models through peft: which layers are adapted, what the adapter carries.

`LeWMTrainer` applies `get_peft_model` itself (as TRL's trainers do) when its arguments name
`lora_targets`; a model that already is a `PeftModel` is trained as it is.

What the adapter carries:

- LoRA matrices on the Linear layers of the targeted parts that `lora_target_modules` names
  (matched by name suffix; by default the predictor's attention, MLP and AdaLN projections and
  the action encoder's MLP).
- Every BatchNorm layer of the model, as a peft `modules_to_save` copy (its affine parameters
  and running statistics). In train mode a BatchNorm updates its running statistics even when
  its parameters are frozen, so without the copy an adapted run would silently change the base
  model; with it the adapted model's latent statistics follow the new data while every other
  parameter and buffer of the base model stays bitwise as loaded.
- The modules listed in `lora_modules_to_save`, trained in full (e.g. the freshly initialised
  projector, action encoder and predictor of a model built around a pretrained encoder).
- The rows of a grown action embedding (`LeWMModel.grow_action_vocab`, for data with more
  actions than the saved model knows), as peft trainable tokens (`trainable_token_indices` on
  `action_encoder.token_embedding`): the new rows train in full, the saved rows stay bitwise.

Loading: `AutoPeftModel.from_pretrained(dir)` rebuilds the base model from the class recorded in
`adapter_config.json` (`auto_mapping`) and imports that class's module only if it is on peft's
import allow-list (`transformers`, `diffusers`, ...), which `lewm_hf` is not. The adapters
saved here therefore record `transformers`' `AutoModel`, which builds a `LeWMModel` from
`config.json`'s model type once `import lewm_hf` has registered it: `import lewm_hf` then
`AutoPeftModel.from_pretrained(dir)` works with peft's default allow-list. (An adapter saved by
plain peft records `lewm_hf.modeling_lewm.LeWMModel` and needs
`AutoPeftModel.from_pretrained(dir, import_allowlist=["lewm_hf"])`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel
from transformers.pytorch_utils import Conv1D

from .. import metric_keys as K
from ..errors import LeWMConfigError
from ..fields import LoRATarget, choices

# Prefix peft puts before every parameter name of the wrapped model.
PEFT_PREFIX = "base_model.model."
# Where a base model that was never saved is written, so that the adapter can name it.
BASE_MODEL_DIR = "base_model"
LORA_PARTS: tuple[str, ...] = choices(LoRATarget)
# The action-token table whose grown rows (`LeWMModel.grow_action_vocab`) train under LoRA.
GROWN_ACTION_TABLE = "action_encoder.token_embedding"


def strip_peft_prefix(name: str) -> str:
    """A parameter name of a peft-wrapped model as the plain model names it (adapter and
    `modules_to_save` names keep their suffixes: `predictor.blocks.0.qkv.lora_A.default.weight`)."""
    return name.removeprefix(PEFT_PREFIX)


def linear_layers(model: nn.Module, parts: tuple[str, ...] | list[str]) -> list[str]:
    """Names of the Linear layers (the layers LoRA can adapt) under the given parts."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and name.split(".", 1)[0] in parts
    ]


def _suffix_matches(names: list[str], entry: str) -> list[str]:
    return [n for n in names if n == entry or n.endswith("." + entry)]


def _layer_suffixes(layers: list[str], part: str) -> list[str]:
    """The distinct names of `part`'s Linear layers without the part and the leading layer
    index (`predictor.blocks.1.mlp.0` -> `mlp.0`), for error messages."""
    out = []
    for name in layers:
        if not name.startswith(part + "."):
            continue
        pieces = name.split(".")[1:]
        # Drop a leading container and its index (`blocks.1.`, `layers.0.`).
        if len(pieces) > 2 and pieces[1].isdigit():
            pieces = pieces[2:]
        suffix = ".".join(pieces)
        if suffix not in out:
            out.append(suffix)
    return out


def _available(layers: list[str], parts: list[str]) -> str:
    return "; ".join(f"{part}: {', '.join(_layer_suffixes(layers, part)) or '-'}" for part in parts)


def resolve_lora_config(model: nn.Module, args: Any) -> LoraConfig:
    """The `LoraConfig` that `args` (`LeWMTrainingArguments`) describes for `model`.

    Target modules become full layer names, so an adapter never lands outside the targeted parts;
    `modules_to_save` holds every BatchNorm layer outside `lora_modules_to_save` plus those.

    Raises:
        `LeWMConfigError`: for a `lora_target_modules` entry that matches no Linear layer of the
            targeted parts, or a targeted part that no entry matches (both list the available
            layers), a `lora_modules_to_save` entry that names no module or that peft's suffix
            matching would apply to other modules too, and a module both adapted and saved.
    """
    parts = list(dict.fromkeys(args.lora_targets))
    layers = linear_layers(model, parts)
    targets: set[str] = set()
    for entry in args.lora_target_modules:
        found = _suffix_matches(layers, entry)
        if not found:
            raise LeWMConfigError(
                "lora_target_modules",
                entry,
                f"matches no Linear layer of {parts}; available: {_available(layers, parts)}",
            )
        targets.update(found)
    for part in parts:
        if not any(t.startswith(part + ".") for t in targets):
            raise LeWMConfigError(
                "lora_targets",
                part,
                f"no lora_target_modules entry ({list(args.lora_target_modules)}) matches its "
                f"Linear layers; available: {_available(layers, [part])}",
            )

    modules = dict(model.named_modules())
    saved = list(dict.fromkeys(args.lora_modules_to_save))
    for entry in saved:
        if entry not in modules or not entry:
            raise LeWMConfigError("lora_modules_to_save", entry, "names no module of the model")
        # peft wraps every module whose name ends with an entry (`encoder` would also take
        # `action_encoder`), so an entry must be a suffix of its own module only.
        others = [n for n in modules if n.endswith(entry) and n != entry]
        if others:
            raise LeWMConfigError(
                "lora_modules_to_save",
                entry,
                f"would also match {others[:3]} (peft matches by suffix)",
            )
        inside = [t for t in targets if t == entry or t.startswith(entry + ".")]
        if inside:
            raise LeWMConfigError(
                "lora_modules_to_save",
                entry,
                f"contains LoRA-adapted layers {inside[:3]}: train a part in full or adapt it",
            )

    # A Sequential is saved as its layers: a peft wrapper would hide its indexing
    # (`projector[0]`) from the model's code.
    expanded = []
    for entry in saved:
        if isinstance(modules[entry], nn.Sequential):
            layers_with_state = [n for n, m in modules[entry].named_children() if m.state_dict()]
            expanded += [f"{entry}.{n}" for n in layers_with_state]
        else:
            expanded.append(entry)
    saved = expanded

    def covered(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in saved)

    norms = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not covered(name)
    ]
    # Action ids a grown model has no trained row for (`LeWMModel.grow_action_vocab`): peft's
    # trainable tokens train exactly those rows in full and keep the others as loaded.
    grown = list(getattr(model, "grown_action_tokens", None) or [])
    tokens = None
    if grown and not covered(GROWN_ACTION_TABLE):
        tokens = {GROWN_ACTION_TABLE: grown}
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=sorted(targets),
        modules_to_save=sorted(norms) + saved,
        trainable_token_indices=tokens,
        bias="none",
    )


def enable_input_gradients(model: nn.Module) -> None:
    """Make the encoder's token embeddings require gradients (LoRA with activation
    checkpointing, as TRL does): with reentrant checkpointing a layer whose inputs do not
    require gradients passes none to its adapters, and under LoRA the embeddings are frozen.
    The predictor's blocks need no hook: their input depends on the projector's BatchNorm
    copy, which the adapter trains."""
    model.enable_input_require_grads()


def _base_location(model: nn.Module) -> str | None:
    """Where the base model can be loaded from (`from_pretrained`'s path or Hub id), or None."""
    path = getattr(model, "name_or_path", None) or getattr(model.config, "name_or_path", "")
    return str(path) if path else None


def _save_base_model(model: nn.Module, args: Any) -> str:
    """Save a base model that has no location (built, not loaded) in `<output_dir>/base_model`,
    so that the adapter's `base_model_name_or_path` names a loadable model. A base already there
    (a resumed run) must hold the same weights: the adapters were trained on top of it."""
    folder = Path(args.output_dir).resolve() / BASE_MODEL_DIR
    weights = folder / K.SAFE_WEIGHTS_FILE
    if weights.is_file():
        saved = load_file(weights)
        current = model.state_dict()
        differ = [k for k, v in saved.items() if k not in current or not torch.equal(current[k], v)]
        if differ or saved.keys() != current.keys():
            raise LeWMConfigError(
                "output_dir",
                args.output_dir,
                f"{folder} holds another base model than this run's (e.g. {differ[:2]}): the "
                "adapters of this output dir belong to it; use another output_dir or start from it",
            )
    elif args.process_index == 0:
        model.save_pretrained(folder)
    model.name_or_path = str(folder)
    model.config.name_or_path = str(folder)
    return str(folder)


def prepare_lora_model(model: nn.Module, args: Any) -> nn.Module:
    """Wrap `model` with the LoRA adapters `args` asks for (`get_peft_model`), or return it.

    The adapters are initialised under their own seed (`lora_seed`, else derived from `seed`),
    in a forked RNG, so the run's other random draws do not depend on whether LoRA is on.

    Args:
        model (`nn.Module`): A `LeWMModel` (or a `PeftModel`, returned as it is).
        args (`LeWMTrainingArguments`): The arguments.

    Returns:
        `nn.Module`: The `PeftModel`, or `model` when `lora_targets` is empty.

    Raises:
        `LeWMConfigError`: for a `PeftModel` together with `lora_targets`, LoRA on a frozen
            encoder, and the target errors of `resolve_lora_config`.
    """
    if isinstance(model, PeftModel):
        if args.lora_targets:
            raise LeWMConfigError(
                "lora_targets",
                list(args.lora_targets),
                "the model is already a PeftModel: pass its base model with lora_targets, or "
                "the PeftModel with lora_targets: [] (merge_and_unload() first to stack LoRAs)",
            )
        return model
    if not args.lora_targets:
        return model
    if "encoder" in args.lora_targets and model.config.encoder_mode == "frozen":
        raise LeWMConfigError(
            "lora_targets",
            list(args.lora_targets),
            "adapts the encoder, but encoder_mode is frozen (no gradients reach it): set "
            "encoder_mode: train",
        )
    from ..determinism import run_seeds

    config = resolve_lora_config(model, args)
    if _base_location(model) is None:
        _save_base_model(model, args)
    if args.activation_checkpointing or args.gradient_checkpointing:
        enable_input_gradients(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run_seeds(args).lora)
        peft_model = get_peft_model(model, config)
    # See the module docstring: record transformers' AutoModel (peft's allow-list refuses
    # `lewm_hf`); AutoModel dispatches on config.json's `model_type`.
    peft_model._get_base_model_class = lambda is_prompt_tuning=False: AutoModel
    return peft_model


def parameter_counts(model: nn.Module) -> dict[str, Any]:
    """Trainable and total parameters (a peft model counts its adapters and saved copies)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {
        K.TRAINABLE_PARAMS: trainable,
        K.TOTAL_PARAMS: total,
        K.TRAINABLE_FRACTION: trainable / total if total else 0.0,
    }


class ParameterReport:
    """The `result.json` keys of a trainer's model: trainable and total parameter counts and,
    under LoRA, the adapter's settings (`lora`).

    Args:
        model (`nn.Module`): The trained model (a `PeftModel` under LoRA).
        args (`LeWMTrainingArguments`): The arguments.
    """

    def __init__(self, model: nn.Module, args: Any):
        self.model = model
        self.args = args

    def result(self, state: Any = None) -> dict[str, Any]:
        out = parameter_counts(self.model)
        if isinstance(self.model, PeftModel):
            from ..determinism import run_seeds

            config = self.model.peft_config[self.model.active_adapter]
            out[K.LORA] = {
                "targets": list(self.args.lora_targets),
                "r": config.r,
                "alpha": config.lora_alpha,
                "dropout": config.lora_dropout,
                "target_modules": sorted(config.target_modules or []),
                "modules_to_save": list(config.modules_to_save or []),
                "init_seed": run_seeds(self.args).lora,
                "trainable_token_indices": dict(config.trainable_token_indices or {}),
            }
        return out


__all__ = [
    "BASE_MODEL_DIR",
    "GROWN_ACTION_TABLE",
    "LORA_PARTS",
    "PEFT_PREFIX",
    "ParameterReport",
    "enable_input_gradients",
    "linear_layers",
    "parameter_counts",
    "prepare_lora_model",
    "resolve_lora_config",
    "strip_peft_prefix",
]
