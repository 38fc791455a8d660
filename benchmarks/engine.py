"""Step time and peak memory of every zoft method against forward passes, on one GPU, in one run.

Rows per model shape and batch size (random weights, bf16, synthetic token ids):
  forward            one inference forward (the memory floor)
  two forwards       two back-to-back forwards: the floor of a two-sided ZO step
  two forwards       the same replayed from a CUDA graph (with --graphs on): the floor of a ZO
    (CUDA graph)     step whose forwards are replayed, as training's are (`train.cuda_graphs`)
  doubled forward    one eager forward over the batch stacked twice (what the issue's 0.52-0.70×
                     at batch 4 compares with two eager forwards)
  doubled forward    the same replayed from a CUDA graph: the floor of a functional step whose
    (CUDA graph)     ±ε share a forward (`method.paired_forward`)
  reference MeZO     MeZO as its official code is written (an independent re-implementation of
                     that algorithm: torch.normal per tensor, z regenerated for each of 4 passes)
  zoft methods       each ZO method and optimizer, on the in-place and functional paths, forwards
                     replayed from CUDA graphs as in training (--graphs on, the default) or eager
  AdamW              first-order fine-tuning (backpropagation)

Usage (on a CUDA machine, from the repository root):
  python benchmarks/engine.py --shapes opt-1.3b,llama-7b,opt-13b --batches 16,4 --out bench-out
It writes bench-out/engine.json and bench-out/engine.md; --docs docs/benchmarks.md replaces that
file's section between the `engine-benchmark` markers with the new tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import re
import sys
from pathlib import Path

import torch

from zoft.config.loader import load_recipe
from zoft.config.methods import METHOD_CONFIGS
from zoft.engine import lowrank_linear
from zoft.engine.graphs import one_stream
from zoft.engine.objective import BatchLoss
from zoft.engine.profiling import forward_passes, graphed, measure_built, run_steps, synthetic_batch
from zoft.engine.trainer import prepare_model
from zoft.methods import METHODS

# label: (method, optimizer, method keys)
VARIANTS = {
    "mezo": ("mezo", "sgd", {"noise": "triton"}),
    "mezo (torch noise)": ("mezo", "sgd", {"noise": "torch"}),
    "mezo-adam": ("mezo", "adam", {}),
    "lozo (in place)": ("lozo", "sgd", {"path": "inplace"}),
    "lozo": ("lozo", "sgd", {"path": "functional"}),
    "lozo-m (in place)": ("lozo", "momentum", {"path": "inplace"}),
    "lozo-m": ("lozo", "momentum", {"path": "functional"}),
    "subzo (in place)": ("subzo", "sgd", {"path": "inplace"}),
    "subzo": ("subzo", "sgd", {"path": "functional"}),
    "tezo (in place)": ("tezo", "sgd", {"path": "inplace"}),
    "tezo": ("tezo", "sgd", {"path": "functional"}),
    "tezo-m (in place)": ("tezo", "momentum", {"path": "inplace"}),
    "tezo-m": ("tezo", "momentum", {"path": "functional"}),
    "tezo-adam (in place)": ("tezo", "adam", {"path": "inplace"}),
    "tezo-adam": ("tezo", "adam", {"path": "functional"}),
    "AdamW (first-order)": ("fo", "adam", {}),
}


def reference_mezo_step(params, loss_fn, seed: int, eps: float = 1e-3, lr: float = 1e-9) -> None:
    """One step of MeZO as the official code does it: the global RNG reseeded before each of the
    four passes, a fresh torch.normal tensor per parameter per pass, decay term on matrices."""

    def perturb(scale: float) -> None:
        torch.manual_seed(seed)
        for _, p in params:
            z = torch.normal(mean=0, std=1, size=p.shape, device=p.device, dtype=p.dtype)
            p.data = p.data + scale * z * eps

    with torch.no_grad():  # not inference_mode: the weights it rebinds must stay normal tensors
        perturb(1)
        plus = loss_fn()
        perturb(-2)
        minus = loss_fn()
        perturb(1)
        grad = float((plus - minus) / (2 * eps))
        torch.manual_seed(seed)
        for name, p in params:
            z = torch.normal(mean=0, std=1, size=p.shape, device=p.device, dtype=p.dtype)
            if "bias" not in name and "norm" not in name:
                p.data = p.data - lr * (grad * z + 0.0 * p.data)
            else:
                p.data = p.data - lr * grad * z


def doubled_forward(loss_fn: BatchLoss) -> None:
    with torch.inference_mode():
        loss_fn.pair()


def bench_shape(
    shape: str, batches: list[int], seq: int, steps: int, variants: list[str], quantization: str = "none", graphs: bool = True
) -> list[dict]:
    recipe = load_recipe(
        "profile/opt-1.3b",
        [f"model.config={shape}", "model.dtype=bf16", "model.device=cuda", f"model.quantization={quantization}", "method.name=tezo"],
    )
    model, _, params = prepare_model(recipe, 0)
    if quantization != "none":  # only functional low-rank deltas can train a quantized base
        variants = [v for v in variants if VARIANTS[v][0] in ("lozo", "subzo", "tezo") and VARIANTS[v][2].get("path") != "inplace"]
        shape = f"{shape} ({quantization} base)"
    device = next(model.parameters()).device
    with one_stream(device):  # as training runs: recordings and eager work share a cuBLAS workspace
        weights = torch.cuda.memory_allocated(device)
        rows = []
        for batch in batches:
            objective, data = synthetic_batch(model.config.vocab_size, batch, seq, device)
            loss_fn = BatchLoss(objective, model, data)
            base = run_steps(lambda step: forward_passes(loss_fn), steps, device, weights, lambda: 0)
            rows.append({"shape": shape, "batch": batch, "row": "forward", **base})
            pair = run_steps(lambda step: forward_passes(loss_fn, 2), steps, device, weights, lambda: 0)
            rows.append({"shape": shape, "batch": batch, "row": "two forwards", **pair})
            doubled = run_steps(lambda step: doubled_forward(loss_fn), steps, device, weights, lambda: 0)
            rows.append({"shape": shape, "batch": batch, "row": "doubled forward", **doubled})
            if graphs:
                replayed = graphed(loss_fn)
                pair = run_steps(lambda step: forward_passes(replayed, 2), steps, device, weights, lambda: 0, count_warm_up=True)
                rows.append({"shape": shape, "batch": batch, "row": "two forwards (CUDA graph)", **pair})
                doubled = run_steps(lambda step: doubled_forward(replayed), steps, device, weights, lambda: 0, count_warm_up=True)
                rows.append({"shape": shape, "batch": batch, "row": "doubled forward (CUDA graph)", **doubled})
                del replayed
            if quantization == "none":
                try:
                    ref = run_steps(lambda step: reference_mezo_step(params, loss_fn, step), steps, device, weights, lambda: 0)
                except torch.OutOfMemoryError:
                    ref = {"oom": True}
                rows.append({"shape": shape, "batch": batch, "row": "reference MeZO", **ref})
            for label in variants:
                name, optimizer, keys = VARIANTS[label]
                cfg = METHOD_CONFIGS.get(name, "")(**keys)
                optim = dataclasses.replace(recipe.optim, name=optimizer, lr=1e-9)
                row = {"shape": shape, "batch": batch, "row": label}

                def build():
                    method = METHODS.get(name, "")(params, cfg, optim, 0, steps_per_epoch=1000, max_steps=1000, model=model)
                    row["path"] = "functional" if getattr(method, "functional", None) is not None else "in place"
                    if graphs and method.forward_state() is not None:
                        row["path"] += ", graph"
                    return method

                result = measure_built(build, params, loss_fn, steps, device, weights, graphs)  # sets row["path"]
                rows.append({**row, **result})
                print(json.dumps(rows[-1]), flush=True)
    model = params = None  # free the weights before the next shape (the closures above are done with them)
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def machine_header(command: str, setting: str = "") -> list[str]:
    """The GPU, the versions and the command, as the first lines of a benchmark's markdown."""
    import transformers

    return [
        f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()}{setting}.",
        "",
        "```bash",
        command,
        "```",
        "",
    ]


