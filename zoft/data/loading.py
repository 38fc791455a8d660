"""Rows of a split from the built-in task, a local folder or the hub, and MeZO k-shot sampling."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoft.config.schema import DataConfig
from zoft.data.tasks import TASKS, Example, Task
from zoft.errors import ZoftError

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
HALVES = "article_halves.json"  # SQuAD dev split into two article-disjoint halves (train / test)


@dataclass
class Splits:
    train: list[Example]
    dev: list[Example]
    test: list[Example]


@dataclass
class Records:
    """Flat records of a split, each with the 1-based row of the file it came from."""

    records: list[dict]
    rows: list[int]
    source: str


def data_path(cfg: DataConfig) -> Path | None:
    """`data.path` with `{task}` filled in, so one recipe can point at a folder per task."""
    return None if cfg.path is None else Path(cfg.path.format(task=cfg.task)).expanduser()


def split_file(folder: Path, split: str) -> Path:
    for suffix in FORMATS:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    wanted = ", ".join(f"{split}{s}" for s in FORMATS)
    raise ZoftError(f"data.path: {folder} has no {split} split (looked for {wanted})", title="data not found")


def _read_file(file: Path) -> list[dict]:
    """Rows of a local file through `datasets`, its Arrow cache in a temporary folder that is
    removed at once (zoft writes nothing outside the run directory)."""
    import tempfile

    datasets = _quiet_datasets()
    try:
        with tempfile.TemporaryDirectory(prefix="zoft-data-") as cache:
            fmt = FORMATS.get(file.suffix, "json")
            return datasets.load_dataset(fmt, data_files=str(file), split="train", cache_dir=cache).to_list()
    except Exception as err:  # datasets raises many kinds for a malformed file
        raise ZoftError(f"{file}: cannot be read as {file.suffix or 'json'}: {_first_line(err)}", title="bad data file") from None


def _article_half(folder: Path, split: str, task: Task) -> tuple[list[dict], str]:
    """Train = half A of the validation articles, everything else = half B (Du et al. 2017)."""
    halves = json.loads((folder / HALVES).read_text())
    titles = set(halves["half_A_titles" if split == task.train_split else "half_B_titles"])
    file = split_file(folder, "validation")
    return [row for row in _read_file(file) if row.get("title") in titles], f"{file} ({split}: {HALVES})"


def load_rows(task: Task, cfg: DataConfig, split: str) -> tuple[list[dict], str]:
    """The raw rows of one split and a name for them (file or hub id) for error messages."""
    folder = data_path(cfg)
    if task.builtin is not None and folder is None and cfg.hub_name is None:
        return task.builtin(split), f"built-in {task.name}"
    if folder is not None:
        if folder.is_file():
            return _read_file(folder), str(folder)
        if (folder / HALVES).is_file() and not any((folder / f"{task.train_split}{s}").is_file() for s in FORMATS):
            return _article_half(folder, split, task)  # no train file: both splits from the halves
        file = split_file(folder, split)
        return _read_file(file), str(file)
    hub = cfg.hub_name or task.hub_name
    if hub is None:
        raise ZoftError(f"data.path: task {task.name!r} has no hub dataset; give a local folder")
    datasets = _quiet_datasets()
    try:
        table = datasets.load_dataset(hub, cfg.hub_config or task.hub_config, split=split)
    except Exception as err:
        raise ZoftError(
            f"data.hub_name: cannot load {hub!r} split {split!r} ({_first_line(err)}); "
            "offline? point data.path at a local copy",
            title="data not found",
        ) from None
    return table.to_list(), f"hub:{hub}"


def load_records(task: Task, cfg: DataConfig, split: str) -> Records:
    rows, source = load_rows(task, cfg, split)
    records, numbers = [], []
    for number, row in enumerate(rows, start=1):
        try:
            flat = task.flatten(row)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ZoftError(f"{source}: row {number}: cannot read a {task.name} example: {_first_line(err)}", title="bad data row") from None
        records += flat
        numbers += [number] * len(flat)
    return Records(records, numbers, source)


def to_examples(task: Task, data: Records, picked, template: str | None) -> list[Example]:
    """Format records `picked` (indices); a problem names the source and its row number."""
    examples = []
    for index in picked:
        rec, row = data.records[index], data.rows[index]
        try:
            example = task.example(rec, template)
        except KeyError as err:
            raise ZoftError(f"{data.source}: row {row}: missing field {err.args[0]!r} (task {task.name})", title="bad data row") from None
        except (TypeError, ValueError, IndexError) as err:
            raise ZoftError(f"{data.source}: row {row}: {_first_line(err)} (task {task.name})", title="bad data row") from None
        n_classes = task.num_labels or len(example.candidates)
        if not 0 <= example.label < n_classes:
            raise ZoftError(f"{data.source}: row {row}: label {rec.get('label')!r} is not a class of {task.name}", title="bad data row")
        examples.append(example)
    return examples


def sample_splits(cfg: DataConfig, seed: int) -> Splits:
    """MeZO protocol: a seeded permutation of train gives num_train + num_dev (dev = the last
    num_dev); test = num_eval examples drawn from the evaluation split with the same seed."""
    task = TASKS.get(cfg.task, "data.task")
    num_dev = task.num_dev if cfg.num_dev is None else cfg.num_dev
    train = load_records(task, cfg, task.train_split)
    pool = np.random.RandomState(seed).permutation(len(train.records))[: cfg.num_train + num_dev]
    if len(pool) <= num_dev:
        raise ZoftError(
            f"data.num_dev: {num_dev} dev examples leave none of the {len(train.records)} "
            f"training examples of {train.source} for training"
        )
    picked = to_examples(task, train, pool, cfg.template)
    cut = len(picked) - num_dev
    evaluation = load_records(task, cfg, task.eval_split)
    test_idx = np.random.RandomState(seed).permutation(len(evaluation.records))[: cfg.num_eval]
    return Splits(train=picked[:cut], dev=picked[cut:], test=to_examples(task, evaluation, test_idx, cfg.template))


def with_demonstrations(examples: list[Example], pool: list[Example], shots: int, seed: int) -> list[Example]:
    """In-context learning: `shots` training examples with their gold answers before each prompt.

    The same demonstrations, drawn once with the seed, precede every example (MeZO joins them
    with a blank line).
    """
    if shots == 0:
        return examples
    if shots > len(pool):
        raise ZoftError(f"eval.icl_shots: {shots} demonstrations asked for, the training set has {len(pool)}")
    picked = [pool[i] for i in np.random.RandomState(seed).permutation(len(pool))[:shots]]
    context = "".join(f"{d.prompt}{d.candidates[d.label].rstrip()}\n\n" for d in picked)
    return [Example(context + e.prompt, e.candidates, e.label, e.answers, e.pair) for e in examples]


def _quiet_datasets():
    """`datasets`, with its progress bars and error logs off: zoft reports problems itself."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    return datasets


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__
