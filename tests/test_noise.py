"""The fused Triton draw-and-add kernel (run by Triton's interpreter on CPU) against the torch path."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from zoft.engine import kernels
from zoft.engine.noise import add_gaussian_, gaussian_like
from zoft.errors import ZoftError

from test_methods import fresh_params, make, quadratic, sampled_estimates

# Interpreted (TRITON_INTERPRET=1, as conftest sets by default) the kernel reads CPU tensors;
# compiled on a GPU it reads CUDA ones only: the tests below build theirs where it can read them.
KERNEL_DEVICE = "cuda" if kernels.compiled() else "cpu"


def test_the_kernel_draws_standard_gaussians_that_regenerate_exactly():
    z = torch.zeros(40_003, device=KERNEL_DEVICE)  # not a multiple of the block: the tail is masked
    add_gaussian_(z, 1.0, (3, 1, 0, 2), "triton")
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    assert abs(float((z**4).mean()) - 3) < 0.15  # Gaussian tails, not uniform ones
    assert int((z == 0).sum()) == 0  # every element, the last block's included
    assert torch.equal(gaussian_like(z, (3, 1, 0, 2), "triton"), z)
    other = gaussian_like(z, (3, 1, 0, 3), "triton")
    assert abs(float((z * other).mean())) < 0.02  # another key: an independent stream
    quarters = z[:4096].view(4, 1024)  # the four normals of one Philox call are uncorrelated
    assert abs(float(torch.corrcoef(quarters)[0, 1:].abs().max())) < 0.12


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_adds_in_place_exactly_as_torch_would_with_its_z(dtype):
    w = torch.randn(257, 33, device=KERNEL_DEVICE).to(dtype)
    z = gaussian_like(w.float(), (5,), "triton")
    expected = (w.float() + 1e-2 * z).to(dtype)
    add_gaussian_(w, 1e-2, (5,), "triton")
    if dtype == torch.bfloat16 and KERNEL_DEVICE == "cpu":  # the interpreter rounds to bf16 toward zero
        torch.testing.assert_close(w, expected, rtol=2**-7, atol=0)
    else:  # compiled, the kernel rounds to nearest even, as torch does
        torch.testing.assert_close(w, expected, rtol=0, atol=0)


def test_mezo_on_the_kernel_estimates_the_gradient_as_the_torch_path_does():
    params = fresh_params(device=KERNEL_DEVICE)
    loss, grad = quadratic(params)
    estimates = {}
    for noise in ("torch", "triton"):
        method = make("mezo", params, eps=1e-3, noise=noise)
        estimates[noise] = sampled_estimates(method, params, loss, 250)
    for noise, g in estimates.items():  # 250 samples of a 35-dim gradient: cosine ≈ 0.93 expected
        cosine = float(g @ grad / (g.norm() * grad.norm()))
        assert cosine > 0.8, (noise, cosine)
        assert abs(float(g.norm() / grad.norm()) - 1) < 0.25
    assert not torch.equal(estimates["torch"], estimates["triton"])  # two streams, one expectation


@pytest.mark.parametrize("noise", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_restore_and_update_equals_restoring_then_updating(noise, dtype):
    """`step` folds the last restore into the update's pass: the same step up to one rounding."""
    fused_params, plain_params = fresh_params(dtype, device=KERNEL_DEVICE), fresh_params(dtype, device=KERNEL_DEVICE)
    # bf16: one query, since a second would see the first's restore drift (an ulp) through 1/2ε
    queries = 2 if dtype == torch.float32 else 1
    fused = make("mezo", fused_params, eps=1e-3, noise=noise, n_queries=queries)
    plain = make("mezo", plain_params, eps=1e-3, noise=noise, n_queries=queries, restore="copy")
    a = fused.step(quadratic(fused_params)[0], 0, 1e-2)
    b = plain.step(quadratic(plain_params)[0], 0, 1e-2)
    assert a.grads[0] == b.grads[0]  # the same perturbations were evaluated (then restores differ)
    assert a.grads == pytest.approx(b.grads, rel=1e-2)
    ulp = 2.0 ** (-8 if dtype == torch.bfloat16 else -24)
    for (_, p), (_, q), (_, start) in zip(fused_params, plain_params, fresh_params(dtype, device=KERNEL_DEVICE)):
        assert not torch.equal(q, start)  # the step moved every tensor
        assert float((p.float() - q.float()).abs().max()) <= 4 * ulp * float(q.float().abs().max())


def test_triton_noise_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from zoft.engine import noise

    monkeypatch.setattr(noise, "_kernel", lambda: None)
    with pytest.raises(ZoftError, match="method.noise"):
        make("mezo", fresh_params(), noise="triton")


def test_one_launch_over_many_tensors_adds_what_one_launch_each_adds():
    """The many-tensor kernel gives every tensor the z of its own key, bit for bit (tails, dtypes, torch leftovers)."""
    from zoft.engine.noise import add_gaussian_many_

    shapes = [(5000,), (64, 130), (3, 4097), (10,)]
    tensors = [torch.randn(s, device=KERNEL_DEVICE) for s in shapes] + [torch.randn(7000, device=KERNEL_DEVICE).bfloat16()]
    tensors.append(torch.randn(40, 30, device=KERNEL_DEVICE).T)  # not contiguous: the torch path, its own stream
    keys = [(1, 2, 3, i, 0) for i in range(len(tensors))]
    one_each, together = [t.clone() for t in tensors], [t.clone() for t in tensors]
    for t, k in zip(one_each, keys):
        add_gaussian_(t, 0.5, k, "triton")
    add_gaussian_many_(together, 0.5, keys, "triton")
    for a, b, t in zip(one_each, together, tensors):
        assert torch.equal(a, b)
        assert not torch.equal(b, t)


