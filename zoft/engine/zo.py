"""One ZO estimate: perturb, evaluate, restore, for each query. Knows no method's internals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from zoft.config.methods import MethodConfig
from zoft.methods.base import ZOMethod


@dataclass
class Estimate:
    grads: list[float]  # projected gradient per query
    loss: float  # the loss around θ: mean of L(θ±εZ) (two_side) or L(θ) (one_side)


def estimate(method: ZOMethod, loss_fn: Callable[[], float], step: int, cfg: MethodConfig) -> Estimate:
    snapshot = [p.detach().clone() for _, p in method.params] if cfg.restore == "copy" else None

    def restore(query: int, scale: float) -> None:
        if snapshot is None:
            method.perturb(step, query, scale)
        else:
            for (_, p), saved in zip(method.params, snapshot):
                p.copy_(saved)

    grads, losses = [], []
    base = loss_fn() if cfg.perturbation == "one_side" else None
    for query in range(cfg.n_queries):
        method.perturb(step, query, +1.0)
        plus = loss_fn()
        if base is not None:
            restore(query, -1.0)
            grads.append((plus - base) / cfg.eps)
            continue
        method.perturb(step, query, -2.0)
        minus = loss_fn()
        restore(query, +1.0)
        grads.append((plus - minus) / (2 * cfg.eps))
        losses.append((plus + minus) / 2)
    return Estimate(grads, base if base is not None else sum(losses) / len(losses))


def no_grad_loss(model, fn) -> Callable[[], float]:
    """Wrap a loss closure to run without autograd (ZO needs forward passes only)."""

    def run() -> float:
        with torch.inference_mode():
            return float(fn(model))

    return run
