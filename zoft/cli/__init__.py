"""The `zoft` command: a thin typer app. Heavy imports (torch, transformers) happen inside commands."""

from __future__ import annotations

import typer

from zoft import __version__
from zoft.cli.analyze_rank import analyze_rank
from zoft.cli.eval import eval_command
from zoft.cli.profile_memory import profile_memory
from zoft.cli.train import train

app = typer.Typer(
    name="zoft",
    help="Fine-tune language models with zeroth-order optimization: forward passes only.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(train)
app.command("eval")(eval_command)
app.command("profile-memory")(profile_memory)
app.command("analyze-rank")(analyze_rank)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"zoft {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Fine-tune language models with zeroth-order optimization: forward passes only."""


def main() -> None:
    app()
