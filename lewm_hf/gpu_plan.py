"""A world model's size on paper: parameters, FLOPs per training step, and memory per GPU.

Everything is computed from a `LeWMConfig` (its `encoder_config` included) and the batch shape,
without building the model, so a configuration far too large for this machine can be sized:

- `parameter_counts`: the parameters of each part (encoder, projector, action encoder,
  predictor), term by term from the layer shapes (`tests/test_gpu_plan.py` checks them against
  the instantiated model);
- `step_flops`: the matmul FLOPs of one training step per GPU, as `benchmarks/gpu_step.py`
  counts them: `2 m n k` per matmul, attention products `4 L^2 d` per sequence and layer
  (causal masking not discounted), SIGReg's projection `2 N D M`; times 3 (forward and
  backward) where the weights train, times 1 for a frozen encoder (its forward only);
- `memory_per_gpu`: the model states per GPU (weights, gradients, AdamW state) under bf16 mixed
  precision for DDP, FSDP2 (`fully_shard`) and DeepSpeed ZeRO-2, counted as the ZeRO paper does:
  per trained parameter 2 bytes of bf16 weights, 2 of bf16 gradients and 12 of fp32 master
  weights and Adam moments; per frozen parameter 2 bytes. DDP replicates all of it; FSDP2 shards
  all of it over the `N` GPUs; ZeRO-2 replicates the bf16 weights and shards the rest.
  Activations are not included (they scale with the per-GPU batch and gradient checkpointing).

Only Llama-style encoders (`model_type` `llama`, the recipes' encoders: no biases, RMSNorm,
gated MLP, grouped-query attention through `num_key_value_heads`) are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from .configuration_lewm import LeWMConfig
from .errors import LeWMConfigError

# Bytes per parameter under bf16 mixed precision with AdamW.
BF16_WEIGHT_BYTES = 2
BF16_GRAD_BYTES = 2
FP32_ADAM_BYTES = 12  # fp32 master weights, first and second moments
STRATEGIES = ("DDP", "FSDP2", "ZeRO-2")


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _encoder_dims(config: LeWMConfig) -> dict[str, int]:
    encoder = dict(config.encoder_config)
    if encoder.get("model_type") != "llama":
        raise LeWMConfigError(
            "encoder_config.model_type", encoder.get("model_type"), "'llama' (the one counted)"
        )
    hidden = encoder.get("hidden_size", 4096)
    heads = encoder.get("num_attention_heads", 32)
    return {
        "vocab": encoder.get("vocab_size", 32000),
        "hidden": hidden,
        "layers": encoder.get("num_hidden_layers", 32),
        "heads": heads,
        "kv_heads": encoder.get("num_key_value_heads") or heads,
        "head_dim": encoder.get("head_dim") or hidden // heads,
        "intermediate": encoder.get("intermediate_size", 11008),
        "bias": int(bool(encoder.get("attention_bias", False))),
        "mlp_bias": int(bool(encoder.get("mlp_bias", False))),
    }


def parameter_counts(config: LeWMConfig) -> dict[str, int]:
    """The parameters of each part of `LeWMModel(config)`.

    Args:
        config (`LeWMConfig`): The model's configuration (a Llama encoder).

    Returns:
        `dict[str, int]`: `encoder`, `projector`, `action_encoder`, `predictor` and `total`.
    """
    e = _encoder_dims(config)
    h, q, kv = e["hidden"], e["heads"] * e["head_dim"], e["kv_heads"] * e["head_dim"]
    attention = _linear(h, q, e["bias"]) + 2 * _linear(h, kv, e["bias"]) + _linear(q, h, e["bias"])
    mlp = 2 * _linear(h, e["intermediate"], e["mlp_bias"]) + _linear(
        e["intermediate"], h, e["mlp_bias"]
    )
    layer = attention + mlp + 2 * h  # two RMSNorm weights
    encoder = e["vocab"] * h + e["layers"] * layer + h  # embeddings, layers, final norm

    d, p, c = config.d_state, config.projector_hidden, config.d_model

    def projector(n_in: int) -> int:  # Linear -> BatchNorm1d (weight, bias) -> GELU -> Linear
        return _linear(n_in, p) + 2 * p + _linear(p, d)

    a = config.action_hidden
    action_encoder = (config.num_action_ops + config.action_vocab_size) * a
    action_encoder += _linear(a, c) + _linear(c, c)
    mlp_hidden = int(c * config.mlp_ratio)
    block = _linear(c, 3 * c) + _linear(c, c) + _linear(c, mlp_hidden) + _linear(mlp_hidden, c)
    block += _linear(c, 6 * c)  # AdaLN-zero modulation; the LayerNorms have no weights
    predictor = _linear(d, c) + config.history_length * c + config.predictor_layers * block
    predictor += _linear(c, d) + projector(d)
    counts = {
        "encoder": encoder,
        "projector": projector(h),
        "action_encoder": action_encoder,
        "predictor": predictor,
    }
    counts["total"] = sum(counts.values())
    return counts


def trained_parameters(config: LeWMConfig) -> int:
    """Parameters that train: all of them, less the encoder's when it is frozen."""
    counts = parameter_counts(config)
    frozen = counts["encoder"] if config.encoder_mode == "frozen" else 0
    return counts["total"] - frozen


