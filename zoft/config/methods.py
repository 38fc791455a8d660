"""Per-method recipe sections, chosen by `method.name` (a key of another method is an error)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from zoft.registry import Registry

if TYPE_CHECKING:
    from zoft.config.schema import Recipe

METHOD_CONFIGS: Registry[type] = Registry("method")


def knob(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class MethodConfig:
    """Keys every ZO method shares (SPEC.md: estimators)."""

    name: str = knob("mezo", "the method: " + "mezo, lozo, subzo, tezo, adazeta, fo")
    eps: float = knob(1e-3, "perturbation scale ε")
    perturbation: Literal["two_side", "one_side"] = knob(
        "two_side", "two_side: (L(+ε)−L(−ε))/2ε; one_side: (L(+ε)−L(θ))/ε"
    )
    restore: Literal["arithmetic", "copy"] = knob(
        "arithmetic",
        "arithmetic: undo the perturbation in place (no memory, rounding drift of about an ulp); "
        "copy: keep a copy of the trainable tensors (bit-exact, +1× their size)",
    )

    noise: Literal["auto", "torch", "triton"] = knob(
        "auto",
        "how Gaussian noise is drawn: dense directions, and the low-rank methods' fresh factors (U, tau, S). "
        "triton = a fused kernel (a dense z drawn and added in one pass, no temporary; every matrix's factor "
        "in one launch); torch = torch.randn then add_; auto = triton on CUDA when it imports. "
        "The two draw different, equally Gaussian streams",
    )

    optimizers = ("sgd", "momentum", "adam")  # what `optim.name` may be with this method
    frozen_on_resume = ()  # keys beyond the usual ones a resume may not change

    def check(self, recipe: "Recipe") -> list[str]:
        """Problems of this section, and of its combination with the rest of the recipe."""
        problems = []
        if self.eps <= 0:
            problems.append("method.eps: must be > 0")
        if recipe.optim.name not in self.optimizers:
            problems.append(
                f"optim.name: {self.name} supports {', '.join(self.optimizers)}, not {recipe.optim.name}"
            )
        if writes_quantized_weights(recipe) and not isinstance(self, LowRankConfig):
            problems.append(
                f"method.name: {self.name} perturbs every weight in place, which a {recipe.model.quantization} base "
                "does not allow; train adapters (params.mode: lora, prefix or tt_adapter) or use lozo, subzo or tezo"
            )
        return problems


def writes_quantized_weights(recipe: "Recipe") -> bool:
    """Full-parameter training over a quantized base: only a functional low-rank delta can do it."""
    return recipe.model.quantization != "none" and recipe.params.mode == "full"


MAX_QUERIES = 4096  # each query is two forward passes a step; beyond this a number is a typo (and lists of it exhaust memory)


@dataclass
class FixedQueries(MethodConfig):
    n_queries: int = knob(1, "directions averaged per step (q)")

    def check(self, recipe):
        ok = 1 <= self.n_queries <= MAX_QUERIES
        return super().check(recipe) + ([] if ok else [f"method.n_queries: must be between 1 and {MAX_QUERIES}"])


@METHOD_CONFIGS.register("mezo")
@dataclass
class MezoConfig(FixedQueries):
    """MeZO: a dense Gaussian direction over every trainable tensor."""


@dataclass
class LowRankConfig(FixedQueries):
    rank: int | str = knob(2, "rank r of every 2-D tensor's direction, or a rank file of `zoft analyze-rank`")
    path: Literal["auto", "inplace", "functional"] = knob(
        "auto",
        "inplace: W += ±εABᵀ with addmm_; functional: W is never written during a step, hooks add "
        "(xB)(A_acc ± εA)ᵀ to layer outputs and updates accumulate in factor space (needed over a "
        "quantized base); auto = on a GPU, the faster of the two, timed on the first batch (functional over a "
        "quantized base; in place on a CPU or where the functional path does not apply)",
    )
    paired_forward: Literal["auto", "always", "never"] = knob(
        "auto",
        "functional path: evaluate L(+ε) and L(−ε) in one forward over a doubled batch; "
        "auto = when the batch has at most 8 examples (where it is faster than two forwards)",
    )

    def check(self, recipe):
        problems = super().check(recipe) + rank_problems(self.rank)
        if writes_quantized_weights(recipe) and self.path == "inplace":
            problems.append(f"method.path: a {recipe.model.quantization} base cannot be written in place; use functional or auto")
        if writes_quantized_weights(recipe) and recipe.optim.weight_decay:
            problems.append("optim.weight_decay: a delta over a quantized base takes no weight decay")
        return problems


def load_rank_file(path: str) -> dict:
    """{layer name: rank, "default": rank} from a rank file written by `zoft analyze-rank`."""
    import json
    from pathlib import Path

    data = json.loads(Path(path).expanduser().read_text())
    return {**data["ranks"], "default": data["default"]}


def rank_problems(rank: int | str) -> list[str]:
    """A rank is a positive integer, or a JSON rank file {"ranks": {layer: r}, "default": r}."""
    if isinstance(rank, int):
        return [] if rank >= 1 else ["method.rank: must be >= 1"]
    try:
        values = list(load_rank_file(rank).values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return [f"method.rank: {rank!r} is not a readable rank file ({type(err).__name__}); write one with zoft analyze-rank"]
    if not all(isinstance(v, int) and v >= 1 for v in values):
        return [f"method.rank: {rank!r}: every rank must be an integer >= 1"]
    return []


@METHOD_CONFIGS.register("lozo")
@dataclass
class LozoConfig(LowRankConfig):
    """LOZO: Z = U_t V_kᵀ, V redrawn every `lazy_interval` steps; momentum is LOZO-M."""

    lazy_interval: int = knob(50, "steps between redraws of V (ν)")
    normalize: bool = knob(True, "update with g·Z/r (unbiased); false = the official code's g·Z")
    optimizers = ("sgd", "momentum")

    def check(self, recipe):
        return super().check(recipe) + ([] if self.lazy_interval >= 1 else ["method.lazy_interval: must be >= 1"])


@METHOD_CONFIGS.register("subzo")
@dataclass
class SubzoConfig(LowRankConfig):
    """SubZO: Z = sqrt(mn)/r · P S_t Qᵀ with orthonormal P, Q redrawn every `update_interval` steps."""

    rank: int | str = knob(8, "rank r of every 2-D tensor's subspace, or a rank file of `zoft analyze-rank`")
    update_interval: int = knob(2000, "steps between redraws of P and Q")
    optimizers = ("sgd",)

    def check(self, recipe):
        return super().check(recipe) + ([] if self.update_interval >= 1 else ["method.update_interval: must be >= 1"])


@METHOD_CONFIGS.register("tezo")
@dataclass
class TezoConfig(LowRankConfig):
    """TeZO: Z = U diag(τ_t) Vᵀ with U, V drawn once; momentum and Adam live on τ (2r numbers)."""

    refresh_interval: int = knob(0, "steps between redraws of U and V; 0 = never")
    normalize: bool = knob(True, "update with g·Z/r (unbiased); false = g·Z")

    def check(self, recipe):
        return super().check(recipe) + ([] if self.refresh_interval >= 0 else ["method.refresh_interval: must be >= 0"])


@METHOD_CONFIGS.register("adazeta")
@dataclass
class AdazetaConfig(MethodConfig):
    """AdaZeta: dense directions with queries per step growing by epoch, Q_k = min(max(⌊β k^α⌋, 1), Q_max)."""

    max_queries: int = knob(15, "Q_max, the cap on queries per step")
    target_queries: int = knob(20, "queries the uncapped schedule reaches at the last epoch (sets α when query_rate is null)")
    query_shrink: float = knob(0.85, "β, the schedule's scale")
    query_rate: float | None = knob(None, "α, the schedule's exponent; null = ln(target_queries/β) / ln(epochs)")
    optimizers = ("sgd",)

    @property
    def frozen_on_resume(self) -> tuple[str, ...]:
        return ("train.max_steps",) if self.query_rate is None else ()  # α is derived from it

    def check(self, recipe):
        problems = super().check(recipe)
        if not (1 <= self.max_queries <= MAX_QUERIES and self.target_queries >= 1):
            problems.append(f"method.max_queries: max_queries must be between 1 and {MAX_QUERIES}, target_queries >= 1")
        if self.query_shrink <= 0:
            problems.append("method.query_shrink: must be > 0")
        return problems


@METHOD_CONFIGS.register("fo")
@dataclass
class FirstOrderConfig:
    """First-order baseline: backpropagation with the chosen torch optimizer (sgd, momentum, adam=AdamW)."""

    name: str = knob("fo", "the method")
    optimizers = ("sgd", "momentum", "adam")
    frozen_on_resume = ()

    def check(self, recipe):
        if writes_quantized_weights(recipe):
            return [f"method.name: fo cannot backpropagate into a {recipe.model.quantization} base's weights; use params.mode lora"]
        return []
