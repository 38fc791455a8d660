"""`zoft profile-memory RECIPE`: each method's GPU memory and step time, measured and predicted."""

from __future__ import annotations

from typing import List, Optional

import typer

from zoft.errors import ZoftError


def profile_memory(
    recipe: str = typer.Argument(..., help="Recipe whose model (model.name_or_path or model.config shape) is profiled."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides, e.g. model.dtype=bf16."),
    methods: str = typer.Option("mezo,mezo-adam,lozo,lozo-m,subzo,tezo,tezo-m,tezo-adam,fo", "--methods", help="Comma-separated: mezo, mezo-m, mezo-adam, lozo, lozo-m, subzo, tezo, tezo-m, tezo-adam, adazeta, fo, fo-sgd."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per step (default: train.batch_size)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per sequence (default: data.max_length)."),
    steps: int = typer.Option(3, "--steps", help="Timed steps per method, after one warm-up step."),
    estimate_only: bool = typer.Option(False, "--estimate-only", help="Only the analytic estimate: no GPU, no weights."),
) -> None:
    """Peak GPU memory (weights / method state / optimizer state / activations) and step time of
    each method, beside the forward-only floor and an analytic estimate; writes memory.json and memory.png."""
    from zoft.cli.console import bad_input_exits, console
    from zoft.config import load_recipe

    with bad_input_exits():
        resolved = load_recipe(recipe, overrides or [])
        from zoft.engine.profiling import estimates, measure
        from zoft.engine.trainer import run_dir_of

        variants = [m.strip() for m in methods.split(",") if m.strip()]
        for variant in variants:
            _check_variant(variant)
        batch = batch_size or resolved.train.batch_size
        seq = seq_len or resolved.data.max_length
        predicted = estimates(resolved, variants, batch, seq)
        measured = {} if estimate_only else measure(resolved, variants, batch, seq, steps)
    report = build_report(resolved, variants, batch, seq, predicted, measured)
    out = run_dir_of(resolved)
    out.mkdir(parents=True, exist_ok=True)
    import json

    (out / "memory.json").write_text(json.dumps(report, indent=1))
    draw_chart(report, out / "memory.png")
    console.print(report_table(report))
    console.print(f"written: {out / 'memory.json'}, {out / 'memory.png'}")


def _check_variant(variant: str) -> None:
    from zoft.engine.memory import VARIANTS

    if variant not in VARIANTS:
        raise ZoftError(f"--methods: unknown method {variant!r}; choose from {', '.join(VARIANTS)}", title="bad option")


def build_report(recipe, variants, batch, seq, predicted, measured) -> dict:
    import platform

    import torch
    import transformers

    rows = []
    floor = measured.get("forward", {}).get("peak")
    for name in ["forward", *variants]:
        row = {"method": name, "estimate": predicted[name].gib()}
        got = measured.get(name)
        if got:
            row["measured"] = got
            if not got.get("oom"):
                row["vs_forward_pct"] = 100 * (got["peak"] / floor - 1) if floor else None
                row["estimate_error_pct"] = 100 * (predicted[name].peak / 2**30 / got["peak"] - 1)
        rows.append(row)
    return {
        "model": recipe.model.config or recipe.model.name_or_path,
        "dtype": recipe.model.dtype,
        "batch_size": batch,
        "seq_len": seq,
        "device": torch.cuda.get_device_name() if measured else "none (estimate only)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
        "rows": rows,
    }


def report_table(report: dict):
    from rich.table import Table

    measured = any("measured" in row for row in report["rows"])
    table = Table(title=f"memory of one step, GiB: {report['model']} {report['dtype']}, batch {report['batch_size']} × "
                        f"{report['seq_len']} ({report['device']})", title_justify="left")
    columns = ["method", "weights", "method st.", "optim st.", "act.+trans.", "peak (est.)"]
    if measured:
        columns = ["method", "peak", "reserved", "weights", "method st.", "optim st.", "act.+trans.",
                   "vs fwd", "step ms", "estimate", "est. err"]
    for column in columns:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in report["rows"]:
        est, got = row["estimate"], row.get("measured")
        split = [f"{est[k]:.3f}" for k in ("weights", "method_state", "optimizer_state", "activations")]
        if not measured:
            table.add_row(row["method"], *split, f"{est['peak']:.2f}")
        elif got.get("oom"):
            table.add_row(row["method"], "OOM", *["-"] * 7, f"{est['peak']:.2f}", "-")
        else:
            table.add_row(row["method"], f"{got['peak']:.2f}", f"{got['reserved']:.2f}",
                          *[f"{got[k]:.3f}" for k in ("weights", "method_state", "optimizer_state", "activations")],
                          f"{row['vs_forward_pct']:+.1f}%", f"{got['step_ms']:.1f}", f"{est['peak']:.2f}",
                          f"{row['estimate_error_pct']:+.1f}%")
    return table


def draw_chart(report: dict, path) -> None:
    """Stacked bars of the split: measured where measured, else estimated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = ("weights", "method_state", "optimizer_state", "activations")
    names, stacks = [], {p: [] for p in parts}
    for row in report["rows"]:
        source = row.get("measured") if row.get("measured") and not row["measured"].get("oom") else row["estimate"]
        names.append(row["method"] + ("" if source is row.get("measured") else " (est.)"))
        for part in parts:
            stacks[part].append(source[part])
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(names), 4.5))
    bottom = [0.0] * len(names)
    for part in parts:
        ax.bar(names, stacks[part], bottom=bottom, label=part.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, stacks[part])]
    ax.set_ylabel("GiB")
    ax.set_title(f"{report['model']} {report['dtype']}, batch {report['batch_size']} × {report['seq_len']} ({report['device']})", fontsize=9)
    ax.legend(fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
