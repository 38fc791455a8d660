"""Learning rate at a step: linear warmup, then constant, linear or cosine decay to zero."""

from __future__ import annotations

import math

from zoft.config.schema import OptimConfig


def lr_at(step: int, optim: OptimConfig, max_steps: int) -> float:
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    progress = (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps)
    if optim.schedule == "linear":
        return optim.lr * (1 - progress)
    return optim.lr * 0.5 * (1 + math.cos(math.pi * progress))
