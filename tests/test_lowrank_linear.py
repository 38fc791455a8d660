"""The low-rank linear layer (engine/lowrank_linear.py: one GEMM with the term in its epilogue) against
the same sum in torch: compiled on a GPU in bf16, or run by Triton's interpreter on the CPU in fp16
(the interpreter's bf16 products are wrong)."""

from __future__ import annotations

import itertools

import pytest
import torch

from zoft.engine import kernels, lowrank_linear

from test_functional import VARIANTS
from test_methods_train import fixed_batch

COMPILED = kernels.compiled()
DEVICE, DTYPE = ("cuda", torch.bfloat16) if COMPILED else ("cpu", torch.float16)
ULP = torch.finfo(DTYPE).eps
pytestmark = pytest.mark.skipif(
    not lowrank_linear.usable(torch.zeros(8, 8, dtype=DTYPE, device=DEVICE), torch.zeros(8, 8, dtype=DTYPE, device=DEVICE)),
    reason="needs Triton (its interpreter on the CPU)",
)


@pytest.mark.parametrize(
    "rows, k, n, rank, doubled, bias, shift",
    [
        (40, 48, 40, 8, False, True, False),  # one factor; rows not a multiple of a tile
        (64, 32, 48, 4, True, True, True),  # a doubled batch with its bias correction
        (48, 24, 24, 3, True, False, False),  # no bias; halves splitting a tile (of 16 rows under the interpreter)
        (32, 64, 32, 20, True, True, True),  # a rank over 16 (padded to 32)
        (48, 72, 24, 8, True, True, True),  # more inputs than outputs (a down projection)
    ],
)
def test_the_kernel_sums_what_the_eager_terms_sum(rows, k, n, rank, doubled, bias, shift):
    g = torch.Generator().manual_seed(rows + rank)
    x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    basis = torch.randn(k, rank, generator=g)
    factors = torch.randn(2 if doubled else 1, n, rank, generator=g)
    z = torch.randn(n, generator=g) if shift else None
    half = rows // 2 if doubled else None
    low = lambda t: None if t is None else t.to(DEVICE, DTYPE)  # noqa: E731
    got = lowrank_linear.fused(low(x), low(w), low(b), lowrank_linear.project(low(x), low(basis)), low(factors), half, low(z), -0.3)
    assert got.dtype == DTYPE
    want = lowrank_linear.reference(*(None if t is None else low(t).float() for t in (x, w, b, basis, factors)), half, None if z is None else low(z).float(), -0.3)
    # the same 16-bit inputs; x·B, the term and the output rounded to 16 bits: a few ulp of the largest values
    torch.testing.assert_close(got.float(), want, rtol=0, atol=want.abs().max().item() * 4 * ULP)
    if doubled:  # the second half's factor is used there: with F₁ swapped for F₀ the sum differs
        assert not torch.allclose(lowrank_linear.reference(x, w, b, basis, factors[[0, 0]], half, z, -0.3).to(DEVICE), want, atol=0.1)


