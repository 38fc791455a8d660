"""Per-method recipe sections, chosen by `method.name` (a key of another method is an error)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from zoft.registry import Registry

METHOD_CONFIGS: Registry[type] = Registry("method")


@dataclass
class MethodConfig:
    """Keys every ZO method shares (SPEC.md: estimators)."""

    name: str = field(default="mezo", metadata={"help": "ZO method"})
    eps: float = field(default=1e-3, metadata={"help": "perturbation scale ε"})
    n_queries: int = field(default=1, metadata={"help": "directions averaged per step (q)"})
    perturbation: Literal["two_side", "one_side"] = field(
        default="two_side", metadata={"help": "two_side: (L(+ε)−L(−ε))/2ε; one_side: (L(+ε)−L(θ))/ε"}
    )
    restore: Literal["arithmetic", "copy"] = field(
        default="arithmetic",
        metadata={"help": "arithmetic: undo the perturbation in place (no memory, rounding drift of "
                  "about an ulp); copy: keep a copy of the trainable tensors (bit-exact, +1× their size)"},
    )


@METHOD_CONFIGS.register("mezo")
@dataclass
class MezoConfig(MethodConfig):
    """MeZO: a dense Gaussian direction over every trainable parameter."""
