"""What the low-rank estimators share: 2-D tensors take a factored direction, 1-D ones a dense z."""

from __future__ import annotations

from abc import abstractmethod
from typing import Sequence

import torch

from zoft.config.methods import load_rank_file
from zoft.methods.base import ZOMethod, matrix


class LowRankMethod(ZOMethod):
    """Dispatches 2-D (and higher) tensors to `perturb_matrix` / `update_matrix` on a 2-D view.

    Directions are applied with `addmm_` on the weight itself, so no m×n tensor is ever built.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        per_layer = load_rank_file(self.cfg.rank) if isinstance(self.cfg.rank, str) else {}
        default = per_layer.get("default", self.cfg.rank)
        self.ranks = {  # `method.rank` (or the rank file's entry), capped by the layer's dimensions
            index: min(int(per_layer.get(name, default)), *matrix(p).shape)
            for index, (name, p) in enumerate(self.params)
            if not self.is_dense(p)
        }

    def is_dense(self, p: torch.Tensor) -> bool:
        return p.ndim < 2

    def perturb(self, step: int, query: int, scale: float) -> None:
        for index, (_, p) in enumerate(self.params):
            if self.is_dense(p):
                self.perturb_dense(index, p, step, query, scale)
            else:
                self.perturb_matrix(index, matrix(p), step, query, scale * self.cfg.eps)

    def update(self, step: int, grads: Sequence[float], lr: float) -> None:
        for index, (name, p) in enumerate(self.params):
            if self.is_dense(p):
                self.update_dense(index, name, p, step, grads, lr)
            else:
                self.decay(p, lr)
                self.update_matrix(index, name, matrix(p), step, grads, lr)

    def rank(self, index: int) -> int:
        return self.ranks[index]

    def rank_scale(self, index: int) -> float:
        """1/r for estimators normalized to be unbiased (SPEC: lozo, tezo), else 1."""
        return 1.0 / self.rank(index) if getattr(self.cfg, "normalize", False) else 1.0

    @abstractmethod
    def perturb_matrix(self, index: int, w: torch.Tensor, step: int, query: int, alpha: float) -> None:
        """w += alpha · Z for the 2-D view w of parameter `index`."""

    @abstractmethod
    def update_matrix(self, index: int, name: str, w: torch.Tensor, step: int, grads: Sequence[float], lr: float) -> None:
        """Apply this step's update to the 2-D view w."""
