"""LoRA through peft: what trains, what the adapter carries, save / resume / merge / load."""

from __future__ import annotations

import json

import pytest
import torch
from _builders import PREDICTOR_LORA, TINY_ENCODER, TINY_LEWM, W, pretrained_like
from peft import AutoPeftModel, LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModel, LlamaConfig, LlamaForCausalLM, TrainerCallback

import lewm_hf  # noqa: F401  (registers the `lewm` model type)
from lewm_hf import LeWMModel, LeWMTrainer
from lewm_hf import metric_keys as K
from lewm_hf.data.collators import DataCollatorForLeWM
from lewm_hf.errors import LeWMConfigError
from lewm_hf.trainer.lewm_trainer import parameter_groups


@pytest.fixture
def base_dir(tmp_path, tiny_lewm_model):
    """A saved tiny world model: LoRA starts from `from_pretrained`, as the LoRA recipe does."""
    path = tmp_path / "base"
    pretrained_like(tiny_lewm_model(seed=7)).save_pretrained(path)
    return path


def load_base(path) -> LeWMModel:
    return LeWMModel.from_pretrained(path)


@pytest.fixture
def inputs(tiny_clips) -> dict[str, torch.Tensor]:
    """A batch of 16 clips (seed 5) to compare predictions on."""
    return DataCollatorForLeWM(window=W)(list(tiny_clips(16, seed=5)))


def plain_name(name: str) -> str:
    """A peft state-dict key as the base model names it (`None` for adapter entries)."""
    if "lora_" in name or "modules_to_save" in name:
        return None
    return name.replace(".original_module.", ".").replace(".base_layer.", ".")


def test_lora_only_adapter_parameters_and_buffers_change(base_dir, tiny_clips, tiny_training_args):
    # Train mode updates BatchNorm running statistics even for frozen parameters: the adapter
    # must carry the norms, and everything else must stay bitwise as loaded.
    model = load_base(base_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = tiny_training_args(max_steps=20, **PREDICTOR_LORA)
    trainer = LeWMTrainer(model, args, train_dataset=tiny_clips(), window=W)
    trainer.train()
    state = trainer.model.get_base_model().state_dict()
    outside = {plain_name(k): v for k, v in state.items() if plain_name(k) is not None}
    assert outside.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], outside[k])]
    assert changed == [], changed
    # What the adapter carries did train: the B matrices left zero, the norms' statistics moved.
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)
    for norm in ("projector.1", "predictor.head.1"):
        copy = state[f"{norm}.modules_to_save.default.running_mean"]
        assert not torch.equal(copy, before[f"{norm}.running_mean"]), norm


def test_lora_trainable_count_and_fraction(base_dir, tiny_clips, tiny_training_args):
    model = load_base(base_dir)
    total_base = sum(p.numel() for p in model.parameters())
    r = 4
    args = tiny_training_args(max_steps=1, lora_r=r, **PREDICTOR_LORA)
    trainer = LeWMTrainer(model, args, train_dataset=tiny_clips(), window=W)
    # Oracle: r (in + out) per adapted Linear, 2 x features per BatchNorm copy.
    modules = dict(load_base(base_dir).named_modules())
    adapted = [
        n
        for n, m in modules.items()
        if isinstance(m, torch.nn.Linear)
        and n.split(".")[0] in ("predictor", "action_encoder")
        and n.endswith(("qkv", "attn_out", "mlp.0", "mlp.2", "adaLN_modulation.1"))
    ]
    lora = sum(r * (modules[n].in_features + modules[n].out_features) for n in adapted)
    norms = sum(2 * modules[n].num_features for n in ("projector.1", "predictor.head.1"))
    report = trainer.parameter_report.result()
    assert report[K.TRAINABLE_PARAMS] == lora + norms
    assert report[K.TOTAL_PARAMS] == total_base + lora + norms
    assert report[K.TRAINABLE_FRACTION] == pytest.approx(
        (lora + norms) / (total_base + lora + norms)
    )
    assert sorted(report[K.LORA]["target_modules"]) == sorted(adapted)
    assert report[K.LORA]["modules_to_save"] == ["predictor.head.1", "projector.1"]


def test_lora_parameter_groups_match_run_without_lora(
    tmp_path, base_dir, tiny_clips, tiny_training_args
):
    multipliers = dict(
        encoder_lr_multiplier=0.25, predictor_lr_multiplier=2.0, action_encoder_lr_multiplier=0.5
    )
    plain_args = tiny_training_args(tmp_path / "plain" / "out", **multipliers)
    plain = {g["name"]: g["lr"] for g in parameter_groups(load_base(base_dir), plain_args)}
    args = tiny_training_args(tmp_path / "lora" / "out", **multipliers, **PREDICTOR_LORA)
    trainer = LeWMTrainer(load_base(base_dir), args, train_dataset=tiny_clips(), window=W)
    groups = parameter_groups(trainer.model, args)
    lora = {g["name"]: g["lr"] for g in groups}
    # Adapters of the predictor and action encoder, the projector's and head's norm copies.
    assert set(lora) == {
        "predictor_lr_multiplier/decay",
        "predictor_lr_multiplier/no_decay",
        "action_encoder_lr_multiplier/decay",
        "encoder_lr_multiplier/no_decay",
    }
    for name, lr in lora.items():
        assert lr == plain[name], name
    assert sum(len(g["params"]) for g in groups) == sum(
        1 for p in trainer.model.parameters() if p.requires_grad
    )
    trainer.create_optimizer()
    assert {g["lr"] for g in trainer.optimizer.param_groups} == set(lora.values())


