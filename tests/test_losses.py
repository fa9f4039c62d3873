"""Tests of `lewm_hf.losses`: prediction losses, SIGReg (fast, reference, distributed), KL."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lewm_hf.errors import LeWMConfigError, LeWMInputError
from lewm_hf.evaluation.latents import effective_rank
from lewm_hf.losses import (
    combine_losses,
    gaussian_kl,
    prediction_loss,
    sigreg,
    sigreg_generator,
    sigreg_knots,
)
from lewm_hf.testing_utils import sigreg_reference

# ---------------------------------------------------------------------------------------------
# SIGReg


def direct_sigreg(z: torch.Tensor, slices: torch.Tensor, num_knots=17, t_max=3.0) -> float:
    """SIGReg as docs/design.md, section 5 (The loss) states it, written out independently in
    float64 with explicit loops."""
    z = z.double()
    if z.dim() == 2:
        z = z.unsqueeze(0)
    slices = slices.double()
    spacing = t_max / (num_knots - 1)
    knots = [k * spacing for k in range(num_knots)]
    weights = [
        spacing * (1 if k in (0, num_knots - 1) else 2) * math.exp(-(t**2) / 2)
        for k, t in enumerate(knots)
    ]
    t = torch.tensor(knots, dtype=torch.float64)
    w = torch.tensor(weights, dtype=torch.float64)
    num_steps, batch, _ = z.shape
    values = []
    for step in range(num_steps):
        angles = (z[step] @ slices).unsqueeze(-1) * t  # (B, M, K)
        c = torch.cos(angles).mean(dim=0)  # (M, K)
        s = torch.sin(angles).mean(dim=0)
        err = (c - torch.exp(-(t**2) / 2)) ** 2 + s**2
        values.append(batch * (err * w).sum(dim=-1))  # (M,)
    return torch.stack(values).mean().item()


def unit_slices(dim: int, num: int, seed: int = 0) -> torch.Tensor:
    slices = torch.randn(dim, num, generator=torch.Generator().manual_seed(seed))
    return slices / slices.norm(dim=0, keepdim=True)


@pytest.mark.parametrize("shape", [(48, 8), (3, 40, 8)])
@pytest.mark.parametrize("fn", [sigreg, sigreg_reference])
def test_sigreg_matches_direct_formula(shape, fn):
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 1.3 + 0.2
    slices = unit_slices(shape[-1], 64)
    expected = direct_sigreg(z, slices)
    assert fn(z, projections=slices).item() == pytest.approx(expected, rel=1e-5)
    assert fn(z.double(), projections=slices).item() == pytest.approx(expected, rel=1e-10)
    # Non-default knots.
    expected = direct_sigreg(z, slices, num_knots=9, t_max=2.0)
    value = fn(z, projections=slices, num_knots=9, t_max=2.0)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_sigreg_fast_equals_reference_values_and_gradients():
    z = torch.randn(4, 64, 32, generator=torch.Generator().manual_seed(2))
    results = []
    for fn in (sigreg, sigreg_reference):
        x = z.clone().requires_grad_(True)
        value = fn(x, num_slices=256, generator=sigreg_generator(3))
        value.backward()
        results.append((value.detach(), x.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-7)

    # float64 gradients agree with autograd's numerical check.
    x = (torch.randn(2, 6, 3, dtype=torch.float64) * 0.7).requires_grad_(True)
    slices = unit_slices(3, 5).double()
    assert torch.autograd.gradcheck(lambda t: sigreg(t, projections=slices), (x,))


@pytest.mark.parametrize("num_knots", [2, 10, 24])
def test_sigreg_fast_equals_reference_for_any_knot_count_and_slice_gradients(num_knots):
    """Knot counts whose powers do not fill the last group of the fused table, and gradients
    with respect to the slices (the matmul is inside the fused node)."""
    z = torch.randn(3, 40, 8, generator=torch.Generator().manual_seed(6)) * 1.3 + 0.2
    results = []
    for fn in (sigreg, sigreg_reference):
        x = z.clone().requires_grad_(True)
        slices = unit_slices(8, 48).requires_grad_(True)
        value = fn(x, projections=slices, num_knots=num_knots, t_max=2.5)
        value.backward()
        results.append((value.detach(), x.grad, slices.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for fused, reference in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-7)


def test_sigreg_fast_is_accurate_for_large_angles():
    """Against a float64 evaluation: `|t_k h|` up to about 250 rad, where the powers `w^k`
    replace direct cosines of large angles."""
    z = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(7)) * 30
    slices = unit_slices(16, 64)
    x = z.clone().requires_grad_(True)
    value = sigreg(x, projections=slices)
    value.backward()
    exact = z.double().requires_grad_(True)
    expected = sigreg_reference(exact, projections=slices.double())
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    scale = exact.grad.abs().max().item()
    assert (x.grad.double() - exact.grad).abs().max().item() < 1e-5 * scale


def test_sigreg_fast_runs_small_problems_on_one_thread_and_restores_the_count(monkeypatch):
    """The default step's SIGReg is too small to share between threads (`SERIAL_WORK`): it runs
    on one, forward and backward, and the caller's thread count is back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    seen = []
    original = torch.Tensor.sum

    def recording(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    try:
        x = torch.randn(4, 16, 8).requires_grad_(True)
        monkeypatch.setattr(torch.Tensor, "sum", recording)
        value = sigreg(x, num_slices=32, generator=sigreg_generator(1))
        value.backward()
        monkeypatch.undo()
        assert seen and set(seen) == {1}  # the table sums ran on one thread
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_sigreg_low_on_gaussian_high_on_collapse():
    knots, weights = sigreg_knots(dtype=torch.float64)
    expectation = (weights * (1 - torch.exp(-(knots**2)))).sum().item()
    assert expectation == pytest.approx(1.0525, abs=1e-3)

    gaussian = torch.randn(256, 64, generator=torch.Generator().manual_seed(4))
    value = sigreg(gaussian, generator=sigreg_generator(0)).item()
    assert 0.8 < value < 1.35

    collapsed = torch.randn(1, 64).expand(256, 64)
    assert sigreg(collapsed, generator=sigreg_generator(0)).item() > 50
    half = sigreg(collapsed[:128], generator=sigreg_generator(0)).item()
    assert sigreg(collapsed, generator=sigreg_generator(0)).item() == pytest.approx(2 * half)


def test_sigreg_low_precision_inputs_are_upcast():
    z = torch.randn(2, 32, 16, generator=torch.Generator().manual_seed(5))
    slices = unit_slices(16, 32)
    value = sigreg(z.to(torch.bfloat16), projections=slices)
    assert value.dtype == torch.float32
    expected = sigreg(z.to(torch.bfloat16).float(), projections=slices)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    # Autocast does not push the projections or the statistic down to bf16.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = sigreg(z, projections=slices)
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(sigreg(z, projections=slices).item(), rel=1e-6)


def test_sigreg_generator_determinism():
    a = torch.randn(3, generator=sigreg_generator(10, seed=1))
    assert torch.equal(a, torch.randn(3, generator=sigreg_generator(10, seed=1)))
    assert not torch.equal(a, torch.randn(3, generator=sigreg_generator(11, seed=1)))
    assert not torch.equal(a, torch.randn(3, generator=sigreg_generator(10, seed=2)))

    z = torch.randn(32, 8)
    same = [sigreg(z, num_slices=16, generator=sigreg_generator(7)) for _ in range(2)]
    assert torch.equal(same[0], same[1])
    other = sigreg(z, num_slices=16, generator=sigreg_generator(8))
    assert not torch.equal(same[0], other)


def test_sigreg_rejects_bad_input():
    with pytest.raises(LeWMInputError) as info:
        sigreg(torch.randn(2, 3, 4, 5))
    assert info.value.field == "z"
    with pytest.raises(LeWMInputError):
        sigreg(torch.randn(0, 4))
    with pytest.raises(LeWMInputError) as info:
        sigreg(torch.randn(8, 4), projections=torch.randn(5, 16))
    assert info.value.field == "projections"
    with pytest.raises(LeWMConfigError) as info:
        sigreg(torch.randn(8, 4), num_knots=1)
    assert info.value.field == "num_knots"
    with pytest.raises(LeWMConfigError):
        sigreg(torch.randn(8, 4), num_slices=0)
    with pytest.raises(LeWMConfigError):
        sigreg(torch.randn(8, 4), t_max=-1.0)


def _distributed_worker(rank: int, world_size: int, store_path: str) -> None:
    # A file store: no TCP port to pick (or to race other processes for), no store server rank.
    dist.init_process_group(
        "gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size
    )
    try:
        torch.set_num_threads(1)
        full = torch.randn(3, 40, 16, generator=torch.Generator().manual_seed(0))
        local_rows = slice(rank * 20, (rank + 1) * 20)
        # Single-process value and gradient on the concatenated batch.
        x_full = full.clone().requires_grad_(True)
        single = _single_process(x_full)
        expected_grad = x_full.grad[:, local_rows]
        for fn in (sigreg, sigreg_reference):
            x_local = full[:, local_rows].clone().requires_grad_(True)
            value = fn(x_local, num_slices=64, generator=sigreg_generator(5))
            value.backward()
            torch.testing.assert_close(value.detach(), single, rtol=1e-5, atol=1e-5)
            # The all-reduce backward sums gradients over ranks: world_size times the share.
            torch.testing.assert_close(
                x_local.grad / world_size, expected_grad, rtol=1e-5, atol=1e-5
            )

        # A rank with an empty batch: the other rank's rows alone define the value.
        rows = full[0, :20]
        local = rows if rank == 0 else rows[:0]
        value = sigreg(local, num_slices=64, generator=sigreg_generator(5))
        alone = _single_process(rows.clone())
        torch.testing.assert_close(value, alone, rtol=1e-5, atol=1e-5)

        # Without a generator every rank still uses the same (rank 0's) slices.
        torch.manual_seed(100 + rank)
        value = sigreg(full[:, local_rows], num_slices=64)
        gathered = [torch.zeros(()) for _ in range(world_size)]
        dist.all_gather(gathered, value.detach())
        assert torch.equal(gathered[0], gathered[1])
        dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        dist.destroy_process_group()


def _single_process(x: torch.Tensor) -> torch.Tensor:
    """SIGReg of `x` computed in this process alone, without any collective; slices as above."""
    slices = torch.randn(x.shape[-1], 64, generator=sigreg_generator(5))
    slices = slices / slices.norm(dim=0, keepdim=True)
    z = x if x.dim() == 3 else x.unsqueeze(0)
    knots, weights = sigreg_knots()
    angles = (z @ slices).unsqueeze(-1) * knots  # (T, B, M, K)
    err = (torch.cos(angles).mean(1) - torch.exp(-(knots**2) / 2)) ** 2
    err = err + torch.sin(angles).mean(1) ** 2
    value = (z.shape[1] * (err * weights).sum(-1)).mean()
    if x.requires_grad:
        value.backward()
    return value.detach()


def test_sigreg_distributed_equals_single_process_on_concatenated_batch(tmp_path):
    world_size = 2
    store = str(tmp_path / "store")
    mp.spawn(_distributed_worker, args=(world_size, store), nprocs=world_size, join=True)


# ---------------------------------------------------------------------------------------------
# Prediction losses


def test_mse_and_cos_mse_formulas():
    g = torch.Generator().manual_seed(6)
    pred, target = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    sq = ((pred - target) ** 2).sum(-1)
    assert prediction_loss(pred, target).item() == pytest.approx(sq.mean().item(), rel=1e-6)

    cos = (pred * target).sum(-1) / (pred.norm(dim=-1) * target.norm(dim=-1))
    expected = (1.0 * (1 - cos) + 0.1 * sq / 7).mean().item()
    assert prediction_loss(pred, target, kind="cos_mse").item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["mse", "cos_mse"])
