"""The frozen-encoder feature cache: same losses and weights as encoding at every step."""

from __future__ import annotations

import pytest
import torch
from test_trainer import W, clip_dataset, make_args, tiny_model

from lewm_hf import LeWMTrainer
from lewm_hf.data.collators import DataCollatorForLeWM
from lewm_hf.errors import LeWMConfigError
from lewm_hf.trainer.feature_cache import FeatureCache, FeatureCacheCollator


def test_cached_batch_loss_and_gradients_equal_encoding(tmp_path):
    model = tiny_model(encoder_mode="frozen", dropout=0.0)
    data = clip_dataset(32)
    collator = DataCollatorForLeWM(window=W)
    cache, (indexed,) = FeatureCache.build(model, [data], collator, batch_size=7)
    model.train()
    rows = list(indexed.select(range(16)))
    plain = collator([{k: v for k, v in r.items() if k != "feature_index"} for r in rows])
    cached = FeatureCacheCollator(collator, cache)(rows)
    assert "input_ids" not in cached and cached["state_features"].shape[:2] == (16, 4)
    out_plain = model(**plain, step=3)
    grads_plain = torch.autograd.grad(
        out_plain.loss, [p for p in model.parameters() if p.requires_grad]
    )
    out_cached = model(**cached, step=3)
    grads_cached = torch.autograd.grad(
        out_cached.loss, [p for p in model.parameters() if p.requires_grad]
    )
    torch.testing.assert_close(out_cached.loss, out_plain.loss, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_cached, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_short_run_with_cache_matches_run_without(tmp_path):
    data, held_out = clip_dataset(64), clip_dataset(32, seed=1)
    weights = []
    for cache in (True, False):
        args = make_args(
            tmp_path / str(cache),
            max_steps=6,
            frozen_feature_cache=cache,
            eval_strategy="steps",
            eval_steps=6,
        )
        model = tiny_model(encoder_mode="frozen", dropout=0.0)
        trainer = LeWMTrainer(model, args, train_dataset=data, eval_dataset=held_out, window=W)
        assert (trainer.feature_cache is not None) == cache
        trainer.train()
        evals = [e for e in trainer.state.log_history if "eval_pred_mse" in e]
        weights.append(({k: v.clone() for k, v in model.state_dict().items()}, evals[-1]))
    (cached, eval_cached), (plain, eval_plain) = weights
    for key in plain:
        torch.testing.assert_close(cached[key], plain[key], rtol=1e-4, atol=1e-5, msg=key)
    assert eval_cached["eval_pred_mse"] == pytest.approx(eval_plain["eval_pred_mse"], rel=1e-4)


def test_cache_for_other_weights_is_refused(tmp_path):
    model = tiny_model(encoder_mode="frozen")
    trainer = LeWMTrainer(
        model, make_args(tmp_path, max_steps=1), train_dataset=clip_dataset(32), window=W
    )
    with torch.no_grad():
        next(model.encoder.parameters()).add_(1.0)
    with pytest.raises(LeWMConfigError, match="frozen_feature_cache"):
        trainer.train()


def test_cache_needs_a_frozen_encoder():
    with pytest.raises(LeWMConfigError, match="encoder_mode"):
        FeatureCache.build(tiny_model(), [clip_dataset(8)], DataCollatorForLeWM(window=W))
