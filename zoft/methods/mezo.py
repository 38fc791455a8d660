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

    def finish(self, step, grads, lr, pending):
        """With SGD the last restore and the update share one pass: W += (ε − η g/q)·z."""
        if not grads:
            return super().finish(step, grads, lr, pending)
        self.finish_update(step, grads, lr, pending)

    def finish_update(self, step, grads, lr, undo) -> None:
        self.update_group(step, grads, lr, undo)
        if self.optim.name == "sgd" and not self.optim.weight_decay:  # every tensor the same coefficients
            for query, alpha in enumerate(self.sgd_alphas(grads, lr, undo)):
                self.add_dense_many(self.ungrouped, step, query, alpha)
            return
        for index, p in self.ungrouped:
            self.update_dense(index, self.params[index][0], p, step, grads, lr, undo=undo)
