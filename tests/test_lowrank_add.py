"""The many-matrix in-place kernel (engine/lowrank_add.py: W += α A Bᵀ, one launch) against addmm_:
compiled on a GPU in bf16, or run by Triton's interpreter on the CPU in fp16 (the interpreter's
bf16 arithmetic is not the GPU's)."""

from __future__ import annotations

import pytest
import torch

from zoft.config.schema import OptimConfig
from zoft.engine import kernels, lowrank_add

from test_methods import fresh_params, make, quadratic

COMPILED = kernels.compiled()
DEVICE, DTYPE = ("cuda", torch.bfloat16) if COMPILED else ("cpu", torch.float16)
pytestmark = pytest.mark.skipif(lowrank_add._kernel() is None, reason="needs Triton (its interpreter on the CPU)")


def matrices(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for m, n, r in shapes:
        w, a, b = torch.randn(m, n, generator=g), torch.randn(m, r, generator=g) * 0.3, torch.randn(n, r, generator=g) * 0.3
        out.append(tuple(t.to(DEVICE, DTYPE) for t in (w, a, b)))
    return out


def one_ulp_at_most(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Equal up to one rounding of the result (cuBLAS may order its fp32 sum differently)."""
    return bool(((got.float() - want.float()).abs() <= want.float().abs() * torch.finfo(DTYPE).eps + 1e-6).all())


def test_one_launch_adds_what_addmm_adds_to_every_matrix():
    # ranks 1, 3 and 20 (padded to 32); shapes not multiples of a tile; an m×1 and a 1×n matrix
    shapes = [(37, 20, 1), (16, 50, 3), (70, 33, 20), (5, 1, 1), (1, 9, 2)]
    fused, eager, before = matrices(shapes), matrices(shapes), matrices(shapes)
    alphas = [0.5, -1.25, 2.0, 4.0, -3.0]
    for (w, a, b), alpha in zip(eager, alphas):
        w.addmm_(a, b.T, alpha=alpha)
    weights, factors, bases = map(list, zip(*fused))
    bases[1] = bases[1].T.contiguous().T  # column-major, as a QR's Q (SubZO's bases)
    lowrank_add.add_lowrank_many_(weights, factors, bases, alphas, fused=True)
    for (got, *_), (want, *_), (old, *_) in zip(fused, eager, before):
        assert not torch.equal(got, old)
        assert one_ulp_at_most(got, want)


def test_weights_anywhere_in_memory_get_their_sum_and_a_true_alignment_hint():
    """Weights that are views of one buffer: the kernel is told their places and widths are
    multiples of 16 bytes (`vector`) only when all are (a false hint is a misaligned access on a
    GPU), and each gets addmm_'s sum either way."""
    g = torch.Generator().manual_seed(3)
    for starts, widths, vector in [((0, 200), (16, 24), 8), ((0, 201), (16, 24), 1), ((0, 200), (16, 20), 1)]:
        flat = torch.randn(1000, generator=g).to(DEVICE, DTYPE)
        weights = [flat[start:start + 8 * width].view(8, width) for start, width in zip(starts, widths)]
        factors = [(torch.randn(8, 2, generator=g) * 0.3).to(DEVICE, DTYPE) for _ in weights]
        bases = [(torch.randn(width, 2, generator=g) * 0.3).to(DEVICE, DTYPE) for width in widths]
        wants = [w.clone().addmm_(a, b.T, alpha=0.5) for w, a, b in zip(weights, factors, bases)]
        moved = lowrank_add.LowRankPass(weights, factors, bases, fused=True)
        assert [table.vector for _, _, _, table, _ in moved.launches] == [vector]
        moved.add_([0.5, 0.5])
        for got, want in zip(weights, wants):
            assert one_ulp_at_most(got, want)


def test_matrices_the_kernel_cannot_take_go_through_addmm():
    """A transposed (non-contiguous) weight and an fp32 one beside one the kernel takes: each gets its sum."""
    (w1, a1, b1), (w2, a2, b2) = matrices([(24, 40, 2), (40, 24, 2)])
    w2, a2, b2 = w2.T, b2, a2  # a 24×40 view of a 40×24 matrix, with its factors
    w3, a3, b3 = (t.float() for t in matrices([(8, 8, 2)], seed=1)[0])
    weights, factors, bases = [w1, w2, w3], [a1, a2, a3], [b1, b2, b3]
    wants = [w.float() + 0.5 * (a.float() @ b.float().T) for w, a, b in zip(weights, factors, bases)]
    lowrank_add.add_lowrank_many_(weights, factors, bases, [0.5] * 3, fused=True)
    for got, want in zip(weights, wants):
        torch.testing.assert_close(got.float(), want, rtol=2 * torch.finfo(DTYPE).eps, atol=1e-3)


@pytest.mark.parametrize("name, optim", [("lozo", "sgd"), ("tezo", "adam"), ("subzo", "sgd")])
def test_in_place_steps_with_the_kernel_follow_those_with_addmm(name, optim):
    """Whole steps (+ε, −2ε, restore with the update) of a 16-bit matrix: the same losses and
    weights through the kernel as through addmm_, up to a rounding of the weights."""
    runs = []
    for fused in (False, True):
        params = fresh_params(DTYPE, m=40, n=24, device=DEVICE)
        loss, _ = quadratic(params)
        method = make(name, params, OptimConfig(name=optim), rank=2, eps=1e-2)
        method.fused_add = fused
        results = [method.step(loss, step, 1e-2) for step in range(4)]
        runs.append(([r.loss for r in results], params[0][1].float()))
    (losses, weights), (fused_losses, fused_weights) = runs
    assert fused_losses == pytest.approx(losses, rel=1e-2)
    torch.testing.assert_close(fused_weights, weights, rtol=0, atol=4 * torch.finfo(DTYPE).eps * weights.abs().max().item())


@pytest.mark.skipif(torch.cuda.device_count() < 2 or not COMPILED, reason="needs two GPUs")
def test_matrices_and_draws_on_two_gpus_launch_each_on_its_own():
    """A model spread over GPUs (model.device_map): a pass over matrices of two devices, and the
    noise kernel's draws into tensors of both, each launched on its tensors' device."""
    from zoft.engine.noise import add_gaussian_many_

    shapes = [(64, 48, 2), (40, 24, 3), (64, 48, 2), (8, 16, 1)]
    fused, eager = matrices(shapes), matrices(shapes)
    for group in (fused, eager):
        group[:] = [tuple(t.to(f"cuda:{i % 2}") for t in triple) for i, triple in enumerate(group)]
    alphas = [0.5, -1.0, 2.0, 0.25]
    lowrank_add.add_lowrank_many_(*map(list, zip(*fused)), alphas, fused=True)
    for (w, a, b), alpha in zip(eager, alphas):
        w.addmm_(a, b.T, alpha=alpha)
    assert all(one_ulp_at_most(f[0], e[0]) for f, e in zip(fused, eager))
    zs = [torch.zeros(1000, device=f"cuda:{i % 2}") for i in range(4)]
    add_gaussian_many_(zs, 1.0, [(1, 2, 3, i) for i in range(4)], "triton")
    single = [torch.zeros(1000, device=f"cuda:{i % 2}") for i in range(4)]
    for i, z in enumerate(single):
        add_gaussian_many_([z], 1.0, [(1, 2, 3, i)], "triton")
    assert all(torch.equal(a, b) and 0.8 < float(a.std()) < 1.2 for a, b in zip(zs, single))
