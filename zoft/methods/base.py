"""The interfaces every method implements: pure tensor math, no I/O, no knowledge of the trainer."""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from zoft.config.schema import OptimConfig
from zoft.engine import noise
from zoft.engine.rng import DIRECTION
from zoft.errors import ZoftError
from zoft.registry import Registry

Named = list[tuple[str, torch.Tensor]]
LossFn = Callable[[], torch.Tensor]  # the loss of the current batch at the current weights
Pending = tuple[int, float] | None  # (query, scale): a perturbation left on the weights
SMALL = 1 << 16  # elements: dense tensors up to this size are moved as one group (ZOMethod.grouped)


@dataclass
class StepResult:
    loss: float  # around θ: mean of L(θ±εZ) (two_side), L(θ) (one_side or first-order)
    grads: list[float]  # projected gradient per query (empty for first-order)
    applied: bool = True  # False: a non-finite loss or gradient, so nothing was changed

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and all(math.isfinite(g) for g in self.grads)


class Method(ABC):
    """One training step over a list of named trainable tensors, and the state to checkpoint."""

    carried: int | None = None  # the step whose first perturbation a carrying step left on the weights

    def __init__(self, params: Named, cfg, optim: OptimConfig, seed: int, steps_per_epoch: int = 1, max_steps: int = 1, model=None):
        self.params = params
        self.model = model  # only the functional path of low-rank methods hooks into it
        self.cfg = cfg
        self.optim = optim
        self.seed = seed
        self.steps_per_epoch = steps_per_epoch
        self.max_steps = max_steps

    @abstractmethod
    def step(self, loss_fn: LossFn, step: int, lr: float, queries=None, carry: bool = False) -> StepResult:
        """One update; `queries` spreads a ZO step's queries over processes (ZOMethod.estimate);
        `carry`: step + 1 follows at once, with no use of the weights in between, so a method may
        leave its first perturbation on them (ZOMethod.carried)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors kept between steps (empty for stateless methods)."""
        return {}

    def deltas(self) -> dict[str, torch.Tensor]:
        """Trained terms not yet written into the weights ({name.A, name.B}: W_eff = W + A Bᵀ)."""
        return {}

    def merge(self) -> None:
        """Write every term of `deltas` into the weights (before saving the model)."""

    def close(self) -> None:
        """Take out of the model whatever the method put into it (hooks)."""

    def paths(self) -> list[str]:
        """Ways of computing a step between which a measurement should choose (none: nothing to choose)."""
        return []

    def use_path(self, path: str) -> None:
        """Compute the following steps on `path`, one of `paths()`."""

    def forward_state(self) -> tuple | None:
        """What a CUDA graph of a training forward at this method's current state bakes in, besides
        tensors changed only in place (graphs are kept per state); None where no graph may be
        recorded (autograd)."""
        return None

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.state_dict()
        missing = set(own) - set(state)
        if missing:
            raise KeyError(f"checkpoint lacks method state {sorted(missing)[:3]}")
        for key, tensor in own.items():
            tensor.copy_(state[key])


METHODS: Registry[type[Method]] = Registry("method")


def combine(per_query: list[list[torch.Tensor]], grads: Sequence[float]) -> list[torch.Tensor]:
    """Σ_q g_q X_q / Q for every tensor of the lists at once (X_q: query q's tensors), rounded as
    `sum(g * x for ...) / Q` rounds them, in one multi-tensor launch or two per query."""
    out = torch._foreach_mul(per_query[0], grads[0])
    for tensors, g in zip(per_query[1:], grads[1:]):
        torch._foreach_add_(out, torch._foreach_mul(tensors, g))
    if len(grads) > 1:
        torch._foreach_div_(out, len(grads))
    return out


def moving_average_(buffers: list[torch.Tensor], values: list[torch.Tensor], beta: float, squared: bool = False) -> None:
    """m ← β·m + (1 − β)·x for every buffer at once (momentum's and Adam's first moment), or with
    `squared` v ← β·v + (1 − β)·x² (Adam's second)."""
    torch._foreach_mul_(buffers, beta)
    if squared:
        torch._foreach_addcmul_(buffers, values, values, value=1 - beta)
    else:
        torch._foreach_add_(buffers, values, alpha=1 - beta)


