"""The fused draw-and-add kernels of `zoft.engine.noise` (imported only where Triton is usable)."""

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _box_muller(u1, u2, FAST: tl.constexpr):
    """Two N(0, 1) from two uniforms: Triton's own transform (`randn4x`), on the GPU's approximate
    log, sine and cosine when FAST (a pass is bound by these, not by memory, with the precise ones:
    benchmarks/noise_kernel.py); the interpreter, which has no approximate ones, takes the precise."""
    if FAST:
        u1 = tl.maximum(1.0e-7, u1)
        th = 6.283185307179586 * u2
        r = tl.sqrt(-2.0 * libdevice.fast_logf(u1))
        n1, n2 = r * libdevice.fast_cosf(th), r * libdevice.fast_sinf(th)
    else:
        n1, n2 = tl.random.pair_uniform_to_normal(u1, u2)
    return n1, n2


@triton.jit
def _normals(seed, offset, ROUNDS: tl.constexpr, FAST: tl.constexpr):
    """Four blocks of normals from one Philox4x32 call per offset."""
    u0, u1, u2, u3 = tl.rand4x(seed, offset, ROUNDS)
    z0, z1 = _box_muller(u0, u1, FAST)
    z2, z3 = _box_muller(u2, u3, FAST)
    return z0, z1, z2, z3


@triton.jit
def _add_part(ptr, offs, n, alpha, z, alpha2, y, TWO: tl.constexpr, MASKED: tl.constexpr):
    """ptr += alpha·z, then (TWO) += alpha2·y, each sum rounded to the tensor's dtype as its own
    pass would round it: two terms in one read-write, bit for bit what two passes give. Only a
    tensor's last block needs MASKED: unmasked, loads and stores go 16 bytes at a time where the
    address allows it."""
    mask = offs < n if MASKED else None
    w = tl.load(ptr + offs, mask=mask)
    dtype = w.dtype
    w = (w.to(tl.float32) + alpha * z).to(dtype, fp_downcast_rounding="rtne")
    if TWO:
        w = (w.to(tl.float32) + alpha2 * y).to(dtype, fp_downcast_rounding="rtne")
    tl.store(ptr + offs, w, mask=mask)


@triton.jit
def _add_block(ptr, n, seed, alpha, seed2, alpha2, block, BLOCK: tl.constexpr, ROUNDS: tl.constexpr,
               FAST: tl.constexpr, TWO: tl.constexpr, MASKED: tl.constexpr = True):
    """ptr[i] += alpha · z_i (then alpha2 · y_i, y from seed2) over block `block` of a tensor: one
    Philox call gives the normals of four elements a quarter-block apart."""
    quarter: tl.constexpr = BLOCK // 4
    lane = tl.arange(0, quarter)
    offset = block * quarter + lane
    z0, z1, z2, z3 = _normals(seed, offset, ROUNDS, FAST)
    y0, y1, y2, y3 = z0, z1, z2, z3
    if TWO:
        y0, y1, y2, y3 = _normals(seed2, offset, ROUNDS, FAST)
    start = block.to(tl.int64) * BLOCK + lane
    _add_part(ptr, start, n, alpha, z0, alpha2, y0, TWO, MASKED)
    _add_part(ptr, start + quarter, n, alpha, z1, alpha2, y1, TWO, MASKED)
    _add_part(ptr, start + 2 * quarter, n, alpha, z2, alpha2, y2, TWO, MASKED)
    _add_part(ptr, start + 3 * quarter, n, alpha, z3, alpha2, y3, TWO, MASKED)


@triton.jit(do_not_specialize=["seed", "alpha"])
def add_gaussian_kernel(ptr, n, seed, alpha, BLOCK: tl.constexpr, ROUNDS: tl.constexpr, FAST: tl.constexpr):
    """One tensor: program i does block i."""
    _add_block(ptr, n, seed, alpha, seed, 0.0, tl.program_id(0), BLOCK, ROUNDS, FAST, False)


@triton.jit(do_not_specialize=["alpha", "alpha2"])
def add_gaussian_many_kernel(
    base, offsets, sizes, seeds, seeds2, tensor_of, block_of, alpha, alpha2,
    BLOCK: tl.constexpr, ROUNDS: tl.constexpr, FAST: tl.constexpr, TWO: tl.constexpr, VECTOR: tl.constexpr,
):
    """Many tensors of one dtype in one launch: program i does block `block_of[i]` of tensor
    `tensor_of[i]`, which lies `offsets[t]` elements from `base`, with that tensor's seed (and
    seed2), so each tensor gets the z the one-tensor kernel gives it. Every offset is a multiple
    of VECTOR, which tells the compiler how many elements a load may move at once (an address
    read from a table says nothing of its alignment: 2-byte loads made a pass 1.5× a bare
    read-write of memory)."""
    pid = tl.program_id(0)
    tensor = tl.load(tensor_of + pid)
    ptr = base + tl.multiple_of(tl.load(offsets + tensor), VECTOR)
    n, block = tl.load(sizes + tensor), tl.load(block_of + pid)
    seed, seed2 = tl.load(seeds + tensor), tl.load(seeds2 + tensor)
    if (block.to(tl.int64) + 1) * BLOCK <= n:  # a full block (int64: a tensor may pass 2**31 elements)
        _add_block(ptr, n, seed, alpha, seed2, alpha2, block, BLOCK, ROUNDS, FAST, TWO, False)
    else:
        _add_block(ptr, n, seed, alpha, seed2, alpha2, block, BLOCK, ROUNDS, FAST, TWO, True)
