"""metrics.jsonl: one JSON object per event, flushed per line, cut back to a checkpoint on resume."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled  # only one process of a distributed run writes

    def truncate_after(self, step: int, evaluated: bool = True) -> None:
        """Drop events after `step` (written after the checkpoint a resume starts from), and, unless
        `evaluated`, the records of an evaluation at `step` cut short (the resume makes it again)."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
            if record.get("step", 0) < step or (record.get("step", 0) == step and (evaluated or "split" not in record)):
                kept.append(line)
        self.path.write_text("".join(f"{line}\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_step(record: dict) -> bool:
    """A training step's record: not an evaluation's (`split`) nor an event's (graphs, path, rollback)."""
    return "split" not in record and "event" not in record
