"""SubZO (Yu et al., 2025): Z = sqrt(mn)/r · P S_t Qᵀ in a random orthonormal subspace.

P (m×r) and Q (n×r) come from the QR of Gaussians redrawn every `update_interval` steps and are
kept between steps; S_t (r×r) is fresh. The sqrt(mn)/r scale makes E‖Z‖² that of a dense z.
"""

from __future__ import annotations

import math

import torch

from zoft.engine.rng import BASIS, gaussian
from zoft.methods.base import METHODS, combine
from zoft.methods.functional import concatenated
from zoft.methods.lowrank import LowRankMethod


@METHODS.register("subzo")
class SubZO(LowRankMethod):
    products_by_group = True

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
        """S (r×r) of (step, query): every matrix's drawn at once (`fresh`)."""
        shapes = lambda: [(i, (self.rank(i), self.rank(i))) for i in self.ranks]  # noqa: E731
        return self.drawn(("s", query), step, lambda: self.fresh_factors("s", step, query, shapes()))[index]

    def scale(self, index: int, w: torch.Tensor) -> float:
        return math.sqrt(w.shape[0] * w.shape[1]) / self.rank(index)

    def factors(self, index, w, step, query):
        return self.products(step, query)[index], self.subspace(index, w, self.period(step))[1]

    def products(self, step: int, query: int) -> dict[int, torch.Tensor]:
        """A = sqrt(mn)/r · P S of every matrix at (step, query), made once: a batched product and a
        scaling a group of one P shape (`stacked_first`), where a product and a scaling a matrix
        queued 292 small kernels on OPT-1.3B between a step's forwards and its update; written
        into one buffer (`group_products`)."""
        def make():
            stacked = self.stacked_first(self.period(step), lambda i, k: self.subspace(i, self.like(i), k))

            def fill(k: int, group: list[int], out: torch.Tensor) -> None:
                s = torch.stack([self.s(i, self.like(i), step, query) for i in group])
                torch.mul(torch.bmm(stacked[k], s), self.group_scales(group), out=out)  # in fp32, rounded once into `out`
            return self.group_products(fill)
        return self.drawn(("a", query), step, make)

    def group_scales(self, group: list[int]) -> torch.Tensor:
        """sqrt(mn)/r of each matrix of a shape group, (G, 1, 1), made once."""
        key = ("scales", tuple(group))
        if key not in self._layouts:
            values = [self.scale(i, self.like(i)) for i in group]
            dtype = torch.promote_types(self.like(group[0]).dtype, torch.float32)  # fp32, or fp64 for an fp64 model
            self._layouts[key] = torch.tensor(values, dtype=dtype, device=self.params[group[0]][1].device).view(-1, 1, 1)
        return self._layouts[key]

    def update_factors(self, step, grads, lr):
        period, flats = self.period(step), []
        for segment in self.segments:
            likes = [self.like(index) for index in segment]
            cores = combine([[self.s(i, w, step, q) for i, w in zip(segment, likes)] for q in range(len(grads))], grads)
            flats.append(concatenated([
                (self.subspace(i, w, period)[0] @ core) * (-lr * self.scale(i, w)) for i, w, core in zip(segment, likes, cores)
            ]))
        return flats
