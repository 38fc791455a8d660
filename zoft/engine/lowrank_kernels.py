"""The fused low-rank linear kernel of `zoft.engine.lowrank_linear` (imported only where Triton is usable)."""

import triton
import triton.language as tl


@triton.jit
def lowrank_linear_kernel(
    x_desc, w_desc, y_desc, bias_ptr, xb_ptr, factor_ptr, shift_ptr,
    M, N, K, half, rank, shift_scale,
    sxbm, sxbr, sfh, sfn, sfr,
    HAS_BIAS: tl.constexpr, HAS_SHIFT: tl.constexpr, DOUBLED: tl.constexpr,
    R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """y = x Wᵀ + bias + (x B) F_hᵀ (+ shift_scale · shift on rows ≥ half), h = 0 for rows < half,
    else 1, with x B given (M×rank; R is the rank padded to a power of two ≥ 16): the rank-r term,
    bias and shift are added to the fp32 tile before its one rounding. x, W and y move by TMA, which
    zero-fills reads past the edges and clips writes there."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * tiles_n  # tiles of GROUP_M row blocks run together, sharing W in L2
    first_m = (pid // in_group) * GROUP_M
    group_m = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_m
    pid_n = (pid % in_group) // group_m
    off_m = pid_m * BLOCK_M
    off_n = pid_n * BLOCK_N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        x = x_desc.load([off_m, k * BLOCK_K])
        w = w_desc.load([off_n, k * BLOCK_K])
        acc = tl.dot(x, w.T, acc)

    rm = off_m + tl.arange(0, BLOCK_M)
    rn = off_n + tl.arange(0, BLOCK_N)
    rr = tl.arange(0, R)
    in_rank = rr < rank
    xb = tl.load(xb_ptr + rm[:, None] * sxbm + rr[None, :] * sxbr, mask=(rm[:, None] < M) & in_rank[None, :], other=0.0)
    f_ptrs = factor_ptr + rr[:, None] * sfr + rn[None, :] * sfn
    f_mask = in_rank[:, None] & (rn[None, :] < N)
    first = tl.load(f_ptrs, mask=f_mask, other=0.0)
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
    y_desc.store([off_m, off_n], acc.to(y_desc.dtype))
