"""Time the fused low-rank linear kernel against cuBLAS and the eager terms, per layer shape.

For each (rows, in, out) of a model's linear layers, on a doubled batch of `rows` rows:
  two linears   F.linear over each half (cuBLAS), what two plain forwards spend on the layer;
  eager terms   F.linear over all rows, then x·B and the halves' rank-r products added to y and the
                second half's bias correction (the functional path's hooks before the kernel);
  fused         the Triton kernel with each candidate tile config; the best is reported.

    python benchmarks/lowrank_linear.py --rows 8192,2048 --out bench-lr
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from zoft.engine import lowrank_linear as lr

LAYERS = {
    "opt-1.3b": [(2048, 2048), (2048, 8192), (8192, 2048)],
    "llama-7b": [(4096, 4096), (4096, 11008), (11008, 4096)],
}
CONFIGS = [
    (128, 256, 64, 8, 8, 3), (128, 256, 64, 8, 8, 4), (256, 128, 64, 8, 8, 3), (128, 128, 64, 8, 4, 4),
    (128, 128, 64, 8, 8, 4), (128, 128, 128, 8, 8, 3), (64, 256, 64, 8, 4, 4), (64, 128, 64, 8, 4, 4),
    (128, 64, 64, 8, 4, 4),
]


def timed(fn, reps: int) -> float:
    """Milliseconds per call, `reps` calls queued back to back after a warm-up."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="opt-1.3b,llama-7b")
    parser.add_argument("--rows", default="8192,2048", help="rows of the doubled batch (examples × tokens × 2)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    warm = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    timed(lambda: warm @ warm, 200)  # clocks up before the first timing
    results = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, rank {args.rank}")
    for model in args.models.split(","):
        for rows in (int(r) for r in args.rows.split(",")):
            for k, n in LAYERS[model]:
                dt = torch.bfloat16
                x = torch.randn(rows, k, device="cuda", dtype=dt)
                w = torch.randn(n, k, device="cuda", dtype=dt) / k ** 0.5
                bias = torch.randn(n, device="cuda", dtype=dt)
                basis = torch.randn(k, args.rank, device="cuda", dtype=dt) / k ** 0.5
                factors = torch.randn(2, n, args.rank, device="cuda", dtype=dt) * 1e-3
                shift = torch.randn(n, device="cuda", dtype=dt)
                half = rows // 2
                call = dict(half=half, shift=shift, shift_scale=-2e-3)
                want = lr.reference(x.float(), w.float(), bias.float(), basis.float(), factors.float(), half, shift.float(), -2e-3)
                error = (lr.fused(x, w, bias, basis, factors, **call).float() - want).abs().max().item()
                eager_error = (lr.reference(x, w, bias, basis, factors, **call).float() - want).abs().max().item()
                two = timed(lambda: (F.linear(x[:half], w, bias), F.linear(x[half:], w, bias)), args.reps)
                eager = timed(lambda: lr.reference(x, w, bias, basis, factors, **call), args.reps)
                fused = {c: timed(lambda c=c: lr.fused(x, w, bias, basis, factors, **call, config=c), args.reps) for c in CONFIGS}
                best = min(fused, key=fused.get)
                row = dict(model=model, rows=rows, k=k, n=n, two_linears_ms=two, eager_ms=eager,
                           fused_ms=fused[best], best=best, default=lr._config(rows), default_ms=fused[lr._config(rows)],
                           error=error, eager_error=eager_error, all={str(c): t for c, t in fused.items()})
                results.append(row)
                print(f"{model} rows {rows} {k}->{n}: two linears {two:.3f} ms, eager {eager:.3f} ({eager / two:.2f}x), "
                      f"fused {fused[best]:.3f} ({fused[best] / two:.2f}x) best {best}, default {row['default_ms']:.3f}; "
                      f"max error fused {error:.3g} eager {eager_error:.3g}", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "lowrank_linear.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