def test_prediction_loss_masking(kind):
    g = torch.Generator().manual_seed(7)
    pred, target = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    mask[2, 1:] = False

    value = prediction_loss(pred, target, mask, kind=kind)
    # Equals the loss over the real positions only.
    expected = prediction_loss(pred[mask].unsqueeze(0), target[mask].unsqueeze(0), kind=kind)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    # A 0/1 mask behaves like the bool mask.
    assert prediction_loss(pred, target, mask.long(), kind=kind).item() == pytest.approx(
        value.item(), rel=1e-7
    )

    # Changing padded values (even to inf / nan) changes neither value nor gradient.
    pred2, target2 = pred.clone(), target.clone()
    pred2[~mask] = float("inf")
    target2[~mask] = float("nan")
    p1, p2 = pred.clone().requires_grad_(True), pred2.clone().requires_grad_(True)
    v1 = prediction_loss(p1, target, mask, kind=kind)
    v2 = prediction_loss(p2, target2, mask, kind=kind)
    v1.backward()
    v2.backward()
    assert v1.item() == v2.item()
    assert torch.equal(p1.grad, p2.grad)
    assert torch.all(p1.grad[~mask] == 0)

    # No real position at all: 0.
    assert prediction_loss(pred, target, torch.zeros(3, 5), kind=kind).item() == 0.0


