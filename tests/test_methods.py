"""Every estimator and optimizer of SPEC.md, checked against exact gradients and dense references."""

from __future__ import annotations

import math

import pytest
import torch

from zoft.config.methods import METHOD_CONFIGS
from zoft.config.schema import OptimConfig
from zoft.engine import kernels
from zoft.engine.noise import available
from zoft.engine.rng import DIRECTION
from zoft.methods import METHODS
from zoft.methods.adazeta import query_schedule

ZO = ["mezo", "lozo", "subzo", "tezo", "adazeta"]
# one direction per step, independent across steps, so that averages are unbiased
UNBIASED = {"lozo": {"lazy_interval": 1}, "subzo": {"update_interval": 1}, "tezo": {"refresh_interval": 1}}


def make(name, params, optim=None, seed=7, **cfg):
    config = METHOD_CONFIGS.get(name, "")(**{**UNBIASED.get(name, {}), **cfg})
    return METHODS.get(name, "")(params, config, optim or OptimConfig(), seed, steps_per_epoch=10, max_steps=100)


def fresh_params(dtype=torch.float32, m=6, n=5, device="cpu"):
    gen = torch.Generator().manual_seed(0)
    return [(name, (torch.randn(shape, generator=gen) * 0.05).to(device, dtype)) for name, shape in (("w", (m, n)), ("b", (n,)))]


def quadratic(params):
    """L = Σ (a ⊙ (θ − t))² over every tensor: its exact gradient, and a loss closure."""
    gen = torch.Generator().manual_seed(1)
    coeffs = [((torch.rand(p.shape, generator=gen) + 0.5).to(p.device), torch.randn(p.shape, generator=gen).to(p.device)) for _, p in params]

    def loss():
        return sum(((a * (p - t)) ** 2).sum() for (_, p), (a, t) in zip(params, coeffs))

    grad = [2 * a * a * (p - t) for (_, p), (a, t) in zip(params, coeffs)]
    return loss, torch.cat([g.flatten() for g in grad])


def sampled_estimates(method, params, loss, n):
    """The SGD update direction ĝ of n independent steps at the same θ (lr = 1)."""
    total = torch.zeros(sum(p.numel() for _, p in params), device=params[0][1].device)
    for step in range(n):
        before = [p.clone() for _, p in params]
        result = method.estimate(loss, step)
        method.update(step, result.grads, lr=1.0)
        total += torch.cat([(b - p).flatten() for b, (_, p) in zip(before, params)])
        for b, (_, p) in zip(before, params):
            p.copy_(b)
    return total / n


@pytest.mark.parametrize("name", ZO)
def test_average_estimate_converges_to_the_gradient_with_the_right_scale(name):
    """E[ĝ] = ∇L: the cosine grows with samples, and the length matches (1/r, sqrt(mn)/r, 1/q)."""
    params = fresh_params()
    loss, grad = quadratic(params)
    extra = {"rank": 2} if name in ("lozo", "subzo", "tezo") else {}
    if name != "adazeta":
        extra["n_queries"] = 3
    method = make(name, params, restore="copy", **extra)
    cos = lambda v: float(torch.nn.functional.cosine_similarity(v, grad, dim=0))  # noqa: E731
    few, many = sampled_estimates(method, params, loss, 50), sampled_estimates(method, params, loss, 3000)
    assert cos(many) > 0.93 and cos(many) > cos(few)
    length_ratio = float(many @ grad / grad.norm() ** 2)
    assert 0.85 < length_ratio < 1.15, length_ratio


def test_without_normalize_lozo_and_tezo_are_r_times_longer():
    for name in ("lozo", "tezo"):
        params = fresh_params()
        loss, grad = quadratic(params)
        matrix_grad = grad[:30]
        method = make(name, params, restore="copy", rank=4, normalize=False)
        est = sampled_estimates(method, params, loss, 2000)[:30]
        assert 3.2 < float(est @ matrix_grad / matrix_grad.norm() ** 2) < 4.8


@pytest.mark.parametrize("name", ZO)
def test_a_direction_regenerates_exactly_and_depends_on_every_key(name):
    def perturbed(step, query, seed=7):
        params = fresh_params()
        make(name, params, seed=seed).perturb(step, query, 1.0)
        return params[0][1]

    a = perturbed(3, 0)
    assert torch.equal(a, perturbed(3, 0))
    assert not torch.equal(a, perturbed(4, 0))
    assert not torch.equal(a, perturbed(3, 1))
    assert not torch.equal(a, perturbed(3, 0, seed=8))


