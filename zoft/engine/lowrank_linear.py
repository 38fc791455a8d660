"""A linear layer with a low-rank term: y = x Wᵀ + b + (x B) Fᵀ, with cuBLAS's product.

The functional path (methods/functional.py) adds (x B)(A_acc ± εA)ᵀ to every trained linear
layer's output. Done after the layer (the hooks), that term costs a read and a write of y, and
over a doubled batch the bias correction of the second half (−2εz) another half-pass. Here the
order is turned around: x·B is one small cuBLAS product (M×r), a Triton kernel writes the term,
the bias and the correction into y, summed in fp32 and rounded once, and cuBLAS then adds x·Wᵀ
to y in the epilogue of its GEMM (`addmm_`, β = 1), where reading y is hidden behind the
product. On the H100 this beat both the hooks and a Triton GEMM with the term in its epilogue,
for every layer shape measured (benchmarks/lowrank_linear.py). `reference` is the hooks' sum;
tests compare the two, compiled on a GPU and under Triton's interpreter on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoft.engine import kernels

# (BLOCK_M, BLOCK_N, warps), chosen on the H100 by benchmarks/lowrank_linear.py
TILES = (64, 128, 4)
INTERPRETED = (16, 16, 1)
DTYPES = (torch.bfloat16, torch.float16)


def reference(x, weight, bias, basis, factors, half=None, shift=None, shift_scale=0.0):
    """y = x Wᵀ + b + (x B) F_hᵀ in torch: F is (H, N, r); h = 0 for rows < `half` of x's rows
    flattened, else 1 (no `half`: H = 1); rows ≥ half also get shift_scale · shift."""
    y = F.linear(x, weight, bias)
    flat, out = x.reshape(-1, x.shape[-1]), y.view(-1, y.shape[-1])
    xb = flat @ basis
    rows = out.shape[0] if half is None else half
    out[:rows].addmm_(xb[:rows], factors[0].T)
    if half is not None:
        out[half:].addmm_(xb[half:], factors[1].T)
        if shift is not None:
            out[half:].add_(shift.to(y.dtype), alpha=shift_scale)
    return y


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `fused` runs for these: contiguous 16-bit activations, a weight of their dtype, on a
    CUDA GPU with Triton. Under Triton's interpreter (tests), fp16 only: its bf16 products are
    wrong (Triton 3.9)."""
    return (
        x.dtype in DTYPES and weight.dtype == x.dtype and x.is_contiguous() and _kernel() is not None
        and (x.device.type == "cuda" or (kernels.interpreted() and x.dtype == torch.float16))
    )


def fused(x, weight, bias, basis, factors, half=None, shift=None, shift_scale=0.0, tiles=None):
    """`reference`'s sum (where `usable`): x·B, the term kernel into y, then y += x Wᵀ by cuBLAS;
    `tiles` overrides TILES."""
    import triton

    flat = x.reshape(-1, x.shape[-1])
    m, n = flat.shape[0], weight.shape[0]
    xb = flat @ basis
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    out = y.view(m, n)
    block_m, block_n, warps = tiles or (INTERPRETED if kernels.interpreted() else TILES)
    with kernels.on(x.device):
        _kernel()[(triton.cdiv(m, block_m), triton.cdiv(n, block_n))](
            out, bias if bias is not None else out, xb, factors, shift if shift is not None else out,
            m, n, m if half is None else half, basis.shape[1], float(shift_scale),
            out.stride(0), xb.stride(0), xb.stride(1), factors.stride(0) if factors.shape[0] > 1 else 0, factors.stride(1), factors.stride(2),
            HAS_BIAS=bias is not None, HAS_SHIFT=half is not None and shift is not None, DOUBLED=half is not None,
            R=max(16, triton.next_power_of_2(basis.shape[1])), BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
        )
    out.addmm_(flat, weight.T)
    return y


def _kernel():
    return kernels.kernel("zoft.engine.lowrank_kernels", "lowrank_term_kernel")
