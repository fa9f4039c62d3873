"""Configuration of the LeWM world model (`model_type="lewm"`)."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from transformers import AutoConfig, PreTrainedConfig

from .errors import LeWMConfigError
from .fields import (
    EncoderMode,
    LossPhase,
    Pooling,
    PositionOrigin,
    PredLoss,
    Regularizer,
    option,
    validate_fields,
)

DEFAULT_VOCAB_SIZE = 512
# Default regulariser weight per latent dimension (see `LeWMConfig.reg_weight`).
REG_WEIGHT_PER_DIM = 5.0 / 64


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
        action_position_origin (`str`, *optional*, defaults to `"window"`):
            How the data codes an action's position (edit actions): `"window"` (the position in
            the state's window) or `"locus"` (relative to the locus of the state it edits, in
            `[1, 2L]`). Saved so that evaluation codes candidate actions as training did.
        action_reference_offset (`int`, *optional*):
            With edit actions, a `SUB` action also carries the tokens it replaces, shifted by
            this offset past the state vocabulary (`action_vocab_size` must hold them). None:
            `SUB` actions carry only the tokens they write.
        pred_loss (`str`, *optional*, defaults to `"mse"`):
            `"mse"` or `"cos_mse"`.
        regularizer (`str`, *optional*, defaults to `"sigreg"`):
            `"sigreg"`, `"kl"` or `"none"`.
        reg_weight (`float`, *optional*):
            Weight of the regulariser in phase 2. Defaults to `REG_WEIGHT_PER_DIM * d_state` (5/64 per
            dimension: 5.0 at `d_state=64`), because the prediction loss is summed over dimensions.
        loss_phase (`str`, *optional*, defaults to `"phase2"`):
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
    encoder_config: dict | PreTrainedConfig | None = option(
        None, help="HF config dict of the state encoder."
    )
    vocab_size: int | None = option(None, help="Vocabulary of the default backbone.", low=1)
    pooling: Pooling = option("last", help="Token pooling: last, mean or centered.")
    pool_radius: int = option(4, help="Half-width of centered pooling.", low=0)
    encoder_mode: EncoderMode = option("train", help="train (end to end) or frozen.")
    d_state: int = option(128, help="Latent dimension.", low=1)
    projector_hidden: int = option(256, help="Projector hidden width.", low=1)

    # Parameters that control the predictor
    d_model: int = option(128, help="Predictor width.", low=1)
    predictor_layers: int = option(2, help="AdaLN-zero blocks.", low=1)
    predictor_heads: int = option(4, help="Attention heads per block.", low=1)
    mlp_ratio: float = option(4.0, help="Block MLP width / d_model.", low=0, low_open=True)
    dropout: float = option(0.1, help="Predictor dropout.", low=0, high=1, high_open=True)
    history_length: int = option(3, help="Steps the predictor sees (H).", low=1)

    # Parameters that control the action encoder
    num_action_ops: int = option(1, help="Action operations (1 for moves, 3 for edits).", low=1)
    action_vocab_size: int = option(64, help="Action-token embedding size.", low=1)
    max_action_position: int = option(1024, help="Action positions lie below this.", low=1)
    action_hidden: int = option(128, help="Action embedding width (even).", low=2)
    action_position_origin: PositionOrigin = option(
        "window", help="Edit-action positions: in the window, or relative to the state's locus."
    )
    action_reference_offset: int | None = option(
        None, help="Shift of the replaced tokens a SUB action carries (null: none).", low=1
    )

    # Parameters that control the loss
    pred_loss: PredLoss = option("mse", help="Prediction loss: mse or cos_mse.")
    regularizer: Regularizer = option("sigreg", help="Anti-collapse term: sigreg, kl or none.")
    # The prediction loss sums the squared error over the d_state dimensions (docs/design.md,
    # section 5 (The loss)), so a regulariser weight that suits one latent size does not suit
    # another: LeWM's 0.09 goes with a loss averaged per dimension and let the library's default
    # world model (d = 64, loss summed over d) collapse. The default therefore scales with
    # d_state, `REG_WEIGHT_PER_DIM * d_state` (5.0 at d = 64, where 5.0 was measured to keep the
    # latents near isotropic and the world model 60x below the copy baseline).
    reg_weight: float | None = option(
        None, help="Regulariser weight; null: REG_WEIGHT_PER_DIM * d_state.", low=0
    )
    loss_phase: LossPhase = option("phase2", help="phase1: prediction only; phase2: + reg.")
    sigreg_num_slices: int = option(1024, help="SIGReg random projections.", low=1)
    sigreg_seed: int = option(0, help="Seed of the SIGReg projections.", low=0)

    initializer_range: float = option(0.02, help="Std of the normal init.", low=0, low_open=True)

    def __post_init__(self, **kwargs):
        validate_fields(self)
        self._validate_encoder_config()
        self._validate_architecture()
        if self.reg_weight is None:
            self.reg_weight = REG_WEIGHT_PER_DIM * self.d_state
        super().__post_init__(**kwargs)

    def _validate_encoder_config(self) -> None:
        if self.encoder_config is None:
            vocab = DEFAULT_VOCAB_SIZE if self.vocab_size is None else self.vocab_size
            self.encoder_config = default_encoder_config(vocab)
        elif isinstance(self.encoder_config, PreTrainedConfig):
            self.encoder_config = self.encoder_config.to_dict()
        else:
            self.encoder_config = copy.deepcopy(self.encoder_config)
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

    def _validate_architecture(self) -> None:
        """Constraints between fields (single fields are checked by `validate_fields`)."""
        if self.d_model % self.predictor_heads != 0:
            raise LeWMConfigError(
                "predictor_heads", self.predictor_heads, f"must divide d_model={self.d_model}"
            )
        if self.action_hidden % 2 != 0:
            raise LeWMConfigError(
                "action_hidden", self.action_hidden, "must be even (sinusoidal position embedding)"
            )
        if int(self.d_model * self.mlp_ratio) < 1:
            raise LeWMConfigError("mlp_ratio", self.mlp_ratio, "gives an MLP of width 0")
        offset = self.action_reference_offset
        if offset is not None and offset >= self.action_vocab_size:
            raise LeWMConfigError(
                "action_reference_offset",
                offset,
                f"must be below action_vocab_size={self.action_vocab_size} (the shifted tokens "
                "are action tokens)",
            )


AutoConfig.register(LeWMConfig.model_type, LeWMConfig, exist_ok=True)

__all__ = ["REG_WEIGHT_PER_DIM", "LeWMConfig", "default_encoder_config"]
