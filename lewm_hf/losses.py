"""Training losses of LeWM: latent prediction, SIGReg, Gaussian KL, and their combination.

The formulas are those of docs/design.md, section 5 (The loss). Conventions used throughout:

- embeddings are `(batch, time, dim)` for the prediction loss and `(time, batch, dim)` (or
  `(batch, dim)`) for SIGReg, which regularises each time step over the batch;
- every loss is computed in float32 at least (bf16 / fp16 inputs are upcast) and returned as a
  0-dim tensor;
- bad arguments raise `LeWMInputError` (tensors) or `LeWMConfigError` (settings).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import warnings

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from lewm_hf.errors import LeWMConfigError, LeWMInputError
from lewm_hf.fields import LossPhase, PredLoss, check_choice, is_int_in

# `cos_mse` = COS_MSE_ALPHA * (1 - cos) + COS_MSE_BETA * ||z_hat - z||^2 / D.
COS_MSE_ALPHA = 1.0
COS_MSE_BETA = 0.1


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _no_autocast(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Disable autocast on `tensor`'s device: the losses must not drop to bf16 / fp16 inside."""
    device_type = tensor.device.type
    is_available = getattr(torch.amp, "is_autocast_available", None)
    if is_available is not None and not is_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def _check_floating(name: str, tensor: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise LeWMInputError(name, type(tensor).__name__, "expected a torch.Tensor")
    if not tensor.is_floating_point():
        raise LeWMInputError(name, tensor.dtype, "expected a floating point tensor")
    return tensor


# ---------------------------------------------------------------------------------------------
# Prediction loss
# ---------------------------------------------------------------------------------------------


def prediction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: PredLoss = "mse",
) -> torch.Tensor:
    """Latent prediction loss, averaged over the real (unmasked) `(batch, step)` positions.

    - `mse`: `||z_hat - z||^2` (summed over the embedding dimension), averaged over positions.
    - `cos_mse`: `alpha * (1 - cos(z_hat, z)) + beta * ||z_hat - z||^2 / D` with `alpha = 1`,
      `beta = 0.1`, averaged over positions.

    Padded positions contribute nothing to the value nor to the gradient, whatever they hold
    (even `inf` / `nan`): they are replaced by zeros before any arithmetic. A batch without any
    real position gives a loss of 0.

    Args:
        pred (`torch.Tensor` of shape `(batch, time, dim)`):
            Predicted embeddings `z_hat` (any leading shape `(..., dim)` is accepted).
        target (`torch.Tensor` of the same shape as `pred`):
            Target embeddings `z` (usually detached by the caller).
        mask (`torch.Tensor` of shape `(batch, time)`, *optional*):
            Bool or 0/1 tensor, `True` / 1 for a real step. `None` means every step is real.
        kind (`str`, *optional*, defaults to `"mse"`):
            `"mse"` or `"cos_mse"`.

    Returns:
        `torch.Tensor`: 0-dim loss in float32 (float64 for float64 inputs).
    """
    check_choice("pred_loss", kind, PredLoss)
    _check_floating("pred", pred)
    _check_floating("target", target)
    if pred.dim() < 2:
        raise LeWMInputError("pred", tuple(pred.shape), "expected shape (batch, time, dim)")
    if target.shape != pred.shape:
        raise LeWMInputError(
            "target", tuple(target.shape), f"must have the shape of pred {tuple(pred.shape)}"
        )
    dtype = _compute_dtype(pred)
    pred = pred.to(dtype)
    target = target.to(dtype)
    dim = pred.shape[-1]

    if mask is None:
        keep = None
    else:
        if not isinstance(mask, torch.Tensor) or mask.shape != pred.shape[:-1]:
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise LeWMInputError(
                "mask", shape, f"must be a tensor of shape {tuple(pred.shape[:-1])}"
            )
        keep = mask.to(device=pred.device).bool()
        # Zero padded positions *before* any arithmetic so their values (even inf / nan) can
        # neither change the loss nor leak into the gradient.
        zeros = pred.new_zeros(())
        pred = torch.where(keep.unsqueeze(-1), pred, zeros)
        target = torch.where(keep.unsqueeze(-1), target, zeros)

    with _no_autocast(pred):
        sq_err = (pred - target).pow(2).sum(dim=-1)  # (...,)
        if kind == "mse":
            per_position = sq_err
        else:
            cos = torch.nn.functional.cosine_similarity(pred, target, dim=-1, eps=1e-8)
            per_position = COS_MSE_ALPHA * (1.0 - cos) + COS_MSE_BETA * sq_err / dim

        if keep is None:
            return per_position.mean()
        per_position = torch.where(keep, per_position, per_position.new_zeros(()))
        count = keep.sum().clamp_min(1).to(dtype)
        return per_position.sum() / count


