"""Time the functional path's linear layer with its low-rank term, per layer shape, on the GPU alone.

For each (rows, in, out) of a model's linear layers, with a rank-r term, in the two forms a step
uses: `single`, rows of one sign (a step of two forwards, the term A_acc + sεA); `doubled`, a
doubled batch of `rows` rows, its halves at +ε and −ε (paired_forward):
  cuBLAS          F.linear, what a plain forward spends on the layer (over each half, when doubled);
  eager terms     F.linear, then x·B and the rank-r products added to y (and the second half's
                  bias correction): the hooks;
  fused           zoft's layer (engine/lowrank_linear.py): x B by cuBLAS, then one persistent
                  Triton GEMM adding the term, the bias and the correction in its epilogue; the
                  best of the tile configs, and the default's time.
Each is recorded in a CUDA graph and replayed, so that the host's launch time is not counted.

    python benchmarks/lowrank_linear.py --rows 4096,8192 --out bench-lr
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from zoft.engine import lowrank_linear as lr
from zoft.engine.graphs import record

LAYERS = {
    "opt-1.3b": [(2048, 2048), (2048, 8192), (8192, 2048)],
    "llama-7b": [(4096, 4096), (4096, 11008), (11008, 4096)],
    "opt-13b": [(5120, 5120), (5120, 20480), (20480, 5120)],
}
TILES = [  # (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, warps, stages, split store)
    (128, 256, 64, 8, 8, 3, True), (128, 256, 64, 16, 8, 3, True), (128, 256, 64, 8, 8, 3, False),
    (128, 128, 64, 8, 4, 5, True), (128, 128, 64, 8, 8, 4, True), (64, 256, 64, 8, 4, 4, True),
]


def timed(fn, reps: int) -> float:
    """Milliseconds per call of `fn` on the GPU: `reps` calls recorded in one CUDA graph, replayed."""
    def calls() -> None:
        for _ in range(reps):
            fn()

    graph, _ = record(calls)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(3):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 3


def timings(candidates: dict, reps: int) -> dict:
    """Each candidate's milliseconds per call (`timed`)."""
    return {config: timed(fn, reps) for config, fn in candidates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="opt-1.3b,llama-7b")
    parser.add_argument("--rows", default="4096,8192", help="rows of a forward's batch (examples × tokens)")
    parser.add_argument("--modes", default="single,doubled")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, rank {args.rank}; ms on the GPU, × cuBLAS")
    for model in args.models.split(","):
        for rows in (int(r) for r in args.rows.split(",")):
            for mode in args.modes.split(","):
                for k, n in LAYERS[model]:
                    dt = torch.bfloat16
                    x = torch.randn(rows, k, device="cuda", dtype=dt)
                    w = torch.randn(n, k, device="cuda", dtype=dt) / k ** 0.5
                    bias = torch.randn(n, device="cuda", dtype=dt)
                    # laid out as the functional path keeps them: B widened, each factor's N contiguous
                    basis = lr.widened(torch.randn(k, args.rank, device="cuda", dtype=dt) / k ** 0.5)
                    if mode == "doubled":
                        half = rows // 2
                        factors = (torch.randn(2, args.rank, n, device="cuda", dtype=dt) * 1e-3).transpose(1, 2)
                        call = dict(half=half, shift=torch.randn(n, device="cuda", dtype=dt), shift_scale=-2e-3)
                        plain = lambda: (F.linear(x[:half], w, bias), F.linear(x[half:], w, bias))  # noqa: E731
                    else:
                        factors = (torch.randn(1, args.rank, n, device="cuda", dtype=dt) * 1e-3).transpose(1, 2)
                        call = {}
                        plain = lambda: F.linear(x, w, bias)  # noqa: E731
                    want = lr.reference(x.float(), w.float(), bias.float(), basis.float(), factors.float(), **{
                        key: value.float() if torch.is_tensor(value) else value for key, value in call.items()})
                    error = (lr.fused(x, w, bias, lr.project(x, basis), factors, **call).float() - want).abs().max().item()
                    eager_error = (lr.reference(x, w, bias, basis, factors, **call).float() - want).abs().max().item()
                    cublas = timed(plain, args.reps)
                    eager = timed(lambda: lr.reference(x, w, bias, basis, factors, **call), args.reps)
                    per_tiles = timings({t: lambda t=t: lr.fused(x, w, bias, lr.project(x, basis), factors, **call, tiles=t) for t in TILES}, args.reps)
                    tiles = min(per_tiles, key=per_tiles.get)
                    fused = per_tiles[tiles]
                    default = timed(lambda: lr.fused(x, w, bias, lr.project(x, basis), factors, **call), args.reps)
                    row = dict(model=model, rows=rows, mode=mode, k=k, n=n, cublas_ms=cublas, eager_ms=eager, fused_ms=fused, tiles=tiles,
                               default_ms=default, error=error, eager_error=eager_error,
                               tiles_ms={",".join(map(str, t)): ms for t, ms in per_tiles.items()})
                    results.append(row)
                    print(f"{model} {mode} {rows} rows {k}->{n}: cuBLAS {cublas:.3f} ms, eager terms {eager:.3f} ({eager / cublas:.2f}x), "
                          f"fused {fused:.3f} ({fused / cublas:.2f}x) tiles {tiles}, default {default:.3f} ({default / cublas:.2f}x); "
                          f"max error fused {error:.3g}, eager {eager_error:.3g}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "lowrank_linear.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
