"""SubZO (Yu et al., 2025): Z = sqrt(mn)/r · P S_t Qᵀ in a random orthonormal subspace.

P (m×r) and Q (n×r) come from the QR of Gaussians redrawn every `update_interval` steps and are
kept between steps; S_t (r×r) is fresh. The sqrt(mn)/r scale makes E‖Z‖² that of a dense z.
"""

from __future__ import annotations

import math

import torch

from zoft.engine.rng import BASIS, DIRECTION, gaussian
from zoft.methods.base import METHODS
from zoft.methods.lowrank import LowRankMethod


@METHODS.register("subzo")
class SubZO(LowRankMethod):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.subspaces: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}

    def subspace(self, index: int, w: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = step // self.cfg.update_interval
        cached = self.subspaces.get(index)
        if cached is None or cached[0] != k:
            m, n, r = *w.shape, self.rank(index)
            p = torch.linalg.qr(gaussian((m, r), w, self.seed, k, index, BASIS, 0, dtype=torch.float32))[0]
            q = torch.linalg.qr(gaussian((n, r), w, self.seed, k, index, BASIS, 1, dtype=torch.float32))[0]
            cached = (k, p.to(w.dtype), q.to(w.dtype))
            self.subspaces[index] = cached
        return cached[1], cached[2]

    def s(self, index: int, w: torch.Tensor, step: int, query: int) -> torch.Tensor:
        return gaussian((self.rank(index), self.rank(index)), w, self.seed, step, query, index, DIRECTION)

    def scale(self, index: int, w: torch.Tensor) -> float:
        return math.sqrt(w.shape[0] * w.shape[1]) / self.rank(index)

    def perturb_matrix(self, index, w, step, query, alpha):
        p, q = self.subspace(index, w, step)
        w.addmm_(p @ self.s(index, w, step, query), q.T, alpha=alpha * self.scale(index, w))

    def update_matrix(self, index, name, w, step, grads, lr):
        p, q = self.subspace(index, w, step)
        core = sum(g * self.s(index, w, step, j) for j, g in enumerate(grads)) / len(grads)
        w.addmm_(p @ core, q.T, alpha=-lr * self.scale(index, w))