def step_flops(config: LeWMConfig, batch: int, window: int) -> dict[str, float]:
    """Matmul FLOPs of one training step on one GPU (its `batch` clips).

    Args:
        config (`LeWMConfig`): The model's configuration.
        batch (`int`): Clips per GPU and step (`per_device_train_batch_size`).
        window (`int`): Tokens per state window `L`.

    Returns:
        `dict[str, float]`: Forward FLOPs of the `encoder` and of the `rest`, and `step`: the
        whole step (forward and backward).
    """
    e = _encoder_dims(config)
    h, q, kv = e["hidden"], e["heads"] * e["head_dim"], e["kv_heads"] * e["head_dim"]
    steps = config.history_length
    sequences = batch * (steps + 1)
    tokens = sequences * window
    layer_matmul = h * (2 * q + 2 * kv) + 3 * h * e["intermediate"]
    encoder = 2.0 * tokens * layer_matmul * e["layers"]
    encoder += 4.0 * sequences * window**2 * q * e["layers"]  # QK^T and attention x V

    d, p, c, a = config.d_state, config.projector_hidden, config.d_model, config.action_hidden
    mlp_hidden = int(c * config.mlp_ratio)
    rest = 2.0 * sequences * (h * p + p * d)  # projector, on the pooled state
    rest += 2.0 * batch * steps * (a * c + c * c)  # action encoder
    block = 3 * c * c + c * c + 2 * c * mlp_hidden + 6 * c * c
    rest += 2.0 * batch * steps * (d * c + config.predictor_layers * block + c * d + d * p + p * d)
    rest += 4.0 * batch * steps**2 * c * config.predictor_layers  # predictor attention
    rest += 2.0 * sequences * d * config.sigreg_num_slices  # SIGReg's projection
    encoder_factor = 1.0 if config.encoder_mode == "frozen" else 3.0
    return {"encoder": encoder, "rest": rest, "step": encoder_factor * encoder + 3.0 * rest}


def memory_per_gpu(config: LeWMConfig, num_gpus: int) -> dict[str, float]:
    """Bytes of model states (weights, gradients, AdamW state) per GPU, bf16 mixed precision.

    Args:
        config (`LeWMConfig`): The model's configuration.
        num_gpus (`int`): GPUs the run is sharded over.

    Returns:
        `dict[str, float]`: Bytes per GPU under `DDP`, `FSDP2` and `ZeRO-2`.
    """
    total = parameter_counts(config)["total"]
    trained = trained_parameters(config)
    weights = BF16_WEIGHT_BYTES * total
    sharded = (BF16_GRAD_BYTES + FP32_ADAM_BYTES) * trained
    return {
        "DDP": weights + sharded,
        "FSDP2": (weights + sharded) / num_gpus,
        "ZeRO-2": weights + sharded / num_gpus,
    }


