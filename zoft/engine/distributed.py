"""Data-parallel ZO over torch.distributed: every rank draws the same directions from the same
seeds, evaluates its shard of the batch, and the losses of each query are averaged with one
all-reduce of a scalar; every rank then applies the identical update. Rank 0 alone writes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from zoft.models.loading import pick_device


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's contiguous share of a global batch (sizes must divide evenly)."""
        per_rank = len(items) // self.size
        return items[self.rank * per_rank : (self.rank + 1) * per_rank]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on one (Ctrl-C reaches ranks at different steps)."""
        if self.size == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group at the end of a run (NCCL warns otherwise)."""
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")

    def mine(self, count: int) -> range:
        """The queries of a step this rank evaluates when queries are spread: j ≡ rank (mod size)."""
        return range(self.rank, count, self.size)

    def combine(self, values: list[float]) -> list[float]:
        """Each query's number from the rank that computed it (the others hold zeros): a sum."""
        if self.size == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of a scalar (or a few numbers) over ranks (itself on a single process)."""
        if self.size == 1:
            return value
        reduced = value.detach().clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced / self.size


def init_world(device: str) -> World:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL where `model.device`
    resolves to a GPU, gloo on the CPU (model.device: cpu, even where GPUs are)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if pick_device(device).type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return World(rank, size, local_rank)
