"""The fused draw-and-add kernels of `zoft.engine.noise` (imported only where Triton is usable)."""

import triton
import triton.language as tl


@triton.jit
def _add_part(ptr, offs, n, alpha, z):
    mask = offs < n
    w = tl.load(ptr + offs, mask=mask)
    tl.store(ptr + offs, (w.to(tl.float32) + alpha * z).to(w.dtype, fp_downcast_rounding="rtne"), mask=mask)


@triton.jit
def _add_block(ptr, n, seed, block, alpha, BLOCK: tl.constexpr, ROUNDS: tl.constexpr):
    """ptr[i] += alpha · z_i over block `block` of a tensor: one Philox call gives the normals of
    four elements a quarter-block apart."""
    quarter: tl.constexpr = BLOCK // 4
    lane = tl.arange(0, quarter)
    z0, z1, z2, z3 = tl.randn4x(seed, block * quarter + lane, ROUNDS)
    start = block.to(tl.int64) * BLOCK + lane
    _add_part(ptr, start, n, alpha, z0)
    _add_part(ptr, start + quarter, n, alpha, z1)
    _add_part(ptr, start + 2 * quarter, n, alpha, z2)
    _add_part(ptr, start + 3 * quarter, n, alpha, z3)


@triton.jit(do_not_specialize=["seed", "alpha"])
def add_gaussian_kernel(ptr, n, seed, alpha, BLOCK: tl.constexpr, ROUNDS: tl.constexpr):
    """One tensor: program i does block i."""
    _add_block(ptr, n, seed, tl.program_id(0), alpha, BLOCK, ROUNDS)


@triton.jit(do_not_specialize=["alpha"])
def add_gaussian_many_kernel(
    addresses, sizes, seeds, tensor_of, block_of, alpha, DTYPE: tl.constexpr, BLOCK: tl.constexpr, ROUNDS: tl.constexpr
):
    """Many tensors of one dtype in one launch: program i does block `block_of[i]` of tensor
    `tensor_of[i]`, with that tensor's seed, so each tensor gets the z the one-tensor kernel gives it."""
    pid = tl.program_id(0)
    tensor = tl.load(tensor_of + pid)
    ptr = tl.load(addresses + tensor).to(tl.pointer_type(DTYPE))
    _add_block(ptr, tl.load(sizes + tensor), tl.load(seeds + tensor), tl.load(block_of + pid), alpha, BLOCK, ROUNDS)
