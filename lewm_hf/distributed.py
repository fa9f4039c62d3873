"""Distributed helpers: a BatchNorm over the global batch, and rank-aware reductions.

Every statistic over the batch is global (docs/design.md, section 10 (Distributed rules)).
SIGReg all-reduces its sums in `lewm_hf.losses`; this module does the same for BatchNorm.
`torch.nn.SyncBatchNorm` refuses CPU tensors, so `GlobalBatchNorm1d` all-reduces the per-rank
sum, sum of squares and count through `torch.distributed.nn` (autograd-aware: gradients flow
through the global statistics) and serves CPU / gloo; `convert_to_global_batchnorm` picks
`SyncBatchNorm` on CUDA instead.

Both replacements keep the module's parameter and buffer names (`weight`, `bias`,
`running_mean`, `running_var`, `num_batches_tracked`), so a checkpoint written under DDP or FSDP
loads into a plain `LeWMModel` with `nn.BatchNorm1d` layers.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .errors import LeWMConfigError

# The float dtype of the statistics: float64 stays float64, everything else is reduced in float32.
_STAT_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class ElasticLaunch:
    """The torchrun launch this process is a worker of.

    Args:
        run_id (`str`): The launch's run id (`TORCHELASTIC_RUN_ID`), the same in every attempt.
        restart_count (`int`): How many times the agent restarted the workers
            (`TORCHELASTIC_RESTART_COUNT`): 0 in the first attempt.
    """

    run_id: str
    restart_count: int


def elastic_launch() -> ElasticLaunch | None:
    """The torchrun (elastic agent) launch of this process, or None outside torchrun.

    `torchrun --max-restarts N` (and `accelerate launch` on several processes, which runs it)
    restarts every worker when one fails; the restarted workers see a `restart_count` above 0
    and the same `run_id`.

    Raises:
        `LeWMConfigError`: when `TORCHELASTIC_RESTART_COUNT` is not an integer, or when torchrun
            may restart gloo workers over its shared rendezvous store (they could not connect
            again: set `TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`).
    """
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    count = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if run_id is None or count is None:
        return None
    try:
        restart_count = int(count)
    except ValueError:
        raise LeWMConfigError(
            "TORCHELASTIC_RESTART_COUNT", count, "an integer >= 0 (set by torchrun)"
        ) from None
    max_restarts = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")
    shared_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if max_restarts not in ("", "0") and shared_store and not torch.cuda.is_available():
        # Measured with torch 2.13: the agent's shared store keeps the gloo addresses of the
        # first attempt's workers, so a restarted rank connects to a dead one and times out.
        raise LeWMConfigError(
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE",
            os.environ.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE"),
            "1 in the environment of torchrun when it may restart gloo (CPU) workers "
            f"(--max-restarts {max_restarts}): with the shared rendezvous store, restarted "
            "workers find the failed attempt's addresses and cannot connect",
        )
    return ElasticLaunch(run_id, restart_count)


def is_distributed(process_group: Any = None) -> bool:
    """Whether `torch.distributed` is initialised with more than one rank in `process_group`
    (the default group when None)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return dist.get_world_size(process_group) > 1


