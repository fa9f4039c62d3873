"""A saved world model grows its action embedding for data with more actions.

- `LeWMModel.grow_action_vocab` copies the saved rows and adds seeded N(0, 1) rows.
- Under LoRA the grown rows train in full (peft trainable tokens) while every saved row stays
  bitwise, and the adapter reloads with them; the control without growth cannot read the data.
- Through a recipe, a world model saved with fewer action ids than the graph's out-degree adapts
  to it (`grow_action_vocab`, on by default); with `grow_action_vocab: false` it is the typed
  error it always was, and so is evaluating the saved model on that graph without training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _builders import ACTIONS, pretrained_like
from peft import AutoPeftModel
from test_tasks import one_phase_recipe, save_world_model, wm_phase

import lewm_hf  # noqa: F401  (registers the `lewm` model type)
from lewm_hf import LeWMModel, LeWMTrainer
from lewm_hf.errors import LeWMConfigError, LeWMInputError
from lewm_hf.tasks.runner import run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

TABLE = "action_encoder.token_embedding.weight"
# The tiny walk corpus's graph (`small` preset, seed 0) has out-degree up to 47.
GRAPH_ACTIONS = 47
# The saved model knows fewer.
SAVED_ACTIONS = 24


def test_grow_keeps_rows_and_is_seeded(tiny_lewm_model):
    model = tiny_lewm_model(action_vocab_size=2)
    before = model.action_encoder.token_embedding.weight.detach().clone()
    assert model.grow_action_vocab(2) == []  # nothing to grow
    added = model.grow_action_vocab(ACTIONS, seed=3)
    after = model.action_encoder.token_embedding.weight
    assert added == [2, 3] and model.config.action_vocab_size == ACTIONS
    assert after.shape == (ACTIONS, before.shape[1])
    assert torch.equal(after[:2], before)
    again = tiny_lewm_model(action_vocab_size=2)
    again.grow_action_vocab(ACTIONS, seed=3)
    assert torch.equal(again.action_encoder.token_embedding.weight, after)
    with pytest.raises(LeWMInputError) as info:
        model.grow_action_vocab(1)
    assert info.value.field == "action_vocab_size"


def test_lora_trains_the_grown_rows_and_keeps_the_saved_ones(
    tmp_path, tiny_lewm_model, tiny_clips, tiny_training_args
):
    # A model saved with 2 action ids, data with ACTIONS = 4.
    pretrained_like(tiny_lewm_model(seed=7, action_vocab_size=2)).save_pretrained(tmp_path / "b")
    model = LeWMModel.from_pretrained(tmp_path / "b")
    saved = model.action_encoder.token_embedding.weight.detach().clone()
    model.grow_action_vocab(ACTIONS, seed=1)
    grown = model.action_encoder.token_embedding.weight.detach().clone()
    out = tmp_path / "out"
    args = tiny_training_args(out, lora_targets=["predictor"], learning_rate=1e-2)
    trainer = LeWMTrainer(model, args, train_dataset=tiny_clips(64), window=8)
    assert trainer.parameter_report.result()["lora"]["trainable_token_indices"] == {
        "action_encoder.token_embedding": [2, 3]
    }
    trainer.train()
    trainer.save_model()
    peft_model = trainer.model
    ids = torch.arange(ACTIONS)
    table = peft_model.base_model.model.action_encoder.token_embedding
    with torch.no_grad():
        effective = table(ids)
    # Old rows bitwise as saved; the base weight itself untouched; the new rows trained.
    assert torch.equal(effective[:2], saved)
    base = dict(peft_model.base_model.model.named_parameters())
    base_table = next(v for k, v in base.items() if k.endswith("token_adapter.base_layer.weight"))
    assert torch.equal(base_table, grown)
    assert not torch.allclose(effective[2:], grown[2:])
    # The adapter carries the trained rows: reloaded, the same table.
    reloaded = AutoPeftModel.from_pretrained(out)
    with torch.no_grad():
        again = reloaded.base_model.model.action_encoder.token_embedding(ids)
    assert torch.equal(again, effective)
    merged = reloaded.merge_and_unload()
    assert torch.equal(merged.action_encoder.token_embedding.weight.detach(), effective)


def test_without_growth_the_data_does_not_fit(
    tmp_path, tiny_lewm_model, tiny_clips, tiny_training_args
):
    # The control: the saved model's 2 action ids cannot read actions 2 and 3.
    model = pretrained_like(tiny_lewm_model(seed=7, action_vocab_size=2))
    args = tiny_training_args(tmp_path / "out", lora_targets=["predictor"])
    trainer = LeWMTrainer(model, args, train_dataset=tiny_clips(64), window=8)
    with pytest.raises(LeWMInputError) as info:
        trainer.train()
    assert "actions" in info.value.field


def test_a_recipe_grows_a_saved_world_model_for_a_larger_graph(tmp_path, cache_dir):
    # A saved model as training leaves it (a zero predictor head passes no gradient back).
    saved = save_world_model(
        tmp_path / "saved", vocab_size=100, history_length=2, action_vocab_size=SAVED_ACTIONS
    )
    pretrained_like(LeWMModel.from_pretrained(saved)).save_pretrained(saved)
    saved_rows = LeWMModel.from_pretrained(saved).state_dict()[TABLE]
    lora = {
        "lora_targets": ["predictor"],
        "max_steps": 3,
        "learning_rate": 1e-2,
        "per_device_train_batch_size": 64,
    }
    summary = run_recipe(
        one_phase_recipe(tmp_path / "a", cache_dir, wm_phase("world_model", saved, **lora))
    )
    out = Path(summary["phases"]["start"]["output_dir"])
    base = json.loads((out / "base_model" / "config.json").read_text())
    assert base["action_vocab_size"] == GRAPH_ACTIONS
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str((out / "base_model").resolve())
    assert adapter["trainable_token_indices"] == {
        "action_encoder.token_embedding": list(range(SAVED_ACTIONS, GRAPH_ACTIONS))
    }
    merged = AutoPeftModel.from_pretrained(out).merge_and_unload()
    rows = merged.state_dict()[TABLE]
    assert torch.equal(rows[:SAVED_ACTIONS], saved_rows)
    base_rows = LeWMModel.from_pretrained(out / "base_model").state_dict()[TABLE]
    changed = (rows[SAVED_ACTIONS:] != base_rows[SAVED_ACTIONS:]).any(dim=1)
    assert changed.any(), "no grown row trained"

    # Growth switched off: the typed error of a model too small for the data.
    off = wm_phase("world_model", saved, grow_action_vocab=False)
    with pytest.raises(LeWMConfigError) as info:
        run_recipe(one_phase_recipe(tmp_path / "b", cache_dir, off))
    assert info.value.field == "action_vocab_size" and "grow_action_vocab" in str(info.value)
    # Evaluating the saved model on that graph without training: still the typed error (the
    # grown rows would be untrained).
    from lewm_hf.data.walks import build_move_trajectories
    from lewm_hf.evaluation.world_model import WorldModelEvalConfig, evaluate_world_model
    from lewm_hf.tasks.runner import validate_recipe

    plan = validate_recipe(one_phase_recipe(tmp_path / "b", cache_dir, off))[-1]
    clips = build_move_trajectories(plan.args.domain.clips, cache_dir)
    config = WorldModelEvalConfig(num_items=8, num_rollouts=2, max_horizon=2, num_walks=4)
    with pytest.raises(LeWMConfigError) as info:
        evaluate_world_model(LeWMModel.from_pretrained(saved), clips, config)
    assert info.value.field == "action_vocab_size"
    # A new model is sized for its data: the key is an error there.
    new = {**wm_phase("world_model", saved, grow_action_vocab=True), "model_name_or_path": None}
    with pytest.raises(LeWMConfigError) as info:
        run_recipe(one_phase_recipe(tmp_path / "c", cache_dir, new))
    assert info.value.field == "grow_action_vocab"


def test_an_edit_world_model_does_not_grow(tmp_path, cache_dir):
    # Edit actions are the DNA tokenizer's tokens: a fixed vocabulary, so a saved edit model too
    # small for it stays the typed error (grow_action_vocab is on by default).
    saved = save_world_model(
        tmp_path / "saved",
        vocab_size=7,
        history_length=2,
        num_action_ops=3,
        pooling="centered",
        action_position_origin="locus",
        action_reference_offset=7,
        action_vocab_size=10,
    )
    phase = wm_phase("edit_world_model", saved)
    with pytest.raises(LeWMConfigError) as info:
        run_recipe(one_phase_recipe(tmp_path / "a", cache_dir, phase))
    assert "action_vocab_size >= 14" in str(info.value), str(info.value)
