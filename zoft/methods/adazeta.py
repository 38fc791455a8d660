"""AdaZeta's adaptive query schedule (Yang et al., 2024): dense directions, more queries per epoch.

Q_k = min(max(⌊β·k^α⌋, 1), Q_max) for epoch k = 1, 2, ...; with α unset it is chosen so that the
uncapped schedule reaches `target_queries` at the last epoch, as the official runs do. Its
tensor-train adapters are a `params.mode`; over any trainable set the update is MeZO's with q = Q_k.
"""

from __future__ import annotations

import math

from zoft.methods.base import METHODS
from zoft.methods.mezo import MeZO


def query_schedule(epoch: int, shrink: float, rate: float, cap: int) -> int:
    return min(max(int(shrink * epoch**rate), 1), cap)


@METHODS.register("adazeta")
class AdaZeta(MeZO):
    def rate(self) -> float:
        if self.cfg.query_rate is not None:
            return self.cfg.query_rate
        epochs = max(2, math.ceil(self.max_steps / self.steps_per_epoch))
        return math.log(self.cfg.target_queries / self.cfg.query_shrink) / math.log(epochs)

    def queries(self, step: int) -> int:
        epoch = step // self.steps_per_epoch + 1
        return query_schedule(epoch, self.cfg.query_shrink, self.rate(), self.cfg.max_queries)