@pytest.mark.parametrize("name", ZO)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_copy_restore_is_bit_exact(name, dtype):
    params = fresh_params(dtype, 32, 24)
    before = [p.clone() for _, p in params]
    method = make(name, params, restore="copy")
    result = method.estimate(lambda: sum(p.float().pow(2).sum() for _, p in params), step=0)
    assert all(torch.equal(b, p) for b, (_, p) in zip(before, params))
    assert all(g != 0 for g in result.grads)


@pytest.mark.parametrize("name", ZO)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_arithmetic_restore_drifts_by_rounding_only(name, dtype):
    """+ε, −2ε, +ε in place: each element ends within two ulps of max(|w|, 2ε|Z|) of where it was."""
    params = fresh_params(dtype, 32, 24)
    before = [p.clone().float() for _, p in params]
    method = make(name, params)
    method.perturb(0, 0, +1.0)
    plus = [p.clone().float() for _, p in params]
    method.perturb(0, 0, -2.0)
    method.perturb(0, 0, +1.0)
    for b, up, (_, p) in zip(before, plus, params):
        reach = torch.maximum(b.abs(), 2 * (up - b).abs())
        assert ((p.float() - b).abs() <= 2 * torch.finfo(dtype).eps * reach).all()


def ulp_free_sgd_reference(method, params, grads, step, lr):
    """θ − η ĝ computed through the method's own directions, for comparisons below."""
    before = [p.clone() for _, p in params]
    method.update(step, grads, lr)
    return before


def test_tezo_momentum_in_factor_space_equals_dense_momentum():
    params = fresh_params(m=7, n=5)
    ref_w = params[0][1].clone()
    method = make("tezo", params, OptimConfig(name="momentum", betas=[0.8]), rank=3, refresh_interval=0)
    dense_m = torch.zeros_like(ref_w)
    u, v = method.basis(0, params[0][1], 0)
    for step, g in enumerate([1.0, -2.0, 0.5, 3.0]):
        method.update(step, [g], lr=0.1)
        z = u @ torch.diag(method.tau(0, ref_w, step, 0)) @ v.T
        dense_m = 0.8 * dense_m + 0.2 * g * z
        ref_w -= 0.1 * dense_m / 3
    torch.testing.assert_close(params[0][1], ref_w)
    assert method.state_dict()["m.w"].numel() == 3  # r numbers per layer


def test_tezo_adam_keeps_2r_numbers_and_matches_the_spec_formula():
    params = fresh_params(m=7, n=5)
    ref_w = params[0][1].clone().double()
    method = make("tezo", params, OptimConfig(name="adam", betas=[0.8, 0.9]), rank=3, refresh_interval=0)
    u, v = (t.double() for t in method.basis(0, params[0][1], 0))
    m1, m2 = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for step, g in enumerate([1.0, -2.0, 0.5, 3.0]):
        method.update(step, [g], lr=0.01)
        c = g * method.tau(0, params[0][1], step, 0).double()
        m1, m2 = 0.8 * m1 + 0.2 * c, 0.9 * m2 + 0.1 * c * c
        t = step + 1
        coeff = (m1 / (1 - 0.8**t)) / ((m2 / (1 - 0.9**t)).sqrt() + 1e-8)
        ref_w -= 0.01 * (u @ torch.diag(coeff) @ v.T) / 3
    torch.testing.assert_close(params[0][1].double(), ref_w, rtol=1e-5, atol=1e-6)
    state = method.state_dict()
    assert state["m.w"].numel() + state["v.w"].numel() == 6


def test_lozo_m_factor_momentum_equals_dense_momentum_across_refreshes():
    params = fresh_params(m=7, n=5)
    ref_w = params[0][1].clone().double()
    method = make("lozo", params, OptimConfig(name="momentum", betas=[0.7]), rank=2, lazy_interval=2)
    dense = torch.zeros_like(ref_w)
    for step, g in enumerate([1.0, -2.0, 0.5, 3.0, -1.0, 2.0]):
        k = step // 2
        v_new = method.v(0, params[0][1], k).double()
        if step and step % 2 == 0:  # the basis moved: N V_oldᵀ V_new / n, densely
            dense = dense @ v_new @ v_new.T / 5
        u = method.u(0, params[0][1], step, 0).double()
        method.update(step, [g], lr=0.1)
        dense = 0.7 * dense + 0.3 * g * u @ v_new.T
        ref_w -= 0.1 * dense / 2
    torch.testing.assert_close(params[0][1].double(), ref_w, rtol=1e-5, atol=1e-6)
    assert method.state_dict()["N.w"].shape == (7, 2)  # m·r, not m·n


