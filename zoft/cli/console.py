"""Terminal output: rich progress and tables on a terminal, plain lines otherwise."""

from __future__ import annotations

import contextlib
import sys
import time

import typer

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from zoft.engine.report import Reporter

EXIT_BAD_INPUT = 2

console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


@contextlib.contextmanager
def bad_input_exits():
    """Bad input (a ZoftError) becomes its message, one line per problem, and exit code 2."""
    from zoft.errors import ZoftError

    try:
        yield
    except ZoftError as err:
        show_problems(err.title, err.problems)
        raise typer.Exit(EXIT_BAD_INPUT) from None


def show_problems(title: str, problems: list[str]) -> None:
    err_console.print(f"[bold red]error: {title}[/]")
    for problem in problems:
        err_console.print(f"  • {problem}", markup=False, soft_wrap=True)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def step_line(record: dict, total: int, rate: float | None) -> str:
    parts = [
        f"step {record['step']}/{total}",
        f"loss {record['loss']:.4f}",
        f"g {_fmt(record['proj_grad'])}",
        f"lr {record['lr']:.2e}",
    ]
    if record.get("queries", 1) != 1:  # AdaZeta's schedule, or n_queries
        parts.append(f"queries {record['queries']}")
    if rate:
        parts.append(f"{rate:.2f} it/s")
    parts.append(f"mem {record['mem_gib']:.2f} GiB")
    return " | ".join(parts)


def metric_text(record: dict) -> str:
    """'accuracy 73.5%' or 'f1 41.2% exact_match 30.0%' for an evaluation record."""
    return " ".join(f"{k} {100 * record[k]:.1f}%" for k in ("accuracy", "f1", "exact_match") if k in record)


def summary_table(summary: dict) -> Table:
    table = Table(title="zoft run summary", show_header=False, title_justify="left")
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    metric = summary["metric"]
    rows = [
        ("run directory", summary["run_dir"]),
        ("task", summary["task"]),
        ("steps", str(summary["steps"])),
        (f"dev {metric} before training", pct(summary["zero_shot_dev"])),
        (f"best dev {metric}", f"{pct(summary['best_dev'])} (step {summary['best_step']})"),
        (f"test {metric} before training", pct(summary["zero_shot_test"])),
        (f"test {metric} (best dev checkpoint)", pct(summary["test"])),
        ("wall time", f"{summary['time_s']:.1f} s"),
        ("peak memory", f"{summary['peak_mem_gib']:.2f} GiB"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


class PlainReporter(Reporter):
    """One line per logged step: for logs, CI and pipes."""

    def __init__(self):
        self.total, self._last = 0, None

    def _rate(self, step: int) -> float | None:
        now = time.perf_counter()
        rate = None
        if self._last is not None and step > self._last[0]:
            rate = (step - self._last[0]) / (now - self._last[1])
        self._last = (step, now)
        return rate

    def start(self, total_steps: int, first_step: int) -> None:
        self.total, self._last = total_steps, (first_step, time.perf_counter())

    @staticmethod
    def say(text: str) -> None:
        """One line, flushed at once so that `tail -f` on a log follows the run."""
        console.print(text, soft_wrap=True, markup=False)
        console.file.flush()

    def step(self, record: dict) -> None:
        self.say(step_line(record, self.total, self._rate(record["step"])))

    def eval(self, record: dict) -> None:
        self.say(f"eval {record['split']} @ step {record['step']}: {metric_text(record)} "
                 f"(loss {record['loss']:.4f}, n={record['n']})")

    def message(self, text: str) -> None:
        self.say(text)

    def finish(self, summary: dict) -> None:
        console.print(summary_table(summary))


class RichReporter(PlainReporter):
    """A live progress bar (step, loss, it/s, ETA, memory) above the eval lines."""

    def __init__(self):
        super().__init__()
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
        )
        self.task = None

    def start(self, total_steps: int, first_step: int) -> None:
        super().start(total_steps, first_step)
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=first_step, rate="", info="")

    def step(self, record: dict) -> None:
        rate = self._rate(record["step"])
        queries = f"  queries {record['queries']}" if record.get("queries", 1) != 1 else ""
        info = f"loss {record['loss']:.4f}{queries}  mem {record['mem_gib']:.2f} GiB"
        self.progress.update(self.task, completed=record["step"], rate=f"{rate:.1f} it/s" if rate else "", info=info)

    def finish(self, summary: dict) -> None:
        self.close()
        super().finish(summary)

    def close(self) -> None:
        self.progress.stop()


def make_reporter(mode: str) -> Reporter:
    if mode == "none":
        return Reporter()
    if mode == "rich" or (mode == "auto" and sys.stdout.isatty()):
        return RichReporter()
    return PlainReporter()
