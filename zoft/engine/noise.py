"""Dense Gaussian directions added to a tensor in place: torch, or one fused Triton kernel.

`torch` draws z with torch.randn into a fresh tensor and adds it: two passes over memory and an
m×n temporary. `triton` draws z inside the kernel (Philox keyed by the stream seed and the
element's index) and adds it in the same read-write of the weight: no temporary, one pass. The
two backends draw different (equally standard Gaussian) streams, so a run keeps its backend.
On CPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1), which is how it is tested.
"""

from __future__ import annotations

import functools
import os

import torch

from zoft.engine.rng import gaussian, stream_seed

# Measured on the H100 (benchmarks/noise_kernel.py): one pass over 2.1e9 bf16 elements takes 6.10 ms
# with 10 Philox rounds, 4096-element blocks and 4 warps, 4.62 ms with 7 rounds and 8 warps, against
# 2.89 ms for a pure read-write. Philox4x32-7 passes BigCrush (Salmon et al., 2011); 10 is
# cuRAND's safety margin, which ZO directions do not need.
BLOCK = 4096  # elements per program: 1024 Philox counters, four normals each
ROUNDS = 7
WARPS = 8


def resolve(choice: str, device: torch.device) -> str:
    """`auto` → triton on CUDA when Triton imports, else torch."""
    if choice != "auto":
        return choice
    return "triton" if device.type == "cuda" and available() else "torch"


def available() -> bool:
    """Triton imports and can run here (a CUDA GPU, or its CPU interpreter)."""
    return _kernel() is not None


def _fused(p: torch.Tensor, backend: str) -> bool:
    """The kernel takes contiguous tensors; any other goes through torch (and keeps its own stream)."""
    return backend == "triton" and p.is_contiguous()


def add_gaussian_(p: torch.Tensor, alpha: float, keys: tuple[int, ...], backend: str) -> None:
    """p += alpha · z, with z ~ N(0, I) from the stream of `keys` (the same z at every call)."""
    if _fused(p, backend):
        if alpha:
            _launch(p, alpha, stream_seed(*keys))
        return
    p.add_(gaussian(tuple(p.shape), p, *keys), alpha=alpha)


def gaussian_like(p: torch.Tensor, keys: tuple[int, ...], backend: str) -> torch.Tensor:
    """The z that `add_gaussian_(p, ·, keys, backend)` adds, as a tensor (for momentum and Adam)."""
    if _fused(p, backend):
        z = torch.zeros_like(p)
        add_gaussian_(z, 1.0, keys, backend)
        return z
    return gaussian(tuple(p.shape), p, *keys)


def _launch(p: torch.Tensor, alpha: float, seed: int) -> None:
    import triton

    _kernel()[(triton.cdiv(p.numel(), BLOCK),)](p, p.numel(), seed, alpha, BLOCK=BLOCK, ROUNDS=ROUNDS, num_warps=WARPS)


@functools.cache
def _kernel():
    """The Triton kernel, imported on first use (so TRITON_INTERPRET set by then is honoured)."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return None
    try:
        from zoft.engine.noise_kernels import add_gaussian_kernel
    except ImportError:
        return None
    return add_gaussian_kernel