def test_lora_adapter_save_load_merge_and_autopeftmodel(
    tmp_path, base_dir, inputs, tiny_clips, tiny_training_args
):
    args = tiny_training_args(max_steps=6, save_strategy="steps", save_steps=3, **PREDICTOR_LORA)
    trainer = LeWMTrainer(load_base(base_dir), args, train_dataset=tiny_clips(), window=W)
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    for folder in (out, out / "checkpoint-3", out / "checkpoint-6"):
        assert (folder / K.ADAPTER_CONFIG_FILE).is_file(), folder
        assert (folder / K.ADAPTER_WEIGHTS_FILE).is_file(), folder
    assert not (out / K.SAFE_WEIGHTS_FILE).exists()
    config = json.loads((out / K.ADAPTER_CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == str(base_dir)
    # peft imports the recorded class's module only from its allow-list: transformers' AutoModel.
    assert config["auto_mapping"]["base_model_class"] == "AutoModel"
    assert config["auto_mapping"]["parent_library"].startswith("transformers.")

    trained = trainer.model.eval()
    with torch.no_grad():
        expected = trained(**inputs).predictions
        loaded = AutoPeftModel.from_pretrained(out).eval()  # default import allow-list
        assert isinstance(loaded, PeftModel)
        assert isinstance(loaded.get_base_model(), LeWMModel)
        torch.testing.assert_close(loaded(**inputs).predictions, expected, rtol=0, atol=1e-6)
        merged = loaded.merge_and_unload()
        assert type(merged) is LeWMModel
        torch.testing.assert_close(merged(**inputs).predictions, expected, rtol=0, atol=1e-6)
    # The adapter is not the identity (so the comparisons above can fail).
    with torch.no_grad():
        base_pred = load_base(base_dir).eval()(**inputs).predictions
    assert (base_pred - expected).abs().max() > 1e-4
    # A merged model saves and reloads as a plain LeWMModel.
    merged.save_pretrained(tmp_path / "merged")
    again = AutoModel.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).predictions, expected, rtol=0, atol=1e-6)


def test_lora_plain_peft_adapter_needs_the_allowlist(tmp_path, base_dir):
    # What the recorded AutoModel avoids: plain peft records lewm_hf's class, which the default
    # allow-list refuses.
    model = get_peft_model(load_base(base_dir), LoraConfig(target_modules=["qkv"], r=2))
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="allowlist"):
        AutoPeftModel.from_pretrained(tmp_path / "plain")
    loaded = AutoPeftModel.from_pretrained(tmp_path / "plain", import_allowlist=["lewm_hf"])
    assert isinstance(loaded.get_base_model(), LeWMModel)


