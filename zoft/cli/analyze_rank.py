"""`zoft analyze-rank RECIPE`: how low-rank each layer's gradient is, per step and across steps."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import List, Optional

import typer

from zoft.errors import ZoftError


def analyze_rank(
    recipe: str = typer.Argument(..., help="Recipe: model, task and data to follow."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides."),
    steps: int = typer.Option(100, "--steps", help="Training steps to follow (T)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated globs of 2-D weights (default: all but embeddings and head)."),
    top_k: int = typer.Option(32, "--top-k", help="Singular values kept per step and layer."),
    threshold: float = typer.Option(0.02, "--threshold", help="Rank = singular values at least this fraction of the largest."),
    sketch: int = typer.Option(32, "--sketch", help="p: each gradient enters the temporal study as a p×p sketch (0 = exact, small models only)."),
    train: str = typer.Option("fo", "--train", help="fo: AdamW on the chosen layers; recipe: the recipe's method trains."),
    max_rank: int = typer.Option(64, "--max-rank", help="Cap of the ranks written to the rank file."),
    focus: Optional[str] = typer.Option(None, "--focus", help="Layer of the steps × singular-index heatmap (default: the first)."),
) -> None:
    """Spectra of the true gradients of chosen layers over T steps: heatmaps (terminal and PNG),
    CSV/JSON of every number, and a per-layer rank file for `method.rank`."""
    from zoft.cli.console import bad_input_exits, console
    from zoft.config import load_recipe

    with bad_input_exits():
        if train not in ("fo", "recipe"):
            raise ZoftError(f"--train: expected fo or recipe, got {train!r}", title="bad option")
        if steps < 1 or top_k < 1 or not 0 < threshold < 1 or sketch < 0:
            raise ZoftError("--steps, --top-k must be >= 1, --threshold in (0, 1), --sketch >= 0", title="bad option")
        resolved = load_recipe(recipe, overrides or [])
        from zoft.engine.rank_study import study
        from zoft.engine.trainer import run_dir_of

        results = study(resolved, steps, layers, top_k, threshold, sketch, train)
        names = [r.name for r in results]
        if focus is not None and focus not in names:
            raise ZoftError(f"--focus: {focus!r} is not among the studied layers ({', '.join(names[:4])}, ...)", title="bad option")
    out = run_dir_of(resolved) / "rank"
    out.mkdir(parents=True, exist_ok=True)
    focused = next(r for r in results if r.name == (focus or names[0]))
    write_numbers(results, out, threshold, max_rank, resolved, steps, train, sketch)
    draw(results, focused, out, threshold)
    show(results, focused, threshold, max_rank, console)
    console.print(f"written to {out}: rank_study.json, spectra.csv, ranks.json (method.rank={out / 'ranks.json'}), *.png")


def write_numbers(results, out: Path, threshold: float, max_rank: int, recipe, steps: int, train: str, sketch: int) -> None:
    meta = {"model": recipe.model.config or recipe.model.name_or_path, "task": recipe.data.task, "steps": steps,
            "train": train, "threshold": threshold, "sketch": sketch}
    (out / "rank_study.json").write_text(json.dumps({**meta, "layers": [vars(r) for r in results]}))
    with open(out / "spectra.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["layer", "step", "index", "normalized_singular_value"])
        for r in results:
            for step, row in enumerate(r.spectra):
                writer.writerows([r.name, step, i, v] for i, v in enumerate(row))
    ranks = {r.name: r.suggested_rank(max_rank) for r in results}
    (out / "ranks.json").write_text(json.dumps({"threshold": threshold, "default": max(ranks.values()), "ranks": ranks}, indent=1))


def draw(results, focused, out: Path, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def heatmap(matrix, ylabels, title, path, xlabel="singular value index"):
        fig, ax = plt.subplots(figsize=(8, 1.5 + 0.22 * min(len(ylabels), 60)))
        image = ax.imshow(np.asarray(matrix), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        step = max(1, len(ylabels) // 40)
        ax.set_yticks(range(0, len(ylabels), step), [ylabels[i] for i in range(0, len(ylabels), step)], fontsize=6)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, label="σ / σ₁")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    means = [np.mean(np.asarray(r.spectra), axis=0) for r in results]
    heatmap(means, [r.name for r in results], "mean normalised spectrum of each layer's gradient", out / "layers.png")
    heatmap(focused.spectra, [str(s) for s in range(len(focused.spectra))], f"spectrum per step: {focused.name}", out / "steps.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ax.semilogy(range(1, len(r.temporal) + 1), np.maximum(r.temporal, 1e-8), alpha=0.7)
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("singular value index (across steps)")
    ax.set_ylabel("σ / σ₁")
    ax.set_title("temporal low-rankness: spectrum of each layer's d×T gradient matrix", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "temporal.png", dpi=110)
    plt.close(fig)
    heatmap(focused.overlap, [str(s) for s in focused.overlap_steps],
            f"top-r subspace overlap between steps: {focused.name}", out / "overlap.png", xlabel="step (same as rows)")


def show(results, focused, threshold: float, max_rank: int, console) -> None:
    from rich.table import Table
    from rich.text import Text

    def bar(values) -> Text:
        """One cell per singular value, from dark (0) to bright (σ₁)."""
        text = Text()
        for v in values:
            level = int(40 + 215 * max(0.0, min(1.0, v)))
            text.append("█", style=f"rgb({level},{level},{level})")
        return text

    table = Table(title=f"gradient spectra (σ/σ₁ of the first {len(results[0].spectra[0])}; dark = 0, bright = 1)", title_justify="left")
    for column in ("layer", "mean spectrum", "rank@%g" % threshold, "temporal rank", "overlap first↔last"):
        table.add_column(column)
    for r in results:
        mean = [sum(col) / len(col) for col in zip(*r.spectra)]
        temporal_rank = sum(v >= threshold for v in r.temporal)
        overlap = r.overlap[0][-1] if r.overlap else float("nan")
        table.add_row(r.name, bar(mean), str(r.suggested_rank(max_rank)), f"{temporal_rank}/{len(r.temporal)}", f"{overlap:.2f}")
    console.print(table)
    steps = Table(title=f"per step: {focused.name}", title_justify="left", show_header=False)
    for index, row in enumerate(focused.spectra[: 40]):
        steps.add_row(str(index), bar(row))
    console.print(steps)
