"""The low-rank term kernel of `zoft.engine.lowrank_linear` (imported only where Triton is usable)."""

import triton
import triton.language as tl


@triton.jit
def lowrank_term_kernel(
    y_ptr, bias_ptr, xb_ptr, factor_ptr, shift_ptr,
    M, N, half, rank, shift_scale,
    sym, sxbm, sxbr, sfh, sfn, sfr,
    HAS_BIAS: tl.constexpr, HAS_SHIFT: tl.constexpr, DOUBLED: tl.constexpr,
    R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """y = bias + (x B) F_hᵀ (+ shift_scale · shift on rows ≥ half), h = 0 for rows < half, else 1,
    with x B given (M×rank; R is the rank padded to a power of two ≥ 16), summed in fp32 and
    rounded once: what cuBLAS then adds x Wᵀ to."""
    off_m = tl.program_id(0) * BLOCK_M
    off_n = tl.program_id(1) * BLOCK_N
    rm = off_m + tl.arange(0, BLOCK_M)
    rn = off_n + tl.arange(0, BLOCK_N)
    rr = tl.arange(0, R)
    in_rank = rr < rank
    xb = tl.load(xb_ptr + rm[:, None] * sxbm + rr[None, :] * sxbr, mask=(rm[:, None] < M) & in_rank[None, :], other=0.0)
    f_ptrs = factor_ptr + rr[:, None] * sfr + rn[None, :] * sfn
    f_mask = in_rank[:, None] & (rn[None, :] < N)
    first = tl.load(f_ptrs, mask=f_mask, other=0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if DOUBLED:
        upper = (rm < half)[:, None]
        second = tl.load(f_ptrs + sfh, mask=f_mask, other=0.0)
        acc = tl.dot(tl.where(upper, xb, 0.0).to(xb.dtype), first, acc)
        acc = tl.dot(tl.where(upper, 0.0, xb).to(xb.dtype), second, acc)
    else:
        acc = tl.dot(xb, first, acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if HAS_SHIFT:
        lower = tl.where(rm >= half, shift_scale, 0.0)
        acc += lower[:, None] * tl.load(shift_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * sym + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))