def test_lora_resume_with_adapters_matches_uninterrupted_run(
    tmp_path, base_dir, tiny_clips, tiny_training_args
):
    common = dict(max_steps=8, warmup_steps=2, save_strategy="steps", save_steps=4)
    common.update(PREDICTOR_LORA)
    full = LeWMTrainer(
        load_base(base_dir),
        tiny_training_args(tmp_path / "full" / "out", **common),
        train_dataset=tiny_clips(),
        window=W,
    )
    full.train()
    full.save_model()

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 4:
                control.should_training_stop = True

    first = LeWMTrainer(
        load_base(base_dir),
        tiny_training_args(tmp_path / "resumed" / "out", **common),
        train_dataset=tiny_clips(),
        window=W,
        callbacks=[Interrupt()],
    )
    first.train()
    assert first.state.global_step == 4
    # Another adapter init: the checkpoint's adapters (and norm copies) must replace it.
    second = LeWMTrainer(
        load_base(base_dir),
        tiny_training_args(tmp_path / "resumed" / "out", lora_seed=999, **common),
        train_dataset=tiny_clips(),
        window=W,
    )
    second.train(resume_from_checkpoint=True)
    second.save_model()
    a = load_file(tmp_path / "full" / "out" / K.ADAPTER_WEIGHTS_FILE)
    b = load_file(tmp_path / "resumed" / "out" / K.ADAPTER_WEIGHTS_FILE)
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_lora_typed_errors(base_dir, tiny_lewm_model, tiny_clips, tiny_training_args):
    data = tiny_clips(16)
    # Unknown target module: the error lists the Linear layers of the targeted parts.
    args = tiny_training_args(lora_targets=["predictor"], lora_target_modules=["q_proj"])
    with pytest.raises(LeWMConfigError, match="q_proj") as err:
        LeWMTrainer(load_base(base_dir), args, train_dataset=data, window=W)
    for layer in ("qkv", "attn_out", "mlp.0", "adaLN_modulation.1", "in_proj", "out_proj"):
        assert layer in str(err.value), layer
    # A targeted part that no entry matches.
    args = tiny_training_args(lora_targets=["encoder"])
    with pytest.raises(LeWMConfigError, match="q_proj"):
        LeWMTrainer(load_base(base_dir), args, train_dataset=data, window=W)
    # A PeftModel together with a LoRA config.
    peft_model = get_peft_model(load_base(base_dir), LoraConfig(target_modules=["qkv"]))
    args = tiny_training_args(**PREDICTOR_LORA)
    with pytest.raises(LeWMConfigError, match="already a PeftModel"):
        LeWMTrainer(peft_model, args, train_dataset=data, window=W)
    # LoRA on a frozen encoder gets no gradient.
    frozen = tiny_lewm_model(encoder_mode="frozen")
    args = tiny_training_args(lora_targets=["encoder"], lora_target_modules=["q_proj"])
    with pytest.raises(LeWMConfigError, match="frozen"):
        LeWMTrainer(frozen, args, train_dataset=data, window=W)
    # peft matches modules_to_save by suffix: `encoder` would take `action_encoder` too.
    args = tiny_training_args(lora_targets=["predictor"], lora_modules_to_save=["encoder"])
    with pytest.raises(LeWMConfigError, match="action_encoder"):
        LeWMTrainer(load_base(base_dir), args, train_dataset=data, window=W)
    with pytest.raises(LeWMConfigError, match="lora_targets"):
        tiny_training_args(lora_targets=["decoder"])


def test_lora_with_reentrant_activation_checkpointing_trains_the_adapters(
    base_dir, tiny_clips, tiny_training_args
):
    # Reentrant checkpointing passes no gradient into a layer whose inputs do not require one;
    # under LoRA the encoder's embeddings are frozen, so they must be made to require one.
    args = tiny_training_args(
        max_steps=3,
        activation_checkpointing=True,
        activation_checkpointing_kwargs={"use_reentrant": True},
        lora_targets=["encoder", "predictor"],
        lora_target_modules=["q_proj", "v_proj", "qkv"],
    )
    trainer = LeWMTrainer(load_base(base_dir), args, train_dataset=tiny_clips(), window=W)
    trainer.train()
    base = trainer.model.get_base_model()
    assert all(layer.gradient_checkpointing for layer in base.encoder.layers)
    assert all(block.gradient_checkpointing for block in base.predictor.blocks)
    lora_b = {n: p for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert any("encoder.layers" in n for n in lora_b) and any("blocks" in n for n in lora_b)
    untrained = [n for n, p in lora_b.items() if not p.any()]
    assert untrained == [], "adapters got no gradient"


def test_lora_on_an_encoder_phase_encoder(tmp_path, inputs, tiny_clips, tiny_training_args):
    # The encoder from the encoder phase (a causal LM), adapted by LoRA; the rest of the world
    # model is new and trains in full, saved in the adapter. The base was never saved, so the
    # trainer saves it beside the adapters for AutoPeftModel.
    lm_config = {k: v for k, v in TINY_ENCODER.items() if k != "model_type"}
    LlamaForCausalLM(LlamaConfig(**lm_config)).save_pretrained(tmp_path / "encoder")
    model = LeWMModel.from_encoder_pretrained(tmp_path / "encoder", **TINY_LEWM)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    args = tiny_training_args(
        max_steps=4,
        lora_targets=["encoder"],
        lora_target_modules=["q_proj", "v_proj"],
        lora_modules_to_save=["projector", "action_encoder", "predictor"],
    )
    trainer = LeWMTrainer(model, args, train_dataset=tiny_clips(), window=W)
    trainer.train()
    trainer.save_model()
    base = trainer.model.get_base_model()
    encoder = {plain_name(k): v for k, v in base.encoder.state_dict().items() if plain_name(k)}
    assert all(torch.equal(encoder[k], v) for k, v in encoder_before.items())
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in base.encoder.named_parameters())
    out = tmp_path / "out"
    config = json.loads((out / K.ADAPTER_CONFIG_FILE).read_text())
    assert config["base_model_name_or_path"] == str((out / "base_model").resolve())
    with torch.no_grad():
        expected = trainer.model.eval()(**inputs).predictions
        loaded = AutoPeftModel.from_pretrained(out).eval()
        torch.testing.assert_close(loaded(**inputs).predictions, expected, rtol=0, atol=1e-6)
