"""What the engine tells its caller while it runs; the CLI renders it (rich or plain)."""

from __future__ import annotations


class Reporter:
    """No-op base: the engine calls these hooks, a front end overrides the ones it shows."""

    def start(self, total_steps: int, first_step: int) -> None: ...

    def step(self, record: dict) -> None: ...

    def eval(self, record: dict) -> None: ...

    def message(self, text: str) -> None: ...

    def finish(self, summary: dict) -> None: ...

    def close(self) -> None:
        """Stop any live display (before a message is printed); safe to call twice."""
