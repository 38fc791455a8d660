"""Where a method's step spends its time: a torch.profiler summary of a few steps on a model shape.

Usage (on a CUDA machine): python benchmarks/profile_step.py --shape llama-7b --method tezo --batch 16
Prints the step's time unprofiled and the host's time in `finish` (the update, after the losses
are read, while the GPU waits), the top operators by CUDA time and by CPU time, and the step's
wall time beside the GPU's busy time and idle gaps (a gap means the GPU waited for Python); `--host N` adds the N Python functions with the
most host time of their own (cProfile, over steps of their own). Forwards are replayed from CUDA
graphs as in training, unless `--set train.cuda_graphs=false`.
"""

import argparse
import cProfile
import pstats
import time

import torch

from zoft.config.loader import load_recipe
from zoft.engine.memory import VARIANTS
from zoft.engine.objective import BatchLoss
from zoft.engine.profiling import graphed, method_for, synthetic_batch
from zoft.engine.trainer import prepare_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama-7b")
    parser.add_argument("--method", default="tezo", choices=sorted(VARIANTS), help="a profile-memory variant")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--trace", help="also write the profile as a Chrome trace (JSON) here")
    parser.add_argument("--host", type=int, default=0, help="also list this many Python functions by host time (cProfile)")
    parser.add_argument("--set", nargs="*", default=[], help="extra recipe overrides, e.g. method.path=inplace")
    args = parser.parse_args()
    method_name = VARIANTS[args.method][0]  # so that --set may name that method's keys (method.path, method.rank)
    recipe = load_recipe(
        "profile/opt-1.3b", [f"model.config={args.shape}", "model.dtype=bf16", "model.device=cuda", f"method.name={method_name}", *args.set]
    )
    model, _, params = prepare_model(recipe, 0)
    device = next(model.parameters()).device
    objective, data = synthetic_batch(model.config.vocab_size, args.batch, args.seq, device)
    loss_fn = BatchLoss(objective, model, data)
    method = method_for(recipe, args.method, params, 0, model)
    if recipe.train.cuda_graphs is not False:  # as training does
        loss_fn = graphed(loss_fn, method.forward_state)
    method.step(loss_fn, 0, 1e-9)
    torch.cuda.synchronize()
    step, finish = timed_steps(method, loss_fn, range(1, args.steps + 1))
    print(f"{args.shape} {args.method} batch {args.batch}, unprofiled: {step:.1f} ms a step, {finish:.2f} ms of it in finish "
          "(the host's work after reading the losses, while the GPU waits)")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        began = time.perf_counter()
        for step in range(args.steps + 1, 2 * args.steps + 1):
            method.step(loss_fn, step, 1e-9)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - began) / args.steps * 1000
    if args.trace:
        prof.export_chrome_trace(args.trace)
    events = prof.key_averages()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]  # not the ops launching them
    gpu = sum(e.self_device_time_total for e in kernels) / args.steps / 1000
    print(f"{args.shape} {args.method} batch {args.batch}: {wall:.1f} ms a step, GPU busy {gpu:.1f} ms, "
          f"idle {idle(kernels) / args.steps / 1000:.2f} ms in gaps over 30 µs")
    print(events.table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=50))
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50))
    if args.host:
        with cProfile.Profile() as host:
            for step in range(2 * args.steps + 1, 3 * args.steps + 1):
                method.step(loss_fn, step, 1e-9)
            torch.cuda.synchronize()
        pstats.Stats(host).sort_stats("tottime").print_stats(args.host)


def timed_steps(method, loss_fn, steps) -> tuple[float, float]:
    """Mean wall time of `steps` and of the `finish` inside them (ms)."""
    spent, real = [0.0], method.finish

    def finish(*args, **kwargs):
        began = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - began

    method.finish = finish
    torch.cuda.synchronize()
    began = time.perf_counter()
    for step in steps:
        method.step(loss_fn, step, 1e-9)
    torch.cuda.synchronize()
    del method.finish
    return (time.perf_counter() - began) / len(steps) * 1000, spent[0] / len(steps) * 1000


def idle(kernels) -> float:
    """µs between one kernel's end and the next one's start, summed over gaps longer than 30 µs."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    total, end = 0.0, None
    for start, stop in spans:
        if end is not None and start - end > 30:
            total += start - end
        end = stop if end is None else max(end, stop)
    return total


if __name__ == "__main__":
    main()