def test_mezo_momentum_and_adam_equal_a_dense_reference():
    for kind, betas in (("momentum", [0.8]), ("adam", [0.8, 0.9])):
        params = fresh_params()
        ref = [p.clone() for _, p in params]
        method = make("mezo", params, OptimConfig(name=kind, betas=betas))
        state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in ref]
        for step, g in enumerate([1.0, -0.5, 2.0]):
            method.update(step, [g], lr=0.01)
            for i, p in enumerate(ref):
                d = g * method.dense(i, p, step, 0)
                mom, var = state[i]
                mom.mul_(0.8).add_(0.2 * d)
                if kind == "momentum":
                    p -= 0.01 * mom
                else:
                    var.mul_(0.9).add_(0.1 * d * d)
                    p -= 0.01 * (mom / (1 - 0.8 ** (step + 1))) / ((var / (1 - 0.9 ** (step + 1))).sqrt() + 1e-8)
        for (_, p), r in zip(params, ref):
            torch.testing.assert_close(p, r)
        assert method.state_dict()["m.w"].shape == (6, 5)  # full size, as SPEC says


def test_room_first_made_inside_a_forward_can_be_written_after_it():
    """Rooms for draws (`flat_like`) may be made first inside a forward's inference mode (a doubled
    batch's directions), then written by the update outside it."""
    from zoft.methods.base import flat_like

    with torch.inference_mode():
        flats, views = flat_like([torch.zeros(3), torch.zeros(2, 2, dtype=torch.float64)])
    for flat in flats:
        flat.zero_()
    views[1].add_(1.0)
    assert views[1].sum() == 4 and flats[1].sum() == 4


def test_sgd_decays_matrices_but_not_vectors():
    params = fresh_params()
    before = [p.clone() for _, p in params]
    method = make("mezo", params, OptimConfig(weight_decay=0.5))
    method.update(0, [0.0], lr=0.1)
    torch.testing.assert_close(params[0][1], before[0] * 0.95)
    torch.testing.assert_close(params[1][1], before[1])


def test_adazeta_query_schedule():
    assert [query_schedule(k, 0.85, 0.62, 15) for k in (1, 2, 10, 100, 160)] == [1, 1, 3, 14, 15]
    method = make("adazeta", fresh_params(), max_queries=4, target_queries=20, query_shrink=1.0)
    rate = math.log(20) / math.log(10)  # 100 steps of 10 per epoch
    assert method.rate() == pytest.approx(rate)
    assert [method.queries(s) for s in (0, 9, 10, 99)] == [1, 1, min(int(2**rate), 4), 4]


@pytest.mark.parametrize("name", ["lozo", "subzo", "tezo"])
def test_low_rank_methods_never_build_an_m_by_n_tensor(name):
    m = n = 512
    params = [("w", torch.randn(m, n) * 0.02)]
    method = make(name, params, rank=4)
    method.perturb(0, 0, 1.0)  # warm caches (bases) outside the profile
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        method.perturb(1, 0, 1.0)
        method.perturb(1, 0, -2.0)
        method.perturb(1, 0, 1.0)
        method.update(1, [0.3], lr=0.1)
    largest = max((e.cpu_memory_usage for e in prof.events()), default=0)
    assert largest < m * n * 4 / 16, largest