# ---------------------------------------------------------------------------------------------
# SIGReg
# ---------------------------------------------------------------------------------------------


def sigreg_generator(
    step: int, seed: int = 0, device: str | torch.device = "cpu"
) -> torch.Generator:
    """A `torch.Generator` seeded from `(seed, step)`, for drawing SIGReg projections.

    Every rank that builds the generator from the same `(seed, step)` draws the same slices, which
    distributed SIGReg requires. The 63-bit seed is a BLAKE2b hash of `"{seed}:{step}"`, so nearby
    steps and seeds give unrelated streams.

    Args:
        step (`int`): Global optimisation step.
        seed (`int`, *optional*, defaults to 0): Run seed.
        device (`str` or `torch.device`, *optional*, defaults to `"cpu"`): Generator device.

    Returns:
        `torch.Generator`: The seeded generator.
    """
    digest = hashlib.blake2b(f"{int(seed)}:{int(step)}".encode(), digest_size=8).digest()
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return generator


def sigreg_knots(
    num_knots: int = 17,
    t_max: float = 3.0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Knots `t_k` and quadrature weights `w_k` of the SIGReg statistic.

    `t_k = linspace(0, t_max, num_knots)`, `d = t_max / (num_knots - 1)` and
    `w_k = d * [1, 2, ..., 2, 1]_k * exp(-t_k^2 / 2)`, as docs/design.md, section 5 (The loss)
    states them: the end knots weigh `d` and the inner ones `2 d`, i.e. twice the textbook
    trapezoid rule (`d / 2` at the ends, `d` inside). This is the convention under which the
    expectation on a true Gaussian sample, `sum_k w_k (1 - exp(-t_k^2))`, is 1.05 for the
    defaults; the textbook trapezoid would give 0.53.

    Args:
        num_knots (`int`, *optional*, defaults to 17): Number of knots.
        t_max (`float`, *optional*, defaults to 3.0): Last knot.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`): Output dtype (the
            weights are computed in float64 first).
        device (`str` or `torch.device`, *optional*): Output device.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `(knots, weights)`, each of shape `(num_knots,)`.
    """
    knots = torch.linspace(0.0, t_max, num_knots, dtype=torch.float64)
    spacing = t_max / (num_knots - 1)
    trapezoid = torch.full((num_knots,), 2.0 * spacing, dtype=torch.float64)
    trapezoid[0] = trapezoid[-1] = spacing
    weights = trapezoid * torch.exp(-(knots**2) / 2)
    return knots.to(dtype=dtype, device=device), weights.to(dtype=dtype, device=device)


def _validate_sigreg_settings(num_slices: int, num_knots: int, t_max: float) -> None:
    if not is_int_in(num_slices, 1):
        raise LeWMConfigError("num_slices", num_slices, "must be an integer >= 1")
    if not is_int_in(num_knots, 2):
        raise LeWMConfigError("num_knots", num_knots, "must be an integer >= 2")
    if not isinstance(t_max, (int, float)) or not math.isfinite(t_max) or t_max <= 0:
        raise LeWMConfigError("t_max", t_max, "must be a finite number > 0")


def _distributed_group(process_group: dist.ProcessGroup | None) -> tuple[bool, object]:
    """Whether SIGReg must reduce across ranks, and the group to reduce over."""
    if not (dist.is_available() and dist.is_initialized()):
        if process_group is not None:
            raise LeWMInputError(
                "process_group", process_group, "given but torch.distributed is not initialised"
            )
        return False, None
    if process_group is not None:
        return True, process_group
    return dist.get_world_size() > 1, None


def _prepare_sigreg_inputs(
    z: torch.Tensor,
    projections: torch.Tensor | None,
    num_slices: int,
    generator: torch.Generator | None,
    distributed: bool,
    group: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate `z`, bring it to `(T, B, D)` in the compute dtype, and get the slices `A`."""
    _check_floating("z", z)
    if z.dim() not in (2, 3):
        raise LeWMInputError(
            "z", tuple(z.shape), "expected shape (batch, dim) or (time, batch, dim)"
        )
    if z.dim() == 2:
        z = z.unsqueeze(0)
    if z.shape[2] < 1:
        raise LeWMInputError("z", tuple(z.shape), "dim must be >= 1")
    if z.shape[1] < 1 and not distributed:
        # Distributed, an empty local batch is fine: the other ranks' rows define the value.
        raise LeWMInputError("z", tuple(z.shape), "batch must be >= 1")
    dtype = _compute_dtype(z)
    z = z.to(dtype)
    dim = z.shape[-1]

    if projections is not None:
        _check_floating("projections", projections)
        if projections.dim() != 2 or projections.shape[0] != dim:
            raise LeWMInputError(
                "projections", tuple(projections.shape), f"expected shape ({dim}, num_slices)"
            )
        return z, projections.to(device=z.device, dtype=dtype)

    draw_device = generator.device if generator is not None else z.device
    slices = torch.randn(
        dim, num_slices, generator=generator, device=draw_device, dtype=torch.float32
    )
    slices = slices / slices.norm(dim=0, keepdim=True)
    slices = slices.to(device=z.device, dtype=dtype)
    if distributed and generator is None:
        # Without a shared generator each rank drew its own slices: use rank 0's everywhere.
        src = 0 if group is None else dist.get_global_rank(group, 0)
        dist.broadcast(slices, src=src, group=group)
    return z, slices


def _all_reduce_sums(
    cos_sum: torch.Tensor, sin_sum: torch.Tensor, batch: int, group: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Autograd-aware sum over ranks of the per-rank cos / sin sums and of the batch size.

    The backward of `torch.distributed.nn.functional.all_reduce` all-reduces the incoming
    gradients, so each rank's gradient is `world_size` times its share of the gradient of the
    global statistic; DDP's gradient averaging then yields exactly the single-process gradient.
    """
    import torch.distributed.nn  # makes torch.distributed.nn.functional available

    # One collective for everything: [cos sums, sin sums, batch size].
    count = cos_sum.new_full((1,), float(batch))
    packed = torch.cat([cos_sum.reshape(-1), sin_sum.reshape(-1), count])
    kwargs = {} if group is None else {"group": group}
    with warnings.catch_warnings():
        # Recent torch deprecates it for `_functional_collectives.all_reduce`, whose autograd
        # support is recent too; this API gives the same gradients on every torch >= 2.4.
        warnings.filterwarnings(
            "ignore", message=r".*all_reduce is deprecated", category=FutureWarning
        )
        packed = torch.distributed.nn.functional.all_reduce(packed, **kwargs)
    size = cos_sum.numel()
    cos_sum = packed[:size].view_as(cos_sum)
    sin_sum = packed[size : 2 * size].view_as(sin_sum)
    count = packed[2 * size].detach()  # a constant of the statistic
    return cos_sum, sin_sum, count


def _statistic_from_sums(
    cos_sum: torch.Tensor,
    sin_sum: torch.Tensor,
    count: torch.Tensor | int,
    knots: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """SIGReg from the batch sums of `cos(t_k h)` and `sin(t_k h)`, each of shape `(T, M, K)`.

    `B sum_k w_k ((C_k / B - phi_k)^2 + (S_k / B)^2)` is evaluated as
    `sum_k w_k ((C_k - B phi_k)^2 + S_k^2) / B`, the same value in fewer passes.
    """
    target = torch.exp(-(knots**2) / 2)  # characteristic function of N(0, 1) at t_k
    # A global count of 0 (every rank empty) gives 0 instead of 0 / 0.
    safe_count = count.clamp_min(1) if isinstance(count, torch.Tensor) else max(count, 1)
    err = (cos_sum - target * count).square()
    err = err.addcmul_(sin_sum, sin_sum)  # B^2 err_k, (T, M, K)
    statistic = err @ weights  # (T, M), times B
    return statistic.mean() / safe_count


# Powers of the unit phasor handled per elementwise operation (see `_phasor_power_sums`).
PHASOR_GROUP = 4
# Below this many table entries (`T B M (num_knots - 1)`) the fused SIGReg runs on one CPU
# thread (`_serial_on_cpu`): 4.2 million for the default step, (T, B, M) = (4, 64, 1024).
SERIAL_WORK = 2**23


@contextlib.contextmanager
def _serial_on_cpu(tensor: torch.Tensor, work: int):
    """Run the enclosed torch operations on one intra-op thread when `tensor` is on the CPU
    and `work` (table entries) is below `SERIAL_WORK`; restore the thread count after.

    The fused SIGReg is about twenty elementwise passes of a few MiB. Split over OpenMP
    threads, each pass ends in a barrier where the threads wait for each other; on a machine
    that other processes share, a waiting thread spins (CPU time it burns) while its partner
    is descheduled, and that waiting cost grew past the arithmetic it shared: on 2 shared
    cores the fused SIGReg of the default step took about 200 ms of CPU time at 2 threads
    against 10 to 13 ms at one (docs/benchmarks.md). Plain autograd spends most of its time in
    a few long passes, where the waits matter less. The threshold, twice the default step's
    table, is a judgement, not a measured crossover: problems that large keep every thread.
    """
    threads = torch.get_num_threads()
    if tensor.device.type != "cpu" or work >= SERIAL_WORK or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _sliced_angles(z: torch.Tensor, slices: torch.Tensor, spacing: float) -> torch.Tensor:
    """`spacing * (z A)` for `z` `(T, B, D)`, laid out `(M, T * B)`: one matmul, scale included.

    Rows are slices, so that every `(slice, step)` pair owns a contiguous run of `B` angles.
    """
    flat = z.reshape(-1, z.shape[-1])  # (T * B, D)
    out = flat.new_empty(slices.shape[1], flat.shape[0])
    return torch.addmm(out, slices.T, flat.T, beta=0, alpha=spacing)  # (M, T * B)


def _angles_backward(
    grad_x: torch.Tensor,
    z: torch.Tensor,
    slices: torch.Tensor,
    spacing: float,
    needs: tuple[bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of `_sliced_angles` with respect to `z` and the slices (each only when `needs`
    says so), from `grad_x` `(M, T * B)`."""
    flat = z.reshape(-1, z.shape[-1])
    grad_z = grad_slices = None
    if needs[0]:
        grad_z = torch.addmm(flat.new_empty(flat.shape), grad_x.T, slices.T, beta=0, alpha=spacing)
        grad_z = grad_z.view_as(z)
    if needs[1]:
        grad_slices = torch.addmm(
            slices.new_empty(slices.shape), flat.T, grad_x.T, beta=0, alpha=spacing
        )
    return grad_z, grad_slices


def _phasor_power_sums(x: torch.Tensor, num_powers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch sums of `exp(i k x)` for `k = 1 .. num_powers`, with the table the backward needs.

    `x` is `(R, B)` (a row per `(slice, step)`, the batch along the row). With `w = exp(i x)`
    (one `cos` and one `sin` per angle), `exp(i k x) = w^k` is built by complex products instead
    of `num_powers` trigonometric evaluations: the table `base = [w, w^2, .., w^g]`
    (`g = PHASOR_GROUP`) by doubling, then `base * (w^g)^j` for the later groups, each group
    summed over the batch in one reduction. Every operation covers `g` powers of every angle, so
    the forward takes about a dozen operations, however many knots, where each kernel launch and
    (on a few CPU cores) each thread wake-up costs as much as the arithmetic; each product adds
    a few ulps, the order of the float32 rounding of the angles themselves. `g = 4` keeps the
    tables at 8 MiB for the default step (`T B M = 4 * 64 * 1024`): on the CPU, buffers that
    much larger come back from the allocator as fresh pages, whose first touch costs more than
    the products written into them.

    Returns:
        `tuple[torch.Tensor, torch.Tensor, torch.Tensor]`: `sums` `(num_powers, R)` complex
        (`sum_b cos(k x) + i sin(k x)`), `base` `(g, R, B)` complex, and a `(g, R, B)` work
        buffer that the backward reuses (a fresh one there would be fresh pages on the CPU).
    """
    group = min(PHASOR_GROUP, num_powers)
    num_groups = -(-num_powers // group)
    base = x.new_empty((group, *x.shape), dtype=_complex_dtype(x.dtype))
    parts = torch.view_as_real(base[0])
    torch.cos(x, out=parts[..., 0])
    torch.sin(x, out=parts[..., 1])
    done = 1
    while done < group:  # base[done : done + m] = base[:m] * w^done
        m = min(done, group - done)
        torch.mul(base[:m], base[done - 1], out=base[done : done + m])
        done += m
    sums = x.new_empty((num_groups * group, x.shape[0]), dtype=base.dtype)
    torch.sum(base, dim=-1, out=sums[:group])
    table = torch.empty_like(base)
    for j in range(1, num_groups):  # table = w^(j g + 1) .. w^((j + 1) g)
        torch.mul(base if j == 1 else table, base[group - 1], out=table)
        torch.sum(table, dim=-1, out=sums[j * group : (j + 1) * group])
    return sums[:num_powers], base, table


def _phasor_power_grad(base: torch.Tensor, coef: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """`Re(sum_k coef[k - 1, r] w[r, b]^k)`, `(R, B)`, for `coef` `(K, R)` complex.

    With `g` the group and `s = w^g`, `sum_k coef_k w^k = sum_i w^i H_i` where
    `H_i = sum_j coef[j g + i] s^j` is evaluated by Horner's rule for all `i` at once, in
    `work` (`(g, R, B)`, overwritten).
    """
    group, rows, _ = base.shape
    num_powers = coef.shape[0]
    num_groups = -(-num_powers // group)
    if num_powers < num_groups * group:
        coef = torch.cat([coef, coef.new_zeros(num_groups * group - num_powers, rows)])
    coef = coef.view(num_groups, group, rows, 1)
    step = base[group - 1]  # w^g
    if num_groups == 1:
        torch.mul(base, coef[0], out=work)
    else:
        # Complex `addcmul` with a broadcast coefficient runs unvectorised: multiply, then add.
        torch.mul(step, coef[num_groups - 1], out=work)
        for j in range(num_groups - 2, -1, -1):
            work.add_(coef[j])
            if j:
                work.mul_(step)
        work.mul_(base)
    return work.real.sum(dim=0)


class _SIGRegStatistic(torch.autograd.Function):
    """Single-process SIGReg of `z` `(T, B, D)` and slices `A` in one autograd node.

    With `x = d z A` (`d` the knot spacing, so that `t_k h = k x`), `dc = C - B phi` and `S` the
    batch sums of `cos(k x)` / `sin(k x)` (`_phasor_power_sums`), the value is
    `sum_{t, m, k} w_k (dc^2 + S^2) / (B T M)`. Its gradient with respect to `x` is
    `sum_k k (dS cos(k x) - dC sin(k x)) = Re(sum_k k (dS + i dC) w^k)` with
    `(dC, dS) = 2 w_k (dc, S) / (B T M)`, a polynomial in `w` evaluated from the saved table.
    Plain autograd evaluates `T B M K` sines and cosines twice (forward, then again in the
    backward) through about three times as many operations, each over `T B M K` values; this
    evaluates `2 T B M` of them, and the matmul `z A` and its backward are part of the node (the
    knot spacing rides in the matmul's `alpha`). It keeps two `(PHASOR_GROUP, T M, B)` complex
    tables for the backward, one of them the backward's work buffer.
    """

    @staticmethod
    def forward(
        ctx,
        z: torch.Tensor,
        slices: torch.Tensor,
        spacing: float,
        knots: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        num_steps, batch, _ = z.shape
        num_slices = slices.shape[1]
        ctx.table_entries = num_steps * batch * num_slices * knots.numel()
        x = _sliced_angles(z, slices, spacing).view(num_slices * num_steps, batch)
        sums, base, work = _phasor_power_sums(x, knots.numel())  # (K, R) complex
        del x
        dev = sums
        dev.real.sub_((batch * torch.exp(-(knots**2) / 2)).unsqueeze(1))  # [C - B phi] + i S
        scale = 1.0 / (batch * num_steps * num_slices)
        squares = torch.view_as_real(dev).view(dev.shape[0], -1).square().sum(dim=1)  # (K,)
        value = squares @ weights * scale
        ctx.save_for_backward(z, slices, base, dev, weights)
        ctx.work = work  # scratch: overwritten by every backward before it is read
        ctx.spacing = spacing
        ctx.scale = scale
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_value: torch.Tensor):
        z, slices, base, dev, weights = ctx.saved_tensors
        num_powers = dev.shape[0]
        with _serial_on_cpu(z, ctx.table_entries):
            powers = torch.arange(1, num_powers + 1, dtype=weights.dtype, device=weights.device)
            # dS + i dC = f (S + i dc) = i f conj(dev), with f = 2 w_k scale; times k from d/dx.
            factor = (2.0 * ctx.scale) * grad_value * weights * powers
            coef = dev.conj() * (1j * factor).unsqueeze(1)
            grad_x = _phasor_power_grad(base, coef, ctx.work)  # (M * T, B)
            grad_x = grad_x.view(slices.shape[1], -1)  # (M, T * B)
            grad_z, grad_slices = _angles_backward(
                grad_x, z, slices, ctx.spacing, ctx.needs_input_grad[:2]
            )
        return grad_z, grad_slices, None, None, None


class _CharacteristicSums(torch.autograd.Function):
    """Batch sums of `cos(t_k h)` and `sin(t_k h)` of `h = z A`, as one `(2, M * T, K)` tensor.

    Used in distributed mode, where the sums are all-reduced before the statistic is formed.
    Same evaluation and backward as `_SIGRegStatistic`, with the incoming gradients of the sums
    in place of those of the statistic.
    """

    @staticmethod
    def forward(
        ctx, z: torch.Tensor, slices: torch.Tensor, spacing: float, num_powers: int
    ) -> torch.Tensor:
        num_steps, batch, _ = z.shape
        ctx.table_entries = num_steps * batch * slices.shape[1] * num_powers
        x = _sliced_angles(z, slices, spacing).view(slices.shape[1] * num_steps, batch)
        sums, base, work = _phasor_power_sums(x, num_powers)  # (K, R) complex
        sums = torch.view_as_real(sums).permute(2, 1, 0).contiguous()  # (2, R, K)
        ctx.save_for_backward(z, slices, base)
        ctx.work = work  # scratch: overwritten by every backward before it is read
        ctx.spacing = spacing
        return sums

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sums: torch.Tensor):
        z, slices, base = ctx.saved_tensors
        num_powers = grad_sums.shape[2]
        with _serial_on_cpu(z, ctx.table_entries):
            powers = torch.arange(1, num_powers + 1, dtype=grad_sums.dtype, device=z.device)
            # d/dx of (cos, sin)(k x) is k (-sin, cos)(k x): the coefficient is k (dS + i dC).
            coef = torch.complex(grad_sums[1].T, grad_sums[0].T) * powers.unsqueeze(1)  # (K, R)
            grad_x = _phasor_power_grad(base, coef, ctx.work).view(slices.shape[1], -1)
            grad_z, grad_slices = _angles_backward(
                grad_x, z, slices, ctx.spacing, ctx.needs_input_grad[:2]
            )
        return grad_z, grad_slices, None, None


def sigreg(
    z: torch.Tensor,
    projections: torch.Tensor | None = None,
    num_slices: int = 1024,
    num_knots: int = 17,
    t_max: float = 3.0,
    generator: torch.Generator | None = None,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """SIGReg (LeWM / LeJEPA): sketched Epps-Pulley test of isotropic Gaussianity per time step.

    With `h = z A` (slices `A` of shape `(D, M)`, unit-norm columns), knots
    `t_k = linspace(0, t_max, num_knots)`, weights `w_k` from `sigreg_knots`,
    `c = mean_b cos(t_k h)` and `s = mean_b sin(t_k h)`:
    `err_k = (c - exp(-t_k^2 / 2))^2 + s^2`, `statistic = B * sum_k w_k err_k`, and SIGReg is
    the mean of the statistic over `(T, M)`. Its expectation on a true Gaussian sample is
    `sum_k w_k (1 - exp(-t_k^2))` (1.05 for the defaults) whatever `B`; a collapsed batch grows
    like `B`.

    The value and gradients equal `lewm_hf.testing_utils.sigreg_reference` (plain autograd) to
    float32 rounding, from one custom autograd node: the knots are equally spaced, `t_k = k d`, so `cos(t_k h)` and
    `sin(t_k h)` are the parts of `w^k` with `w = exp(i d h)`; one cos / sin per angle and
    complex products give every knot, and the backward is a polynomial in `w` evaluated from
    the kept table (`_SIGRegStatistic`). The knot `t_0 = 0` is skipped: `cos 0 = 1` and
    `sin 0 = 0` make its error exactly zero.

    Distributed: when `torch.distributed` is initialised with more than one rank (or
    `process_group` is given), the per-rank batch sums of cos and sin and the batch sizes are
    all-reduced (never the embeddings), so the value equals the single-process value on the
    concatenated batch. The all-reduce backward sums gradients over ranks: a rank's gradient
    with respect to its own embeddings is `world_size` times the single-process one, which DDP's
    gradient averaging turns into exactly the single-process parameter gradient. All ranks must
    use the same slices: pass a `generator` seeded identically on every rank (see
    `sigreg_generator`); without one, rank 0's slices are broadcast. A rank may hold an empty
    batch (every rank must still make the call); if all are empty the value is 0.

    Args:
        z (`torch.Tensor` of shape `(batch, dim)` or `(time, batch, dim)`):
            Embeddings; bf16 / fp16 are upcast to float32, float64 is kept. The batch may be
            empty only in distributed mode.
        projections (`torch.Tensor` of shape `(dim, num_slices)`, *optional*):
            Slices `A`, used as given. Drawn (N(0, 1) entries, columns normalised) when `None`.
        num_slices (`int`, *optional*, defaults to 1024):
            Number of slices `M` drawn when `projections` is `None`.
        num_knots (`int`, *optional*, defaults to 17):
            Number of knots.
        t_max (`float`, *optional*, defaults to 3.0):
            Last knot.
        generator (`torch.Generator`, *optional*):
            Generator used to draw the slices; the global RNG when `None`.
        process_group (`torch.distributed.ProcessGroup`, *optional*):
            Group to reduce over; defaults to the whole world when it has more than one rank.

    Returns:
        `torch.Tensor`: 0-dim SIGReg value in float32 (float64 for float64 `z`).
    """
    _validate_sigreg_settings(num_slices, num_knots, t_max)
    distributed, group = _distributed_group(process_group)
    _check_floating("z", z)
    if isinstance(projections, torch.Tensor) and projections.dim() == 2:
        num_slices = projections.shape[1]
    rows = z.numel() // max(z.shape[-1], 1) if z.dim() else 0  # T B
    table_entries = rows * num_slices * (num_knots - 1)
    with _serial_on_cpu(z, table_entries):  # and so is the backward (`_SIGRegStatistic`)
        z, slices = _prepare_sigreg_inputs(
            z, projections, num_slices, generator, distributed, group
        )
        knots, weights = sigreg_knots(num_knots, t_max, dtype=z.dtype, device=z.device)
        knots, weights = knots[1:], weights[1:]  # t_0 = 0 contributes exactly zero, see above
        spacing = t_max / (num_knots - 1)

        with _no_autocast(z):
            if not distributed:
                return _SIGRegStatistic.apply(z, slices, spacing, knots, weights)
            sums = _CharacteristicSums.apply(z, slices, spacing, knots.numel())  # (2, M T, K)
            cos_sum, sin_sum, count = _all_reduce_sums(sums[0], sums[1], z.shape[1], group)
            return _statistic_from_sums(cos_sum, sin_sum, count, knots, weights)


# ---------------------------------------------------------------------------------------------
# Gaussian KL, phases, collapse monitoring
# ---------------------------------------------------------------------------------------------


def gaussian_kl(z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """KL divergence from the batch's Gaussian fit to N(0, I) (GenoLeWM regulariser).

    With `mu` the batch mean and `Sigma` the population covariance (divided by `N`) of the rows:
    `0.5 (||mu||^2 + tr Sigma - logdet(Sigma + eps I) - D)`, computed in float64.

    Args:
        z (`torch.Tensor` of shape `(N, D)`):
            Embeddings; any leading shape `(..., D)` is flattened to rows.
        eps (`float`, *optional*, defaults to 1e-6):
            Ridge added to `Sigma` before the log-determinant.

    Returns:
        `torch.Tensor`: 0-dim float32 value, differentiable with respect to `z`.
    """
    _check_floating("z", z)
    if z.dim() < 2 or z.shape[-1] < 1:
        raise LeWMInputError("z", tuple(z.shape), "expected shape (N, D) or (..., D)")
    rows = z.reshape(-1, z.shape[-1]).to(torch.float64)
    if rows.shape[0] < 1:
        raise LeWMInputError("z", tuple(z.shape), "needs at least one row")
    num_rows, dim = rows.shape
    with _no_autocast(rows):
        mu = rows.mean(dim=0)
        centred = rows - mu
        sigma = centred.T @ centred / num_rows  # population covariance
        ridge = eps * torch.eye(dim, dtype=torch.float64, device=rows.device)
        logdet = torch.linalg.slogdet(sigma + ridge).logabsdet
        kl = 0.5 * (mu.pow(2).sum() + torch.diagonal(sigma).sum() - logdet - dim)
    return kl.to(torch.float32)


def combine_losses(
    pred_loss: torch.Tensor, reg_loss: torch.Tensor, weight: float, phase: LossPhase
) -> torch.Tensor:
    """Total training loss for a phase.

    Args:
        pred_loss (`torch.Tensor`): Prediction loss.
        reg_loss (`torch.Tensor`): Regulariser (SIGReg or Gaussian KL).
        weight (`float`): Regulariser weight `lambda`.
        phase (`str`): `"phase1"` (loss = pred; the regulariser is only logged) or `"phase2"`
            (loss = pred + weight * reg).

    Returns:
        `torch.Tensor`: The loss to back-propagate.
    """
    check_choice("phase", phase, LossPhase)
    if phase == "phase1":
        return pred_loss
    return pred_loss + weight * reg_loss
