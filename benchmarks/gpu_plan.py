"""The GPU table of `docs/distributed.md`: parameters, FLOPs per step, memory per GPU under DDP /
FSDP2 / ZeRO-2 at bf16, and launch commands for 1, 8 and 64 GPUs, computed from the models'
configurations (`lewm_hf.gpu_plan`), without building them.

The models: the default recipe's world model (`recipes/configs/default.yaml`, its
`world_model` phase around the `encoder` phase's walk LM, encoder frozen), and a scaled one
(a 12-layer encoder of width 1024, trained end to end, and a 12-layer predictor of width 1024,
on the same data). Cheap (no model is built, no data is read):

    python benchmarks/gpu_plan.py            # prints the tables (Markdown)
"""

from __future__ import annotations

import copy
from pathlib import Path

from lewm_hf import LeWMConfig
from lewm_hf.data.walks import build_graph_and_jumpers
from lewm_hf.gpu_plan import PlanRow, plan_table
from lewm_hf.tasks import get_task
from lewm_hf.tasks.runner import validate_recipe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "recipes" / "configs" / "default.yaml"
# The scaled world model: encoder and predictor of width 1024 and 12 layers.
SCALED_ENCODER = {
    "hidden_size": 1024,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
}
SCALED_WORLD_MODEL = {
    "d_model": 1024,
    "predictor_layers": 12,
    "predictor_heads": 16,
    "encoder_mode": "train",
}


def default_world_model() -> tuple[LeWMConfig, int, int]:
    """The default recipe's world model config, its per-GPU batch and its window length, from
    the recipe's parsed phases (the encoder as the encoder phase builds it)."""
    encoder_plan, world_plan = validate_recipe(DEFAULT_RECIPE)
    lm = encoder_plan.args.model
    domain_args = world_plan.args.domain
    corpus = domain_args.clips.corpus
    graph, _ = build_graph_and_jumpers(corpus)
    window = corpus.context_window
    encoder = {
        "model_type": lm.model_type,
        "vocab_size": graph.num_vertices,
        "hidden_size": lm.hidden_size,
        "num_hidden_layers": lm.num_hidden_layers,
        "num_attention_heads": lm.num_attention_heads,
        "intermediate_size": lm.intermediate_size,
        **lm.model_config_overrides,
    }
    domain = get_task(world_plan.task).domain
    keys = {
        **domain.config_defaults(domain_args, world_plan.args.config, None),
        "action_vocab_size": graph.max_out_degree,
        **world_plan.args.config,
    }
    config = LeWMConfig(encoder_config=encoder, **keys)
    return config, world_plan.args.training.per_device_train_batch_size, window


def scaled_world_model(config: LeWMConfig) -> LeWMConfig:
    """`config` with `SCALED_ENCODER` and `SCALED_WORLD_MODEL`."""
    scaled = copy.deepcopy(config.to_dict())
    scaled["encoder_config"] = {**scaled["encoder_config"], **SCALED_ENCODER}
    scaled.update(SCALED_WORLD_MODEL)
    for key in ("model_type", "transformers_version", "architectures"):
        scaled.pop(key, None)
    return LeWMConfig(**scaled)


def plan_rows() -> list[PlanRow]:
    config, batch, window = default_world_model()
    scaled_args = (
        "--encoder.hidden_size 1024 "
        "--encoder.num_hidden_layers 12 --encoder.num_attention_heads 16 "
        "--encoder.intermediate_size 4096 --world_model.encoder_mode train "
        "--world_model.d_model 1024 --world_model.predictor_layers 12 "
        "--world_model.predictor_heads 16"
    )
    return [
        PlanRow("default", config, batch, window),
        PlanRow("scaled (1024 x 12)", scaled_world_model(config), batch, window, scaled_args),
    ]


def main() -> None:
    print(plan_table(plan_rows()), end="")


if __name__ == "__main__":
    main()
