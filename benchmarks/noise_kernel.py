"""The fused draw-and-add kernel against a pure read-write of the same tensor, and torch's randn + add_.

Usage (on a CUDA machine): python benchmarks/noise_kernel.py
Prints the time of one pass over a 2-billion-element bf16 tensor: a bare read-write, the kernel with
the precise and the approximate (FAST) Box-Muller transform, two terms in one pass (the carried
perturbation of a MeZO step) against two passes, and torch; then the moments of the FAST normals
and how far they are from the precise ones.
"""

import time

import torch
import triton
import triton.language as tl

from zoft.engine.noise import BLOCK, ROUNDS, WARPS, add_gaussian_many_
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


def one_pass(x, fast: bool, rounds: int = ROUNDS, seed: int = 12345):
    grid = (triton.cdiv(x.numel(), BLOCK),)
    add_gaussian_kernel[grid](x, x.numel(), seed, 1e-3, BLOCK=BLOCK, ROUNDS=rounds, FAST=fast, num_warps=WARPS)


def main() -> None:
    x = torch.zeros(2**31 - 2**20, dtype=torch.bfloat16, device="cuda")
    n = x.numel()
    print(f"{torch.cuda.get_device_name()}: {n} bf16 elements ({n * 2 / 1e9:.2f} GB); block {BLOCK}, {WARPS} warps")
    print(f"read-write only: {timed(lambda: scale_kernel[(triton.cdiv(n, 4096),)](x, n, 1.0, BLOCK=4096)):.2f} ms")
    for rounds in (10, 7):
        for fast in (False, True):
            print(f"one term, Philox rounds {rounds}, {'approximate' if fast else 'precise'} transform: "
                  f"{timed(lambda: one_pass(x, fast, rounds)):.2f} ms")
    keys, keys2 = [(1, 2, 0, 0, 0)], [(1, 3, 0, 0, 0)]
    print(f"two terms, two passes: {timed(lambda: (add_gaussian_many_([x], -1e-3, keys, 'triton'), add_gaussian_many_([x], 1e-3, keys2, 'triton'))):.2f} ms")
    print(f"two terms, one pass:   {timed(lambda: add_gaussian_many_([x], -1e-3, keys, 'triton', then=(1e-3, keys2))):.2f} ms")
    print(f"torch randn_like + add_: {timed(lambda: x.add_(torch.randn_like(x), alpha=1e-3), 3):.2f} ms")
    z = {fast: torch.zeros(2**24, device="cuda") for fast in (False, True)}
    for fast, t in z.items():
        add_gaussian_kernel[(triton.cdiv(t.numel(), BLOCK),)](t, t.numel(), 7, 1.0, BLOCK=BLOCK, ROUNDS=ROUNDS, FAST=fast, num_warps=WARPS)
    f = z[True]
    print(f"approximate transform: mean {float(f.mean()):+.5f} std {float(f.std()):.5f} kurtosis {float((f**4).mean()):.4f}; "
          f"largest |approximate - precise| {float((f - z[False]).abs().max()):.2e}")


if __name__ == "__main__":
    main()
