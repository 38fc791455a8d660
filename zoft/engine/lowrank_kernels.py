"""The low-rank kernels (imported only where Triton is usable): the linear layer of `zoft.engine.lowrank_linear`,
and the in-place W += α A Bᵀ of many matrices of `zoft.engine.lowrank_add`."""

import triton
import triton.language as tl


@triton.jit
def lowrank_linear_kernel(
    x_desc, w_desc, y_desc, xb0_desc, xb1_desc, f0_desc, f1_desc, bias_ptr, shift_ptr,
    M, N, K, half, shift_scale,
    HAS_BIAS: tl.constexpr, HAS_SHIFT: tl.constexpr, DOUBLED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    PROGRAMS: tl.constexpr, SPLIT_STORE: tl.constexpr,
):
    """y = x Wᵀ + bias + (x B) F_hᵀ (+ shift_scale · shift on rows ≥ half), h = 0 for rows < half,
    else 1, all summed in one fp32 tile and rounded once. Persistent: PROGRAMS programs walk the
    output tiles, GROUP_M row blocks at a time (sharing W in L2). Every operand moves by TMA: x and
    W over K, then x B (M × r, a half's rows each) and F_hᵀ (r × N), whose missing columns and
    rows TMA fills with zeros up to the descriptors' blocks (≥ 16, what a tensor-core product
    needs), so the term is one more product on the accumulator. Over a doubled batch a tile takes
    both halves' products: each half's x B lies outside the other half's rows (the second read
    from row off_m − half, which is negative above it), where TMA reads zeros, so a tile that
    straddles the halves needs no mask and one that does not adds a product of zeros."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * tiles_n
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, PROGRAMS, flatten=True):
        first_m = (tile // in_group) * GROUP_M
        group_m = min(tiles_m - first_m, GROUP_M)
        off_m = (first_m + (tile % in_group) % group_m) * BLOCK_M
        off_n = ((tile % in_group) // group_m) * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(tl.cdiv(K, BLOCK_K)):
            acc = tl.dot(x_desc.load([off_m, k * BLOCK_K]), w_desc.load([off_n, k * BLOCK_K]).T, acc)
        acc = tl.dot(xb0_desc.load([off_m, 0]), f0_desc.load([0, off_n]), acc)
        if DOUBLED:
            acc = tl.dot(xb1_desc.load([off_m - half, 0]), f1_desc.load([0, off_n]), acc)
        rm = off_m + tl.arange(0, BLOCK_M)
        rn = off_n + tl.arange(0, BLOCK_N)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        if HAS_SHIFT:
            lower_rows = tl.where(rm >= half, shift_scale, 0.0)
            acc += lower_rows[:, None] * tl.load(shift_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        if SPLIT_STORE:  # two half-width stores: half the shared memory for the output tile
            left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
            y_desc.store([off_m, off_n], left.to(y_desc.dtype))
            y_desc.store([off_m, off_n + BLOCK_N // 2], right.to(y_desc.dtype))
        else:
            y_desc.store([off_m, off_n], acc.to(y_desc.dtype))


@triton.jit
def add_lowrank_many_kernel(
    base, offsets, factors, rows, cols, ranks, alphas, matrix_of, tile_m_of, tile_n_of,
    DTYPE: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, VECTOR: tl.constexpr,
):
    """W_i += alpha_i · A_i B_iᵀ for many matrices of one dtype in one launch (W_i m×n contiguous,
    `offsets[i]` elements from `base`; A_i m×r, B_i n×r; `factors` holds each one's A and B
    addresses and strides): program p does tile (tile_m_of[p], tile_n_of[p]) of matrix
    matrix_of[p], the product summed in fp32 by r FMAs (R ≥ r, a power of two) and added to W in
    fp32, rounded once, as addmm_ rounds it. Every W's offset and width is a multiple of VECTOR,
    which lets its loads and stores move that many elements at once (an address read from a
    table says nothing of its alignment)."""
    pid = tl.program_id(0)
    i = tl.load(matrix_of + pid)
    m, n, r = tl.load(rows + i), tl.multiple_of(tl.load(cols + i), VECTOR), tl.load(ranks + i)
    w_ptr = base + tl.multiple_of(tl.load(offsets + i), VECTOR)
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
