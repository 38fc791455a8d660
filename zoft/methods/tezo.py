"""TeZO (Sun et al., 2025): Z_t = U diag(τ_t) Vᵀ with U, V drawn once and τ_t ∈ R^r fresh.

U and V are drawn from their seed once a period and kept ((m + n)·r numbers a matrix), so the state
to save between steps is the r (momentum) or 2r (Adam) numbers per layer of the moments on
c_t = g_t τ_t, exact because U and V do not move.
On a refresh (`refresh_interval`) the moments of the old basis are reset.
"""

from __future__ import annotations

import torch

from zoft.engine.rng import BASIS, DIRECTION, gaussian
from zoft.methods.base import METHODS
from zoft.methods.lowrank import LowRankMethod


@METHODS.register("tezo")
class TeZO(LowRankMethod):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.factor_moments: dict[str, torch.Tensor] = {}
        for index, (name, p) in enumerate(self.params):
            if not self.is_dense(p) and self.optim.name in ("momentum", "adam"):
                self.factor_moments[f"m.{name}"] = torch.zeros(self.rank(index), dtype=torch.float32, device=p.device)
                if self.optim.name == "adam":
                    self.factor_moments[f"v.{name}"] = torch.zeros(self.rank(index), dtype=torch.float32, device=p.device)

    def period(self, step: int) -> int:
        return step // self.cfg.refresh_interval if self.cfg.refresh_interval else 0

    def basis(self, index: int, w: torch.Tensor, period: int) -> tuple[torch.Tensor, torch.Tensor]:
        """U and V of a period, drawn once."""
        def draw():
            shapes = ((w.shape[0], self.rank(index)), (w.shape[1], self.rank(index)))
            return tuple(gaussian(shape, w, self.seed, period, index, BASIS, side) for side, shape in enumerate(shapes))
        return self.periodic(index, period, draw)

    def basis_of(self, index, w, period):
        return self.basis(index, w, period)[1]

    def tau(self, index: int, w: torch.Tensor, step: int, query: int) -> torch.Tensor:
        return self.drawn(("tau", index, query), step, lambda: gaussian((self.rank(index),), w, self.seed, step, query, index, DIRECTION))

    def factors(self, index, w, step, query):
        u, v = self.basis(index, w, self.period(step))
        return self.drawn(("a", index, query), step, lambda: u * self.tau(index, w, step, query)), v

    def update_factors(self, index, name, w, step, grads, lr):
        u, _ = self.basis(index, w, self.period(step))
        coeff = sum(g * self.tau(index, w, step, q).float() for q, g in enumerate(grads)) / len(grads)
        if self.optim.name != "sgd":
            coeff = self.factor_step(name, coeff, step)
        return u.float() * (coeff * (-lr * self.rank_scale(index)))

    def factor_step(self, name: str, c: torch.Tensor, step: int) -> torch.Tensor:
        """Momentum or Adam on the r coefficients c_t = g_t τ_t; returns the coefficients to apply."""
        betas = self.optim.beta_values()
        if self.cfg.refresh_interval and step % self.cfg.refresh_interval == 0 and step > 0:
            for key in (f"m.{name}", f"v.{name}"):
                if key in self.factor_moments:
                    self.factor_moments[key].zero_()
        m = self.factor_moments[f"m.{name}"]
        m.mul_(betas[0]).add_(c, alpha=1 - betas[0])
        if self.optim.name == "momentum":
            return m
        v = self.factor_moments[f"v.{name}"]
        v.mul_(betas[1]).addcmul_(c, c, value=1 - betas[1])
        t = (step % self.cfg.refresh_interval if self.cfg.refresh_interval else step) + 1
        return (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + self.optim.adam_eps)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return super().state_dict() | self.factor_moments