def test_the_functional_path_adds_its_terms_with_the_kernel(tiny, monkeypatch):
    """16-bit OPT (biases, a tied embedding) over a doubled batch, at each of three steps (a basis
    change and accumulated updates included): at the same weights, the same two losses, and so
    projected gradient, with every linear layer's terms added by the kernel as by F.linear and the
    hooks. (Whole runs are not compared: in bf16 a projected gradient is mostly rounding, 2ε being
    a few ulp of the loss, so two runs part after one step.)"""
    launches = []
    fused, usable = lowrank_linear.fused, lowrank_linear.usable
    # the factors (H, N, r) come with N contiguous, so the kernel reads each half's Fᵀ by TMA
    # without a copy, and x B with 8 columns (the basis widened, zeros past r) out of one product
    # per group of layers reading one input
    monkeypatch.setattr(lowrank_linear, "fused", lambda *a, **kw: launches.append((
        a[4].stride(1), a[3].shape[1], bool(a[3][:, a[4].shape[-1]:].eq(0).all()), a[3].untyped_storage().data_ptr(), a[3],  # (x B kept alive: no address is reused)
    )) or fused(*a, **kw))
    method, optim = VARIANTS["lozo"]
    session, loss_fn = fixed_batch(
        tiny, model={"name_or_path": "tiny:opt-32x2", "dtype": "bf16" if COMPILED else "fp16", "device": DEVICE},
        method={**method, "path": "functional", "paired_forward": "always"}, optim=optim,
    )
    zo, eps = session.method, session.method.cfg.eps
    for step in range(3):
        zo.rebase(step)
        with torch.inference_mode():
            with_kernel = [float(v) for v in zo.paired_losses(loss_fn, step, 0)]
            monkeypatch.setattr(lowrank_linear, "usable", lambda x, w: False)
            hooks = [float(v) for v in loss_fn.pair()]
            monkeypatch.setattr(lowrank_linear, "usable", usable)
        zo.functional.clear_direction()
        assert with_kernel == pytest.approx(hooks, rel=2e-3)
        quantum = abs(hooks[0]) * ULP / (2 * eps)  # a loss's last bit, in a projected gradient
        assert (with_kernel[0] - with_kernel[1]) / (2 * eps) == pytest.approx((hooks[0] - hooks[1]) / (2 * eps), abs=2 * quantum)
        zo.step(loss_fn, step, zo.optim.lr)
    assert launches, "the kernel never ran"
    assert {launch[:3] for launch in launches} == {(1, 8, True)}  # LOZO's rank 2, widened to 8
    # a forward: each of two layers' q, k, v, out_proj, fc1, fc2, then the tied LM head (13
    # launches); each layer's q, k and v take their x B from one product, every other its own
    runs = [len(list(run)) for _, run in itertools.groupby(launch[3] for launch in launches)]
    assert set(runs) == {1, 3} and runs.count(3) * 13 == 2 * len(launches)


def test_rows_out_of_tma_alignment_take_the_hooks():
    """TMA moves rows in multiples of 16 bytes: other shapes keep F.linear and the hooks."""
    w = torch.zeros(16, 16, dtype=DTYPE, device=DEVICE)
    assert lowrank_linear.usable(torch.zeros(2, 8, 16, dtype=DTYPE, device=DEVICE), w)
    assert not lowrank_linear.usable(torch.zeros(3, 5, 16, dtype=DTYPE, device=DEVICE), w)  # 15 rows
    assert not lowrank_linear.usable(torch.zeros(8, 12, dtype=DTYPE, device=DEVICE), torch.zeros(16, 12, dtype=DTYPE, device=DEVICE))
    assert not lowrank_linear.usable(torch.zeros(8, 16, dtype=DTYPE, device=DEVICE), torch.zeros(12, 16, dtype=DTYPE, device=DEVICE))


def test_siblings_share_x_b_only_within_one_forward_and_basis(monkeypatch):
    """Two layers reading one input take x B from one product; a new basis, or a new forward
    (`set_direction`) on the very same tensor, changed in place, takes a product of its own."""
    from torch import nn

    from zoft.methods.functional import FunctionalPath

    class Siblings(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k = nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x):
            return self.q(x) + self.k(x)

    torch.manual_seed(0)
    model = Siblings().to(DEVICE, DTYPE)
    params = list(model.named_parameters())
    matrices = [i for i, (name, _) in enumerate(params) if name.endswith("weight")]
    path = FunctionalPath(model, params, set(matrices))
    path.allocate(matrices, {i: (16, 2) for i in matrices})
    x = torch.randn(8, 16, device=DEVICE, dtype=DTYPE)

    def kernel_against_hooks():
        got = model(x)
        monkeypatch.setattr(lowrank_linear, "usable", lambda *a: False)
        want = model(x)
        monkeypatch.undo()  # the error in ulps of the largest value (a stale x B: hundreds)
        return ((got.float() - want.float()).abs().max() / (want.float().abs().max() * ULP)).item()

    for _ in range(2):  # a basis, then the next period's, the input the same tensor
        for i in matrices:
            path.set_basis(i, torch.randn(16, 2, device=DEVICE, dtype=DTYPE))
        path.set_direction(torch.randn(64, device=DEVICE, dtype=DTYPE), eps=0.5, scale=1.0)
        assert kernel_against_hooks() < 4
    x.add_(3.0)  # the next forward's input: the same tensor, changed in place
    path.set_direction(torch.randn(64, device=DEVICE, dtype=DTYPE), eps=0.5, scale=-1.0)
    assert kernel_against_hooks() < 4
    path.close()
