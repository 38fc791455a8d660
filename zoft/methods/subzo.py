"""SubZO (Yu et al., 2025): Z = sqrt(mn)/r · P S_t Qᵀ in a random orthonormal subspace.

P (m×r) and Q (n×r) come from the QR of Gaussians redrawn every `update_interval` steps and are
kept between steps; S_t (r×r) is fresh. The sqrt(mn)/r scale makes E‖Z‖² that of a dense z.
"""

from __future__ import annotations

import math

import torch

from zoft.engine.rng import BASIS, DIRECTION, gaussian
from zoft.methods.base import METHODS, combine
from zoft.methods.functional import concatenated
from zoft.methods.lowrank import LowRankMethod


@METHODS.register("subzo")
class SubZO(LowRankMethod):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # In place, SubZO's steps were slower with the many-matrix kernel than with addmm_ (OPT-1.3B,
        # batch 16, H100: 50.0 and 50.6 ms against 46.7), its passes 3.8 ms in a step against 2.8 ms
        # for the same kernel over the same shapes alone, whatever the bases' layout; not yet understood.
        self.fused_add = False

    def period(self, step: int) -> int:
        return step // self.cfg.update_interval

    def subspace(self, index: int, w: torch.Tensor, period: int) -> tuple[torch.Tensor, torch.Tensor]:
        def draw():
            m, n, r = *w.shape, self.rank(index)
            p = torch.linalg.qr(gaussian((m, r), w, self.seed, period, index, BASIS, 0, dtype=torch.float32))[0]
            q = torch.linalg.qr(gaussian((n, r), w, self.seed, period, index, BASIS, 1, dtype=torch.float32))[0]
            return p.to(w.dtype), q.to(w.dtype)
        return self.periodic(index, period, draw)

    def basis_of(self, index, w, period):
        return self.subspace(index, w, period)[1]

    def s(self, index: int, w: torch.Tensor, step: int, query: int) -> torch.Tensor:
        draw = lambda: gaussian((self.rank(index), self.rank(index)), w, self.seed, step, query, index, DIRECTION)  # noqa: E731
        return self.drawn(("s", index, query), step, draw)

    def scale(self, index: int, w: torch.Tensor) -> float:
        return math.sqrt(w.shape[0] * w.shape[1]) / self.rank(index)

    def factors(self, index, w, step, query):
        p, q = self.subspace(index, w, self.period(step))
        a = self.drawn(("a", index, query), step, lambda: self.scale(index, w) * (p @ self.s(index, w, step, query)))
        return a, q

    def update_factors(self, step, grads, lr):
        period, flats = self.period(step), []
        for segment in self.segments:
            likes = [self.like(index) for index in segment]
            cores = combine([[self.s(i, w, step, q) for i, w in zip(segment, likes)] for q in range(len(grads))], grads)
            flats.append(concatenated([
                (self.subspace(i, w, period)[0] @ core) * (-lr * self.scale(i, w)) for i, w, core in zip(segment, likes, cores)
            ]))
        return flats
