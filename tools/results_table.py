"""Run and report the results table of docs/results.md from recipes/results/_table.yaml.

    python tools/results_table.py list                      # the command of every cell
    python tools/results_table.py run [--gpus 0,1] [--per-gpu 4] [--deadline-min 60] [--only GLOB] [--pack-every-min 5 --to OUT/records]
    python tools/results_table.py status                    # where each cell is
    python tools/results_table.py pack --to /out/records    # the records without weights, to carry away
    python tools/results_table.py report                    # table + loss curves into docs/

`run` starts each cell as its own `zoft` process (several per GPU when they are launch-bound),
skips finished cells and resumes stopped ones, so it can be run again until the table is full.
`report` reads every ZO cell of a column at one step budget (see recipes/results/_table.yaml).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from zoft.data.tasks import TASKS
from zoft.tracking.metrics import is_step, read_metrics

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "recipes" / "results" / "_table.yaml"
START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"


@dataclass
class Cell:
    model: str
    row: str
    column: str
    kind: str  # eval | zo | fo
    recipe: str
    keys: list[str]
    lr: float | None = None  # one point of the row's learning-rate grid (`lrs`), if it has one

    @property
    def name(self) -> str:
        return f"{self.model}-{self.row}-{self.column}" + (f"-lr{self.lr:g}" if self.lr is not None else "")

    def command(self, output: Path, extra: list[str] = ()) -> list[str]:
        verb = "eval" if self.kind == "eval" else "train"
        lr = [f"optim.lr={self.lr:g}"] if self.lr is not None else []
        return ["zoft", verb, self.recipe, *self.keys, *lr, f"run.output_dir={output}", f"run.name={self.name}", *extra]


def cells(table: dict) -> list[Cell]:
    """Every cell, one per learning rate of a row's `lrs` grid (MeZO: the best dev over the grid)."""
    return [
        Cell(model, row, column, spec["kind"], m["recipe"], [*ckeys, *spec["keys"]], lr)
        for model, m in table["models"].items()
        for row, spec in m["rows"].items()
        for column, ckeys in m["columns"].items()
        for lr in spec.get("lrs", [None])
    ]


def done(cell: Cell, output: Path) -> bool:
    run = output / cell.name
    if cell.kind == "eval":
        return any((run / "eval").glob("*_test_none*.json"))
    return (run / "results.json").is_file()


# ---- run -------------------------------------------------------------------------------------
def run(args, table: dict) -> None:
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    wanted = lambda c: any(fnmatch.fnmatch(f"{c.model}/{c.row}/{c.column}", glob) for glob in args.only.split(","))  # noqa: E731
    todo = [c for c in cells(table) if wanted(c) and not done(c, output)]
    todo.sort(key=lambda c: c.kind != "zo")  # the long ZO runs first, the short ones fill in behind
    slots = [gpu for _ in range(args.per_gpu) for gpu in (args.gpus.split(",") if args.gpus else [""])]
    deadline = time.time() + 60 * args.deadline_min if args.deadline_min else None
    running: dict[subprocess.Popen, tuple[Cell, str]] = {}
    failed = []
    next_pack = time.time() + 60 * args.pack_every_min if args.pack_every_min else None
    print(f"{len(todo)} cells to run in {len(slots)} slots", flush=True)
    while todo or running:
        if next_pack and time.time() >= next_pack:  # what a machine taken away mid-run still hands back
            pack(args, table)
            next_pack = time.time() + 60 * args.pack_every_min
        for proc, (cell, slot) in list(running.items()):
            if proc.poll() is not None:
                del running[proc]
                slots.append(slot)
                if proc.returncode not in (0, 130):
                    failed.append(cell.name)
                print(f"{time.strftime('%H:%M:%S')} {cell.name}: exit {proc.returncode}", flush=True)
        if deadline and time.time() > deadline:
            stop(running)
            break
        while todo and slots:
            cell, slot = todo.pop(0), slots.pop(0)
            running[launch(cell, slot, output, args)] = (cell, slot)
        time.sleep(2)
    left = [c.name for c in todo] + [c.name for c, _ in running.values()]
    print(f"failed: {failed or 'none'}; not finished: {left or 'none'}", flush=True)
    if next_pack:
        pack(args, table)