def markdown(rows: list[dict], command: str) -> str:
    out = machine_header(command, "; random weights, bf16, synthetic batches of 256 tokens") + [
        "\"× two fwd\" is the step time over that of two eager forward passes (the floor of a two-sided step), "
        "\"× graphed\" over that of two forwards replayed from a CUDA graph; \"graph\" in the path: the "
        "step's forwards were replayed from CUDA graphs, as in training; "
        "\"peak vs fwd\" compares the step's peak allocated memory with one forward's.",
    ]
    for (shape, batch) in dict.fromkeys((r["shape"], r["batch"]) for r in rows):
        group = [r for r in rows if r["shape"] == shape and r["batch"] == batch]
        fwd = next(r for r in group if r["row"] == "forward")
        two = next(r for r in group if r["row"] == "two forwards")
        replayed = next((r for r in group if r["row"] == "two forwards (CUDA graph)"), None)
        out += [
            "", f"### {shape}, batch {batch}", "",
            "| step | path | ms | × two fwd |" + (" × graphed |" if replayed else "") + " peak GiB | peak vs fwd |",
            "|---|---|---|---|" + ("---|" if replayed else "") + "---|---|",
        ]
        for r in group:
            if r.get("oom"):
                out.append(f"| {r['row']} | | out of memory | |" + (" |" if replayed else "") + " | |")
                continue
            ratio = f"{r['step_ms'] / two['step_ms']:.2f}" + (f" | {r['step_ms'] / replayed['step_ms']:.2f}" if replayed else "")
            vs = (r["peak"] / fwd["peak"] - 1) * 100
            out.append(f"| {r['row']} | {r.get('path', '')} | {r['step_ms']:.1f} | {ratio} | {r['peak']:.3f} | {vs:+.2f}% |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="opt-1.3b,llama-7b,opt-13b")
    parser.add_argument("--batches", default="16,4")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--quantization", default="none", choices=["none", "int8", "nf4"], help="quantize the base (functional low-rank rows only)")
    parser.add_argument("--graphs", default="on", choices=["on", "off"], help="replay ZO steps' forwards from CUDA graphs, as training does")
    parser.add_argument("--fused-linear", default="on", choices=["on", "off"],
                        help="off: the functional path adds its terms after cuBLAS's linear layers (no Triton kernel), to compare")
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--docs", default=None, help="a markdown file whose engine-benchmark section is replaced")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/engine.py measures on a CUDA GPU; none is visible")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batches = [int(b) for b in args.batches.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    if args.fused_linear == "off":
        lowrank_linear.usable = lambda x, weight: False  # every layer: F.linear, then the hooks' terms
    rows = []
    for shape in args.shapes.split(","):
        rows += bench_shape(shape, batches, args.seq, args.steps, variants, args.quantization, args.graphs == "on")
    (out / "engine.json").write_text(json.dumps(rows, indent=1))
    command = "python benchmarks/engine.py " + " ".join(sys.argv[1:])
    text = markdown(rows, command)
    (out / "engine.md").write_text(text)
    if args.docs:
        docs = Path(args.docs)
        begin, end = "<!-- engine-benchmark:begin -->", "<!-- engine-benchmark:end -->"
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
        docs.write_text(pattern.sub(lambda _: f"{begin}\n{text}{end}", docs.read_text()))
    print(text)


if __name__ == "__main__":
    main()
