"""Configuration of the LeWM world model (`model_type="lewm"`)."""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal  # noqa: F401  (Literal: see below)

import torch  # noqa: F401
from transformers import AutoConfig, PreTrainedConfig

from .errors import LeWMConfigError

# `torch` and `Literal` above are the names the inherited `PreTrainedConfig` field annotations
# use (`dtype: str | torch.dtype | None`, `problem_type: Literal[...]`). The dataclass `__init__`
# generated for `LeWMConfig` resolves annotations in this module, so they must exist here for
# `typing.get_type_hints(LeWMConfig.__init__)` to work (the recipe parser relies on it).

POOLING_CHOICES = ("last", "mean", "centered")
ENCODER_MODE_CHOICES = ("train", "frozen")
PRED_LOSS_CHOICES = ("mse", "cos_mse")
REGULARIZER_CHOICES = ("sigreg", "kl", "none")
PHASE_CHOICES = ("phase1", "phase2")

DEFAULT_VOCAB_SIZE = 512


def default_encoder_config(vocab_size: int = DEFAULT_VOCAB_SIZE) -> dict[str, Any]:
    """The default state-encoder backbone: a tiny Llama.

    Args:
        vocab_size (`int`, *optional*, defaults to 512): Vocabulary size of the backbone.

    Returns:
        `dict[str, Any]`: An HF config dict with a `model_type` key.
    """
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 256,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }


class LeWMConfig(PreTrainedConfig):
    r"""
    Configuration of [`LeWMModel`], an action-conditioned JEPA world model: an HF backbone encodes each
    state into a latent, a causal AdaLN-zero transformer predicts the next latent from the history of
    latents and actions.

    Args:
        encoder_config (`dict`, *optional*):
            HF config dict of the state-encoder backbone; must contain `"model_type"`. Defaults to a tiny
            Llama (hidden 64, 2 layers, 4 heads, intermediate 128, 256 positions). Stored as a plain dict
            so that `config.json` round-trips.
        vocab_size (`int`, *optional*):
            Vocabulary size of the default backbone. When `encoder_config` is given it is read from it
            (and must agree with it if both are given). Defaults to 512.
        pooling (`str`, *optional*, defaults to `"last"`):
            How token states become one state vector: `"last"` (last non-pad token), `"mean"` (masked
            mean) or `"centered"` (masked mean over tokens within `pool_radius` of a locus).
        pool_radius (`int`, *optional*, defaults to 4):
            Half-width of the `"centered"` pooling window.
        encoder_mode (`str`, *optional*, defaults to `"train"`):
            `"train"` (end to end) or `"frozen"` (no gradients, kept in eval mode; the projector trains).
        d_state (`int`, *optional*, defaults to 128):
            Latent dimension.
        projector_hidden (`int`, *optional*, defaults to 256):
            Hidden width of the encoder and predictor projectors (Linear -> BatchNorm1d -> GELU -> Linear).
        d_model (`int`, *optional*, defaults to 128):
            Width of the predictor transformer.
        predictor_layers (`int`, *optional*, defaults to 2):
            Number of AdaLN-zero blocks.
        predictor_heads (`int`, *optional*, defaults to 4):
            Attention heads per block; must divide `d_model`.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            MLP width of each block as a multiple of `d_model`.
        dropout (`float`, *optional*, defaults to 0.1):
            Dropout of the predictor, in `[0, 1)`.
        history_length (`int`, *optional*, defaults to 3):
            H, the largest number of steps the predictor sees.
        num_action_ops (`int`, *optional*, defaults to 1):
            Number of action operations (1 for graph moves; SUB/INS/DEL for edits).
        action_vocab_size (`int`, *optional*, defaults to 64):
            Size of the action-token embedding table (e.g. neighbour ranks, bases).
        max_action_position (`int`, *optional*, defaults to 1024):
            Action positions must lie in `[0, max_action_position)`.
        action_hidden (`int`, *optional*, defaults to 128):
            Width of the action embeddings before the MLP; must be even (sinusoidal positions).
        pred_loss (`str`, *optional*, defaults to `"mse"`):
            `"mse"` or `"cos_mse"`.
        regularizer (`str`, *optional*, defaults to `"sigreg"`):
            `"sigreg"`, `"kl"` or `"none"`.
        reg_weight (`float`, *optional*, defaults to 0.09):
            Weight of the regulariser in phase 2.
        phase (`str`, *optional*, defaults to `"phase2"`):
            `"phase1"` (loss = prediction loss, regulariser only logged) or `"phase2"`.
        sigreg_num_slices (`int`, *optional*, defaults to 1024):
            Number of random projections of SIGReg.
        sigreg_seed (`int`, *optional*, defaults to 0):
            Seed of the SIGReg projections (combined with the global step).
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of Linear and Embedding weights.

    Example:

    ```python
    >>> from lewm_hf import LeWMConfig, LeWMModel
    >>> config = LeWMConfig(d_state=32, d_model=32, pooling="mean")
    >>> model = LeWMModel(config)
    ```
    """

    model_type: ClassVar[str] = "lewm"

    # Parameters that control the state encoder
    encoder_config: dict | None = None
    vocab_size: int | None = None
    pooling: str = "last"
    pool_radius: int = 4
    encoder_mode: str = "train"
    d_state: int = 128
    projector_hidden: int = 256

    # Parameters that control the predictor
    d_model: int = 128
    predictor_layers: int = 2
    predictor_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    history_length: int = 3

    # Parameters that control the action encoder
    num_action_ops: int = 1
    action_vocab_size: int = 64
    max_action_position: int = 1024
    action_hidden: int = 128

    # Parameters that control the loss
    pred_loss: str = "mse"
    regularizer: str = "sigreg"
    reg_weight: float = 0.09
    phase: str = "phase2"
    sigreg_num_slices: int = 1024
    sigreg_seed: int = 0

    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self._validate_encoder_config()
        self._validate_fields()
        super().__post_init__(**kwargs)

    def _validate_encoder_config(self) -> None:
        if self.encoder_config is None:
            vocab = DEFAULT_VOCAB_SIZE if self.vocab_size is None else self.vocab_size
            _check_int("vocab_size", vocab, minimum=1)
            self.encoder_config = default_encoder_config(vocab)
        elif isinstance(self.encoder_config, PreTrainedConfig):
            self.encoder_config = self.encoder_config.to_dict()
        elif isinstance(self.encoder_config, dict):
            self.encoder_config = copy.deepcopy(self.encoder_config)
        else:
            raise LeWMConfigError(
                "encoder_config",
                type(self.encoder_config).__name__,
                "must be a dict (an HF config dict) or a PreTrainedConfig",
            )
        model_type = self.encoder_config.get("model_type")
        if not model_type:
            raise LeWMConfigError(
                "encoder_config.model_type", model_type, "the encoder config needs a model_type"
            )
        if model_type == self.model_type:
            raise LeWMConfigError(
                "encoder_config.model_type", model_type, "the encoder cannot itself be a LeWM model"
            )
        try:
            AutoConfig.for_model(model_type)
        except ValueError as err:
            raise LeWMConfigError(
                "encoder_config.model_type", model_type, "unknown to transformers.AutoConfig"
            ) from err
        encoder_vocab = self.encoder_config.get("vocab_size")
        if self.vocab_size is None:
            self.vocab_size = encoder_vocab
        elif encoder_vocab is not None and encoder_vocab != self.vocab_size:
            raise LeWMConfigError(
                "vocab_size",
                self.vocab_size,
                f"disagrees with encoder_config.vocab_size={encoder_vocab}",
            )

    def _validate_fields(self) -> None:
        _check_choice("pooling", self.pooling, POOLING_CHOICES)
        _check_choice("encoder_mode", self.encoder_mode, ENCODER_MODE_CHOICES)
        _check_choice("pred_loss", self.pred_loss, PRED_LOSS_CHOICES)
        _check_choice("regularizer", self.regularizer, REGULARIZER_CHOICES)
        _check_choice("phase", self.phase, PHASE_CHOICES)
        for name in (
            "d_state",
            "projector_hidden",
            "d_model",
            "predictor_layers",
            "predictor_heads",
            "history_length",
            "num_action_ops",
            "action_vocab_size",
            "max_action_position",
            "action_hidden",
            "sigreg_num_slices",
        ):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("pool_radius", self.pool_radius, minimum=0)
        _check_int("sigreg_seed", self.sigreg_seed, minimum=0)
        if self.d_model % self.predictor_heads != 0:
            raise LeWMConfigError(
                "predictor_heads",
                self.predictor_heads,
                f"must divide d_model={self.d_model}",
            )
        if self.action_hidden % 2 != 0:
            raise LeWMConfigError(
                "action_hidden", self.action_hidden, "must be even (sinusoidal position embedding)"
            )
        _check_float("mlp_ratio", self.mlp_ratio)
        if self.mlp_ratio <= 0 or int(self.d_model * self.mlp_ratio) < 1:
            raise LeWMConfigError("mlp_ratio", self.mlp_ratio, "must be > 0")
        _check_float("dropout", self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise LeWMConfigError("dropout", self.dropout, "must lie in [0, 1)")
        _check_float("reg_weight", self.reg_weight)
        if self.reg_weight < 0:
            raise LeWMConfigError("reg_weight", self.reg_weight, "must be >= 0")
        _check_float("initializer_range", self.initializer_range)
        if self.initializer_range <= 0:
            raise LeWMConfigError("initializer_range", self.initializer_range, "must be > 0")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LeWMConfigError(name, value, f"must be one of {', '.join(choices)}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LeWMConfigError(name, value, "must be an integer")
    if value < minimum:
        raise LeWMConfigError(name, value, f"must be >= {minimum}")


def _check_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LeWMConfigError(name, value, "must be a number")


AutoConfig.register(LeWMConfig.model_type, LeWMConfig, exist_ok=True)

__all__ = ["LeWMConfig", "default_encoder_config"]
