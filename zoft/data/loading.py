"""Rows of a split from the built-in task, a local folder or the hub, and MeZO k-shot sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoft.config.schema import DataConfig
from zoft.data.tasks import TASKS, Example, Task
from zoft.errors import ZoftError

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class Splits:
    train: list[Example]
    dev: list[Example]
    test: list[Example]


def split_file(folder: Path, split: str) -> Path:
    for suffix in FORMATS:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    wanted = ", ".join(f"{split}{s}" for s in FORMATS)
    raise ZoftError(f"data.path: {folder} has no {split} split (looked for {wanted})", title="data not found")


def load_rows(task: Task, cfg: DataConfig, split: str) -> tuple[list[dict], str]:
    """The rows of one split and a name for them (file or hub id) for error messages."""
    if task.builtin is not None and cfg.path is None and cfg.hub_name is None:
        return task.builtin(split), f"built-in {task.name}"
    import datasets

    datasets.disable_progress_bars()
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        file = path if path.is_file() else split_file(path, split)
        try:
            table = datasets.load_dataset(FORMATS.get(file.suffix, "json"), data_files=str(file), split="train")
        except Exception as err:  # datasets raises many kinds for a malformed file
            raise ZoftError(f"{file}: cannot be read as {file.suffix or 'json'}: {_first_line(err)}", title="bad data file") from None
        return table.to_list(), str(file)
    hub = cfg.hub_name or task.hub_name
    if hub is None:
        raise ZoftError(f"data.path: task {task.name!r} has no hub dataset; give a local folder")
    try:
        table = datasets.load_dataset(hub, cfg.hub_config or task.hub_config, split=split)
    except Exception as err:
        raise ZoftError(
            f"data.hub_name: cannot load {hub!r} split {split!r} ({_first_line(err)}); "
            "offline? point data.path at a local copy",
            title="data not found",
        ) from None
    return table.to_list(), f"hub:{hub}"


def to_examples(task: Task, rows: list[dict], picked, source: str, template: str | None) -> list[Example]:
    """Format rows `picked` (indices into `rows`); a problem names the source and its row number."""
    examples = []
    for index in picked:
        row, line = rows[index], int(index) + 1
        try:
            examples.append(task.example(row, template))
        except KeyError as err:
            raise ZoftError(f"{source}: row {line}: missing field {err.args[0]!r} (task {task.name})", title="bad data row") from None
        except (TypeError, ValueError) as err:
            raise ZoftError(f"{source}: row {line}: {err}", title="bad data row") from None
        if not 0 <= examples[-1].label < len(examples[-1].candidates):
            raise ZoftError(f"{source}: row {line}: label {row.get('label')!r} is not a class of {task.name}", title="bad data row")
    return examples


def sample_splits(cfg: DataConfig, seed: int) -> Splits:
    """MeZO protocol: a seeded permutation of train gives num_train + num_dev (dev = the last
    num_dev); test = num_eval rows drawn from the validation split with the same seed."""
    task = TASKS.get(cfg.task, "data.task")
    train_rows, train_src = load_rows(task, cfg, task.train_split)
    pool = np.random.RandomState(seed).permutation(len(train_rows))[: cfg.num_train + cfg.num_dev]
    if len(pool) <= cfg.num_dev:
        raise ZoftError(f"data.num_dev: {cfg.num_dev} dev examples leave none of the {len(train_rows)} train rows of {train_src} for training")
    picked = to_examples(task, train_rows, pool, train_src, cfg.template)
    cut = len(picked) - cfg.num_dev
    eval_rows, eval_src = load_rows(task, cfg, task.eval_split)
    test_idx = np.random.RandomState(seed).permutation(len(eval_rows))[: cfg.num_eval]
    test = to_examples(task, eval_rows, test_idx, eval_src, cfg.template)
    return Splits(train=picked[:cut], dev=picked[cut:], test=test)


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
