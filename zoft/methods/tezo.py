"""TeZO (Sun et al., 2025): Z_t = U diag(τ_t) Vᵀ with U, V drawn once and τ_t ∈ R^r fresh.

U and V are drawn from their seed once a period and kept ((m + n)·r numbers a matrix), so the state
to save between steps is the r (momentum) or 2r (Adam) numbers per layer of the moments on
c_t = g_t τ_t, exact because U and V do not move.
On a refresh (`refresh_interval`) the moments of the old basis are reset.
"""

from __future__ import annotations

import torch

from zoft.engine.rng import BASIS, DIRECTION, gaussian
from zoft.methods.base import METHODS, adam_denominators, combine, moving_average_
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

    def update_factors(self, indices, step, grads, lr):
        period = self.period(step)
        likes = [self.like(index) for index in indices]
        taus = [torch.cat([self.tau(i, w, step, q) for i, w in zip(indices, likes)]).float() for q in range(len(grads))]
        coeffs = list(combine([[tau] for tau in taus], grads)[0].split([self.rank(i) for i in indices]))
        if self.optim.name != "sgd":
            coeffs = self.factor_step([self.params[index][0] for index in indices], coeffs, step)
        scaled = torch._foreach_mul(coeffs, [-lr * self.rank_scale(index) for index in indices])
        return torch._foreach_mul([self.basis(i, w, period)[0] for i, w in zip(indices, likes)], scaled)  # U diag(c), fp32

    def factor_step(self, names: list[str], coeffs: list[torch.Tensor], step: int) -> list[torch.Tensor]:
        """Momentum or Adam on each matrix's r coefficients c_t = g_t τ_t, all matrices at once;
        returns the coefficients to apply."""
        betas = self.optim.beta_values()
        ms = [self.factor_moments[f"m.{name}"] for name in names]
        vs = [self.factor_moments[f"v.{name}"] for name in names] if self.optim.name == "adam" else []
        if self.cfg.refresh_interval and step % self.cfg.refresh_interval == 0 and step > 0:
            torch._foreach_zero_(ms + vs)
        moving_average_(ms, coeffs, betas[0])
        if self.optim.name == "momentum":
            return ms
        moving_average_(vs, coeffs, betas[1], squared=True)
        t = (step % self.cfg.refresh_interval if self.cfg.refresh_interval else step) + 1
        denoms = adam_denominators(vs, betas[1], t, self.optim.adam_eps)
        return torch._foreach_div(torch._foreach_div(ms, 1 - betas[0] ** t), denoms)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return super().state_dict() | self.factor_moments
