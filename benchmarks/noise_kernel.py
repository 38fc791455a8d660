"""The fused draw-and-add kernel against a pure read-write of the same tensor, and torch's randn + add_.

Usage (on a CUDA machine): python benchmarks/noise_kernel.py
Prints the time of one pass over a 2-billion-element bf16 tensor for Philox rounds, block sizes
and warps, and the moments of the normals drawn with each number of rounds.
"""

import time

import torch
import triton
import triton.language as tl

from zoft.engine.noise_kernels import add_gaussian_kernel


@triton.jit
def scale_kernel(ptr, n, alpha, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    w = tl.load(ptr + offs, mask=mask)
    tl.store(ptr + offs, (w.to(tl.float32) * alpha).to(w.dtype), mask=mask)


def timed(fn, reps: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - began) / reps * 1000


def main() -> None:
    x = torch.zeros(2**31 - 2**20, dtype=torch.bfloat16, device="cuda")
    n = x.numel()
    print(f"{torch.cuda.get_device_name()}: {n} bf16 elements ({n * 2 / 1e9:.2f} GB)")
    print(f"read-write only: {timed(lambda: scale_kernel[(triton.cdiv(n, 4096),)](x, n, 1.0, BLOCK=4096)):.2f} ms")
    for rounds in (10, 7):
        for block in (2048, 4096, 8192):
            for warps in (4, 8):
                grid = (triton.cdiv(n, block),)
                ms = timed(lambda: add_gaussian_kernel[grid](x, n, 12345, 1e-3, BLOCK=block, ROUNDS=rounds, num_warps=warps))
                print(f"rounds {rounds:2d} block {block} warps {warps}: {ms:.2f} ms")
        z = torch.zeros(2**24, device="cuda")
        add_gaussian_kernel[(triton.cdiv(z.numel(), 4096),)](z, z.numel(), 7, 1.0, BLOCK=4096, ROUNDS=rounds)
        print(f"rounds {rounds}: mean {float(z.mean()):+.5f} std {float(z.std()):.5f} kurtosis {float((z**4).mean()):.4f}")
    print(f"torch randn_like + add_: {timed(lambda: x.add_(torch.randn_like(x), alpha=1e-3), 3):.2f} ms")


if __name__ == "__main__":
    main()
