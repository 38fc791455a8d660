"""Training-step time with and without CUDA graphs (`train.cuda_graphs`), as `zoft train` runs it.

Each method trains `--steps` steps of a recipe twice, graphs on and off, from the same seed; the
step time is the wall-clock between the first logged step after `--skip` and the last (path choice,
recording and warm-up excluded), from metrics.jsonl. The projected gradients of the two runs are
compared too: graphs change the arithmetic only by padding to a bucket, so they should agree.

Usage (on a CUDA machine, from the repository root):
  python benchmarks/graphs.py recipes/results/smollm2.yaml --methods mezo,lozo,tezo,mezo-adam \\
      --steps 300 --set model.name_or_path=/tmp/smol --out bench-out --docs docs/benchmarks.md
It writes bench-out/graphs.json and graphs.md; --docs replaces that file's `graphs-benchmark` section.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from engine import machine_header  # benchmarks/engine.py, beside this script
from zoft.config.loader import load_recipe
from zoft.engine.trainer import Trainer, run_dir_of
from zoft.tracking.metrics import read_metrics

METHODS = {  # label: recipe keys (the rows of recipes/results/_table.yaml)
    "mezo": ["method.name=mezo", "optim.lr=1e-5"],
    "mezo-adam": ["method.name=mezo", "optim.name=adam", "optim.lr=5e-5"],
    "lozo": ["method.name=lozo", "method.rank=2", "method.lazy_interval=50", "optim.lr=1e-5"],
    "subzo": ["method.name=subzo", "method.rank=8", "optim.lr=1e-5"],
    "tezo": ["method.name=tezo", "method.rank=8", "optim.lr=1e-5"],
    "tezo-adam": ["method.name=tezo", "method.rank=8", "optim.name=adam", "optim.lr=5e-5"],
}


def timed_run(recipe_path: str, keys: list[str], steps: int, skip: int, name: str, out: Path) -> dict:
    overrides = [*keys, f"train.max_steps={steps}", "eval.every=0", "eval.test=false", "eval.at_start=false",
                 "logging.every=1000000", "logging.progress=none", "checkpoint.every=0", "checkpoint.save_final=false",
                 f"run.output_dir={out}", f"run.name={name}", "run.overwrite=true"]
    recipe = load_recipe(recipe_path, overrides)
    Trainer(recipe).run()
    rows = read_metrics(run_dir_of(recipe) / "metrics.jsonl")
    steps_rows = [r for r in rows if "proj_grad" in r]
    events = {r["event"]: r for r in rows if "event" in r}
    first, last = steps_rows[skip - 1], steps_rows[-1]
    return {
        "ms": 1000 * (last["time_s"] - first["time_s"]) / (last["step"] - first["step"]),
        "grads": [r["proj_grad"] for r in steps_rows],
        "path": events.get("path", {}).get("path", ""),
        "graphs": events.get("cuda_graphs", {}).get("used", False),
        "peak_gib": max(r["mem_gib"] for r in steps_rows),
    }


def markdown(rows: list[dict], command: str) -> str:
    out = machine_header(command) + [
        "| method | path | eager ms/step | graphed ms/step | speed-up | peak GiB eager / graphed | projected gradients, median relative difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['method']} | {r['path']} | {r['off']:.1f} | {r['on']:.1f} | {r['off'] / r['on']:.2f}× | "
            f"{r['peak_off']:.2f} / {r['peak_on']:.2f} | {r['grad_rel']:.1e} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--skip", type=int, default=20, help="steps left out of the timing (warm-up)")
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides for every run")
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--docs", default=None, help="a markdown file whose graphs-benchmark section is replaced")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in args.methods.split(","):
        runs = {g: timed_run(args.recipe, [*args.set, *METHODS[label], f"train.cuda_graphs={g == 'on'}"], args.steps, args.skip, f"{label}-{g}", out)
                for g in ("on", "off")}
        assert runs["on"]["graphs"], f"{label}: graphs were not used"
        rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(runs["on"]["grads"], runs["off"]["grads"])]
        paths = dict.fromkeys({"": "in place", "inplace": "in place"}.get(runs[g]["path"], runs[g]["path"]) for g in ("off", "on"))  # auto may choose by graphs
        rows.append({"method": label, "path": " → ".join(paths), "on": runs["on"]["ms"], "off": runs["off"]["ms"],
                     "peak_on": runs["on"]["peak_gib"], "peak_off": runs["off"]["peak_gib"], "grad_rel": statistics.median(rel)})
        print(json.dumps(rows[-1]), flush=True)
    command = "python " + " ".join(sys.argv)
    (out / "graphs.json").write_text(json.dumps(rows, indent=1))
    text = markdown(rows, command)
    (out / "graphs.md").write_text(text)
    if args.docs:
        doc = Path(args.docs)
        doc.write_text(re.sub(r"(<!-- graphs-benchmark:begin -->\n).*?(<!-- graphs-benchmark:end -->)",
                              lambda m: m.group(1) + text + m.group(2), doc.read_text(), flags=re.S))
    print(text)


if __name__ == "__main__":
    main()
