"""A linear layer with a low-rank term, in one GPU kernel: y = x Wᵀ + b + (x B) Fᵀ.

The functional path (methods/functional.py) adds (x B)(A_acc ± εA)ᵀ to every trained linear
layer's output. Done after the layer, that term costs three passes over the activations (x·B
reads x; adding the product reads and writes y), and over a doubled batch the bias correction of
the second half (−2εz) a fourth. Here x·B is one small cuBLAS product (M×r), and the Triton
kernel computes x·Wᵀ by TMA tiles and adds the rank-r term, the bias and the correction to each
fp32 tile before its one rounding: no pass over y after the layer. `reference` is the same sum in
torch, as the hooks compute it; tests compare the kernel with it, compiled on a GPU and under
Triton's interpreter on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoft.engine import kernels

# (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages), chosen on the H100 by benchmarks/lowrank_linear.py.
LARGE = (128, 256, 64, 8, 8, 4)
SMALL = (128, 128, 64, 8, 4, 4)
INTERPRETED = (16, 16, 16, 1, 1, 1)
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
    """Whether the kernel runs for these: contiguous 16-bit activations and weights on a CUDA GPU
    with Triton, rows a multiple of 16 bytes (for TMA), and no more inputs than outputs: on the
    H100 the kernel beat cuBLAS plus the terms for layers with K ≤ N and lost to it on down
    projections (K > N), whose long loops over K cuBLAS splits better (benchmarks/lowrank_linear.py).
    Under Triton's interpreter (tests), fp16 only: its bf16 products are wrong (Triton 3.9)."""
    return (
        weight.shape[1] <= weight.shape[0] and x.dtype in DTYPES and weight.dtype == x.dtype and _kernel() is not None
        and (x.device.type == "cuda" or (kernels.interpreted() and x.dtype == torch.float16))
        and x.is_contiguous() and weight.is_contiguous()
        and x.shape[-1] % 8 == 0 and weight.shape[0] % 8 == 0
        and x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0
    )


def fused(x, weight, bias, basis, factors, half=None, shift=None, shift_scale=0.0, config=None):
    """`reference`'s sum: x·B by cuBLAS (M×r), the rest in one kernel launch (where `usable`);
    `config` overrides the tile sizes."""
    import triton
    from triton.tools.tensor_descriptor import TensorDescriptor

    flat = x.reshape(-1, x.shape[-1])
    m, n = flat.shape[0], weight.shape[0]
    xb = flat @ basis
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    block_m, block_n, block_k, group_m, warps, stages = config or _config(m)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _kernel()[grid](
        TensorDescriptor.from_tensor(flat, [block_m, block_k]), TensorDescriptor.from_tensor(weight, [block_n, block_k]),
        TensorDescriptor.from_tensor(y.view(m, n), [block_m, block_n]),
        bias if bias is not None else weight, xb, factors, shift if shift is not None else weight,
        m, n, flat.shape[1], m if half is None else half, basis.shape[1], float(shift_scale),
        xb.stride(0), xb.stride(1), factors.stride(0) if factors.shape[0] > 1 else 0, factors.stride(1), factors.stride(2),
        HAS_BIAS=bias is not None, HAS_SHIFT=half is not None and shift is not None, DOUBLED=half is not None,
        R=max(16, triton.next_power_of_2(basis.shape[1])), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m,
        num_warps=warps, num_stages=stages,
    )
    return y


def _config(rows: int) -> tuple[int, ...]:
    if kernels.interpreted():
        return INTERPRETED
    return LARGE if rows >= 4096 else SMALL


def _kernel():
    return kernels.kernel("zoft.engine.lowrank_kernels", "lowrank_linear_kernel")
