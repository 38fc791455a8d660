"""TeZO (Sun et al., 2025): Z_t = U diag(τ_t) Vᵀ with U, V drawn once and τ_t ∈ R^r fresh.

U and V are drawn from their seed once a period and kept ((m + n)·r numbers a matrix), so the state
to save between steps is the r (momentum) or 2r (Adam) numbers per layer of the moments on
c_t = g_t τ_t, exact because U and V do not move.
On a refresh (`refresh_interval`) the moments of the old basis are reset.
"""

from __future__ import annotations

import torch

from zoft.engine.rng import BASIS, gaussian
from zoft.errors import ZoftError
from zoft.methods.base import METHODS, adam_denominators, combine, moving_average_
from zoft.methods.lowrank import LowRankMethod


@METHODS.register("tezo")
class TeZO(LowRankMethod):
    products_by_group = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        devices = {self.params[index][1].device for index in self.ranks}
        if len(devices) > 1 and not self.plain_sgd():
            raise ZoftError(
                f"optim.name: tezo's {self.optim.name} keeps every matrix's coefficients in one buffer, and model.device_map "
                f"put its matrices on {len(devices)} devices; use optim.name=sgd or one GPU"
            )
        self.coefficient_moments: dict[str, torch.Tensor] = {}  # "m" (and "v" for Adam): every matrix's moments end to end
        self.factor_moments: dict[str, torch.Tensor] = {}  # views of `coefficient_moments`, saved by name
        # the coefficients of a U shape group consecutive in the buffers (`factor_order`: every
        # matrix's r of them end to end), so that a group's U diag(c) is one launch
        sizes = [self.rank(index) for index in self.factor_order]
        for key in {"momentum": ["m"], "adam": ["m", "v"]}.get(self.optim.name, []):
            self.coefficient_moments[key] = torch.zeros(sum(sizes), dtype=torch.float32, device=next(iter(devices), None))
            for index, part in zip(self.factor_order, self.coefficient_moments[key].split(sizes)):
                self.factor_moments[f"{key}.{self.params[index][0]}"] = part

    def period(self, step: int) -> int:
        return step // self.cfg.refresh_interval if self.cfg.refresh_interval else 0

    def basis(self, index: int, w: torch.Tensor, period: int) -> tuple[torch.Tensor, torch.Tensor]:
        """U and V of a period, drawn once."""
        def draw():
            shapes = ((w.shape[0], self.rank(index)), (w.shape[1], self.rank(index)))
            return tuple(gaussian(shape, w, self.seed, period, index, BASIS, side) for side, shape in enumerate(shapes))
        return self.periodic(index, period, draw)

    def stacked_u(self, period: int) -> list[torch.Tensor]:
        """Each shape group's U of a period, stacked (G, m, r)."""
        return self.stacked_first(period, lambda i, k: self.basis(i, self.like(i), k))

    def basis_of(self, index, w, period):
        return self.basis(index, w, period)[1]

    def tau(self, index: int, w: torch.Tensor, step: int, query: int) -> torch.Tensor:
        """τ (r) of (step, query): every matrix's drawn at once (`fresh`), in `factor_order`."""
        shapes = lambda: [(i, (self.rank(i),)) for i in self.factor_order]  # noqa: E731
        return self.drawn(("tau", query), step, lambda: self.fresh_factors("tau", step, query, shapes()))[index]

    def factors(self, index, w, step, query):
        return self.products(step, query)[index], self.basis(index, w, self.period(step))[1]

    def products(self, step: int, query: int) -> dict[int, torch.Tensor]:
        """A = U diag(τ) of every matrix at (step, query), made once: one product a U shape group
        (`stacked_first`), not one a matrix, into one buffer (`group_products`)."""
        def make():
            stacked = self.stacked_u(self.period(step))

            def fill(k: int, group: list[int], out: torch.Tensor) -> None:
                taus = torch.stack([self.tau(i, self.like(i), step, query) for i in group])
                torch.mul(stacked[k], taus[:, None, :], out=out)
            return self.group_products(fill)
        return self.drawn(("a", query), step, make)

    def flat_taus(self, step: int, query: int) -> torch.Tensor:
        """τ of every matrix at (step, query), end to end in `factor_order` (fp32), made once a
        query (ahead, by `prefetch`)."""
        return self.drawn(("taus", query), step, lambda: torch.cat([self.tau(i, self.like(i), step, query) for i in self.factor_order]).float())

    def prefetch(self, step: int) -> None:
        super().prefetch(step)
        if not self.plain_sgd():
            self.flat_taus(step, 0)

    def update_factors(self, step, grads, lr):
        """U diag(c) of every matrix, c = Σ_q g_q τ_q / Q (or its momentum or Adam step) times −η
        and the rank scale: the coefficients of all matrices in one buffer (`factor_order`), a few launches
        for the optimizer and one per U shape for the products, where a multi-tensor launch over
        146 tensors of r numbers cost the host about 0.5 ms (OPT-1.3B, H100)."""
        coeffs = combine([[self.flat_taus(step, q)] for q in range(len(grads))], grads)[0]
        if self.optim.name != "sgd":
            coeffs = self.factor_step(coeffs, step)
        products, offset = [], 0
        for group, u in zip(self.shape_groups, self.stacked_u(self.period(step))):
            size = len(group) * u.shape[-1]
            scaled = coeffs[offset:offset + size].mul(-lr * self.rank_scale(group[0])).view(len(group), 1, -1)
            products.append((u * scaled).reshape(-1))  # fp32, the group's matrices end to end
            offset += size
        flat = torch.cat(products)
        return [self.gathered(flat, self.factor_order, segment) for segment in self.segments]

    def factor_step(self, coeffs: torch.Tensor, step: int) -> torch.Tensor:
        """Momentum or Adam on the coefficients c_t = g_t τ_t of every matrix at once (one
        buffer); returns the coefficients to apply."""
        betas = self.optim.beta_values()
        m, v = self.coefficient_moments["m"], self.coefficient_moments.get("v")
        if self.cfg.refresh_interval and step % self.cfg.refresh_interval == 0 and step > 0:
            for moment in self.coefficient_moments.values():
                moment.zero_()
        moving_average_([m], [coeffs], betas[0])
        if self.optim.name == "momentum":
            return m
        moving_average_([v], [coeffs], betas[1], squared=True)
        t = (step % self.cfg.refresh_interval if self.cfg.refresh_interval else step) + 1
        return m.div(1 - betas[0] ** t).div_(adam_denominators([v], betas[1], t, self.optim.adam_eps)[0])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return super().state_dict() | self.factor_moments
