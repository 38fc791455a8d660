"""The low-rank kernels (imported only where Triton is usable): the term of `zoft.engine.lowrank_linear`,
and the in-place W += α A Bᵀ of many matrices of `zoft.engine.lowrank_add`."""

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


@triton.jit
def add_lowrank_many_kernel(
    weights, factors, rows, cols, ranks, alphas, matrix_of, tile_m_of, tile_n_of,
    DTYPE: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """W_i += alpha_i · A_i B_iᵀ for many matrices of one dtype in one launch (W_i m×n contiguous,
    A_i m×r, B_i n×r; `factors` holds each one's A and B addresses and strides): program p does
    tile (tile_m_of[p], tile_n_of[p]) of matrix matrix_of[p], the product summed in fp32 by r
    FMAs (R ≥ r, a power of two) and added to W in fp32, rounded once, as addmm_ rounds it."""
    pid = tl.program_id(0)
    i = tl.load(matrix_of + pid)
    m, n, r = tl.load(rows + i), tl.load(cols + i), tl.load(ranks + i)
    w_ptr = tl.load(weights + i).to(tl.pointer_type(DTYPE))
    row = factors + i * 6  # A's address, B's, then A's strides and B's
    a_ptr, b_ptr = tl.load(row).to(tl.pointer_type(DTYPE)), tl.load(row + 1).to(tl.pointer_type(DTYPE))
    sam, sak, sbn, sbk = tl.load(row + 2), tl.load(row + 3), tl.load(row + 4), tl.load(row + 5)
    alpha = tl.load(alphas + i)
    rm = tl.load(tile_m_of + pid).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.load(tile_n_of + pid).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_m, in_n = rm < m, rn < n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in tl.static_range(R):
        if k < r:
            a = tl.load(a_ptr + rm * sam + k * sak, mask=in_m, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + rn * sbn + k * sbk, mask=in_n, other=0.0).to(tl.float32)
            acc += a[:, None] * b[None, :]
    mask = in_m[:, None] & in_n[None, :]
    ptrs = w_ptr + rm[:, None] * n + rn[None, :]
    w = tl.load(ptrs, mask=mask).to(tl.float32)
    tl.store(ptrs, (w + alpha * acc).to(DTYPE, fp_downcast_rounding="rtne"), mask=mask)
