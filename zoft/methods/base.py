"""The interface every ZO method implements: pure tensor math, no I/O, no knowledge of the trainer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch

from zoft.config.methods import MethodConfig
from zoft.config.schema import OptimConfig
from zoft.engine.rng import DIRECTION, gaussian
from zoft.registry import Registry

METHODS: Registry[type["ZOMethod"]] = Registry("method")

Named = list[tuple[str, torch.Tensor]]


class ZOMethod(ABC):
    """Perturbs the trainable tensors in place along regenerable directions and applies updates.

    The trainer calls `perturb(step, query, +1)`, evaluates, `perturb(step, query, -2)`,
    evaluates, restores, then `update(step, grads, lr)` with one projected gradient per query.
    """

    def __init__(self, params: Named, cfg: MethodConfig, optim: OptimConfig, seed: int):
        self.params = params
        self.cfg = cfg
        self.optim = optim
        self.seed = seed

    def dense(self, index: int, p: torch.Tensor, step: int, query: int) -> torch.Tensor:
        """The dense Gaussian direction of parameter `index` (also used for 1-D tensors by all methods)."""
        return gaussian(tuple(p.shape), p, self.seed, step, query, index, DIRECTION)

    @abstractmethod
    def perturb(self, step: int, query: int, scale: float) -> None:
        """W += scale · eps · Z(step, query) for every trainable tensor."""

    @abstractmethod
    def update(self, step: int, grads: Sequence[float], lr: float) -> None:
        """Apply the update for the projected gradients of this step's queries."""

    def decay(self, p: torch.Tensor, lr: float) -> None:
        """Decoupled weight decay θ ← θ − η λ θ, skipped on 1-D tensors (biases, norms)."""
        if self.optim.weight_decay and p.ndim > 1:
            p.mul_(1 - lr * self.optim.weight_decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors kept between steps (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.state_dict()
        missing = set(own) - set(state)
        if missing:
            raise KeyError(f"checkpoint lacks method state {sorted(missing)[:3]}")
        for key, tensor in own.items():
            tensor.copy_(state[key])
