"""The frozen-encoder feature cache.

With `encoder_mode="frozen"` the encoder's pooled features of a state never change, yet a
training step would recompute them for every state of every clip, epoch after epoch (nearly all
of a world-model step's time with the walk-LM encoder). `FeatureCache.build` computes them once,
batched under `torch.inference_mode`, for every row of the training and evaluation datasets;
`FeatureCacheCollator` then feeds `state_features` to the model instead of `input_ids`, and the
projector, action encoder and predictor train as before.

The cache lives in memory (20000 clips of 4 states at E = 128 take 41 MB) and records a
fingerprint of the encoder's weights; `LeWMTrainer` refuses a cache whose fingerprint does not
match its model's encoder, so features computed for other weights are never used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset
from torch import nn

from ..errors import LeWMConfigError

# Column that maps a dataset row to its cached features.
FEATURE_INDEX = "feature_index"


def encoder_fingerprint(encoder: nn.Module) -> str:
    """SHA-256 over the encoder's parameter and buffer names, shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@dataclass
class FeatureCache:
    """Pooled encoder features of every state of every cached row.

    Args:
        features (`list[torch.Tensor]`): Per row, `(K + 1, E)` features of its states.
        fingerprint (`str`): `encoder_fingerprint` of the encoder that computed them.
    """

    features: list[torch.Tensor]
    fingerprint: str

    @classmethod
    @torch.inference_mode()
    def build(
        cls, model: nn.Module, datasets: list[Dataset], collator: Any, batch_size: int = 512
    ) -> tuple[FeatureCache, list[Dataset]]:
        """Compute the features of every row of `datasets` (in order) with `model`'s encoder.

        Args:
            model (`LeWMModel`): A model with a frozen encoder.
            datasets (`list[Dataset]`): The datasets to cache (e.g. train and evaluation).
            collator (`DataCollatorForLeWM`): Turns rows into `input_ids` `(B, K + 1, L)`.
            batch_size (`int`, defaults to 512): Rows per encoder call.

        Returns:
            `tuple[FeatureCache, list[Dataset]]`: The cache, and each dataset with a
            `feature_index` column pointing into it.
        """
        if model.config.encoder_mode != "frozen":
            raise LeWMConfigError(
                "encoder_mode",
                model.config.encoder_mode,
                "the feature cache needs a frozen encoder",
            )
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        features: list[torch.Tensor] = []
        indexed = []
        for dataset in datasets:
            start = len(features)
            for first in range(0, len(dataset), batch_size):
                rows = dataset.select(range(first, min(first + batch_size, len(dataset))))
                batch = collator(list(rows))
                ids = batch["input_ids"]  # (B, T + 1, L)
                b, states, length = ids.shape
                mask = batch.get("attention_mask")
                locus = batch.get("locus")
                pooled = model.pooled_features(
                    ids.reshape(b * states, length).to(device),
                    None if mask is None else mask.reshape(b * states, length).to(device),
                    None if locus is None else locus.reshape(-1).to(device),
                ).view(b, states, -1)  # (B, T + 1, E)
                steps = batch.get("action_mask")
                for i in range(b):
                    # Ragged rows keep their own states (the collator pads again per batch).
                    k = states if steps is None else int(steps[i].sum()) + 1
                    features.append(pooled[i, :k].float().cpu().clone())
            indexed.append(dataset.add_column(FEATURE_INDEX, list(range(start, len(features)))))
        model.train(was_training)
        return cls(features, encoder_fingerprint(model.encoder)), indexed


@dataclass
class FeatureCacheCollator:
    """Collate rows with a `feature_index` column: the wrapped collator's actions and masks,
    with `state_features` `(B, T + 1, E)` from the cache in place of `input_ids`.

    Args:
        collator (`Any`): The dataset's own collator (`DataCollatorForLeWM`).
        cache (`FeatureCache`): The features.
    """

    collator: Any
    cache: FeatureCache

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if FEATURE_INDEX not in features[0]:  # a dataset that was not cached: encode as usual
            return self.collator(features)
        index = [f[FEATURE_INDEX] for f in features]
        rows = [{k: v for k, v in f.items() if k != FEATURE_INDEX} for f in features]
        batch = self.collator(rows)
        states = batch.pop("input_ids").shape[1]
        batch.pop("attention_mask", None)
        batch.pop("locus", None)  # only pooling reads it, and the features are pooled already
        stacked = []
        for i in index:
            row = self.cache.features[i]
            # Padded states repeat the last real one, as the collator pads token states.
            pad = row[-1:].expand(states - row.shape[0], -1)
            stacked.append(torch.cat([row, pad]))
        batch["state_features"] = torch.stack(stacked)
        return batch


__all__ = ["FEATURE_INDEX", "FeatureCache", "FeatureCacheCollator", "encoder_fingerprint"]
