"""Tests of LeWMConfig / LeWMModel (tiny configs, CPU, a few seconds)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import typing

import pytest
import torch
from _builders import TINY_ENCODER
from transformers import AutoConfig, AutoModel, LlamaConfig, LlamaForCausalLM

from lewm_hf import metric_keys as K
from lewm_hf.configuration_lewm import LeWMConfig
from lewm_hf.errors import LeWMConfigError, LeWMInputError
from lewm_hf.modeling_lewm import ActionInputs, AdaLNBlock, LeWMModel, LeWMOutput

VOCAB = 40
B, T, L = 6, 3, 8


# This file's tiny model: the shared one with four attention heads, two predictor layers and eight
# actions.
MODEL = {
    "encoder_config": {
        **TINY_ENCODER,
        "vocab_size": VOCAB,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
    },
    "predictor_layers": 2,
    "predictor_heads": 4,
    "history_length": 3,
    "action_vocab_size": 8,
    "action_hidden": 16,
    "sigreg_num_slices": 32,
}


@pytest.fixture
def tiny_model(tiny_lewm_model):
    """`tiny_model(seed=0, **overrides)`: the shared tiny model with `MODEL`'s keys."""
    return functools.partial(tiny_lewm_model, **MODEL)


def make_batch(seed: int = 1, steps: int = T) -> dict[str, torch.Tensor | ActionInputs]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, VOCAB, (B, steps + 1, L), generator=g),
        "attention_mask": torch.ones(B, steps + 1, L, dtype=torch.long),
        "actions": ActionInputs(ids=torch.randint(0, 8, (B, steps), generator=g)),
    }


def with_mask(batch: dict, mask: torch.Tensor) -> dict:
    """`batch` with `mask` as its actions' mask."""
    return {**batch, "actions": dataclasses.replace(batch["actions"], mask=mask)}