def all_reduce_with_grad(tensor: torch.Tensor, process_group: Any = None) -> torch.Tensor:
    """Sum `tensor` over the ranks of `process_group`, differentiably.

    The backward of `torch.distributed.nn.functional.all_reduce` all-reduces the incoming
    gradients, so every rank receives the gradient of the *sum over ranks* of the losses with
    respect to its own input; DDP's gradient averaging then yields the gradient of the mean loss,
    exactly what one process computes on the concatenated batch. A single process returns
    `tensor` itself.
    """
    if not is_distributed(process_group):
        return tensor
    import torch.distributed.nn  # makes torch.distributed.nn.functional available

    kwargs = {} if process_group is None else {"group": process_group}
    with warnings.catch_warnings():
        # Recent torch deprecates it for `_functional_collectives.all_reduce`, whose autograd
        # support is recent too; this API gives the same gradients on every torch >= 2.4.
        warnings.filterwarnings(
            "ignore", message=r".*all_reduce is deprecated", category=FutureWarning
        )
        return torch.distributed.nn.functional.all_reduce(tensor, **kwargs)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    r"""`nn.BatchNorm1d` whose training-mode statistics are those of the global batch.

    In training mode (or without running statistics) the per-rank sum, sum of squares and count
    of each channel are all-reduced in one autograd-aware collective, giving the global mean
    `mu = S1 / n` and biased variance `var = S2 / n - mu^2`; the output is
    `(x - mu) / sqrt(var + eps) * weight + bias`, and the running statistics are updated as
    `nn.BatchNorm1d` does: `running_mean <- (1 - m) running_mean + m mu`,
    `running_var <- (1 - m) running_var + m var n / (n - 1)` (unbiased), with `m = momentum`, or
    `1 / num_batches_tracked` when `momentum` is None. In a single process the same formula runs
    without the collective and matches `nn.BatchNorm1d` to float32 rounding; in evaluation mode
    it is `nn.BatchNorm1d` exactly.

    The statistics are computed in float32 (float64 inputs stay float64) and the output has the
    input's dtype, as `nn.BatchNorm1d` under autocast. A rank may hold an empty batch; every rank
    must call `forward` the same number of times (it is a collective).

    Args:
        num_features (`int`): Channels `C` of an input `(N, C)` or `(N, C, L)`.
        eps (`float`, defaults to 1e-5), momentum (`float`, defaults to 0.1), affine (`bool`,
            defaults to True), track_running_stats (`bool`, defaults to True): as `nn.BatchNorm1d`.
        process_group (`ProcessGroup`, *optional*): Ranks to reduce over (default: the world).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: Any = None,
        dtype: Any = None,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    @classmethod
    def from_batchnorm(cls, module: nn.modules.batchnorm._BatchNorm, process_group: Any = None):
        """A `GlobalBatchNorm1d` sharing `module`'s parameters and buffers (same objects, so an
        optimizer or a peft wrapper that holds them keeps working)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.num_features = module.num_features
        new.eps = module.eps
        new.momentum = module.momentum
        new.affine = module.affine
        new.track_running_stats = module.track_running_stats
        new.process_group = process_group
        for name, param in module.named_parameters(recurse=False):
            new.register_parameter(name, param)
        for name, buffer in module.named_buffers(recurse=False):
            new.register_buffer(name, buffer)
        for name in ("weight", "bias"):
            if name not in new._parameters:
                new.register_parameter(name, None)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            if name not in new._buffers:
                new.register_buffer(name, None)
        new.train(module.training)
        return new

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not use_batch_stats:
            return super().forward(input)

        factor = 0.0 if self.momentum is None else self.momentum
        update = self.training and self.track_running_stats
        if update and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)

        dtype = input.dtype if input.dtype in _STAT_DTYPES else torch.float32
        x = input.to(dtype)
        reduce_dims = [0] if x.dim() == 2 else [0, 2]
        channels = x.shape[1]
        # One collective: [sum (C), sum of squares (C), count (1)].
        count = x.new_full((1,), float(x.numel() // max(channels, 1)))
        packed = torch.cat([x.sum(reduce_dims), x.square().sum(reduce_dims), count])
        packed = all_reduce_with_grad(packed, self.process_group)
        total, total_sq = packed[:channels], packed[channels : 2 * channels]
        n = packed[-1].detach()
        local_rows = x.numel() // max(channels, 1)
        if update and local_rows <= 1 and not is_distributed(self.process_group):
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}"
            )
        mean = total / n
        var = (total_sq / n - mean.square()).clamp_min(0)  # biased: normalises the batch

        if update and self.running_mean is not None:
            with torch.no_grad():
                unbiased = var.detach() * (n / (n - 1))
                self.running_mean.mul_(1 - factor).add_(
                    mean.detach().to(self.running_mean), alpha=factor
                )
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var), alpha=factor)

        shape = (1, channels) + (1,) * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            out = out * self.weight.to(dtype).view(shape) + self.bias.to(dtype).view(shape)
        return out.to(input.dtype)


def convert_to_global_batchnorm(
    module: nn.Module, device: torch.device | str | None = None, process_group: Any = None
) -> nn.Module:
    """Replace every BatchNorm of `module` (in place, and return it) by one over the global batch.

    On CUDA (`device`, or the module's parameters when None) the replacement is
    `torch.nn.SyncBatchNorm` (`convert_sync_batchnorm`); elsewhere `GlobalBatchNorm1d`. Either
    shares the original parameters and buffers and keeps their names, so the state dict is
    unchanged and loads into the plain model.

    Args:
        module (`nn.Module`): The model (a BatchNorm module itself is returned converted).
        device (`torch.device` or `str`, *optional*): The device the model trains on.
        process_group (`ProcessGroup`, *optional*): Ranks to reduce over (default: the world).

    Returns:
        `nn.Module`: The converted module.
    """
    if device is None:
        first = next(module.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    return _convert_cpu(module, process_group)


def _convert_cpu(module: nn.Module, process_group: Any) -> nn.Module:
    if isinstance(module, nn.BatchNorm1d) and not isinstance(module, GlobalBatchNorm1d):
        return GlobalBatchNorm1d.from_batchnorm(module, process_group)
    for name, child in module.named_children():
        converted = _convert_cpu(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module


def global_batchnorm_layers(module: nn.Module) -> list[str]:
    """Names of the BatchNorm layers of `module` that normalise over the global batch."""
    return [
        name
        for name, m in module.named_modules()
        if isinstance(m, (GlobalBatchNorm1d, nn.SyncBatchNorm))
    ]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0, in rank order. Ranks may differ in their
    number of rows and in dim 1 (shorter rows are zero-padded along dim 1 to the longest); the
    other dims must agree. A single process returns `tensor`."""
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    shape = torch.tensor(tensor.shape, device=tensor.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    sizes = torch.stack(shapes)  # (world, ndim)
    longest = sizes.max(dim=0).values.tolist()
    rows = sizes[:, 0].tolist()
    # Collectives need one shape on every rank: pad dims 0 and 1 to the largest, then trim rows.
    pad = [0, 0] * (tensor.dim() - 1) + [0, longest[0] - tensor.shape[0]]
    if tensor.dim() > 1:
        pad[-3] = longest[1] - tensor.shape[1]
    padded = F.pad(tensor, pad).contiguous()
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:r] for g, r in zip(gathered, rows)])


__all__ = [
    "ElasticLaunch",
    "GlobalBatchNorm1d",
    "all_reduce_with_grad",
    "convert_to_global_batchnorm",
    "elastic_launch",
    "gather_rows",
    "global_batchnorm_layers",
    "is_distributed",
]
