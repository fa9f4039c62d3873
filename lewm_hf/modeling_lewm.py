"""LeWM: an action-conditioned JEPA world model on an HF backbone.

A state (a token sequence) is encoded by any HF backbone, pooled and projected to a latent
`z` of size `d_state`. A causal transformer over steps, conditioned on each step's action by
AdaLN-zero, predicts the next latent from the history of latents and actions. Both halves train
end to end (no stop-gradient on the targets), regularised by SIGReg or a Gaussian KL.

Shapes: `B` batch, `T` number of actions (so `T + 1` states), `L` tokens per state, `D` d_state,
`C` d_model.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .checkpoints import check_model_dir
from .configuration_lewm import LeWMConfig
from .errors import LeWMInputError
from .losses import combine_losses, gaussian_kl, prediction_loss, sigreg, sigreg_generator
from .modeling_actions import (
    _UNIT_INIT,
    ActionInputs,
    LeWMActionEncoder,
    _check_shape,
    _check_trailing_padding,
    check_input_values,
    require_actions,
    sinusoidal_embedding,
)
from .modeling_inputs import check_clip_inputs

# Attribute that marks a Linear whose weight and bias start at zero (AdaLN-zero, delta head).
_ZERO_INIT = "_lewm_zero_init"
# Attribute that marks a Linear initialised N(0, 1 / fan_in) (LeCun), so that the encoder
# projector emits latents of order one, the scale SIGReg pulls them to, rather than ~0.05.
_LECUN_INIT = "_lewm_lecun_init"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LeWMOutput(ModelOutput):
    """
    Output of [`LeWMModel.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            The optimised loss: `pred_loss` in phase 1, `pred_loss + reg_weight * reg_loss` in phase 2.
        pred_loss (`torch.FloatTensor` of shape `()`):
            Prediction loss over the valid (batch, step) pairs.
        reg_loss (`torch.FloatTensor` of shape `()`):
            Regulariser on the latents of the valid states (zero for `regularizer="none"`).
        predictions (`torch.FloatTensor` of shape `(B, T, d_state)`):
            `predictions[:, t]` is the prediction of `z_{t+1}` from `z_{<=t}` and `a_{<=t}`.
        targets (`torch.FloatTensor` of shape `(B, T, d_state)`):
            `latents[:, 1:]`, not detached.
        latents (`torch.FloatTensor` of shape `(B, T + 1, d_state)`):
            Latents of all states; zero for padded states.
    """

    loss: torch.FloatTensor | None = None
    pred_loss: torch.FloatTensor | None = None
    reg_loss: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None
    targets: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None


class _DropLoadReport(logging.Filter):
    """Drops transformers' state-dict LOAD REPORT record (see `from_encoder_pretrained`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
    """A Linear that `_init_weights` sets to zero (weight and bias)."""
    linear = nn.Linear(in_features, out_features)
    setattr(linear, _ZERO_INIT, True)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def _projector(in_features: int, hidden: int, out_features: int, zero_last: bool = False):
    """Linear -> BatchNorm1d -> GELU -> Linear (BatchNorm, not LayerNorm, so SIGReg can act)."""
    last = _zero_linear(hidden, out_features) if zero_last else nn.Linear(hidden, out_features)
    return nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.GELU(), last)


def _apply_rows(module: nn.Module, x: torch.Tensor, valid: torch.Tensor | None, field: str):
    """Apply a row-wise module (with BatchNorm) to the valid rows of `x` only.

    Args:
        module (`nn.Module`): Maps `(N, C_in)` to `(N, C_out)`.
        x (`torch.Tensor` of shape `(N, C_in)`): Rows.
        valid (`torch.BoolTensor` of shape `(N,)`, *optional*): Rows to use; others come out as zeros.
        field (`str`): Input named in the error raised for a single-row batch in training mode.

    Returns:
        `torch.Tensor` of shape `(N, C_out)`.
    """
    rows = x if valid is None else x[valid]
    if module.training and rows.shape[0] < 2:
        raise LeWMInputError(
            field,
            f"{rows.shape[0]} valid row(s)",
            "BatchNorm in training mode needs at least 2 valid rows; call model.eval() to infer",
        )
    out = module(rows)
    if valid is None:
        return out
    full = out.new_zeros(x.shape[0], out.shape[-1])
    full[valid] = out
    return full


class AdaLNBlock(GradientCheckpointingLayer):
    """Pre-norm causal self-attention + MLP block conditioned by AdaLN-zero.

    `SiLU -> Linear(C, 6C)` of the step's action embedding gives shift/scale/gate for attention
    and MLP; the Linear starts at zero, so an untrained block is the identity:
    `x = x + gate_a * attn(modulate(norm(x), shift_a, scale_a))`,
    `x = x + gate_m * mlp(modulate(norm(x), shift_m, scale_m))`, with
    `modulate(h, shift, scale) = h * (1 + scale) + shift`.

    Args:
        d_model (`int`): Width C.
        num_heads (`int`): Attention heads (divide C).
        mlp_ratio (`float`): MLP width as a multiple of C.
        dropout (`float`): Dropout on attention weights and on both residual branches.
    """

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        hidden = int(d_model * mlp_ratio)
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attn_out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d_model)
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), _zero_linear(d_model, 6 * d_model))
        self.resid_dropout = nn.Dropout(dropout)

    def _attention(self, h: torch.Tensor) -> torch.Tensor:
        batch, steps, width = h.shape
        q, k, v = self.qkv(h).split(width, dim=-1)
        # (B, T, C) -> (B, heads, T, C / heads)
        q, k, v = (t.view(batch, steps, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        return self.attn_out(out.transpose(1, 2).reshape(batch, steps, width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (`torch.Tensor` of shape `(B, T, C)`): Step states.
            c (`torch.Tensor` of shape `(B, T, C)`): Action embedding of each step.

        Returns:
            `torch.Tensor` of shape `(B, T, C)`.
        """
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, -1)
        h = self.norm1(x) * (1 + scale_a) + shift_a
        x = x + gate_a * self.resid_dropout(self._attention(h))
        h = self.norm2(x) * (1 + scale_m) + shift_m
        return x + gate_m * self.resid_dropout(self.mlp(h))


class LeWMPredictor(nn.Module):
    """Causal transformer over steps predicting the next latent as a residual.

    `z_hat_{t+1} = z_t + delta_t`, `delta = head(out_proj(blocks(in_proj(z) + step_emb, a)))`,
    where `head` is Linear -> BatchNorm1d -> GELU -> Linear with its last Linear zero-initialised
    and every block is AdaLN-zero. An untrained predictor therefore returns its input latent
    exactly (`delta == 0`), the copy baseline, and learning starts from it.

    Args:
        config ([`LeWMConfig`]): Model configuration.
    """

    def __init__(self, config: LeWMConfig):
        super().__init__()
        self.config = config
        self.in_proj = nn.Linear(config.d_state, config.d_model)
        self.step_embedding = nn.Embedding(config.history_length, config.d_model)
        self.input_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            AdaLNBlock(config.d_model, config.predictor_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.predictor_layers)
        )
        self.out_proj = nn.Linear(config.d_model, config.d_state)
        self.head = _projector(
            config.d_state, config.projector_hidden, config.d_state, zero_last=True
        )

    def forward(
        self, z_hist: torch.Tensor, action_emb: torch.Tensor, step_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            z_hist (`torch.Tensor` of shape `(B, T, D)`): Latents `z_0 .. z_{T-1}`, `T <= H`.
            action_emb (`torch.Tensor` of shape `(B, T, C)`): Embeddings of `a_0 .. a_{T-1}`.
            step_mask (`torch.BoolTensor` of shape `(B, T)`, *optional*):
                Valid steps; the delta head (and its BatchNorm) sees only these, padded steps
                return `z_t` unchanged.

        Returns:
            `torch.Tensor` of shape `(B, T, D)`: predictions of `z_1 .. z_T`.
        """
        batch, steps, _ = z_hist.shape
        steps_idx = torch.arange(steps, device=z_hist.device)
        x = self.in_proj(z_hist) + self.step_embedding(steps_idx)  # (B, T, C)
        x = self.input_dropout(x)
        c = action_emb.to(x.dtype)
        for block in self.blocks:
            x = block(x, c)
        delta_in = self.out_proj(x).reshape(batch * steps, -1)  # (B*T, D)
        valid = None if step_mask is None else step_mask.reshape(-1)
        delta = _apply_rows(self.head, delta_in, valid, "actions.mask")
        return z_hist + delta.view(batch, steps, -1).to(z_hist.dtype)


class LeWMPreTrainedModel(PreTrainedModel):
    """Weight initialisation and HF plumbing shared by the LeWM models."""

    config_class = LeWMConfig
    base_model_prefix = "lewm"
    main_input_name = "input_ids"
    # The backbone's own no-split layers (e.g. `LlamaDecoderLayer`) are merged in by `post_init`
    # from the encoder sub-model, so FSDP auto-wrap never names a class the backbone lacks.
    _no_split_modules: ClassVar[list[str]] = ["AdaLNBlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) Linear/Embedding weights, except: zero for the AdaLN-zero
        modulations and the predictor delta head, N(0, 1) for the action op/token embeddings, and
        N(0, 1 / fan_in) for the encoder projector (latents start at unit scale).

        `post_init` (and `from_pretrained` for keys missing from a checkpoint) call this through
        `transformers.initialization`, whose functions skip parameters already loaded, so the
        zero-init survives both paths and never overwrites a checkpoint.
        """
        if getattr(module, _ZERO_INIT, False):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif getattr(module, _UNIT_INIT, False):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif getattr(module, _LECUN_INIT, False):
            init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
            init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class LeWMModel(LeWMPreTrainedModel):
    """
    LeWM world model: state encoder (HF backbone + pooling + BatchNorm projector), action
    encoder, and AdaLN-zero causal predictor.

    Training is teacher-forced and end to end: the targets `z_{t+1}` are the encoder's own
    latents, not detached (LeWM has no stop-gradient or EMA target; SIGReg prevents collapse).

    Padding: with `actions.mask`, state `k >= 1` is valid when action `k - 1` is, and padding
    must be trailing. Padded states are not encoded (their latents are zero), and padded states
    and steps are left out of every BatchNorm, of the prediction loss and of the regulariser, so
    neither their content nor their padded action values change any output at valid positions,
    in training and in eval mode.

    Args:
        config ([`LeWMConfig`]): Model configuration.
    """

    def __init__(self, config: LeWMConfig):
        super().__init__(config)
        encoder_config = AutoConfig.for_model(**config.encoder_config)
        self.encoder = AutoModel.from_config(encoder_config)
        hidden = _encoder_hidden_size(encoder_config)
        self.projector = _projector(hidden, config.projector_hidden, config.d_state)
        for layer in self.projector:
            if isinstance(layer, nn.Linear):
                setattr(layer, _LECUN_INIT, True)
        self.action_encoder = LeWMActionEncoder(config)
        self.predictor = LeWMPredictor(config)
        self._apply_encoder_mode()
        self.post_init()

    # ----------------------------------------------------------------------------------------
    # HF plumbing

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.encoder.set_input_embeddings(value)

    def _apply_encoder_mode(self) -> None:
        if self.config.encoder_mode == "frozen":
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> LeWMModel:
        """Set training mode; a frozen encoder stays in eval mode (no dropout, fixed statistics)."""
        super().train(mode)
        if self.config.encoder_mode == "frozen":
            self.encoder.eval()
        return self

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """[`PreTrainedModel.from_pretrained`], then re-freeze a frozen encoder.

        Loading replaces the parameters with fresh ones (`requires_grad=True`), which would
        silently unfreeze `encoder_mode="frozen"`. A local folder is checked first
        (`lewm_hf.checkpoints.check_model_dir`): another `model_type`, or missing, truncated or
        corrupt weights are a `LeWMInputError` naming the file.
        """
        if args and os.path.isdir(args[0]):
            check_model_dir(args[0], "pretrained_model_name_or_path", LeWMConfig.model_type)
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model._apply_encoder_mode()
        return loaded

    @classmethod
    def from_encoder_pretrained(cls, encoder_path: str, **config_kwargs) -> LeWMModel:
        """Build a LeWM model around a pretrained backbone (e.g. the walk LM of the encoder phase).

        Args:
            encoder_path (`str`):
                A local checkpoint directory (a saved `XxxForCausalLM` or base model; `AutoModel`
                keeps the base model) or a Hub id.
            config_kwargs:
                Other [`LeWMConfig`] fields; `encoder_config` is taken from the checkpoint.

        Returns:
            [`LeWMModel`]: New predictor/projector weights, the checkpoint's encoder weights.
        """
        encoder_path = os.fspath(encoder_path)
        if "encoder_config" in config_kwargs:
            raise LeWMInputError(
                "encoder_config", "given", "is read from encoder_path; do not pass it as well"
            )
        is_local = os.path.isdir(encoder_path)
        if not is_local and (os.path.exists(encoder_path) or not _HUB_ID.match(encoder_path)):
            raise LeWMInputError("encoder_path", encoder_path, "no such checkpoint directory")
        if is_local:
            check_model_dir(encoder_path, "encoder_path")
        # A causal-LM checkpoint has an `lm_head` the base model does not use; the load report
        # would flag it as unexpected at warning level, so the report is silenced and the one
        # thing that matters, encoder weights missing from the checkpoint, is an error here.
        # (Raising the logger's level instead would trigger transformers' TP-plan warnings.)
        report_logger = logging.getLogger("transformers.modeling_utils")
        report_filter = _DropLoadReport()
        report_logger.addFilter(report_filter)
        try:
            encoder, info = AutoModel.from_pretrained(encoder_path, output_loading_info=True)
        except OSError as err:
            raise LeWMInputError("encoder_path", encoder_path, f"cannot load: {err}") from err
        finally:
            report_logger.removeFilter(report_filter)
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise LeWMInputError(
                "encoder_path", encoder_path, f"checkpoint lacks encoder weights {missing[:5]}"
            )
        encoder_config = encoder.config.to_dict()
        encoder_config.pop("_name_or_path", None)
        encoder_config.pop("transformers_version", None)
        model = cls(LeWMConfig(encoder_config=encoder_config, **config_kwargs))
        model.encoder.load_state_dict(encoder.state_dict(), strict=True)
        return model

    def grow_action_vocab(self, new_size: int, seed: int = 0) -> list[int]:
        """Give the action-token embedding rows for the ids `[action_vocab_size, new_size)`.

        The existing rows are copied unchanged; the new ones are drawn from N(0, 1), as a fresh
        table's rows are (`_init_weights`), from a generator seeded with `seed`, so growing the
        same model twice gives the same weights (a resumed run rebuilds it). The new ids are
        recorded in `grown_action_tokens`: under LoRA the trainer trains exactly these rows in
        full (`lewm_hf.trainer.lora`) and keeps the others bitwise as loaded. The model is no
        longer the checkpoint it was loaded from, so its `name_or_path` is cleared.

        Args:
            new_size (`int`): The new `action_vocab_size` (at least the current one).
            seed (`int`, *optional*, defaults to 0): Seed of the new rows.

        Returns:
            `list[int]`: The new action ids (empty when `new_size` is the current size).

        Raises:
            `LeWMInputError`: when `new_size` is below the current size.
        """
        old = self.config.action_vocab_size
        if new_size < old:
            raise LeWMInputError(
                "action_vocab_size", new_size, f"cannot shrink the action vocabulary of {old}"
            )
        if new_size == old:
            return []
        table = self.action_encoder.token_embedding
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randn(new_size - old, table.embedding_dim, generator=generator)
        grown = nn.Embedding(new_size, table.embedding_dim)
        with torch.no_grad():
            weight = torch.cat([table.weight.detach(), rows.to(table.weight)], dim=0)
            grown.weight = nn.Parameter(weight, requires_grad=table.weight.requires_grad)
        setattr(grown, _UNIT_INIT, True)
        self.action_encoder.token_embedding = grown
        self.config.action_vocab_size = new_size
        # The model is no longer the checkpoint it was loaded from: nothing may name it as such
        # (under LoRA the trainer then saves this base beside the adapters, which name it).
        self.name_or_path = ""
        self.config.name_or_path = ""
        added = list(range(old, new_size))
        self.grown_action_tokens = list(getattr(self, "grown_action_tokens", [])) + added
        return added

    # ----------------------------------------------------------------------------------------
    # Encoder

    def _pool(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        locus: torch.Tensor | None,
    ) -> torch.Tensor:
        """Pool token states `(N, L, E)` into state vectors `(N, E)`."""
        mask = attention_mask.to(hidden.dtype)  # (N, L)
        seq_len = hidden.shape[1]
        positions = torch.arange(seq_len, device=hidden.device)
        # Last attended token, for right or left padding (0 for a row with no token).
        last = (attention_mask.long() * positions).argmax(dim=1)  # (N,)
        if self.config.pooling == "last":
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        if self.config.pooling == "centered":
            center = last if locus is None else locus.to(hidden.device).long()
            near = (positions.unsqueeze(0) - center.unsqueeze(1)).abs() <= self.config.pool_radius
            mask = mask * near.to(mask.dtype)
        weights = mask.unsqueeze(-1)  # (N, L, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def pooled_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        locus: torch.LongTensor | None = None,
    ) -> torch.FloatTensor:
        """The encoder's pooled token states `(N, E)`, before the projector.

        With a frozen encoder these are fixed, so they can be computed once per state and fed
        back through `forward(state_features=...)` (the frozen-encoder feature cache).

        Args:
            input_ids (`torch.LongTensor` of shape `(N, L)`): Token ids of N states.
            attention_mask (`torch.Tensor` of shape `(N, L)`, *optional*): 1 for real tokens.
            locus (`torch.LongTensor` of shape `(N,)`, *optional*): Centre of `"centered"` pooling.

        Returns:
            `torch.FloatTensor` of shape `(N, E)`.
        """
        # Without a mask the encoder gets none either: handed an all-ones mask, transformers
        # reads its values to find that nothing is padded (a host sync on an accelerator).
        encoder_mask = attention_mask
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # A frozen encoder never builds a graph, whatever its parameters' requires_grad says.
        frozen = self.config.encoder_mode == "frozen"
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            hidden = self.encoder(input_ids=input_ids, attention_mask=encoder_mask)
            return self._pool(hidden.last_hidden_state, attention_mask, locus)  # (N, E)

    def _encode_rows(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        locus: torch.Tensor | None,
        valid: torch.Tensor | None,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode rows `(N, L)` (or their pooled `features` `(N, E)`) to latents `(N, D)`;
        invalid rows are skipped and left zero."""
        num_rows = features.shape[0] if features is not None else input_ids.shape[0]
        if features is not None:
            pooled = features if valid is None else features[valid]
        else:
            ids, mask, loc = input_ids, attention_mask, locus
            if valid is not None:
                ids = ids[valid]
                mask = None if mask is None else mask[valid]
                loc = None if loc is None else loc[valid]
            pooled = self.pooled_features(ids, mask, loc)  # (N_valid, E)
        pooled = pooled.to(self.projector[0].weight.dtype)
        z = _apply_rows(self.projector, pooled, None, "input_ids")  # (N_valid, D)
        if valid is None:
            return z
        full = z.new_zeros(num_rows, z.shape[-1])
        full[valid] = z
        return full

    def encode(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        locus: torch.LongTensor | None = None,
    ) -> torch.FloatTensor:
        """Encode states into latents.

        Args:
            input_ids (`torch.LongTensor` of shape `(N, L)`): Token ids of N states.
            attention_mask (`torch.Tensor` of shape `(N, L)`, *optional*): 1 for real tokens.
            locus (`torch.LongTensor` of shape `(N,)`, *optional*):
                Centre token of `pooling="centered"` (e.g. the edit position). Defaults to the
                last real token. Ignored by the other poolings.

        Returns:
            `torch.FloatTensor` of shape `(N, d_state)`.
        """
        if input_ids.dim() != 2:
            raise LeWMInputError("input_ids", tuple(input_ids.shape), "must have shape (N, L)")
        _check_shape(attention_mask, tuple(input_ids.shape), "attention_mask")
        _check_shape(locus, tuple(input_ids.shape[:1]), "locus")
        return self._encode_rows(input_ids, attention_mask, locus, None)

    # ----------------------------------------------------------------------------------------
    # Predictor

    def encode_actions(self, actions: ActionInputs, check_values: bool = True) -> torch.FloatTensor:
        """Embed actions `(B, T)` to `(B, T, d_model)`; see [`LeWMActionEncoder.forward`]."""
        return self.action_encoder(actions, check_values=check_values)

    def predict(
        self,
        z_hist: torch.Tensor,
        actions: ActionInputs | None = None,
        action_emb: torch.Tensor | None = None,
    ) -> torch.FloatTensor:
        """Teacher-forced next-latent prediction.

        Args:
            z_hist (`torch.Tensor` of shape `(B, T, d_state)`): Latents `z_0 .. z_{T-1}`, `T <= H`.
            actions ([`ActionInputs`], *optional*):
                Actions `a_0 .. a_{T-1}`, `(B, T)`; their `mask` marks the valid steps (padded
                steps return `z_t` unchanged). Required unless `action_emb` is given.
            action_emb (`torch.Tensor` of shape `(B, T, d_model)`, *optional*):
                Precomputed action embeddings (`encode_actions`), instead of encoding `actions`;
                of `actions`, if also given, only the `mask` is then read.

        Returns:
            `torch.FloatTensor` of shape `(B, T, d_state)`: `[:, t]` predicts `z_{t+1}` from
            `z_{<=t}` and `a_{<=t}`. An untrained model returns `z_hist` exactly.
        """
        if z_hist.dim() != 3:
            raise LeWMInputError("z_hist", tuple(z_hist.shape), "must have shape (B, T, d_state)")
        batch, steps, width = z_hist.shape
        if width != self.config.d_state:
            raise LeWMInputError(
                "z_hist", tuple(z_hist.shape), f"last dim must be {self.config.d_state}"
            )
        if not 1 <= steps <= self.config.history_length:
            raise LeWMInputError(
                "z_hist",
                tuple(z_hist.shape),
                f"needs 1 to history_length={self.config.history_length} steps",
            )
        mask = None
        if actions is not None or action_emb is None:
            if require_actions(actions).shape != (batch, steps):
                raise LeWMInputError(
                    "actions", actions.shape, f"must match z_hist steps ({batch}, {steps})"
                )
            if actions.mask is not None:
                mask = actions.mask.to(device=z_hist.device, dtype=torch.bool)
        if action_emb is None:
            action_emb = self.encode_actions(actions)
        elif action_emb.shape != (batch, steps, self.config.d_model):
            raise LeWMInputError(
                "action_emb",
                tuple(action_emb.shape),
                f"must have shape ({batch}, {steps}, d_model)",
            )
        elif mask is not None:
            action_emb = action_emb * mask.unsqueeze(-1).to(action_emb.dtype)
        return self.predictor(z_hist, action_emb, mask)

    # ----------------------------------------------------------------------------------------
    # Forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        actions: ActionInputs | None = None,
        locus: torch.LongTensor | None = None,
        state_features: torch.FloatTensor | None = None,
        step: int = 0,
        return_dict: bool | None = None,
        check_values: bool = True,
    ) -> LeWMOutput | tuple:
        """Encode a clip of `T + 1` states, predict each next latent, and compute the loss.

        Args:
            input_ids (`torch.LongTensor` of shape `(B, T + 1, L)`): States `s_0 .. s_T`.
            attention_mask (`torch.Tensor` of shape `(B, T + 1, L)`, *optional*): 1 for real tokens.
            actions ([`ActionInputs`]):
                The actions `a_0 .. a_{T-1}`, `(B, T)`; their `mask` marks real actions (True)
                and trailing padding (False), and defaults to all True.
            locus (`torch.LongTensor` of shape `(B, T + 1)`, *optional*):
                Centre token of each state for `pooling="centered"`.
            state_features (`torch.FloatTensor` of shape `(B, T + 1, E)`, *optional*):
                The encoder's pooled features of each state (`pooled_features`), instead of
                `input_ids`: a frozen encoder's features are computed once and reused.
            step (`int`, *optional*, defaults to 0):
                Global optimisation step; seeds the SIGReg projections so every rank draws the same.
            return_dict (`bool`, *optional*): Return a [`LeWMOutput`] (default) or a tuple.
            check_values (`bool`, *optional*, defaults to `True`):
                Check the values of the action inputs (ids within their vocabularies, padding
                trailing), raising `LeWMInputError`. Reading values is a host synchronisation on
                an accelerator: `LeWMTrainer` runs the same checks on each collated batch on the
                host (`check_input_values`) and passes `False`. Shapes are always checked.

        Returns:
            [`LeWMOutput`] or `tuple`.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        batch, num_states, seq_len = check_clip_inputs(
            input_ids,
            attention_mask,
            locus,
            state_features,
            actions,
            history_length=self.config.history_length,
            pooled_width=self.projector[0].in_features,
        )
        device = (input_ids if state_features is None else state_features).device

        # State k >= 1 exists when action k - 1 does; padding must be trailing.
        state_mask = None
        mask = None
        if actions.mask is not None:
            mask = actions.mask.to(device=device, dtype=torch.bool)
            if check_values:
                _check_trailing_padding(mask)
            state_mask = torch.cat([mask.new_ones(batch, 1), mask], dim=1)  # (B, T + 1)

        # One batched encoder call over the B * (T + 1) states.
        flat_valid = None if state_mask is None else state_mask.reshape(-1)
        if state_features is not None:
            latents = self._encode_rows(
                None, None, None, flat_valid, state_features.reshape(batch * num_states, -1)
            ).view(batch, num_states, -1)  # (B, T + 1, D)
        else:
            latents = self._encode_rows(
                input_ids.reshape(batch * num_states, seq_len),
                None
                if attention_mask is None
                else attention_mask.reshape(batch * num_states, seq_len),
                None if locus is None else locus.reshape(-1),
                flat_valid,
            ).view(batch, num_states, -1)  # (B, T + 1, D)

        action_emb = self.encode_actions(actions, check_values=check_values)
        predictions = self.predict(latents[:, :-1], actions, action_emb=action_emb)
        targets = latents[:, 1:]  # no stop-gradient: LeWM trains end to end

        pred_loss = prediction_loss(predictions, targets, mask, kind=self.config.pred_loss)
        reg_loss = self._regularizer(latents, state_mask, step)
        loss = combine_losses(pred_loss, reg_loss, self.config.reg_weight, self.config.loss_phase)

        output = LeWMOutput(
            loss=loss,
            pred_loss=pred_loss,
            reg_loss=reg_loss,
            predictions=predictions,
            targets=targets,
            latents=latents,
        )
        return output if return_dict else output.to_tuple()

    # Under `torch.compile` the regulariser runs eagerly: SIGReg's slices come from a generator
    # seeded by the step (a hash and a `torch.Generator`, which break the graph, and a new step
    # value would recompile it), and its fused statistic is one autograd node already.
    @torch.compiler.disable
    def _regularizer(
        self, latents: torch.Tensor, state_mask: torch.Tensor | None, step: int
    ) -> torch.Tensor:
        """Regulariser on the valid latents `(B, T + 1, D)` (`state_mask` `(B, T + 1)` or None)."""
        kind = self.config.regularizer
        if kind == "none":
            return latents.new_zeros(())
        if kind == "kl":
            flat = latents.reshape(-1, latents.shape[-1])
            if state_mask is not None:
                flat = flat[state_mask.reshape(-1)]
            return gaussian_kl(flat)

        def generator() -> torch.Generator:
            return sigreg_generator(step, seed=self.config.sigreg_seed, device=latents.device)

        num_slices = self.config.sigreg_num_slices
        distributed = (
            torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1
        )
        # Ranks must make the same number of (collective) SIGReg calls, so under distributed
        # training the path depends only on whether a mask was given, never on its values.
        if state_mask is None or (not distributed and bool(state_mask.all())):
            # Per time step over the batch: (T + 1, B, D).
            return sigreg(latents.transpose(0, 1), num_slices=num_slices, generator=generator())
        # Ragged clips: per time step over that step's valid states. A fresh generator with the
        # same seed gives every step the same projections as the unpadded call, so the mean over
        # steps equals the (T + 1, B, D) value when nothing is padded. A step with no valid state
        # is skipped in a single process; distributed, it is passed empty (the global count of
        # the other ranks' states still defines it), and all ranks must share the padded T.
        values = [
            sigreg(latents[state_mask[:, k], k], num_slices=num_slices, generator=generator())
            for k in range(latents.shape[1])
            if distributed or bool(state_mask[:, k].any())
        ]
        return torch.stack(values).mean()


# ----------------------------------------------------------------------------------------------
# Input checks


def _encoder_hidden_size(encoder_config) -> int:
    for name in ("hidden_size", "d_model", "n_embd", "dim"):
        value = getattr(encoder_config, name, None)
        if isinstance(value, int):
            return value
    text_config = encoder_config.get_text_config()
    if text_config is not encoder_config:
        return _encoder_hidden_size(text_config)
    raise LeWMInputError("encoder_config", encoder_config.model_type, "has no hidden_size")


AutoModel.register(LeWMConfig, LeWMModel, exist_ok=True)

__all__ = [
    "ActionInputs",
    "AdaLNBlock",
    "LeWMActionEncoder",
    "LeWMModel",
    "LeWMOutput",
    "LeWMPreTrainedModel",
    "LeWMPredictor",
    "check_input_values",
    "sinusoidal_embedding",
]