def adam_denominators(
    second_moments: list[torch.Tensor], beta2: float, t: int, adam_eps: float, out: list[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """√(v / (1 − β₂ᵗ)) + δ for every second moment v at once: new tensors, or written into `out`."""
    if out is None:
        denoms = torch._foreach_div(second_moments, 1 - beta2 ** t)
    else:
        denoms = out
        torch._foreach_copy_(denoms, second_moments)
        torch._foreach_div_(denoms, 1 - beta2 ** t)
    torch._foreach_sqrt_(denoms)
    torch._foreach_add_(denoms, adam_eps)
    return denoms


def flat_like(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Zeroed room for `tensors`: one flat buffer per (device, dtype), and a view of it shaped as
    each tensor, in order. An op on the buffers replaces a multi-tensor op over the tensors, which
    costs the host an allocation per tensor when it makes new ones (hundreds of biases and norms).
    The room is state kept between steps: made as a normal tensor even when first asked for inside
    a forward's inference mode, which would forbid writing it in place outside one."""
    sizes: dict[tuple, int] = {}
    for t in tensors:
        sizes[t.device, t.dtype] = sizes.get((t.device, t.dtype), 0) + t.numel()
    with torch.inference_mode(False):
        flats = {key: torch.zeros(size, device=key[0], dtype=key[1]) for key, size in sizes.items()}
    offsets = dict.fromkeys(sizes, 0)
    views = []
    for t in tensors:
        key, start = (t.device, t.dtype), offsets[t.device, t.dtype]
        views.append(flats[key][start:start + t.numel()].view(t.shape))
        offsets[key] = start + t.numel()
    return list(flats.values()), views


class DenseMoments:
    """Full-size momentum (m) or Adam (m, v) buffers for tensors updated along dense directions;
    those of the grouped tensors (`grouped`, moved together) are views of flat buffers laid out as
    `flat_like` lays out the tensors, so that their update is a few launches on the buffers."""

    def __init__(self, optim: OptimConfig, params: Named, grouped: Named = ()):
        self.optim = optim
        self.buffers: dict[str, torch.Tensor] = {}
        self.flat: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}  # moment -> the grouped tensors' (buffers, views)
        together = {name for name, _ in grouped}
        for kind in {"momentum": ["m"], "adam": ["m", "v", "d"]}.get(optim.name, []):  # d: room for Adam's denominators
            self.flat[kind] = flat_like([p for _, p in grouped])
            if kind == "d":
                continue
            self.buffers.update((f"{kind}.{name}", view) for (name, _), view in zip(grouped, self.flat[kind][1]))
            self.buffers.update((f"{kind}.{name}", torch.zeros_like(p)) for name, p in params if name not in together)

    def apply(self, name: str, p: torch.Tensor, estimate: torch.Tensor, lr: float, step: int) -> None:
        """The update of one tensor moved on its own."""
        m = [self.buffers[f"m.{name}"]]
        v = [self.buffers[f"v.{name}"]] if self.optim.name == "adam" else []
        room = [torch.empty_like(t) for t in v]
        self._apply([p], (m, m), (v, v), (room, room), [estimate], lr, step)

    def apply_group(self, params: list[torch.Tensor], estimates: list[torch.Tensor], lr: float, step: int) -> None:
        """The update of the grouped tensors, `estimates` laid out as their moments' flat buffers."""
        self._apply(params, self.flat["m"], self.flat.get("v"), self.flat.get("d"), estimates, lr, step)

    def _apply(self, params, m, v, room, estimates, lr: float, step: int) -> None:
        """p ← p − η·m for momentum, p ← p − η·m̂/(√v̂+δ) for Adam (bias-corrected, t = step + 1),
        with m, v and the denominators' room as (buffers, views shaped as `params`)."""
        betas = self.optim.beta_values()
        moving_average_(m[0], estimates, betas[0])
        if self.optim.name == "momentum":
            torch._foreach_add_(params, m[1], alpha=-lr)
            return
        moving_average_(v[0], estimates, betas[1], squared=True)
        t = step + 1
        adam_denominators(v[0], betas[1], t, self.optim.adam_eps, out=room[0])
        torch._foreach_addcdiv_(params, m[1], room[1], value=-lr / (1 - betas[0] ** t))


class ZOMethod(Method):
    """A zeroth-order method: in-place perturbations along regenerable directions, then an update.

    Subclasses say what a direction is (`perturb`) and what is done with the projected gradients
    (`update`); `step` is the same finite-difference procedure for all of them. Tensors for which
    `is_dense` holds (all of them for MeZO, the 1-D ones for low-rank methods) take a dense z.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.moments = DenseMoments(
            self.optim, [(n, p) for n, p in self.params if self.is_dense(p)], [self.params[i] for i, _ in self.group]
        )
        self._drawn: dict[int, dict[tuple, object]] = {}  # step -> what `drawn` drew for it
        self._rooms: dict[tuple, tuple] = {}  # (kind, step parity, query) -> `flat_like` room of `fresh`
        self.device = self.params[0][1].device if self.params else torch.device("cpu")  # of the trained tensors
        self.noise = noise.resolve(self.cfg.noise, self.device)
        if self.noise == "triton" and not noise.available():
            raise ZoftError("method.noise: triton needs the triton package and a CUDA GPU (or TRITON_INTERPRET=1); use auto or torch")

    def is_dense(self, p: torch.Tensor) -> bool:
        return True

    def forward_state(self) -> tuple | None:
        return ()  # the model's own tensors, moved in place

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.moments.buffers)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.carried = None  # the weights were loaded with it: clean ones

    def can_carry(self) -> bool:
        """Whether `finish` can add the next step's first perturbation in its own pass (`carry`)."""
        return False

    def plain_sgd(self) -> bool:
        """SGD without decay: a dense tensor's update is the same coefficients of its z (one pass a query)."""
        return self.optim.name == "sgd" and not self.optim.weight_decay

    def queries(self, step: int) -> int:
        return self.cfg.n_queries

    def dense_keys(self, index: int, step: int, query: int) -> tuple[int, ...]:
        """The stream of parameter `index`'s dense direction (also used for 1-D tensors by all methods)."""
        return (self.seed, step, query, index, DIRECTION)

    def dense(self, index: int, p: torch.Tensor, step: int, query: int) -> torch.Tensor:
        """z of tensor `index` at (step, query); a grouped tensor's is the one its group keeps."""
        if self.grouped(p):
            return self.group_directions(step, query)[self.group_position[index]]
        return noise.gaussian_like(p, self.dense_keys(index, step, query), self.noise)

    def dense_of(self, indices: list[int], step: int, query: int) -> dict[int, torch.Tensor]:
        """`dense` of each tensor of `indices`, the grouped ones' z looked up in one list (a GPU
        waits for these lookups between a step's losses and its next forward: `dense` one by one
        took OPT-1.3B's 244 biases and norms about 0.5 ms)."""
        views = self.group_directions(step, query) if self.group else []
        position = self.group_position
        return {
            i: views[position[i]] if i in position else self.dense(i, self.params[i][1], step, query) for i in indices
        }

    def add_dense(self, index: int, p: torch.Tensor, step: int, query: int, alpha: float) -> None:
        """p += alpha · z(step, query), z drawn in the same pass (no m×n temporary with triton)."""
        noise.add_gaussian_(p, alpha, self.dense_keys(index, step, query), self.noise)

    def add_dense_many(
        self, members: list[tuple[int, torch.Tensor]], step: int, query: int, alpha: float,
        then: tuple[int, int, float] | None = None,
    ) -> None:
        """`add_dense` for every (index, tensor) of `members`, in as few kernel launches as can be;
        `then` (step2, query2, alpha2): a second direction added in the same pass (noise.add_gaussian_many_)."""
        keys_at = lambda s, q: [self.dense_keys(index, s, q) for index, _ in members]  # noqa: E731
        second = None if then is None else (then[2], keys_at(then[0], then[1]))
        noise.add_gaussian_many_([p for _, p in members], alpha, keys_at(step, query), self.noise, second)

    @abstractmethod
    def perturb(self, step: int, query: int, scale: float) -> None:
        """W += scale · eps · Z(step, query) for every trainable tensor."""

    @abstractmethod
    def update(self, step: int, grads: Sequence[float], lr: float) -> None:
        """Apply the update for the projected gradients of this step's queries."""

    def perturb_dense(self, index: int, p: torch.Tensor, step: int, query: int, scale: float) -> None:
        if self.grouped(p):  # as its group moves it (`perturb_group`)
            p.add_(self.dense(index, p, step, query), alpha=scale * self.cfg.eps)
        else:
            self.add_dense(index, p, step, query, scale * self.cfg.eps)

    def grouped(self, p: torch.Tensor) -> bool:
        """Small dense tensors (biases, norms, adapters' cores) move together: their z are drawn once
        a query and added by one multi-tensor kernel a pass, instead of a launch per tensor and pass."""
        return self.is_dense(p) and p.numel() <= SMALL

    @functools.cached_property
    def group(self) -> list[tuple[int, torch.Tensor]]:
        """The grouped tensors with their indices (the trained set never changes)."""
        return [(i, p) for i, (_, p) in enumerate(self.params) if self.grouped(p)]

    @functools.cached_property
    def group_position(self) -> dict[int, int]:
        """Where each grouped tensor's z is in `group_directions`."""
        return {index: k for k, (index, _) in enumerate(self.group)}

    @functools.cached_property
    def ungrouped(self) -> list[tuple[int, torch.Tensor]]:
        """Every other tensor, with its index (MeZO moves them with one multi-tensor launch a pass)."""
        return [(i, p) for i, (_, p) in enumerate(self.params) if not self.grouped(p)]

    def drawn(self, key: tuple, step: int, draw: Callable[[], object]):
        """`draw()` once per (step, key): the passes of a step (+ε, −2ε, the restore and the update)
        reuse what it drew or built (the small tensors' z; LOZO's U, TeZO's τ and U·diag(τ),
        SubZO's S and P·S, a query's `plan`) instead of making it again, launches per tensor and
        pass saved. A step's draws keep those of the step before it (prefetched draws come a step
        early) and let older ones go."""
        if step not in self._drawn:
            self._drawn = {s: kept for s, kept in self._drawn.items() if s == step - 1} | {step: {}}
        kept = self._drawn[step]
        if key not in kept:
            kept[key] = draw()
        return kept[key]

    def group_directions(self, step: int, query: int) -> list[torch.Tensor]:
        """The z of every grouped tensor at (step, query), drawn once (`drawn`): the same z as
        `noise.gaussian_like`, which takes two launches per tensor."""
        return self._group(step, query)[1]

    def group_flats(self, step: int, query: int) -> list[torch.Tensor]:
        """The same z as flat buffers, laid out as `flat_like` lays out the grouped tensors."""
        return self._group(step, query)[0]

    def _group(self, step: int, query: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.drawn(("group", query), step, lambda: self.fresh("group", step, query, self.group))

    def fresh(self, kind: str, step: int, query: int, members: list[tuple[int, torch.Tensor]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """N(0, 1) tensors shaped as each (index, tensor) of `members`, from the streams
        `dense_keys(index, step, query)`, into room kept per (kind, step parity, query): its flat
        buffers and their views (`flat_like`). With the fused kernel two launches for all (the
        kernel's tables then built once), else a `gaussian` each, copied in. Two steps' sets: a
        step's and the prefetched next one's."""
        room = (kind, step % 2, query)
        if room not in self._rooms:
            self._rooms[room] = flat_like([t for _, t in members])
        flats, views = self._rooms[room]
        keys = [self.dense_keys(index, step, query) for index, _ in members]
        if self.noise != "triton":
            for z, key in zip(views, keys):
                z.copy_(noise.gaussian_like(z, key, self.noise))
            return flats, views
        torch._foreach_zero_(flats)
        noise.add_gaussian_many_(views, 1.0, keys, self.noise)
        return flats, views

    def perturb_group(self, step: int, query: int, scale: float) -> None:
        tensors = [p for _, p in self.group]
        if tensors:
            torch._foreach_add_(tensors, self.group_directions(step, query), alpha=scale * self.cfg.eps)

    def update_group(self, step: int, grads: Sequence[float], lr: float, undo: Pending = None) -> None:
        """update_dense for every grouped tensor at once: SGD one multi-tensor add per query, momentum
        and Adam a few multi-tensor launches in all."""
        tensors = [p for _, p in self.group]
        if not tensors:
            return
        if not self.plain_sgd():  # moments, or decay of small matrices
            if undo is not None:
                self.perturb_group(step, undo[0], -undo[1])
                undo = None
            for p in tensors:
                self.decay(p, lr)
        if self.optim.name == "sgd":
            for query, alpha in enumerate(self.sgd_alphas(grads, lr, undo)):
                torch._foreach_add_(tensors, self.group_directions(step, query), alpha=alpha)
            return
        estimates = combine([self.group_flats(step, query) for query in range(len(grads))], grads)
        self.moments.apply_group(tensors, estimates, lr, step)

    def sgd_alphas(self, grads: Sequence[float], lr: float, undo: Pending) -> list[float]:
        """Each query's coefficient of its z in an SGD update, undoing `undo` folded in."""
        return [
            (-undo[1] * self.cfg.eps if undo is not None and undo[0] == query else 0.0) - lr * g / len(grads)
            for query, g in enumerate(grads)
        ]

    def update_dense(
        self, index: int, name: str, p: torch.Tensor, step: int, grads: Sequence[float], lr: float, undo: Pending = None
    ) -> None:
        """SGD adds each query's regenerated z (no accumulator), folding the undoing of a perturbation
        still on the weights (`undo`) into the same pass; momentum/Adam use full-size buffers."""
        if undo is not None and (self.optim.name != "sgd" or (self.optim.weight_decay and p.ndim > 1)):
            self.perturb_dense(index, p, step, undo[0], -undo[1])
            undo = None
        self.decay(p, lr)
        if self.optim.name == "sgd":
            for query, alpha in enumerate(self.sgd_alphas(grads, lr, undo)):
                self.add_dense(index, p, step, query, alpha)
            return
        estimate = combine([[self.dense(index, p, step, query)] for query in range(len(grads))], grads)[0]
        self.moments.apply(name, p, estimate, lr, step)

    def decay(self, p: torch.Tensor, lr: float) -> None:
        """Decoupled weight decay θ ← θ − η λ θ, skipped on 1-D tensors (biases, norms)."""
        if self.optim.weight_decay and p.ndim > 1:
            p.mul_(1 - lr * self.optim.weight_decay)

    def step(self, loss_fn: LossFn, step: int, lr: float, queries=None, carry: bool = False) -> StepResult:
        """Estimate, then update, unless a loss or projected gradient is not finite.

        With in-place restores and every query evaluated here, the last query's restore is left to
        `finish`, which may fold it into the update's pass over the weights, and with `carry` (where
        `can_carry`) the next step's first perturbation too: a two-sided dense step then makes two
        passes over the weights instead of three, with the same roundings.
        """
        keep = self.cfg.restore == "arithmetic" and queries is None
        result, pending = self._estimate(loss_fn, step, queries, keep_last=keep)
        if not result.finite:
            result.applied = False
            self.finish(step, [], 0.0, pending)
            return result
        carry = carry and keep and self.cfg.perturbation == "two_side" and self.can_carry()
        self.finish(step, result.grads, lr, pending, carry)
        return result

    def finish(self, step: int, grads: Sequence[float], lr: float, pending: Pending, carry: bool = False) -> None:
        """Undo the perturbation `pending` (query, scale) still on the weights, then update (no
        update when `grads` is empty). Methods that can, fold the two into one pass, and with
        `carry`, the next step's first perturbation, setting `carried`."""
        if pending is not None:
            self.perturb(step, pending[0], -pending[1])
        if grads:
            self.update(step, grads, lr)

    def prefetch(self, step: int) -> None:
        """Draw what `step` will need, while the GPU runs this step's forwards (the host would
        otherwise wait for them idle, and draw later with the GPU waiting); results do not change."""

    def moved_params(self) -> list[torch.Tensor]:
        """The tensors `perturb` writes (all of them, unless some are perturbed another way)."""
        return [p for _, p in self.params]

    def loss_at(self, loss_fn: LossFn, step: int, query: int | None, scale: float) -> torch.Tensor:
        """The loss with the weights at `scale`·ε·Z(step, query), `perturb` having moved them."""
        return loss_fn()

    def paired_losses(self, loss_fn: LossFn, step: int, query: int):
        """(L(+εZ), L(−εZ)) from one forward, the weights `perturb` moves being at +ε; None when
        the method evaluates the two signs in two forwards."""
        return None

    def estimate(self, loss_fn: LossFn, step: int, queries=None) -> StepResult:
        """The projected gradients of this step; the weights are left as they were."""
        return self._estimate(loss_fn, step, queries, keep_last=False)[0]

    def _estimate(self, loss_fn: LossFn, step: int, queries, keep_last: bool) -> tuple[StepResult, Pending]:
        """Perturb, evaluate and restore for each query (the last restore left pending if `keep_last`).

        `queries`, when given, spreads the step's queries over processes: it says which ones
        this process evaluates (`mine(q)`) and sums each query's numbers over processes
        (`combine(values)`), so every process ends with all of them.
        If a forward pass raises (out of memory, Ctrl-C), the perturbation in flight is undone
        before the exception goes on, so the weights stay those of the last completed step.
        """
        if self.carried not in (None, step):
            raise RuntimeError(f"step {step} began with step {self.carried}'s perturbation on the weights")
        cfg = self.cfg
        moved = self.moved_params()
        snapshot = [p.detach().clone() for p in moved] if cfg.restore == "copy" else None
        applied = {"query": 0, "scale": 0.0}  # the perturbation currently on the weights

        def move(query: int, scale: float) -> None:
            if self.carried == step and query == 0 and scale == 1.0:  # the last step's finish added it
                self.carried = None
            else:
                self.perturb(step, query, scale)
            applied["query"], applied["scale"] = query, applied["scale"] + scale

        def restore() -> None:
            if snapshot is None:
                move(applied["query"], -applied["scale"])
            else:
                for p, saved in zip(moved, snapshot):
                    p.copy_(saved)
            applied["scale"] = 0.0

        def loss(query: int | None = None, scale: float = 0.0) -> torch.Tensor:  # left on the device:
            with torch.inference_mode():  # one sync per query, not per forward
                return self.loss_at(loss_fn, step, query, scale).detach()

        def ahead() -> None:  # on a GPU the host would wait for the forwards: it draws instead
            if query == count - 1 and self.device.type == "cuda":
                self.prefetch(step + 1)

        count = self.queries(step)
        grads, losses = [0.0] * count, [0.0] * count
        try:
            base = float(loss()) if cfg.perturbation == "one_side" else None
            for query in (range(count) if queries is None else queries.mine(count)):
                move(query, +1.0)
                with torch.inference_mode():
                    pair = self.paired_losses(loss_fn, step, query)
                if pair is not None:
                    ahead()
                    plus, minus = (float(v) for v in pair)
                else:
                    plus = loss(query, +1.0)
                    if base is not None:
                        restore()
                        grads[query], losses[query] = (float(plus) - base) / cfg.eps, base
                        continue
                    move(query, -2.0)
                    minus = loss(query, -1.0)  # both forwards queued before the one sync
                    ahead()
                    plus, minus = float(plus), float(minus)
                grads[query], losses[query] = (plus - minus) / (2 * cfg.eps), (plus + minus) / 2
                if not (keep_last and query == count - 1):
                    restore()
        except BaseException:
            if applied["scale"]:
                restore()
            raise
        if queries is not None:
            grads, losses = queries.combine(grads), queries.combine(losses)
        pending = (applied["query"], applied["scale"]) if applied["scale"] else None
        return StepResult(sum(losses) / count, grads), pending


def matrix(p: torch.Tensor) -> torch.Tensor:
    """A 2-D view (rows, everything else) of a tensor with two or more dimensions."""
    return p.view(p.shape[0], -1)