@pytest.mark.parametrize("noise", ["torch", "triton"])
@pytest.mark.parametrize("name, key", [("lozo", "lazy_interval"), ("subzo", "update_interval"), ("tezo", "refresh_interval")])
def test_drawing_the_next_step_early_changes_no_bit(name, key, noise):
    """On a GPU a step draws the next step's directions while its forwards run (`prefetch`): the
    same losses, projected gradients and weights as drawing them when needed, across basis changes,
    the vector's z included (with the fused kernel, drawn into buffers the step's update still reads)."""
    if noise == "triton" and not available():
        pytest.skip("needs Triton (its interpreter on the CPU)")
    device = "cuda" if noise == "triton" and kernels.compiled() else "cpu"  # where the kernel reads
    runs = []
    for early in (False, True):
        params = fresh_params(m=32, n=24, device=device)
        loss, _ = quadratic(params)
        method = make(name, params, rank=2, eps=1e-2, noise=noise, **{key: 2})
        calls = {"n": 0, "step": 0}

        def loss_then_prefetch():  # the second forward of a step is where `_estimate` prefetches
            value = loss()
            calls["n"] += 1
            if early and calls["n"] % 2 == 0:
                method.prefetch(calls["step"] + 1)
            return value

        results = []
        for step in range(6):
            calls["step"] = step
            results.append(method.step(loss_then_prefetch, step, 1e-2))
        runs.append(([(r.loss, r.grads) for r in results], [p.clone() for _, p in params]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_mezo_dense_direction_is_one_tensor_at_a_time():
    params = [("a", torch.zeros(512, 256)), ("b", torch.zeros(512, 256))]  # too large to be grouped (base.SMALL)
    method = make("mezo", params)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        method.perturb(0, 0, 1.0)
    assert max(e.cpu_memory_usage for e in prof.events()) <= 512 * 256 * 4


@pytest.mark.parametrize("name, optim, interval", [
    ("lozo", "sgd", 50), ("lozo", "momentum", 2), ("subzo", "sgd", 50), ("subzo", "sgd", 2),
    ("tezo", "sgd", 50), ("tezo", "adam", 2),
], ids=["lozo", "lozo-m-new-periods", "subzo", "subzo-new-periods", "tezo", "tezo-adam-new-periods"])
def test_a_low_rank_step_makes_three_weight_passes_and_draws_each_direction_once(name, optim, interval, monkeypatch):
    """In place, the last restore and the update share one addmm per matrix: the losses,
    projected gradients and weights of steps that restore by copy and update apart, to fp32
    rounding (which the finite differences magnify: ulp(L)/ε in a projected gradient)."""
    import zoft.engine.noise as noise_module
    import zoft.methods.lozo as lozo_module
    import zoft.methods.subzo as subzo_module
    import zoft.methods.tezo as tezo_module

    key = {"lozo": "lazy_interval", "subzo": "update_interval", "tezo": "refresh_interval"}[name]
    runs = {}
    for folded in (False, True):
        params = fresh_params(m=32, n=24)
        loss, _ = quadratic(params)
        method = make(name, params, OptimConfig(name=optim), rank=2, eps=1e-2, restore="arithmetic" if folded else "copy", **{key: interval})
        weight = params[0][1]
        passes, draws = [], []
        def counted_addmm(t, *args, addmm=torch.Tensor.addmm_, passes=passes, weight=weight, **kwargs):
            passes.append(t.data_ptr() == weight.data_ptr())
            return addmm(t, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "addmm_", counted_addmm)
        for module in (noise_module, lozo_module, subzo_module, tezo_module):  # keys tell the matrix's draws from the bias's
            real = module.gaussian
            monkeypatch.setattr(module, "gaussian", lambda *a, real=real, draws=draws, **k: (draws.append(a[2:]), real(*a, **k))[1])
        results, per_step = [], []
        for step in range(6):
            passes.clear(), draws.clear()
            results.append(method.step(loss, step, 1e-4))
            per_step.append((sum(passes), sum(1 for keys in draws if len(keys) == 5 and keys[3] == 0 and keys[4] == DIRECTION)))
        monkeypatch.undo()
        runs[folded] = results, [p.clone() for _, p in params], per_step
    (plain, plain_weights, _), (folded, folded_weights, per_step) = runs[False], runs[True]
    for a, b in zip(plain, folded):
        quantum = torch.finfo(torch.float32).eps * a.loss / 1e-2  # of a projected gradient: ulp(L)/ε
        assert b.grads == pytest.approx(a.grads, rel=1e-3, abs=2 * quantum) and b.loss == pytest.approx(a.loss, rel=1e-5)
    moved = max((w - p).abs().max() for w, (_, p) in zip(plain_weights, fresh_params(m=32, n=24)))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-4 * moved) for a, b in zip(plain_weights, folded_weights))
    if interval == 50:  # +ε, −2ε, then restore and update in one
        assert [p for p, _ in per_step[1:]] == [3] * 5
        assert [d for _, d in per_step[1:]] == [1] * 5  # the step's U, τ or S, drawn once