def launch(cell: Cell, gpu: str, output: Path, args) -> subprocess.Popen:
    extra = [f"model.name_or_path={path}" for name, path in (m.split("=", 1) for m in args.model) if name == cell.model]
    extra += args.set
    if cell.kind != "eval" and (output / cell.name / "config.yaml").is_file():
        extra.append("checkpoint.resume=auto")  # stopped earlier: go on from its checkpoint,
        if cell.kind == "zo":  # or, a ZO run whose checkpoints stayed on another machine, from its metrics
            extra.append("checkpoint.replay=true")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if gpu:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    cmd = [sys.executable, "-m", *cell.command(output, extra)]
    print(f"{time.strftime('%H:%M:%S')} start {cell.name} on gpu {gpu or '-'}", flush=True)
    with open(output / f"{cell.name}.log", "a") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(running: dict) -> None:
    """At the deadline: Ctrl-C each run (it checkpoints and exits 130), then kill what lingers."""
    for proc in running:
        os.killpg(proc.pid, signal.SIGINT)
    end = time.time() + 120
    while time.time() < end and any(p.poll() is None for p in running):
        time.sleep(1)
    for proc in running:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def status(args, table: dict) -> None:
    """One line a cell: done, or the step it reached and its last dev and test scores."""
    output = Path(args.output)
    for cell in cells(table):
        run = output / cell.name
        rows = records(run)
        last = max((r["step"] for r in rows if "split" not in r and "step" in r), default=0)
        evals = {r["split"]: r for r in rows if "split" in r}
        scores = " ".join(f"{k} {v.get('f1', v.get('accuracy')):.3f}@{v['step']}" for k, v in sorted(evals.items()))
        state = "done" if done(cell, output) else ("stopped" if run.is_dir() else "-")
        print(f"{cell.name:32} {state:8} step {last:6d} {scores}")


def pack(args, table: dict) -> None:
    """The cells' run records without their weights (config, metrics of every step, evaluations,
    logs) as a .tar.gz in parts of at most --part-mb MB: small enough to carry off a GPU machine,
    and all a later `run` needs to go on: it continues a stopped ZO cell by replay (docs/train.md)."""
    import io
    import tarfile

    output, buffer = Path(args.output), io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for cell in cells(table):
            run = output / cell.name
            for path in [output / f"{cell.name}.log", *(p for p in run.rglob("*") if "checkpoints" not in p.parts)]:
                if not path.is_file():
                    continue
                content = path.read_bytes()
                if path.suffix == ".jsonl":  # packed while a run writes: its records up to the last whole line
                    content = content[: content.rfind(b"\n") + 1]
                info = tarfile.TarInfo(str(path.relative_to(output)))
                info.size, info.mtime = len(content), int(path.stat().st_mtime)
                tar.addfile(info, io.BytesIO(content))
    data, size = buffer.getvalue(), int(args.part_mb * 1e6)
    Path(args.to).parent.mkdir(parents=True, exist_ok=True)
    parts = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
    for index, part in enumerate(parts):  # each part whole or not at all, should the machine go mid-write
        target = Path(f"{args.to}.part{index:02d}")
        target.with_suffix(".tmp").write_bytes(part)
        target.with_suffix(".tmp").replace(target)
    for stale in Path(args.to).parent.glob(f"{Path(args.to).name}.part*"):  # left by a larger earlier pack
        if int(stale.name.rsplit(".part", 1)[1]) >= len(parts):
            stale.unlink()
    print(f"{len(data) / 1e6:.1f} MB in {len(parts)} parts: {args.to}.part00 ... (cat them, then tar xzf - -C {output})")


# ---- report ----------------------------------------------------------------------------------
def records(run: Path) -> list[dict]:
    return read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []


def evaluations(rows: list[dict], metric: str) -> dict[int, tuple[float, float]]:
    """step -> (dev score, test score) for the evaluations that scored both."""
    dev = {r["step"]: r[metric] for r in rows if r.get("split") == "dev"}
    test = {r["step"]: r[metric] for r in rows if r.get("split") == "test"}
    return {s: (dev[s], test[s]) for s in sorted(dev) if s in test}


def read_at(rows: list[dict], metric: str, budget: int) -> dict | None:
    """The test score of the best dev evaluation up to `budget` steps, with its time and memory."""
    evals = {s: v for s, v in evaluations(rows, metric).items() if s <= budget}
    if not evals:
        return None
    best = max(evals, key=lambda s: (evals[s][0], -s))  # ties: the earlier step
    steps = [r for r in rows if is_step(r) and r["step"] <= budget]
    return {
        "dev": evals[best][0], "test": evals[best][1], "best_step": best, "steps": budget,
        "time_s": max((r["time_s"] for r in steps), default=0.0),
        "mem_gib": training_peak(rows, budget),
    }


def training_peak(rows: list[dict], budget: int) -> float:
    """The peak memory of the training steps up to `budget`, evaluations left out (they cost the
    same for every method). A step's `mem_gib` is the peak since its process's last evaluation
    that logged its own; records from before evaluations did so count only up to the first one
    (and where an evaluation came before every step, zero-shot, the whole peak is all there is)."""
    clean_peak, whole_peak, clean = None, 0.0, True
    for r in rows:
        if "split" in r:
            clean = "mem_gib" in r
        elif is_step(r) and r["step"] <= budget:
            whole_peak = max(whole_peak, r["mem_gib"])
            if clean:
                clean_peak = max(clean_peak or 0.0, r["mem_gib"])
    return whole_peak if clean_peak is None else clean_peak


def metric_of(model: str, column: str, table: dict) -> str:
    keys = dict(k.split("=", 1) for k in table["models"][model]["columns"][column])
    return TASKS.get(keys["data.task"], "data.task").metric


