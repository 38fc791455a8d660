"""MeZO: SPSA with a dense Gaussian z per tensor; SGD, or momentum/Adam with full-size state."""

from __future__ import annotations

from typing import Sequence

from zoft.methods.base import METHODS, ZOMethod


@METHODS.register("mezo")
class MeZO(ZOMethod):
    """θ ← θ − η (1/q) Σ_j g_j z_j (SGD); momentum keeps m (mn numbers), Adam m and v (2mn)."""

    def perturb(self, step: int, query: int, scale: float) -> None:
        self.perturb_group(step, query, scale)
        for index, (_, p) in enumerate(self.params):
            if not self.grouped(p):
                self.perturb_dense(index, p, step, query, scale)

    def update(self, step: int, grads: Sequence[float], lr: float) -> None:
        self.finish_update(step, grads, lr, None)

    def finish(self, step, grads, lr, pending):
        """With SGD the last restore and the update share one pass: W += (ε − η g/q)·z."""
        if not grads:
            return super().finish(step, grads, lr, pending)
        self.finish_update(step, grads, lr, pending)

    def finish_update(self, step, grads, lr, undo) -> None:
        self.update_group(step, grads, lr, undo)
        for index, (name, p) in enumerate(self.params):
            if not self.grouped(p):
                self.update_dense(index, name, p, step, grads, lr, undo=undo)
