"""W += α A Bᵀ in place for many matrices at once: one Triton launch, or an addmm_ each.

The in-place path of the low-rank methods makes three such passes over every matrix a step (+ε,
−2ε, then the restore with the update). cuBLAS's rank-r `addmm_`, a launch per matrix, took
4.17 ms a pass over OPT-1.3B's 146 matrices on the H100, where reading and writing them takes
2.31 ms. The kernel reads and writes each weight once, the rank-r product formed in registers
(r FMAs an element, summed in fp32 and added to W in fp32, rounded once as addmm_ rounds), for
every matrix of one dtype in one launch: each program looks its matrix up in small device
tables, as the many-tensor noise kernel does (`zoft.engine.noise`). It took 2.02 ms
(benchmarks/lowrank_add.py; 2.84 ms before its loads and stores of W moved 16 bytes at a time).
"""

from __future__ import annotations

import functools

import torch

from zoft.engine import kernels

TILES = (8, 512, 2)  # (BLOCK_M, BLOCK_N, warps) of a program, the fastest on the H100 (benchmarks/lowrank_add.py)
INTERPRETED = (16, 16, 1)
DTYPES = (torch.bfloat16, torch.float16)


def tiles() -> tuple[int, int, int]:
    return INTERPRETED if kernels.interpreted() else TILES


def usable(device: torch.device) -> bool:
    """Whether the kernel runs by default here: compiled on a CUDA GPU (under the interpreter the
    tests call it themselves)."""
    return device.type == "cuda" and kernels.compiled() and _kernel() is not None


def add_lowrank_many_(
    weights: list[torch.Tensor], factors: list[torch.Tensor], bases: list[torch.Tensor], alphas: list[float], fused: bool
) -> None:
    """w += alpha · a bᵀ for every (w, a, b, alpha) of the lists (w m×n, a m×r, b n×r): `LowRankPass` once."""
    LowRankPass(weights, factors, bases, fused).add_(alphas)


class LowRankPass:
    """Matrices and factors to move by w += alpha · a bᵀ, their kernel tables built once: a step's
    passes (+ε, −2ε, the restore) move the same ones, and a table of 146 matrices' addresses and
    strides costs the host about 0.5 ms, which (built ahead, while the forwards run) then leaves
    the step's critical path. With `fused`, one kernel launch per dtype and device for the 16-bit
    matrices stored contiguously whose factors (of any strides) share their dtype; addmm_ for any
    other (and without `fused`)."""

    def __init__(self, weights: list[torch.Tensor], factors: list[torch.Tensor], bases: list[torch.Tensor], fused: bool):
        self.weights, self.factors, self.bases = weights, factors, bases  # kept: the tables hold their addresses
        groups: dict[tuple, list[int]] = {}
        self.by_addmm: list[int] = []
        for i, (w, a, b) in enumerate(zip(weights, factors, bases)):
            if fused and w.dtype in DTYPES and a.dtype == b.dtype == w.dtype and w.is_contiguous():
                groups.setdefault((w.dtype, w.device), []).append(i)
            else:
                self.by_addmm.append(i)
        tiling = tiles()
        self.launches = [
            (members, dtype, device, _tile_table(tuple((weights[i].data_ptr(), *weights[i].shape, factors[i].shape[1]) for i in members), dtype.itemsize, device, tiling),
             kernels.to_device(torch.tensor([
                 (factors[i].data_ptr(), bases[i].data_ptr(), *factors[i].stride(), *bases[i].stride()) for i in members
             ]), device))
            for (dtype, device), members in groups.items()
        ]

    def add_(self, alphas: list[float]) -> None:
        """w += alpha · a bᵀ, each matrix's alpha from the list."""
        for i in self.by_addmm:
            self.weights[i].addmm_(self.factors[i], self.bases[i].T, alpha=alphas[i])
        block_m, block_n, warps = tiles()
        for members, dtype, device, table, layout in self.launches:
            scales = kernels.to_device(torch.tensor([alphas[i] for i in members], dtype=torch.float32), device)
            with kernels.on(device):  # a model spread over GPUs (model.device_map): each group on its own
                _kernel()[(table.tiles,)](
                    self.weights[members[0]], table.offsets, layout, table.rows, table.cols, table.ranks, scales, table.matrix_of, table.tile_m_of, table.tile_n_of,
                    DTYPE=kernels.triton_dtype(dtype), R=table.max_rank, BLOCK_M=block_m, BLOCK_N=block_n, VECTOR=table.vector,
                    num_warps=warps,
                )


class _Tiles:
    """Where each program works: its matrix's place (elements from the first one's address), shape
    and rank, and a tile of it; `vector`, what every place and width is a multiple of."""

    def __init__(self, matrices: tuple[tuple[int, int, int, int], ...], size: int, device: torch.device, tiling: tuple[int, int, int]):
        block_m, block_n, _ = tiling
        columns = list(zip(*matrices))
        offsets, self.vector = kernels.places(list(columns[0]), size, widths=columns[2])
        self.offsets = torch.tensor(offsets, dtype=torch.int64, device=device)
        self.rows, self.cols, self.ranks = (torch.tensor(c, dtype=torch.int64, device=device) for c in columns[1:])
        self.max_rank = max(1, 1 << (max(columns[3]) - 1).bit_length())
        grids = [(-(-m // block_m), -(-n // block_n)) for _, m, n, _ in matrices]
        counts = [gm * gn for gm, gn in grids]
        self.tiles = sum(counts)
        matrix_of, within = kernels.programs_of(counts)
        per_row = torch.tensor([gn for _, gn in grids], dtype=torch.int32)[matrix_of]  # the tile columns of each program's matrix
        self.matrix_of, self.tile_m_of, self.tile_n_of = (t.to(device) for t in (matrix_of, within // per_row, within % per_row))


@functools.lru_cache(maxsize=16)
def _tile_table(matrices: tuple[tuple[int, int, int, int], ...], size: int, device: torch.device, tiling: tuple[int, int, int]) -> _Tiles:
    """Built once per set of matrices, ranks, element size and tiling (a method's never change; addresses identify them)."""
    return _Tiles(matrices, size, device, tiling)


def _kernel():
    return kernels.kernel("zoft.engine.lowrank_kernels", "add_lowrank_many_kernel")
