"""Dense Gaussian directions added to a tensor in place: torch, or one fused Triton kernel.

`torch` draws z with torch.randn into a fresh tensor and adds it: two passes over memory and an
m×n temporary. `triton` draws z inside the kernel (Philox keyed by the stream seed and the
element's index) and adds it in the same read-write of the weight: no temporary, one pass. The
two backends draw different (equally standard Gaussian) streams, so a run keeps its backend.
On CPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1), which is how it is tested;
there the Box-Muller transform takes precise log/sin/cos, on a GPU the approximate ones (`FAST`):
normals at most 2.2e-4 apart (benchmarks/noise_kernel.py): a GPU run resumes bit for bit on a GPU only.
"""

from __future__ import annotations

import functools

import torch

from zoft.engine import kernels
from zoft.engine.rng import gaussian, stream_seed

# Measured on the H100 (benchmarks/noise_kernel.py): one pass over 2.1e9 bf16 elements takes 6.10 ms
# with 10 Philox rounds, 4096-element blocks and 4 warps, 4.60 ms with 7 rounds and 8 warps, and
# 3.03 ms with the approximate transform, against 2.88 ms for a pure read-write. Philox4x32-7
# passes BigCrush (Salmon et al., 2011); 10 is cuRAND's safety margin, which ZO directions do not need.
# The many-tensor kernel takes 3.28 ms a term, and 4.69 ms for two terms in one pass (session 19,
# after its loads were vectorized: 4.65 and 5.75 ms before).
BLOCK = 4096  # elements per program: 1024 Philox counters, four normals each
ROUNDS = 7
WARPS = 8
Term = tuple[float, list[tuple[int, ...]]]  # (alpha, each tensor's keys): add alpha · z(keys)


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


def add_gaussian_many_(
    tensors: list[torch.Tensor], alpha: float, keys: list[tuple[int, ...]], backend: str, then: Term | None = None
) -> None:
    """`add_gaussian_(p, alpha, k, backend)` for every (p, k) of `tensors` and `keys`, then, with
    `then` = (alpha2, keys2), `add_gaussian_(p, alpha2, k2, backend)`: the same results, with one
    kernel launch per dtype and device for the tensors the kernel takes (a launch costs more than a small
    tensor's pass: SmolLM2 has 211 matrices), both terms in one read-write of each tensor."""
    terms = [(a, k) for a, k in [(alpha, keys), then or (0.0, None)] if a]  # a zero term adds nothing
    fused: dict[tuple, list[int]] = {}
    for i, p in enumerate(tensors):
        if _fused(p, backend):
            fused.setdefault((p.dtype, p.device), []).append(i)
        else:
            for a, k in terms:
                add_gaussian_(p, a, k[i], backend)
    if not terms:
        return
    (alpha, keys), (alpha2, keys2) = terms[0], terms[-1]
    for (dtype, device), members in fused.items():  # a launch per dtype and device (model.device_map)
        chosen = [tensors[i] for i in members]
        table = _block_table(tuple((p.data_ptr(), p.numel(), p.dtype, p.device) for p in chosen))
        seeds = _seed_table(tuple(keys[i] for i in members), device)
        seeds2 = _seed_table(tuple(keys2[i] for i in members), device)
        with kernels.on(device):
            _kernel_many()[(table.blocks,)](
                chosen[0], table.offsets, table.sizes, seeds, seeds2, table.tensor_of, table.block_of, alpha, alpha2,
                BLOCK=BLOCK, ROUNDS=ROUNDS, FAST=_fast(device), TWO=len(terms) == 2, VECTOR=table.vector, num_warps=WARPS,
            )


class _Blocks:
    """Where each program of the many-tensor kernel works: a tensor's place (elements from the
    first tensor's address) and size, and a block of it; `vector`, what every place is a multiple of."""

    def __init__(self, tensors: tuple[tuple[int, int, torch.dtype, torch.device], ...]):
        _, _, dtype, device = tensors[0]
        counts = [-(-numel // BLOCK) for _, numel, _, _ in tensors]
        self.blocks = sum(counts)
        offsets, self.vector = kernels.places([address for address, *_ in tensors], dtype.itemsize)
        self.offsets = torch.tensor(offsets, dtype=torch.int64, device=device)
        self.sizes = torch.tensor([numel for _, numel, *_ in tensors], dtype=torch.int64, device=device)
        self.tensor_of, self.block_of = (table.to(device) for table in kernels.programs_of(counts))


@functools.lru_cache(maxsize=64)
def _block_table(tensors) -> _Blocks:
    """Built once per set of tensors (a method's set never changes; addresses identify it)."""
    return _Blocks(tensors)


@functools.lru_cache(maxsize=64)
def _seed_table(keys: tuple[tuple[int, ...], ...], device: torch.device) -> torch.Tensor:
    """The tensors' seeds on the device; a step's perturbations and update share one (step, query)."""
    return kernels.to_device(torch.tensor([stream_seed(*k) for k in keys], dtype=torch.int64), device)


def gaussian_like(p: torch.Tensor, keys: tuple[int, ...], backend: str) -> torch.Tensor:
    """The z that `add_gaussian_(p, ·, keys, backend)` adds, as a tensor (for momentum and Adam)."""
    if _fused(p, backend):
        z = torch.zeros_like(p)
        add_gaussian_(z, 1.0, keys, backend)
        return z
    return gaussian(tuple(p.shape), p, *keys)


def _launch(p: torch.Tensor, alpha: float, seed: int) -> None:
    import triton

    with kernels.on(p.device):
        _kernel()[(triton.cdiv(p.numel(), BLOCK),)](
            p, p.numel(), seed, alpha, BLOCK=BLOCK, ROUNDS=ROUNDS, FAST=_fast(p.device), num_warps=WARPS
        )


def _fast(device: torch.device) -> bool:
    """Approximate log/sin/cos in the transform: compiled for a GPU, not under the interpreter."""
    return device.type == "cuda" and not kernels.interpreted()


def _kernel_many():
    return kernels.kernel("zoft.engine.noise_kernels", "add_gaussian_many_kernel")


def _kernel():
    return kernels.kernel("zoft.engine.noise_kernels", "add_gaussian_kernel")
