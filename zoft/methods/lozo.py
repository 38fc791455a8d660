"""LOZO (Chen et al., 2025): Z = U_t V_kᵀ, U fresh each step, V redrawn every `lazy_interval` steps.

V is drawn from (seed, k, parameter), kept for its period (n×r) and never saved: regenerating it
is what fixes the official code's replay mismatch on refresh steps (methods.md §3.3). LOZO-M
keeps the m×r momentum N (at least fp32).
"""

from __future__ import annotations

import torch

from zoft.engine.rng import BASIS, gaussian
from zoft.methods.base import METHODS, combine, moving_average_
from zoft.methods.lowrank import LowRankMethod


@METHODS.register("lozo")
class LOZO(LowRankMethod):
    update_reads_factors = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.momentum: dict[str, torch.Tensor] = {}  # N (m×r, at least fp32) of each matrix, by name: views of `momentum_flats`
        self.momentum_flats: list[torch.Tensor] = []  # one per segment, its matrices' N end to end
        self.momentum_basis = torch.zeros((), dtype=torch.long)  # k of the V that N is expressed against
        if self.optim.name == "momentum":
            for segment in self.segments:
                size = sum(self.like(i).shape[0] * self.rank(i) for i in segment)
                dtype = torch.promote_types(self.like(segment[0]).dtype, torch.float32)  # fp32, or fp64 for an fp64 model
                self.momentum_flats.append(torch.zeros(size, dtype=dtype, device=self.params[segment[0]][1].device))
                views = self.split_factors(self.momentum_flats[-1], segment)
                self.momentum.update((f"N.{self.params[i][0]}", view) for i, view in zip(segment, views))

    def v(self, index: int, w: torch.Tensor, k: int) -> torch.Tensor:
        """V_k, kept for its period."""
        return self.periodic(index, k, lambda: self.draw_v(index, w, k))

    def draw_v(self, index: int, w: torch.Tensor, k: int) -> torch.Tensor:
        return gaussian((w.shape[1], self.rank(index)), w, self.seed, k, index, BASIS)

    def u(self, index: int, w: torch.Tensor, step: int, query: int) -> torch.Tensor:
        """U (m×r) of (step, query): every matrix's drawn at once (`fresh`), in `factor_order`."""
        shapes = lambda: [(i, (self.like(i).shape[0], self.rank(i))) for i in self.factor_order]  # noqa: E731
        return self.drawn(("u", query), step, lambda: self.fresh_factors("u", step, query, shapes()))[index]

    def period(self, step: int) -> int:
        return step // self.cfg.lazy_interval

    def basis_of(self, index, w, period):
        return self.v(index, w, period)

    def factors(self, index, w, step, query):
        if self.hooked(index):  # the hooks hold this period's V already
            return self.u(index, w, step, query), self.functional.basis[index]
        return self.u(index, w, step, query), self.v(index, w, self.period(step))

    def update_factors(self, step, grads, lr):
        k = self.period(step)
        flats = []
        for number, segment in enumerate(self.segments):
            likes = [self.like(i) for i in segment]
            us = [self.flat_factors(step, q, segment) for q in range(len(grads))]  # every matrix's U end to end
            factors = combine([[u] for u in us], grads)[0]
            if self.optim.name == "momentum":
                n_flat, old = self.momentum_flats[number], int(self.momentum_basis)
                if old != k:  # carry N into the new basis: N V_oldᵀ V_new / n (the old V, not kept)
                    for index, w, n_buf in zip(segment, likes, self.split_factors(n_flat, segment)):
                        n_buf.copy_(n_buf @ (self.draw_v(index, w, old).T @ self.v(index, w, k)).float() / w.shape[1])
                moving_average_([n_flat], [factors], self.optim.beta_values()[0])
                factors = n_flat
            flats.append(factors * (self.segment_scales(segment) * -lr))
        return flats

    def updated(self, step: int) -> None:
        self.momentum_basis.fill_(self.period(step))

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict() | self.momentum
        if self.momentum:
            state["N.basis"] = self.momentum_basis
        return state
