"""One in-place pass W += α A Bᵀ over every matrix of a model shape, on the GPU: cuBLAS's addmm_
per matrix, against the many-matrix kernel (engine/lowrank_add.py) at several tilings, and a
plain read-write of the same weights (`_foreach_mul_` by 1, the floor of any pass).

    python benchmarks/lowrank_add.py --shapes opt-1.3b,llama-7b --rank 2
"""

from __future__ import annotations

import argparse

import torch

from zoft.engine import lowrank_add
from zoft.models.shapes import model_config

TILINGS = [(16, 512, 4), (8, 1024, 4), (16, 1024, 8), (8, 512, 2), (4, 2048, 8), (16, 256, 2), (32, 256, 4)]


def timed(fn, reps: int = 10) -> float:
    """Milliseconds a call on the GPU (events around `reps` calls after one warm-up)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def bench_shape(shape: str, rank: int) -> str:
    """The table row of one model shape."""
    from transformers import AutoModelForCausalLM

    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(model_config(shape), dtype=torch.bfloat16)
    weights = [p.detach() for p in model.parameters() if p.ndim == 2]
    factors = [torch.randn(w.shape[0], rank, dtype=w.dtype, device=w.device) for w in weights]
    bases = [torch.randn(w.shape[1], rank, dtype=w.dtype, device=w.device) for w in weights]
    alphas = [1e-9] * len(weights)
    eager = timed(lambda: lowrank_add.add_lowrank_many_(weights, factors, bases, alphas, fused=False))
    floor = timed(lambda: torch._foreach_mul_(weights, 1.0))
    kernel = []
    for tiling in TILINGS:
        lowrank_add.TILES = tiling
        kernel.append(f"{tiling}: {timed(lambda: lowrank_add.add_lowrank_many_(weights, factors, bases, alphas, fused=True)):.2f}")
    return f"| {shape} | {len(weights)} | {eager:.2f} | {floor:.2f} | {'; '.join(kernel)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="opt-1.3b,llama-7b")
    parser.add_argument("--rank", type=int, default=2)
    args = parser.parse_args()
    print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; rank {args.rank}, bf16, alpha 1e-9\n")
    print("| shape | matrices | addmm_ each (ms) | read-write (ms) | kernel: tiling → ms |")
    print("|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        print(bench_shape(shape, args.rank), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
