"""The fused draw-and-add kernel of `zoft.engine.noise` (imported only where Triton is usable)."""

import triton
import triton.language as tl


@triton.jit
def _add_part(ptr, offs, n, alpha, z):
    mask = offs < n
    w = tl.load(ptr + offs, mask=mask)
    tl.store(ptr + offs, (w.to(tl.float32) + alpha * z).to(w.dtype, fp_downcast_rounding="rtne"), mask=mask)


@triton.jit(do_not_specialize=["seed", "alpha"])
def add_gaussian_kernel(ptr, n, seed, alpha, BLOCK: tl.constexpr, ROUNDS: tl.constexpr):
    """ptr[i] += alpha · z_i: one Philox call gives the normals of four elements a quarter-block apart."""
    quarter: tl.constexpr = BLOCK // 4
    lane = tl.arange(0, quarter)
    z0, z1, z2, z3 = tl.randn4x(seed, tl.program_id(0) * quarter + lane, ROUNDS)
    start = tl.program_id(0).to(tl.int64) * BLOCK + lane
    _add_part(ptr, start, n, alpha, z0)
    _add_part(ptr, start + quarter, n, alpha, z1)
    _add_part(ptr, start + 2 * quarter, n, alpha, z2)
    _add_part(ptr, start + 3 * quarter, n, alpha, z3)