@dataclass
class PlanRow:
    """One model of the table.

    Args:
        name (`str`): The model's name in the table.
        config (`LeWMConfig`): Its configuration.
        batch (`int`): Clips per GPU and step.
        window (`int`): Tokens per state window.
        args (`str`): The recipe flags of the launch commands (`$ARGS` in them).
    """

    name: str
    config: LeWMConfig
    batch: int
    window: int
    args: str = ""


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def launch_command(num_gpus: int, strategy: str, gpus_per_node: int = 8) -> str:
    """The command that trains the recipe (flags `$ARGS`) on `num_gpus` GPUs with `strategy`:
    one process for one GPU, `accelerate launch` on one node, the Slurm script (one
    `accelerate launch` per node of `gpus_per_node` GPUs) beyond."""
    config = {
        "DDP": "accelerate_configs/ddp.yaml",
        "FSDP2": "accelerate_configs/fsdp2.yaml",
        "ZeRO-2": "accelerate_configs/deepspeed_zero2.yaml",
    }[strategy]
    if num_gpus == 1:
        return "accelerate launch --num_processes 1 --mixed_precision bf16 recipes/train.py $ARGS"
    if num_gpus <= gpus_per_node:
        return (
            f"accelerate launch --config_file {config} --num_processes {num_gpus} "
            "recipes/train.py $ARGS"
        )
    nodes = -(-num_gpus // gpus_per_node)
    return f"sbatch --nodes {nodes} recipes/launch/slurm_multi_node.sh $ARGS"


def plan_table(
    rows: list[PlanRow], gpu_counts: tuple[int, ...] = (1, 8, 64), gpu_memory_gib: float = 80.0
) -> str:
    """Markdown tables: size and FLOPs of each model, memory per GPU, and launch commands.

    The launch command of each GPU count uses the first strategy of DDP, ZeRO-2, FSDP2 whose
    model states fit in half of `gpu_memory_gib` (the rest is left for activations).

    Args:
        rows (`list[PlanRow]`): The models.
        gpu_counts (`tuple[int, ...]`, defaults to `(1, 8, 64)`): GPU counts of the table.
        gpu_memory_gib (`float`, defaults to 80.0): Memory of one GPU.

    Returns:
        `str`: The tables (Markdown).
    """
    out = [
        "| Model | Parameters (trained) | Encoder / predictor | Batch per GPU | "
        "TFLOP per step and GPU |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        counts = parameter_counts(row.config)
        encoder = row.config.encoder_config
        flops = step_flops(row.config, row.batch, row.window)["step"]
        out.append(
            f"| {row.name} | {counts['total'] / 1e6:.2f} M ({trained_parameters(row.config) / 1e6:.2f} M) "
            f"| {encoder['num_hidden_layers']} x {encoder['hidden_size']} "
            f"({row.config.encoder_mode}) / {row.config.predictor_layers} x {row.config.d_model} "
            f"| {row.batch} x {row.config.history_length + 1} x {row.window} tokens "
            f"| {flops / 1e12:.4g} |"
        )
    out += [
        "",
        "| Model | GPUs | DDP (GiB/GPU) | FSDP2 (GiB/GPU) | ZeRO-2 (GiB/GPU) | Launch |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        for gpus in gpu_counts:
            memory = memory_per_gpu(row.config, gpus)
            fits = [
                s for s in ("DDP", "ZeRO-2", "FSDP2") if memory[s] <= gpu_memory_gib / 2 * 2**30
            ]
            strategy = fits[0] if fits else "FSDP2"
            cells = " | ".join(_gib(memory[s]) for s in STRATEGIES)
            out.append(f"| {row.name} | {gpus} | {cells} | `{launch_command(gpus, strategy)}` |")
    out += ["", "`$ARGS` of each model:", ""]
    out += [f"- {row.name}: `{row.args or '(none: the default recipe)'}`" for row in rows]
    return "\n".join(out) + "\n"


__all__ = [
    "STRATEGIES",
    "PlanRow",
    "launch_command",
    "memory_per_gpu",
    "parameter_counts",
    "plan_table",
    "step_flops",
    "trained_parameters",
]