def report(table: dict, output: Path, docs: Path) -> None:
    """The tables into `docs` (between its markers) and a loss-curve PNG per column into docs/img."""
    lines, curves = [], {}
    all_cells = cells(table)
    for model, m in table["models"].items():
        columns = list(m["columns"])
        results, budgets = {}, {}
        for column in columns:
            metric = metric_of(model, column, table)
            here = [c for c in all_cells if c.model == model and c.column == column]
            runs = {c.name: records(output / c.name) for c in here}
            same = [max(evals) for c in here if c.kind == "zo" and not m["rows"][c.row].get("own_budget")
                    and (evals := evaluations(runs[c.name], metric))]
            budgets[column] = min(same) if same else 0
            for row, spec in m["rows"].items():
                grid = [c for c in here if c.row == row]
                if spec["kind"] == "eval":
                    results[row, column] = eval_score(output / grid[0].name, metric)
                    continue
                read, own = {}, spec["kind"] == "fo" or spec.get("own_budget")
                for c in grid:
                    budget = max(evaluations(runs[c.name], metric), default=0) if own else budgets[column]
                    if (r := read_at(runs[c.name], metric, budget)) is not None:
                        read[c.name] = {**r, "lr": c.lr}
                best = max(read, key=lambda name: read[name]["dev"], default=grid[0].name)  # ties: the first rate
                results[row, column] = read.get(best)
                curves.setdefault((model, column), {})[row] = runs[best]
        lines += table_lines(model, m, columns, results, budgets)
    write_docs(docs, "\n".join(lines))
    for (model, column), runs in curves.items():
        plot(model, column, runs, docs.parent / "img" / f"results-{model}-{column}.png")


def eval_score(run: Path, metric: str) -> dict | None:
    found = sorted((run / "eval").glob("*_test_none*.json"))
    return {"test": json.loads(found[0].read_text())[metric]} if found else None


def table_lines(model: str, m: dict, columns: list[str], results: dict, budgets: dict) -> list[str]:
    head = f"| {model} | " + " | ".join(f"{c} ({budgets[c]:,} ZO steps)" for c in columns) + " |"
    out = [head, "|---" * (len(columns) + 1) + "|"]
    for row in m["rows"]:
        cells_ = []
        for column in columns:
            r = results.get((row, column))
            if r is None:
                cells_.append("—")
            elif "time_s" not in r:
                cells_.append(f"{100 * r['test']:.1f}")
            else:
                lr = f" · lr {r['lr']:g}" if r.get("lr") is not None else ""
                cells_.append(f"{100 * r['test']:.1f} · {r['steps']:,} st · {r['time_s'] / 60:.1f} min · {r['mem_gib']:.2f} GiB{lr}")
        out.append(f"| {row} | " + " | ".join(cells_) + " |")
    return out + [""]


def write_docs(docs: Path, body: str) -> None:
    text = docs.read_text()
    if START not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    docs.write_text(f"{head}{START}\n{body}\n{END}{rest.split(END, 1)[1]}")


def plot(model: str, column: str, runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    for row, rows in runs.items():
        steps = [(r["step"], r["loss"]) for r in rows if is_step(r) and r["loss"] is not None]
        if not steps:
            continue
        window = max(1, len(steps) // 25)  # a running mean over 4% of the run: ZO losses are noisy
        xs = [s for s, _ in steps][window - 1:]
        ys = [sum(l for _, l in steps[i - window + 1:i + 1]) / window for i in range(window - 1, len(steps))]
        ax.plot(xs, ys, label=row, linewidth=1.2)
    ax.set(xlabel="step", ylabel="training loss (running mean)", title=f"{model} · {column}")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["list", "run", "status", "pack", "report"])
    parser.add_argument("--output", default="runs/results", help="folder of the cells' run directories")
    parser.add_argument("--gpus", default="", help="comma-separated GPU indices; empty: the default device")
    parser.add_argument("--per-gpu", type=int, default=1, help="cells run at once on each GPU")
    parser.add_argument("--deadline-min", type=float, default=0, help="stop (checkpointing) the runs after this many minutes")
    parser.add_argument("--only", default="*", help="globs over model/row/column, comma-separated, e.g. 'smollm2/*/sst2,minilm/fo*/*'")
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH: load model NAME from PATH")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE added to every cell (a quick try: train.max_steps=20)")
    parser.add_argument("--to", default="results-records.tar.gz", help="pack: the parts' path prefix")
    parser.add_argument("--pack-every-min", type=float, default=0,
                        help="run: pack the records to --to every this many minutes and at the end (0: never)")
    parser.add_argument("--part-mb", type=float, default=15.0, help="pack: the largest part, in MB")
    args = parser.parse_args()
    table = yaml.safe_load(TABLE.read_text())
    if args.action == "list":
        for cell in cells(table):
            print(" ".join(cell.command(Path(args.output))))
    elif args.action == "run":
        run(args, table)
    elif args.action == "status":
        status(args, table)
    elif args.action == "pack":
        pack(args, table)
    else:
        report(table, Path(args.output), ROOT / "docs" / "results.md")


if __name__ == "__main__":
    main()
