"""Where zoft's Triton kernels run: compiled on a CUDA GPU, or under Triton's interpreter
(TRITON_INTERPRET=1, which the tests set) on the CPU."""

from __future__ import annotations

import contextlib
import functools
import importlib
import os

import torch


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def compiled() -> bool:
    """Kernels are compiled for a GPU here (not interpreted): they read CUDA tensors only."""
    return torch.cuda.is_available() and not interpreted()


def to_device(table: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A kernel's small host table (addresses, seeds) on `device` without waiting for the GPU:
    pinned, copied asynchronously."""
    return table.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else table


def on(device: torch.device):
    """Where a kernel launches: Triton launches on the current CUDA device, whatever its tensors'
    device (a context manager; nothing to switch on the CPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def triton_dtype(dtype: torch.dtype):
    """Triton's name for a tensor dtype, as a kernel's DTYPE."""
    import triton.language as tl

    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]


def programs_of(counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables of a many-item kernel launched with one program per block of every item, item
    i having counts[i] blocks: each program's item and its block within that item (int32, on
    the host)."""
    owner = torch.repeat_interleave(torch.arange(len(counts), dtype=torch.int32), torch.tensor(counts))
    within = torch.cat([torch.arange(count, dtype=torch.int32) for count in counts])
    return owner, within


def places(addresses: list[int], size: int, widths: tuple[int, ...] = ()) -> tuple[list[int], int]:
    """Where a many-item kernel finds its items: each address as an offset in elements (of `size`
    bytes) from the first, and the vector every offset and width is a multiple of: 16 bytes' worth
    of elements where all are, else 1. Told so (`tl.multiple_of`), a kernel moves 16 bytes a load;
    from an address read out of a table it can assume nothing and moves one element."""
    offsets = [(address - addresses[0]) // size for address in addresses]
    vector = 16 // size
    return offsets, vector if all(v % vector == 0 for v in (*offsets, *widths)) else 1


@functools.cache
def kernel(module: str, name: str):
    """Kernel `name` of `module`, imported on first use (so TRITON_INTERPRET set by then is
    honoured); None where it cannot run: no GPU and no interpreter, or no Triton."""
    if not torch.cuda.is_available() and not interpreted():
        return None
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        return None
