"""The default recipe's world model and a training-step clock, shared by the benchmarks.

from _world_model import StepClock, default_model
model = default_model()                     # seeded: the same weights in every variant
clock = StepClock(warmup_steps=3)           # pass to a Trainer as a callback
"""

from __future__ import annotations

import time

import torch
from transformers import TrainerCallback

from lewm_hf import LeWMConfig, LeWMModel


def default_model(seed: int = 0) -> LeWMModel:
    """The default recipe's world model around a walk LM of the encoder phase's size.

    Args:
        seed (`int`, defaults to 0): Seed of the weights.

    Returns:
        `LeWMModel`: A frozen 4-layer, hidden-128 Llama encoder, d_state 64, a 2-layer predictor
        of width 128.
    """
    torch.manual_seed(seed)
    encoder = {
        "model_type": "llama",
        "vocab_size": 100,
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "max_position_embeddings": 64,
    }
    config = LeWMConfig(
        encoder_config=encoder,
        encoder_mode="frozen",
        d_state=64,
        projector_hidden=256,
        d_model=128,
        predictor_layers=2,
        predictor_heads=4,
        history_length=3,
        action_vocab_size=64,
    )
    return LeWMModel(config)


class StepClock(TrainerCallback):
    """Process CPU time from the end of step `warmup_steps` to the end of the last step.

    Args:
        warmup_steps (`int`): Untimed steps first (compilation, first batches, allocator).
    """

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.start = self.stop = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup_steps:
            self.start = time.process_time()
        self.stop = time.process_time()

    def seconds_per_step(self, steps: int) -> float:
        """Mean seconds of the `steps` timed steps."""
        return (self.stop - self.start) / steps
