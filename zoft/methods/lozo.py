"""LOZO (Chen et al., 2025): Z = U_t V_kᵀ, U fresh each step, V redrawn every `lazy_interval` steps.

V is drawn from (seed, k, parameter), kept for its period (n×r) and never saved: regenerating it
is what fixes the official code's replay mismatch on refresh steps (methods.md §3.3). LOZO-M
keeps the m×r momentum N.
"""

from __future__ import annotations

import torch

from zoft.engine.rng import BASIS, DIRECTION, gaussian
from zoft.methods.base import METHODS, combine, moving_average_
from zoft.methods.lowrank import LowRankMethod


@METHODS.register("lozo")
class LOZO(LowRankMethod):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.momentum: dict[str, torch.Tensor] = {}
        self.momentum_basis = torch.zeros((), dtype=torch.long)  # k of the V that N is expressed against
        if self.optim.name == "momentum":
            for index, (name, p) in enumerate(self.params):
                if not self.is_dense(p):
                    w = self.like(index)  # the logical matrix, also of a quantized weight
                    self.momentum[f"N.{name}"] = torch.zeros(w.shape[0], self.rank(index), dtype=w.dtype, device=w.device)

    def v(self, index: int, w: torch.Tensor, k: int) -> torch.Tensor:
        """V_k, kept for its period."""
        return self.periodic(index, k, lambda: self.draw_v(index, w, k))

    def draw_v(self, index: int, w: torch.Tensor, k: int) -> torch.Tensor:
        return gaussian((w.shape[1], self.rank(index)), w, self.seed, k, index, BASIS)

    def u(self, index: int, w: torch.Tensor, step: int, query: int) -> torch.Tensor:
        draw = lambda: gaussian((w.shape[0], self.rank(index)), w, self.seed, step, query, index, DIRECTION)  # noqa: E731
        return self.drawn(("u", index, query), step, draw)

    def period(self, step: int) -> int:
        return step // self.cfg.lazy_interval

    def basis_of(self, index, w, period):
        return self.v(index, w, period)

    def factors(self, index, w, step, query):
        if self.hooked(index):  # the hooks hold this period's V already
            return self.u(index, w, step, query), self.functional.basis[index]
        return self.u(index, w, step, query), self.v(index, w, self.period(step))

    def update_factors(self, step, grads, lr):
        indices, k = list(self.ranks), self.period(step)
        likes = [self.like(index) for index in indices]
        factors = combine([[self.u(i, w, step, q) for i, w in zip(indices, likes)] for q in range(len(grads))], grads)  # m×r each
        if self.optim.name == "momentum":
            buffers = [self.momentum[f"N.{self.params[index][0]}"] for index in indices]
            old = int(self.momentum_basis)
            if old != k:  # carry N into the new basis: N V_oldᵀ V_new / n (the old V, not kept)
                for index, w, n_buf in zip(indices, likes, buffers):
                    n_buf.copy_(n_buf @ (self.draw_v(index, w, old).T @ self.v(index, w, k)) / w.shape[1])
            moving_average_(buffers, factors, self.optim.beta_values()[0])
            factors = buffers
        return torch._foreach_mul(factors, [-lr * self.rank_scale(index) for index in indices])

    def updated(self, step: int) -> None:
        self.momentum_basis.fill_(self.period(step))

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict() | self.momentum
        if self.momentum:
            state["N.basis"] = self.momentum_basis
        return state
