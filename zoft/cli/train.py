"""`zoft train RECIPE [key=value ...]`: validate a recipe, then train (or print, or dry-run)."""

from __future__ import annotations

from typing import List, Optional

import typer

EXIT_STOPPED = 1  # a guard stopped the run (non-finite losses, divergence, out of memory)
EXIT_INTERRUPTED = 130


def train(
    recipe: Optional[str] = typer.Argument(None, help="Recipe file, or the name of a packaged recipe (see --list)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides (value read as YAML); ~key.path resets a key."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved recipe and exit."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build everything, run one ±ε forward pair, write nothing."),
    list_recipes: bool = typer.Option(False, "--list", help="List the packaged recipes and exit."),
) -> None:
    """Fine-tune a model on a task with one ZO method, as a recipe describes."""
    from zoft.cli.console import bad_input_exits, console, make_reporter, show_problems
    from zoft.config import dump_recipe, list_recipes as packaged, load_recipe
    from zoft.errors import ZoftError

    if list_recipes:
        for name in packaged():
            console.print(name)
        return
    with bad_input_exits():
        if recipe is None:
            raise ZoftError("give a recipe file or a packaged recipe name (zoft train --list)", title="missing recipe")
        resolved = load_recipe(recipe, overrides or [])
        if print_config:
            console.print(dump_recipe(resolved), end="", markup=False)
            return
        from zoft.engine.trainer import Interrupted, RunStopped, Trainer, dry_run as run_dry

        if dry_run:
            result = run_dry(resolved)
            for key, value in result.items():
                console.print(f"{key}: {value}", markup=False)
            console.print("dry run ok: nothing was written")
            return
        reporter = make_reporter(resolved.logging.progress)
        try:
            Trainer(resolved, reporter).run()
        except Interrupted as stop:
            reporter.close()
            console.print(f"interrupted at step {stop.step}; checkpoint {stop.folder}. "
                          "Continue with checkpoint.resume=auto")
            raise typer.Exit(EXIT_INTERRUPTED)
        except RunStopped as stop:
            reporter.close()
            show_problems(stop.title, stop.problems)
            raise typer.Exit(EXIT_STOPPED)
        finally:
            reporter.close()
