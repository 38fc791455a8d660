"""Task registry: how a dataset row becomes a prompt, its candidates and the gold answer.

Importing this module is cheap (no torch, no datasets): the recipe validator uses it.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Callable

from zoft.errors import ZoftError
from zoft.registry import Registry


@dataclass(frozen=True)
class Example:
    """One scored example: the model reads `prompt`, then each candidate is scored after it."""

    prompt: str
    candidates: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Task:
    """A classification-as-LM-scoring task in the MeZO protocol (methods.md, Task formats)."""

    name: str
    template: str  # str.format template over the row's fields
    verbalizer: tuple[str, ...]  # candidate i is appended for label i
    hub_name: str | None = None
    hub_config: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"  # MeZO samples its test set from the validation split
    builtin: Callable[[str], list[dict]] | None = None  # rows shipped as code
    label_of: Callable[[dict], int] = field(default=lambda row: int(row["label"]))

    def fields(self, template: str | None = None) -> list[str]:
        return [name for _, name, _, _ in string.Formatter().parse(template or self.template) if name]

    def example(self, row: dict, template: str | None = None) -> Example:
        """Format one row; a missing field (absent, or null as `datasets` fills it) raises KeyError."""
        values = {}
        for key in self.fields(template):
            if row.get(key) is None:
                raise KeyError(key)
            values[key] = str(row[key]).strip()
        return Example((template or self.template).format(**values), self.verbalizer, self.label_of(row))


TASKS: Registry[Task] = Registry("task")


def register(task: Task) -> Task:
    return TASKS.register(task.name)(task)


def _toy_rows(split: str) -> list[dict]:
    from zoft.data.toy import toy_rows

    try:
        return toy_rows(split)
    except KeyError:
        raise ZoftError(f"toy_sentiment has no split {split!r}") from None


register(Task("sst2", "{sentence} It was", (" terrible", " great"), hub_name="nyu-mll/glue", hub_config="sst2"))
register(Task("toy_sentiment", "{sentence} It was", (" terrible", " great"), builtin=_toy_rows))