def test_prediction_loss_errors():
    x = torch.randn(2, 3, 4)
    with pytest.raises(LeWMConfigError) as info:
        prediction_loss(x, x, kind="l1")
    assert info.value.field == "pred_loss"
    with pytest.raises(LeWMInputError) as info:
        prediction_loss(x, torch.randn(2, 3, 5))
    assert info.value.field == "target"
    with pytest.raises(LeWMInputError) as info:
        prediction_loss(x, x, torch.ones(2, 4))
    assert info.value.field == "mask"


# ---------------------------------------------------------------------------------------------
# Gaussian KL, combine_losses, effective rank


def test_gaussian_kl_closed_form():
    g = torch.Generator().manual_seed(8)
    dim, n = 4, 500
    raw = torch.randn(n, dim, generator=g, dtype=torch.float64)
    mixing = torch.tensor([[1.0, 0, 0, 0], [0.5, 2.0, 0, 0], [0, 0.3, 0.7, 0], [0.2, 0, 0, 1.5]])
    z = raw @ mixing.double().T + torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    mu = z.mean(0)
    sigma = (z - mu).T @ (z - mu) / n
    expected = 0.5 * (
        mu @ mu + torch.trace(sigma) - torch.logdet(sigma + 1e-6 * torch.eye(dim)) - dim
    )
    value = gaussian_kl(z.float())
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    # (..., D) inputs are flattened to rows.
    assert gaussian_kl(z.float().reshape(5, 100, dim)).item() == pytest.approx(value.item())

    # Whitened data (zero mean, identity population covariance) of large N: KL ~ 0.
    white = torch.randn(20000, 8, generator=g, dtype=torch.float64)
    white = white - white.mean(0)
    chol = torch.linalg.cholesky(white.T @ white / white.shape[0])
    white = white @ torch.linalg.inv(chol).T
    assert abs(gaussian_kl(white).item()) < 1e-5

    # Differentiable.
    x = torch.randn(64, 3, requires_grad=True)
    gaussian_kl(x).backward()
    assert torch.isfinite(x.grad).all()


def test_combine_losses_phases():
    pred, reg = torch.tensor(2.0), torch.tensor(3.0)
    assert combine_losses(pred, reg, 0.09, "phase1").item() == 2.0
    assert combine_losses(pred, reg, 0.09, "phase2").item() == pytest.approx(2.0 + 0.09 * 3.0)
    with pytest.raises(LeWMConfigError) as info:
        combine_losses(pred, reg, 0.09, "phase3")
    assert info.value.field == "phase"


def test_effective_rank():
    g = torch.Generator().manual_seed(9)
    full = torch.randn(4000, 8, generator=g)
    assert 7.5 < effective_rank(full).item() <= 8.0
    line = torch.randn(100, 1, generator=g) * torch.randn(1, 8, generator=g) + 3.0
    assert effective_rank(line).item() == pytest.approx(1.0, abs=1e-4)
    assert effective_rank(torch.ones(10, 8)).item() == 0.0
    # Two equal singular values: rank 2 exactly.
    two = torch.tensor([[1.0, 0], [-1.0, 0], [0, 1.0], [0, -1.0]])
    assert effective_rank(two).item() == pytest.approx(2.0)