def perturb_model(model: LeWMModel, seed: int = 3) -> None:
    """Give the zero-initialised layers random values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "adaLN_modulation" in name or "predictor.head.3" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=g))


def zero_init_params(model: LeWMModel) -> list[torch.nn.Parameter]:
    return [
        param
        for name, param in model.named_parameters()
        if "adaLN_modulation" in name or "predictor.head.3" in name
    ]


# --------------------------------------------------------------------------------------------
# Forward and loss


def test_forward_shapes_and_fields(tiny_model):
    model = tiny_model()
    out = model(**make_batch())
    assert isinstance(out, LeWMOutput)
    assert out.predictions.shape == (B, T, 16)
    assert out.targets.shape == (B, T, 16)
    assert out.latents.shape == (B, T + 1, 16)
    for name in ("loss", "pred_loss", "reg_loss"):
        assert out[name].dim() == 0 and torch.isfinite(out[name])
    torch.testing.assert_close(out.targets, out.latents[:, 1:])
    assert out.latents.std(dim=(0, 1)).mean() > 0.2  # latents start at order-one scale
    assert out.targets.requires_grad  # no stop-gradient on targets
    out.loss.backward()
    assert model.encoder.get_input_embeddings().weight.grad is not None
    assert isinstance(model(**make_batch(), return_dict=False), tuple)


def test_variable_clip_length_up_to_history(tiny_model):
    model = tiny_model()
    assert model(**make_batch(steps=1)).predictions.shape == (B, 1, 16)
    with pytest.raises(LeWMInputError) as err:
        model(**make_batch(steps=4))
    assert err.value.field == "input_ids"


@pytest.mark.parametrize("phase", ["phase1", "phase2"])
def test_loss_combines_prediction_and_regularizer(phase, tiny_model):
    model = tiny_model(loss_phase=phase, reg_weight=0.25)
    out = model(**make_batch())
    expected = out.pred_loss + 0.25 * out.reg_loss if phase == "phase2" else out.pred_loss
    torch.testing.assert_close(out.loss, expected)
    assert out.reg_loss > 0  # logged in phase 1 as well


@pytest.mark.parametrize("regularizer", ["kl", "none"])
def test_other_regularizers(regularizer, tiny_model):
    out = tiny_model(regularizer=regularizer)(**make_batch())
    assert torch.isfinite(out.loss)
    if regularizer == "none":
        assert out.reg_loss.item() == 0.0
        torch.testing.assert_close(out.loss, out.pred_loss)


def test_sigreg_depends_on_step_only_through_projections(tiny_model):
    model = tiny_model().eval()
    batch = make_batch()
    with torch.no_grad():
        a, b = model(**batch, step=5), model(**batch, step=5)
        c = model(**batch, step=6)
    assert torch.equal(a.reg_loss, b.reg_loss)
    assert not torch.equal(a.reg_loss, c.reg_loss)
    assert torch.equal(a.pred_loss, c.pred_loss)


# --------------------------------------------------------------------------------------------
# Predictor


def test_zero_init_survives_post_init_and_reinit(tiny_model):
    model = tiny_model()
    params = zero_init_params(model)
    assert len(params) == 2 * 2 + 2  # two AdaLN blocks (weight, bias) + delta head
    assert all(torch.count_nonzero(p) == 0 for p in params)
    # _init_weights itself (what post_init and from_pretrained's missing-key init call) zeroes them.
    perturb_model(model)
    for module in model.modules():
        if getattr(module, "_lewm_zero_init", False):
            model._init_weights(module)
    assert all(torch.count_nonzero(p) == 0 for p in params)
    # Ordinary layers keep a random init.
    assert torch.count_nonzero(model.predictor.blocks[0].qkv.weight) > 0


def test_untrained_predictor_returns_its_input(tiny_model):
    model = tiny_model().eval()
    z = torch.randn(B, T, 16)
    actions = ActionInputs(ids=torch.randint(0, 8, (B, T)))
    with torch.no_grad():
        assert torch.equal(model.predict(z, actions), z)
        out = model(**make_batch())
    assert torch.equal(out.predictions, out.latents[:, :-1])


def test_predictor_is_causal_over_steps(tiny_model):
    model = tiny_model().eval()
    perturb_model(model)
    z = torch.randn(B, T, 16)
    actions = torch.randint(0, 8, (B, T))
    later_actions = actions.clone()
    later_actions[:, -1] = (actions[:, -1] + 1) % 8
    later_z = z.clone()
    later_z[:, -1] += 1.0
    with torch.no_grad():
        base = model.predict(z, ActionInputs(ids=actions))
        changed_action = model.predict(z, ActionInputs(ids=later_actions))
        changed_state = model.predict(later_z, ActionInputs(ids=actions))
    torch.testing.assert_close(changed_action[:, :-1], base[:, :-1], rtol=0, atol=1e-6)
    torch.testing.assert_close(changed_state[:, :-1], base[:, :-1], rtol=0, atol=1e-6)
    assert not torch.allclose(changed_action[:, -1], base[:, -1])  # the action is used


def test_action_inputs_ops_positions_tokens(tiny_model):
    model = tiny_model(num_action_ops=3, max_action_position=32).eval()
    perturb_model(model)
    z = torch.randn(B, T, 16)
    ids = torch.randint(0, 8, (B, T))
    with torch.no_grad():
        base = model.predict(z, ActionInputs(ids=ids))
        with_ops = model.predict(z, ActionInputs(ids=ids, ops=torch.full((B, T), 2)))
        with_pos = model.predict(z, ActionInputs(ids=ids, positions=torch.full((B, T), 7)))
        # One token per action through tokens equals ids.
        via_tokens = model.predict(z, ActionInputs(tokens=ids.unsqueeze(-1)))
        tokens = torch.randint(0, 8, (B, T, 4))
        token_mask = torch.ones(B, T, 4, dtype=torch.bool)
        token_mask[..., 2:] = False
        masked = model.predict(z, ActionInputs(tokens=tokens, token_mask=token_mask))
        garbage = tokens.clone()
        garbage[..., 2:] = -100
        masked_garbage = model.predict(z, ActionInputs(tokens=garbage, token_mask=token_mask))
        emb = model.encode_actions(ActionInputs(ids=ids))
        via_emb = model.predict(z, action_emb=emb)
    assert not torch.allclose(with_ops, base)
    assert not torch.allclose(with_pos, base)
    torch.testing.assert_close(via_tokens, base)
    torch.testing.assert_close(masked, masked_garbage)
    torch.testing.assert_close(via_emb, base)
    with pytest.raises(LeWMInputError) as err:
        model.predict(z, ActionInputs(ids=torch.full((B, T), 8)))
    assert err.value.field == "actions.ids"
    with pytest.raises(LeWMInputError) as err:
        model.predict(z, ActionInputs(ids=ids, positions=torch.full((B, T), 32)))
    assert err.value.field == "actions.positions"


@pytest.mark.parametrize("train_mode", [False, True])
def test_padded_actions_and_states_do_not_change_the_loss(train_mode, tiny_model):
    """Padded states are not encoded and padded steps are kept out of every BatchNorm, the
    prediction loss and SIGReg, so this holds in training mode (batch statistics) too."""
    model = tiny_model(dropout=0.0)
    perturb_model(model)
    model.train(train_mode)
    batch = make_batch()
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 1:] = False  # one real action
    mask[1, 2:] = False  # two real actions
    batch = with_mask(batch, mask)
    other = {k: v.clone() for k, v in batch.items() if k != "actions"}
    ids = batch["actions"].ids.clone()
    ids[~mask] = -100  # any padding value is accepted
    other["actions"] = ActionInputs(ids=ids, mask=mask)
    other["input_ids"][0, 2:] = 0  # states after a padded action are padding
    other["input_ids"][1, 3:] = 1
    other["attention_mask"][0, 2:] = 0
    a, b = model(**batch), model(**other)
    for name in ("loss", "pred_loss", "reg_loss"):
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
    assert torch.count_nonzero(a.latents[0, 2:]) == 0 and torch.count_nonzero(a.latents[1, 3:]) == 0
    torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=1e-6)


def test_action_mask_must_be_trailing(tiny_model):
    batch = make_batch()
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 0] = False
    with pytest.raises(LeWMInputError) as err:
        tiny_model()(**with_mask(batch, mask))
    assert err.value.field == "actions.mask"


# --------------------------------------------------------------------------------------------
# Encoder


def test_frozen_encoder_gets_no_grads_projector_does(tiny_model):
    model = tiny_model(encoder_mode="frozen")
    model.train()
    assert not model.encoder.training and model.projector.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    model(**make_batch()).loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.projector[0].weight.grad is not None
    assert torch.count_nonzero(model.projector[0].weight.grad) > 0
    assert model.action_encoder.mlp[0].weight.grad is not None


def test_centered_pooling_uses_locus(tiny_model):
    model = tiny_model(pooling="centered", pool_radius=1).eval()
    ids = torch.randint(0, VOCAB, (4, L))
    with torch.no_grad():
        at_2 = model.encode(ids, locus=torch.full((4,), 2))
        at_5 = model.encode(ids, locus=torch.full((4,), 5))
        # The backbone is causal: tokens after the window [1, 3] cannot reach it.
        later = ids.clone()
        later[:, 5:] = (later[:, 5:] + 1) % VOCAB
        later_at_2 = model.encode(later, locus=torch.full((4,), 2))
        default = model.encode(ids)
        last = model.encode(ids, locus=torch.full((4,), L - 1))
    assert not torch.allclose(at_2, at_5)
    torch.testing.assert_close(later_at_2, at_2)
    torch.testing.assert_close(default, last)
    # Through forward: locus of shape (B, T + 1).
    batch = make_batch()
    with torch.no_grad():
        a = model(**batch, locus=torch.full((B, T + 1), 2)).latents
        b = model(**batch, locus=torch.full((B, T + 1), 5)).latents
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooling_ignores_padding(pooling, tiny_model):
    model = tiny_model(pooling=pooling).eval()
    ids = torch.randint(0, VOCAB, (4, L))
    mask = torch.ones(4, L, dtype=torch.long)
    mask[:, 5:] = 0
    other = ids.clone()
    other[:, 5:] = 0
    with torch.no_grad():
        a = model.encode(ids, mask)
        b = model.encode(other, mask)
        short = model.encode(ids[:, :5])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, short, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Save / load / Auto classes


def test_save_and_load_round_trip(tmp_path, tiny_model):
    model = tiny_model(encoder_mode="frozen")
    perturb_model(model)
    model.train()
    model(**make_batch())  # move the BatchNorm running statistics
    model.eval()
    model.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / K.SAFE_WEIGHTS_FILE)
    config = json.loads((tmp_path / K.CONFIG_FILE).read_text())
    assert config["model_type"] == "lewm"
    assert config["encoder_config"]["model_type"] == "llama"

    batch = make_batch(seed=7)
    with torch.no_grad():
        expected = model(**batch)
    for loaded in (LeWMModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert type(loaded) is LeWMModel
        assert not loaded.training
        assert not any(p.requires_grad for p in loaded.encoder.parameters())  # still frozen
        with torch.no_grad():
            got = loaded(**batch)
        for name in ("loss", "pred_loss", "reg_loss", "predictions", "latents"):
            assert torch.equal(got[name], expected[name]), name
    assert isinstance(AutoConfig.from_pretrained(tmp_path), LeWMConfig)


def test_no_split_modules_and_input_embeddings(tiny_model):
    model = tiny_model()
    assert {"AdaLNBlock", "LlamaDecoderLayer"} <= set(model._no_split_modules)
    assert model.get_input_embeddings() is model.encoder.embed_tokens
    assert isinstance(model.predictor.blocks[0], AdaLNBlock)


def test_gradient_checkpointing_matches(tiny_model):
    model = tiny_model(dropout=0.0)
    perturb_model(model)
    batch = make_batch()
    base = model(**batch).loss
    model.activation_checkpointing_enable()
    assert model.predictor.blocks[0].gradient_checkpointing
    checkpointed = model(**batch).loss
    checkpointed.backward()
    torch.testing.assert_close(checkpointed, base)


def test_from_encoder_pretrained_copies_weights(tmp_path):
    torch.manual_seed(0)
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=64,
        )
    )
    lm.save_pretrained(tmp_path)
    model = LeWMModel.from_encoder_pretrained(str(tmp_path), d_state=16, d_model=32)
    assert model.config.encoder_config["model_type"] == "llama"
    assert model.config.vocab_size == VOCAB
    assert torch.equal(model.encoder.embed_tokens.weight, lm.model.embed_tokens.weight)
    assert torch.equal(
        model.encoder.layers[0].self_attn.q_proj.weight, lm.model.layers[0].self_attn.q_proj.weight
    )
    assert model.config.d_state == 16
    with pytest.raises(LeWMInputError) as err:
        LeWMModel.from_encoder_pretrained(str(tmp_path / "missing"))
    assert err.value.field == "encoder_path"


# --------------------------------------------------------------------------------------------
# Config


def test_default_config_is_a_tiny_llama_and_round_trips(tmp_path):
    config = LeWMConfig()
    assert config.encoder_config["model_type"] == "llama"
    assert config.encoder_config["vocab_size"] == config.vocab_size
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, LeWMConfig)
    assert loaded.encoder_config == config.encoder_config
    assert LeWMConfig(vocab_size=100).encoder_config["vocab_size"] == 100


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"pooling": "max"}, "pooling"),
        ({"encoder_mode": "lora"}, "encoder_mode"),
        ({"d_state": 0}, "d_state"),
        ({"d_model": -4}, "d_model"),
        ({"d_model": 30, "predictor_heads": 4}, "predictor_heads"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"history_length": 0}, "history_length"),
        ({"action_hidden": 15}, "action_hidden"),
        ({"pred_loss": "l1"}, "pred_loss"),
        ({"regularizer": "vicreg"}, "regularizer"),
        ({"loss_phase": "phase3"}, "loss_phase"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
        ({"d_state": "64"}, "d_state"),
        ({"reg_weight": -1.0}, "reg_weight"),
        ({"pool_radius": -1}, "pool_radius"),
        ({"encoder_config": {"hidden_size": 8}}, "encoder_config.model_type"),
        ({"encoder_config": {"model_type": "nope"}}, "encoder_config.model_type"),
        (
            {"encoder_config": {"model_type": "llama", "vocab_size": 10}, "vocab_size": 20},
            "vocab_size",
        ),
    ],
)
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(LeWMConfigError) as err:
        LeWMConfig(**kwargs)
    assert err.value.field == field
    assert field in str(err.value)


def test_sigreg_with_full_action_mask_equals_unmasked(tiny_model):
    model = tiny_model().eval()
    batch = make_batch()
    with torch.no_grad():
        plain = model(**batch, step=2)
        masked = model(**with_mask(batch, torch.ones(B, T, dtype=torch.bool)), step=2)
    torch.testing.assert_close(masked.reg_loss, plain.reg_loss)
    torch.testing.assert_close(masked.loss, plain.loss)


def test_sigreg_on_ragged_clips_is_per_step_over_valid_states(tiny_model):
    from lewm_hf.losses import sigreg, sigreg_generator

    model = tiny_model().eval()
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 1:] = False
    with torch.no_grad():
        out = model(**with_mask(make_batch(), mask), step=4)
    state_mask = torch.cat([torch.ones(B, 1, dtype=torch.bool), mask], dim=1)
    expected = torch.stack(
        [
            sigreg(out.latents[state_mask[:, k], k], num_slices=32, generator=sigreg_generator(4))
            for k in range(T + 1)
        ]
    ).mean()
    torch.testing.assert_close(out.reg_loss, expected)


def test_config_recipe_fields_are_its_own():
    from lewm_hf.recipe import recipe_fields

    fields = recipe_fields(LeWMConfig)
    assert fields["d_state"] is int and "dtype" not in fields and "id2label" not in fields
    assert set(typing.get_args(fields["pooling"])) == {"last", "mean", "centered"}


# Bad clip inputs to `forward` (history_length 3, pooled width E 32, B 6): each is a typed error
# naming the argument and what was expected, raised before anything is encoded.
# (case, the inputs other than actions, the number of actions, field, words of the expectation)
E = TINY_ENCODER["hidden_size"]
BAD_CLIPS = [
    ("features: more states than H + 1", {"state_features": torch.randn(B, 5, E)}, 4,
     "state_features", "exceed history_length + 1=4"),
    ("ids: more states than H + 1", {"input_ids": torch.zeros(B, 5, L, dtype=torch.long)}, 4,
     "input_ids", "exceed history_length + 1=4"),
    ("features: one state", {"state_features": torch.randn(B, 1, E)}, 0,
     "state_features", "(B, T + 1, E)"),
    ("features: rank 2", {"state_features": torch.randn(B, E)}, 2,
     "state_features", "(B, T + 1, E)"),
    ("features: wrong width", {"state_features": torch.randn(B, 3, E + 1)}, 2,
     "state_features", f"pooled width E={E}"),
    ("features: integers", {"state_features": torch.ones(B, 3, E, dtype=torch.long)}, 2,
     "state_features", "floating point"),
    ("features and ids", {"state_features": torch.randn(B, 3, E),
                          "input_ids": torch.zeros(B, 3, L, dtype=torch.long)}, 2,
     "state_features", "not both"),
    ("features with a mask", {"state_features": torch.randn(B, 3, E),
                              "attention_mask": torch.ones(B, 3, L)}, 2,
     "attention_mask", "pooled already"),
    ("features with a locus", {"state_features": torch.randn(B, 3, E),
                               "locus": torch.zeros(B, 3, dtype=torch.long)}, 2,
     "locus", "pooled already"),
    ("features: actions of another length", {"state_features": torch.randn(B, 3, E)}, 1,
     "actions", f"({B}, 2)"),
    ("ids: floats", {"input_ids": torch.zeros(B, 3, L)}, 2, "input_ids", "integer"),
    ("neither ids nor features", {}, 2, "input_ids", "give input_ids or state_features"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("inputs", "steps", "field", "expected"),
    [case[1:] for case in BAD_CLIPS],
    ids=[case[0] for case in BAD_CLIPS],
)
def test_bad_clip_inputs_are_typed_errors_naming_the_argument(
    tiny_model, inputs, steps, field, expected
):
    model = tiny_model()
    assert (model.config.history_length, model.projector[0].in_features) == (3, E)
    actions = ActionInputs(ids=torch.zeros(B, steps, dtype=torch.long))
    with pytest.raises(LeWMInputError) as err:
        model(actions=actions, **inputs)
    assert err.value.field == field and expected in err.value.reason


def test_good_state_features_give_the_loss_of_their_input_ids(tiny_model):
    # The control of the table above: features pooled by the model itself pass the checks.
    model = tiny_model().eval()
    batch = make_batch()
    ids = batch.pop("input_ids")
    batch.pop("attention_mask")  # all ones: the features are pooled without one
    with torch.no_grad():
        features = model.pooled_features(ids.flatten(0, 1)).view(*ids.shape[:2], -1)
        via_ids = model(input_ids=ids, **batch).loss
        via_features = model(state_features=features, **batch).loss
    torch.testing.assert_close(via_features, via_ids)
