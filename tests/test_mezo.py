"""MeZO's math: regenerable directions, restore, the update rule, and unbiasedness vs autograd."""

import copy

import pytest
import torch

from zoft.config.methods import MezoConfig
from zoft.config.schema import OptimConfig
from zoft.engine.zo import estimate
from zoft.methods.mezo import MeZO


def layer_params(dtype=torch.float32):
    torch.manual_seed(0)
    return [("w", torch.randn(8, 6, dtype=dtype) * 0.05), ("b", torch.randn(6, dtype=dtype) * 0.05)]


def make(params, restore="arithmetic", **optim):
    return MeZO(params, MezoConfig(eps=1e-3, restore=restore), OptimConfig(**optim), seed=7)


def test_direction_regenerates_alone_and_differs_across_keys():
    params = layer_params()
    m = make(params)
    z1 = m.dense(0, params[0][1], step=3, query=0)
    m.dense(1, params[1][1], step=3, query=0)  # drawing another tensor in between changes nothing
    assert torch.equal(z1, m.dense(0, params[0][1], step=3, query=0))
    assert not torch.equal(z1, m.dense(0, params[0][1], step=4, query=0))
    assert not torch.equal(z1, m.dense(0, params[0][1], step=3, query=1))
    other_seed = MeZO(params, MezoConfig(), OptimConfig(), seed=8)
    assert not torch.equal(z1, other_seed.dense(0, params[0][1], step=3, query=0))


def test_copy_restore_is_bit_exact_in_fp32_and_bf16():
    for dtype in (torch.float32, torch.bfloat16):
        params = layer_params(dtype)
        before = [p.clone() for _, p in params]
        m = make(params, restore="copy")
        est = estimate(m, lambda: float(sum(p.float().sum() for _, p in params)), 0, m.cfg)
        assert all(torch.equal(a, p) for a, (_, p) in zip(before, params))
        assert est.grads[0] != 0


def ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in units of the last place of the larger magnitude."""
    spacing = torch.finfo(a.dtype).eps * torch.maximum(a.abs(), b.abs()).float()
    return ((a.float() - b.float()).abs() / spacing.clamp_min(torch.finfo(a.dtype).tiny))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_arithmetic_restore_drifts_by_rounding_only(dtype):
    params = [("w", torch.randn(64, 64, dtype=dtype) * 0.05)]
    before = params[0][1].clone()
    m = make(params)
    m.perturb(0, 0, +1.0)
    m.perturb(0, 0, -2.0)
    m.perturb(0, 0, +1.0)
    drift = (params[0][1].float() - before.float()).abs()
    eps_scale = 1e-3 * m.dense(0, before, 0, 0).float().abs()  # rounding happens at |w| + 2ε|z|
    bound = 2 * torch.finfo(dtype).eps * (before.float().abs() + 2 * eps_scale)
    assert (drift <= bound).all()


def test_sgd_update_is_theta_minus_lr_mean_of_g_z_with_decay_on_matrices_only():
    params = layer_params()
    before = [p.clone() for _, p in params]
    m = make(params, lr=0.1, weight_decay=0.5)
    m.cfg.n_queries = 2
    m.update(step=5, grads=[2.0, -1.0], lr=0.1)
    z = [[m.dense(i, b, 5, q) for q in range(2)] for i, b in enumerate(before)]
    w_expected = before[0] * (1 - 0.1 * 0.5) - 0.1 * (2.0 * z[0][0] - 1.0 * z[0][1]) / 2
    b_expected = before[1] - 0.1 * (2.0 * z[1][0] - 1.0 * z[1][1]) / 2  # no decay on 1-D
    torch.testing.assert_close(params[0][1], w_expected)
    torch.testing.assert_close(params[1][1], b_expected)


def test_momentum_and_adam_equal_a_dense_reference():
    for kind in ("momentum", "adam"):
        params = layer_params()
        ref = [p.clone() for _, p in params]
        m = make(params, name=kind, betas=[0.8] if kind == "momentum" else [0.8, 0.9])
        opt_state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in ref]
        for step, g in enumerate([1.0, -0.5, 2.0]):
            m.update(step, [g], lr=0.01)
            for i, p in enumerate(ref):
                d = g * m.dense(i, p, step, 0)
                mom, var = opt_state[i]
                mom.mul_(0.8).add_(d * 0.2)
                if kind == "momentum":
                    p -= 0.01 * mom
                else:
                    var.mul_(0.9).add_(d * d * 0.1)
                    p -= 0.01 * (mom / (1 - 0.8 ** (step + 1))) / ((var / (1 - 0.9 ** (step + 1))).sqrt() + 1e-8)
        for (_, p), r in zip(params, ref):
            torch.testing.assert_close(p, r)
        assert set(m.state_dict()) >= {"m.w", "m.b"}


def test_average_of_estimates_approaches_the_autograd_gradient():
    """E[g z] = ∇L for SPSA: the cosine to the true gradient grows with the number of samples."""
    torch.manual_seed(1)
    a = torch.randn(5, 4)
    target = torch.randn(5, 4)
    w = torch.zeros(5, 4)
    params = [("w", w)]
    loss = lambda: float(((w - target) * a).pow(2).sum())  # noqa: E731
    grad = 2 * a * a * (w - target)
    m = MeZO(params, MezoConfig(eps=1e-4), OptimConfig(), seed=0)

    def cosine(n):
        total = torch.zeros_like(w)
        for step in range(n):
            g = estimate(m, loss, step, m.cfg).grads[0]
            total += g * m.dense(0, w, step, 0)
        return torch.nn.functional.cosine_similarity(total.flatten(), grad.flatten(), dim=0)

    c100, c3000 = cosine(100), cosine(3000)
    assert c100 > 0.5 and c3000 > 0.95 and c3000 > c100
