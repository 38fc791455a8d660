"""`zoft eval RUN_DIR|RECIPE`: score a checkpoint or a base model on one or more tasks."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from zoft.errors import ZoftError


def eval_command(
    source: str = typer.Argument(..., help="A run directory (its config.yaml and checkpoints) or a recipe."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides, e.g. data.path=data/{task}."),
    checkpoint: str = typer.Option(
        "auto", "--checkpoint", "-c", help="none (base model), latest, best, step_N; auto = best, else latest, for a run, none for a recipe."
    ),
    split: str = typer.Option("test", "--split", help="dev or test."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated tasks (default: the recipe's data.task)."),
    icl: Optional[int] = typer.Option(None, "--icl", help="In-context demonstrations before each prompt (sets eval.icl_shots)."),
) -> None:
    """Score a base model or a run's checkpoint on tasks; write eval/*.json and print a table."""
    from rich.table import Table

    from zoft.cli.console import bad_input_exits, console, metric_text
    from zoft.config import load_recipe

    with bad_input_exits():
        if split not in ("dev", "test"):
            raise ZoftError(f"--split: expected dev or test, got {split!r}", title="bad option")
        run_dir = Path(source)
        is_run = (run_dir / "config.yaml").is_file()
        extra = list(overrides or []) + ([f"eval.icl_shots={icl}"] if icl is not None else [])
        recipe = load_recipe(run_dir / "config.yaml" if is_run else source, extra)
        from zoft.engine import checkpoint as checkpoints
        from zoft.engine.evaluation import evaluate
        from zoft.engine.trainer import run_dir_of

        which = checkpoint
        if which == "auto":
            which = checkpoints.preferred(run_dir / "checkpoints") if is_run else "none"
        if which != "none" and not is_run:
            raise ZoftError(f"--checkpoint: {which!r} needs a run directory; {source!r} is a recipe", title="bad option")
        out_dir = run_dir if is_run else run_dir_of(recipe)
        names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else [recipe.data.task]
        records = evaluate(recipe, out_dir, which, split, names, run_dir if is_run else None)
    table = Table(title=f"zoft eval: {recipe.model.name_or_path or recipe.model.config}", title_justify="left")
    for column in ("task", "split", "checkpoint", "ICL shots", "score", "n"):
        table.add_column(column)
    for r in records:
        table.add_row(r["task"], r["split"], r["checkpoint"], str(r["icl_shots"]), metric_text(r), str(r["n"]))
    console.print(table)
    console.print(f"written to {out_dir / 'eval'}")
