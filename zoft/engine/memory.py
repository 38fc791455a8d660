"""Peak memory of this process: CUDA allocator peak on a GPU, resident set size on CPU."""

from __future__ import annotations

import resource

import torch


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
