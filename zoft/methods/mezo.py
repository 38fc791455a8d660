"""MeZO: SPSA with a dense Gaussian z per tensor; SGD, or momentum/Adam with full-size state."""

from __future__ import annotations

from typing import Sequence

from zoft.methods.base import METHODS, ZOMethod


@METHODS.register("mezo")
class MeZO(ZOMethod):
    """θ ← θ − η (1/q) Σ_j g_j z_j (SGD); momentum keeps m (mn numbers), Adam m and v (2mn)."""

    def perturb(self, step: int, query: int, scale: float) -> None:
        self.perturb_group(step, query, scale)
        self.add_dense_many(self.ungrouped, step, query, scale * self.cfg.eps)

    def update(self, step: int, grads: Sequence[float], lr: float) -> None:
        self.finish_update(step, grads, lr, None)

    def can_carry(self) -> bool:
        return self.plain_sgd()

    def finish(self, step, grads, lr, pending, carry=False):
        """With SGD the last restore and the update share one pass: W += (ε − η g/q)·z; with
        `carry` that pass also adds the next step's first perturbation, + ε·z(step + 1, 0)."""
        if not grads:
            return super().finish(step, grads, lr, pending)
        self.finish_update(step, grads, lr, pending, carry)

    def finish_update(self, step, grads, lr, undo, carry=False) -> None:
        self.update_group(step, grads, lr, undo)
        if not self.plain_sgd():
            for index, p in self.ungrouped:
                self.update_dense(index, self.params[index][0], p, step, grads, lr, undo=undo)
            return
        alphas = self.sgd_alphas(grads, lr, undo)
        for query, alpha in enumerate(alphas):
            then = (step + 1, 0, self.cfg.eps) if carry and query == len(alphas) - 1 else None
            self.add_dense_many(self.ungrouped, step, query, alpha, then)
        if carry:
            self.perturb_group(step + 1, 0, 1.0)
            self.carried = step + 1
