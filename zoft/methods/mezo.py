"""MeZO: SPSA with a dense Gaussian z per tensor; SGD, or momentum/Adam with full-size state."""

from __future__ import annotations

from typing import Sequence

import torch

from zoft.methods.base import METHODS, ZOMethod


@METHODS.register("mezo")
class MeZO(ZOMethod):
    """θ ← θ − η (1/q) Σ_j g_j z_j (SGD); momentum keeps m (mn numbers), Adam m and v (2mn)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        kind = self.optim.name
        self.buffers: dict[str, torch.Tensor] = {}
        if kind in ("momentum", "adam"):
            for name, p in self.params:
                self.buffers[f"m.{name}"] = torch.zeros_like(p)
                if kind == "adam":
                    self.buffers[f"v.{name}"] = torch.zeros_like(p)

    def perturb(self, step: int, query: int, scale: float) -> None:
        for index, (_, p) in enumerate(self.params):
            p.add_(self.dense(index, p, step, query), alpha=scale * self.cfg.eps)

    def estimate(self, index: int, p: torch.Tensor, step: int, grads: Sequence[float]) -> torch.Tensor:
        """(1/q) Σ_j g_j z_j for one tensor."""
        total = torch.zeros_like(p)
        for query, g in enumerate(grads):
            total.add_(self.dense(index, p, step, query), alpha=g / len(grads))
        return total

    def update(self, step: int, grads: Sequence[float], lr: float) -> None:
        kind = self.optim.name
        betas = self.optim.betas or ((0.9,) if kind == "momentum" else (0.9, 0.999))
        for index, (name, p) in enumerate(self.params):
            self.decay(p, lr)
            if kind == "sgd":  # no accumulator: each query's z is added as it is regenerated
                for query, g in enumerate(grads):
                    p.add_(self.dense(index, p, step, query), alpha=-lr * g / len(grads))
                continue
            estimate = self.estimate(index, p, step, grads)
            m = self.buffers[f"m.{name}"]
            m.mul_(betas[0]).add_(estimate, alpha=1 - betas[0])
            if kind == "momentum":
                p.add_(m, alpha=-lr)
                continue
            v = self.buffers[f"v.{name}"]
            v.mul_(betas[1]).addcmul_(estimate, estimate, value=1 - betas[1])
            t = step + 1
            m_hat = m / (1 - betas[0] ** t)
            v_hat = v / (1 - betas[1] ** t)
            p.addcdiv_(m_hat, v_hat.sqrt_().add_(self.optim.adam_eps), value=-lr)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.buffers