def test_tensors_anywhere_in_memory_get_their_own_z_and_a_true_alignment_hint():
    """The many-tensor kernel is told its tensors' places are multiples of 16 bytes (`vector`)
    only when all are: on a GPU a false hint is a misaligned access; every tensor still gets the
    z of its own launch, full blocks and tails alike."""
    from zoft.engine.noise import _block_table, add_gaussian_many_

    flat = torch.zeros(20000, device=KERNEL_DEVICE)
    for starts, vector in [((0, 4100, 9000), 4), ((0, 4101, 9000), 1)]:  # fp32: 4 elements are 16 bytes
        tensors = [flat[start:start + 4099] for start in starts]
        table = _block_table(tuple((t.data_ptr(), t.numel(), t.dtype, t.device) for t in tensors))
        assert table.vector == vector
        keys = [(4, 5, 0, i, 0) for i in range(len(tensors))]
        one_each = [t.clone() for t in tensors]
        for t, k in zip(one_each, keys):
            add_gaussian_(t, 0.5, k, "triton")
        add_gaussian_many_(tensors, 0.5, keys, "triton")
        for got, want in zip(tensors, one_each):
            assert torch.equal(got, want)
        flat.zero_()


def test_two_terms_in_one_pass_add_what_two_passes_add():
    """The carried perturbation's kernel: alpha·z(k), then alpha2·z(k2), each rounded as its own pass."""
    from zoft.engine.noise import add_gaussian_many_

    tensors = [torch.randn(5000, device=KERNEL_DEVICE), torch.randn(3, 4097, device=KERNEL_DEVICE), torch.randn(7000, device=KERNEL_DEVICE).bfloat16()]
    tensors.append(torch.randn(40, 30, device=KERNEL_DEVICE).T)  # not contiguous: two torch passes
    keys, keys2 = [(1, 2, 0, i, 0) for i in range(4)], [(1, 3, 0, i, 0) for i in range(4)]
    two_passes, one_pass = [t.clone() for t in tensors], [t.clone() for t in tensors]
    add_gaussian_many_(two_passes, -0.3, keys, "triton")
    add_gaussian_many_(two_passes, 1e-3, keys2, "triton")
    add_gaussian_many_(one_pass, -0.3, keys, "triton", then=(1e-3, keys2))
    for a, b in zip(two_passes, one_pass):
        assert torch.equal(a, b)
    zero_first = [t.clone() for t in tensors]  # a zero first term: the second alone
    add_gaussian_many_(zero_first, 0.0, keys, "triton", then=(1e-3, keys2))
    alone = [t.clone() for t in tensors]
    add_gaussian_many_(alone, 1e-3, keys2, "triton")
    assert all(torch.equal(a, b) for a, b in zip(zero_first, alone))


def big_params(dtype):
    """One matrix above the grouping threshold (its own kernel pass) beside small grouped tensors."""
    gen = torch.Generator().manual_seed(3)
    big = (torch.randn(300, 257, generator=gen) * 0.05).to(KERNEL_DEVICE, dtype)
    return [("big", big)] + fresh_params(dtype, device=KERNEL_DEVICE)


@pytest.mark.parametrize("noise", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("queries", [1, 2])
def test_carrying_the_next_perturbation_saves_a_pass_and_changes_no_bit(noise, dtype, queries, monkeypatch):
    """`step(carry=True)` adds the next step's +εz in the update's pass: the same weights, losses and
    projected gradients as uncarried steps, with one pass over the large tensors fewer per step."""
    from zoft.methods import base

    passes = {"n": 0}
    counted = base.noise.add_gaussian_many_

    def counting(tensors, *args, **kwargs):
        passes["n"] += any(t.numel() > base.SMALL for t in tensors)  # the grouped tensors' draws are no pass
        counted(tensors, *args, **kwargs)

    monkeypatch.setattr(base.noise, "add_gaussian_many_", counting)
    runs = {}
    for carry in (False, True):
        params = big_params(dtype)
        method = make("mezo", params, eps=1e-3, noise=noise, n_queries=queries)
        loss = quadratic(params)[0]
        passes["n"] = 0
        results = [method.step(loss, step, 1e-2, carry=carry and step < 4) for step in range(5)]
        assert method.carried is None
        runs[carry] = ([(r.loss, r.grads) for r in results], params, passes["n"])
    (plain_results, plain, plain_passes), (carried_results, carried, carried_passes) = runs[False], runs[True]
    assert carried_results == plain_results
    assert all(torch.equal(p, q) for (_, p), (_, q) in zip(plain, carried))
    assert carried_passes == plain_passes - 4  # steps 1-4 began perturbed
    assert plain_passes == 5 * (3 if queries == 1 else 7)


def test_a_carried_step_refuses_to_run_as_another_step():
    params = big_params(torch.float32)
    method = make("mezo", params, eps=1e-3)
    loss = quadratic(params)[0]
    method.step(loss, 0, 1e-2, carry=True)
    assert method.carried == 1
    with pytest.raises(RuntimeError, match="step 1's perturbation"):
        method.step(loss, 5, 1e-2)
