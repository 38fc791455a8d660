"""A linear layer with a low-rank term in one GPU kernel: y = x Wᵀ + b + (x B) Fᵀ.

The functional path (methods/functional.py) adds (x B)(A_acc ± εA)ᵀ to every trained linear
layer's output. Done after the layer (the hooks), that term costs a read and a write of y, and
over a doubled batch the bias correction of the second half (−2εz) another half-pass; written
first by a small kernel and added to by cuBLAS (β = 1, session 12), it still cost a write of y
and cuBLAS's read of it: 1.2-1.5× the plain layer on OPT-1.3B's shapes. Here one persistent
Triton GEMM (TMA loads, the output tiles walked by one program per SM) sums x·Wᵀ over K and then
adds the term as one more tensor-core product from x B and Fᵀ, M × r and r × N, which TMA pads
with zeros; the bias and the correction go into the same fp32 tile, rounded once
(benchmarks/lowrank_linear.py times it against cuBLAS's plain layer). `reference` is the hooks'
sum; tests compare the two, compiled on a GPU and under Triton's interpreter on the CPU.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from zoft.engine import kernels

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages, split store), chosen on the H100 by benchmarks/lowrank_linear.py
TILES = (128, 256, 64, 8, 8, 3, True)
INTERPRETED = (16, 16, 16, 2, 1, 1, False)
RANK_BLOCK = 16  # the term's product pads r up to this (or the next power of two): a tensor-core K
DTYPES = (torch.bfloat16, torch.float16)


def reference(x, weight, bias, basis, factors, half=None, shift=None, shift_scale=0.0):
    """y = x Wᵀ + b + (x B) F_hᵀ in torch: F is (H, N, r) and B the first r columns of `basis`;
    h = 0 for rows < `half` of x's rows flattened, else 1 (no `half`: H = 1); rows ≥ half also get
    shift_scale · shift."""
    y = F.linear(x, weight, bias)
    flat, out = x.reshape(-1, x.shape[-1]), y.view(-1, y.shape[-1])
    xb = flat @ basis[:, :factors.shape[-1]]
    rows = out.shape[0] if half is None else half
    out[:rows].addmm_(xb[:rows], factors[0].T)
    if half is not None:
        out[half:].addmm_(xb[half:], factors[1].T)
        if shift is not None:
            out[half:].add_(shift.to(y.dtype), alpha=shift_scale)
    return y


def pitch(rank: int) -> int:
    """Columns of a `widened` basis of rank r: r rounded up to a multiple of 8, so that x times it
    comes out in rows of 16 bytes (16-bit values), what TMA reads."""
    return -(-rank // 8) * 8


def widened(basis: torch.Tensor) -> torch.Tensor:
    """B (K × r) with zero columns up to `pitch(r)` (the functional path keeps its bases so);
    B itself, not a copy, where r is already a multiple of 8."""
    missing = pitch(basis.shape[1]) - basis.shape[1]
    return F.pad(basis, (0, missing)) if missing else basis


def project(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """x B as `fused` reads it: M × r' (x's rows flattened), B `widened` first (a copy where its
    width is not a multiple of 8, which the functional path avoids by keeping its bases widened)."""
    return x.reshape(-1, x.shape[-1]) @ widened(basis)


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `fused` runs for these: 16-bit activations and a weight of their dtype, both
    contiguous, on a CUDA GPU with Triton, with rows, inputs and outputs in multiples of 16 bytes
    (TMA's alignment). Under Triton's interpreter (tests), fp16 only: its bf16 products are wrong
    (Triton 3.9)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return (
        x.dtype in DTYPES and weight.dtype == x.dtype and x.is_contiguous() and weight.is_contiguous()
        and rows % 8 == 0 and x.shape[-1] % 8 == 0 and weight.shape[0] % 8 == 0 and rows > 0
        and x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0 and _kernel() is not None
        and (x.device.type == "cuda" or (kernels.interpreted() and x.dtype == torch.float16))
    )


def fused(x, weight, bias, xb, factors, half=None, shift=None, shift_scale=0.0, tiles=None):
    """`reference`'s sum (where `usable`) from x B already taken (`project`): `xb` is M × r', its
    rows 16-byte aligned and its columns past the factors' rank r zeros (a column block of a wider
    product will do: siblings reading one x share one). `factors` (H, N, r) is read as Fᵀ, r × N a
    half, without a copy where its N dimension is contiguous (as the functional path lays it out);
    `tiles` overrides TILES."""
    import triton
    from triton.tools.tensor_descriptor import TensorDescriptor

    flat = x.reshape(-1, x.shape[-1])
    m, n = flat.shape[0], weight.shape[0]
    rank_block = max(RANK_BLOCK, triton.next_power_of_2(xb.shape[1]))
    halves = (xb,) if half is None else (xb[:half], xb[half:])
    f_t = factors.transpose(1, 2)
    if not all(t.stride(-1) == 1 and t.stride(-2) % 8 == 0 and t.data_ptr() % 16 == 0 for t in f_t):
        f_t = f_t.contiguous()
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    out = y.view(m, n)
    block_m, block_n, block_k, group_m, warps, stages, split = tiles or (INTERPRETED if kernels.interpreted() else TILES)
    programs = min(triton.cdiv(m, block_m) * triton.cdiv(n, block_n), _processors(x.device))
    described = TensorDescriptor.from_tensor
    with kernels.on(x.device):
        _kernel()[(programs,)](
            described(flat, [block_m, block_k]), described(weight, [block_n, block_k]),
            described(out, [block_m, block_n // 2 if split else block_n]),
            described(halves[0], [block_m, rank_block]), described(halves[-1], [block_m, rank_block]),
            described(f_t[0], [rank_block, block_n]), described(f_t[-1], [rank_block, block_n]),
            bias if bias is not None else out, shift if shift is not None else out,
            m, n, flat.shape[1], m if half is None else half, float(shift_scale),
            HAS_BIAS=bias is not None, HAS_SHIFT=half is not None and shift is not None, DOUBLED=half is not None,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m, PROGRAMS=programs, SPLIT_STORE=split,
            num_warps=warps, num_stages=stages,
        )
    return y


@functools.cache
def _processors(device: torch.device) -> int:
    """Programs of the persistent kernel: one per SM (a few under the interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _kernel():
    return kernels.kernel("zoft.engine.lowrank_kernels", "lowrank_linear_kernel")
