"""What the low-rank estimators share: 2-D tensors take a factored direction A Bᵀ, 1-D ones a dense z.

Two ways to apply a direction (SPEC.md, `method.path`):
- in place: W += α A Bᵀ with `addmm_` on the weight itself (no m×n tensor is ever built);
- functional: W is never written during a step; hooks add (x B)(A_acc + s ε A)ᵀ to the outputs of
  the layers using W, the ±ε passes may share one forward over a doubled batch, and updates
  accumulate in factor space (A_acc, m×r per matrix, fp32), merged into W when the basis B
  changes and at the end (a read-only W, e.g. quantized, keeps the merged-out terms instead).
"""

from __future__ import annotations

import functools
import itertools
from abc import abstractmethod
from typing import Callable, NamedTuple, Sequence

import torch

from zoft.config.methods import load_rank_file
from zoft.engine import lowrank_add
from zoft.errors import ZoftError
from zoft.methods.base import Pending, ZOMethod, flat_like, matrix
from zoft.methods.functional import FunctionalPath, Unsupported, concatenated
from zoft.models.quantize import is_quantized, logical_shape

PAIRED_MAX_EXAMPLES = 8  # paired_forward=auto doubles batches of at most this many examples


class Plan(NamedTuple):
    """The matrices a pass moves in place, column by column: what a `LowRankPass` takes."""

    indices: list[int]
    weights: list[torch.Tensor]  # W (m×n views)
    factors: list[torch.Tensor]  # A (m×r)
    bases: list[torch.Tensor]  # B (n×r)


class LowRankMethod(ZOMethod):
    update_reads_factors = False  # whether `update_factors` reads a segment's `flat_factors` (LOZO's U), not only the folded undo
    products_by_group = False  # whether a query's A come from one product a shape group (`group_products`: TeZO, SubZO)

    def __init__(self, *args, **kwargs):
        self._periodic: dict[int, tuple[int, object]] = {}  # parameter -> (period, what `periodic` drew)
        self._alone: list[tuple[int, str, torch.Tensor]] | None = None  # `alone()`, for the current path
        self._hooked_by_scale: dict[float, list[int]] = {}  # rank scale -> its hooked matrices, together in `order`
        self._layouts: dict[tuple, object] = {}  # made once: `segment_scales`, `factor_shapes`, `gathered`'s indices
        self._update_rooms: dict[int, tuple] = {}  # segment -> (key, room, pass) of `add_factored_in_place`
        self._stacked: tuple[int, list[torch.Tensor]] | None = None  # (period, `stacked_first`)
        super().__init__(*args, **kwargs)
        per_layer = load_rank_file(self.cfg.rank) if isinstance(self.cfg.rank, str) else {}
        default = per_layer.get("default", self.cfg.rank)
        self.ranks = {  # `method.rank` (or the rank file's entry), capped by the layer's dimensions
            index: min(int(per_layer.get(name, default)), *self.like(index).shape)
            for index, (name, p) in enumerate(self.params)
            if not self.is_dense(p)
        }
        self.acc_period = torch.zeros((), dtype=torch.long)  # the basis period A_acc is expressed in
        self.functional = self._choose_path()
        self.fused_add = lowrank_add.usable(self.device)  # in-place passes by the many-matrix kernel
        if self.functional is not None:
            self._start_accumulators()
        # 1 functional, 0 in place, -1 to be measured (auto on a GPU): checkpointed, so a resume keeps it
        measured = self.cfg.path == "auto" and self.functional is not None and not self.quantized
        self.path_state = torch.tensor(-1 if measured else int(self.functional is not None))

    # ---- what each estimator says --------------------------------------------------------
    @abstractmethod
    def factors(self, index: int, w: torch.Tensor, step: int, query: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) with the direction Z = A Bᵀ (m×r, n×r) of parameter `index` at (step, query)."""

    @abstractmethod
    def update_factors(self, step: int, grads: Sequence[float], lr: float) -> list[torch.Tensor]:
        """A of this step's update W += A Bᵀ of every matrix, B being this period's basis: for each
        of `segments`, its matrices' A end to end in one flat tensor. A few launches for all of
        them, not a launch per matrix and operation, nor a multi-tensor op making a tensor per
        matrix (OPT-1.3B has 146 matrices, and those cost momentum and Adam 10-60 ms of host time
        a step on an H100, the GPU waiting)."""

    @abstractmethod
    def basis_of(self, index: int, w: torch.Tensor, period: int) -> torch.Tensor:
        """B (n×r) of a basis period: the same for every step in it."""

    @abstractmethod
    def period(self, step: int) -> int:
        """Which basis period `step` falls in."""

    # ---- shared --------------------------------------------------------------------------
    def is_dense(self, p: torch.Tensor) -> bool:
        return p.ndim < 2

    def like(self, index: int) -> torch.Tensor:
        """The 2-D view of parameter `index`; for a quantized weight a stand-in (no memory) with the
        shape of the matrix it stands for and the model's compute dtype, for drawing its factors."""
        p = self.params[index][1]
        if not is_quantized(p):
            return matrix(p)
        dtype = next((q.dtype for _, q in self.params if q.dtype.is_floating_point), torch.float32)
        return torch.empty((), dtype=dtype, device=p.device).expand(*logical_shape(p))

    def rank(self, index: int) -> int:
        return self.ranks[index]

    @functools.cached_property
    def segments(self) -> list[list[int]]:
        """The matrices (`ranks`' order) by device and dtype, one list each: flat factor tensors are
        per segment (one but for a model spread over GPUs by `model.device_map`, or of mixed dtypes)."""
        by_kind: dict[tuple, list[int]] = {}
        for index in self.ranks:
            by_kind.setdefault((self.params[index][1].device, self.like(index).dtype), []).append(index)
        return list(by_kind.values())

    @functools.cached_property
    def shape_groups(self) -> list[list[int]]:
        """The matrices by (device, dtype, rows, rank): a group's first factors stack into one
        (G, m, r) tensor (`stacked_first`), so that a step's products by them are one launch a
        group, not one a matrix (OPT-1.3B: 3 groups of its 146 matrices). Groups with a matrix
        off the functional path's hooks (OPT's learned positions) come last, so that the hooked
        matrices' A lie together in `factor_order`."""
        by_shape: dict[tuple, list[int]] = {}
        for index in self.ranks:
            like = self.like(index)
            by_shape.setdefault((self.params[index][1].device, like.dtype, like.shape[0], self.rank(index)), []).append(index)
        return sorted(by_shape.values(), key=lambda group: any(self.off_hooks(index) for index in group))

    @functools.cached_property
    def factor_order(self) -> list[int]:
        """The matrices in the order a query's A are made, end to end: by shape group where they
        come from a product a group (`group_products`), else `ranks`' order (LOZO's U, drawn at
        once), the functional path's hooked matrices first either way. Its `order` follows this
        one, so that a query's directions there are those A as made, not a copy (`concatenated`)."""
        if self.products_by_group:
            return [index for group in self.shape_groups for index in group]
        return sorted(self.ranks, key=self.off_hooks)

    def group_products(self, fill: Callable[[int, list[int], torch.Tensor], None]) -> dict[int, torch.Tensor]:
        """A (m×r) of every matrix, views of one buffer a segment laid out in `factor_order`
        (`flat_like`): `fill(k, group, out)` writes shape group k's products into `out`, (G, m, r),
        its part of the buffer (no per-group result to copy in afterwards)."""
        likes = [self.like(group[0]) for group in self.shape_groups]
        _, outs = flat_like([
            torch.empty((), dtype=like.dtype, device=like.device).expand(len(group), like.shape[0], self.rank(group[0]))
            for group, like in zip(self.shape_groups, likes)
        ])
        views = {}
        for k, (group, out) in enumerate(zip(self.shape_groups, outs)):
            fill(k, group, out)
            views.update(zip(group, out.unbind()))
        return views

    def stacked_first(self, period: int, pair: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """The first of each matrix's periodic pair `pair(index, period)` (TeZO's U, SubZO's P)
        stacked per `shape_groups` group, made once a period; the matrices' own become views of
        the stack (no second copy)."""
        if self._stacked is None or self._stacked[0] != period:
            stacked = []
            for group in self.shape_groups:
                stacked.append(torch.stack([pair(index, period)[0] for index in group]))
                for index, first in zip(group, stacked[-1].unbind()):
                    self._periodic[index] = (period, (first, self._periodic[index][1][1]))
            self._stacked = (period, stacked)
        return self._stacked[1]

    def segment_scales(self, segment: list[int]) -> float | torch.Tensor:
        """The rank scale of each matrix of `segment`, per element of its flat factors: one number
        where they share it (a uniform rank), else a flat fp32 tensor, made once."""
        scales = {self.rank_scale(index) for index in segment}
        if len(scales) == 1:
            return scales.pop()
        key = ("scales", tuple(segment))
        if key not in self._layouts:
            self._layouts[key] = torch.cat([
                torch.full((self.like(i).shape[0] * self.rank(i),), self.rank_scale(i), device=self.params[i][1].device) for i in segment
            ])
        return self._layouts[key]

    def factor_shapes(self, indices: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """Sizes and shapes (m×r) of the factors A of matrices `indices`, listed once."""
        key = ("shapes", tuple(indices))
        if key not in self._layouts:
            shapes = [(self.like(i).shape[0], self.rank(i)) for i in indices]
            self._layouts[key] = ([m * r for m, r in shapes], shapes)
        return self._layouts[key]

    def split_factors(self, flat: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        """Views of flat factors laid end to end: A (m×r) of each matrix of `indices`."""
        sizes, shapes = self.factor_shapes(indices)
        return [part.view(shape) for part, shape in zip(flat.split(sizes), shapes)]

    def gathered(self, flat: torch.Tensor, segment: list[int], indices: list[int]) -> torch.Tensor:
        """The factors of matrices `indices` end to end, taken from `flat` (those of `segment` end to
        end): `flat` itself where they are the same, else one gather by an index made once."""
        if indices == segment:
            return flat
        key = ("positions", tuple(segment), tuple(indices), flat.device)
        if key not in self._layouts:
            sizes = self.factor_shapes(segment)[0]
            starts = dict(zip(segment, itertools.accumulate(sizes, initial=0)))
            self._layouts[key] = torch.cat([
                torch.arange(starts[i], starts[i] + size, device=flat.device) for i, size in zip(indices, self.factor_shapes(indices)[0])
            ])
        return flat[self._layouts[key]]

    def fresh_factors(self, kind: str, step: int, query: int, shapes: list[tuple[int, tuple[int, ...]]]) -> dict[int, torch.Tensor]:
        """A step's fresh N(0, 1) factors (LOZO's U, TeZO's τ, SubZO's S), `shapes` giving each
        matrix's (index, shape), all at once (`fresh`: with the fused noise kernel two launches in
        all). A `torch.randn` per matrix, its generator reseeded, cost the host about 3 ms a step
        on OPT-1.3B's 146 matrices, more than a batch-4 forward leaves to hide it."""
        members = [(i, torch.empty((), dtype=self.like(i).dtype, device=self.params[i][1].device).expand(shape)) for i, shape in shapes]
        return dict(zip([index for index, _ in shapes], self.fresh(kind, step, query, members)[1]))

    def flat_factors(self, step: int, query: int, indices: list[int]) -> torch.Tensor:
        """A of matrices `indices` at (step, query), end to end, made once a query per order (ahead,
        by `prefetch`): a segment's for LOZO's update and the undoing folded into it, the hooks'
        `order` for the functional path (`directions`), one tensor where the two orders agree."""
        draw = lambda: concatenated([self.factors(i, self.like(i), step, query)[0] for i in indices])  # noqa: E731
        return self.drawn(("flat", tuple(indices), query), step, draw)

    def rank_scale(self, index: int) -> float:
        """1/r for estimators normalized to be unbiased (SPEC: lozo, tezo), else 1."""
        return 1.0 / self.rank(index) if getattr(self.cfg, "normalize", False) else 1.0

    def periodic(self, index: int, period: int, draw: Callable[[], object]):
        """`draw()` once per basis period of parameter `index` (its B, TeZO's U too): (m + n)·r
        numbers a matrix at most, against the m·n of the matrix."""
        cached = self._periodic.get(index)
        if cached is None or cached[0] != period:
            cached = self._periodic[index] = (period, draw())
        return cached[1]

    @property
    def quantized(self) -> bool:
        return any(is_quantized(self.params[i][1]) for i in self.ranks)

    def _start_accumulators(self) -> None:
        """Zero factor accumulators and the current period's bases on the functional path's hooks,
        the matrices ordered by rank scale so that SGD adds each scale's A by one launch."""
        position = {index: k for k, index in enumerate(self.factor_order)}
        order = sorted(self.functional.hooked, key=lambda index: (self.rank_scale(index), position[index]))
        self.functional.allocate(order, {index: (self.like(index).shape[0], self.rank(index)) for index in order})
        self._hooked_by_scale = {}
        for index in order:
            self._hooked_by_scale.setdefault(self.rank_scale(index), []).append(index)
        self._load_bases()

    def paths(self) -> list[str]:
        """`method.path: auto` on a GPU: both paths apply, and the trainer times them on the first batch."""
        return ["functional", "inplace"] if int(self.path_state) == -1 else []

    def use_path(self, path: str) -> None:
        """Compute steps on `path` from now on; leaving the functional path merges its terms into W."""
        functional = path == "functional"
        self._drawn = {}  # a plan lists the matrices of one path
        self._alone = None
        if functional != (self.functional is not None):
            if self.functional is None:
                self.functional = FunctionalPath(self.model, self.params, set(self.ranks))
                self._start_accumulators()
            else:
                self.merge()
                self.functional.close()
                self.functional = None
        self.path_state.fill_(int(functional))

    def forward_state(self) -> tuple:
        """In place, nothing; on the functional path, what its hooks' recording bakes in."""
        return () if self.functional is None else self.functional.state()

    def _choose_path(self) -> FunctionalPath | None:
        """The functional path when `method.path` asks for it, or (auto) on a GPU where it applies."""
        choice, model = self.cfg.path, self.model
        quantized = self.quantized
        if quantized and (choice == "inplace" or model is None):
            raise ZoftError("method.path: a quantized base cannot be written in place; use method.path=functional (or auto)")
        if choice == "inplace" or model is None:
            if choice == "functional":
                raise ZoftError("method.path: functional needs the model (not available here)")
            return None
        why = "optim.weight_decay: the functional path keeps W fixed; use method.path=inplace" if self.optim.weight_decay else None
        if why is None:
            try:
                path = FunctionalPath(model, self.params, set(self.ranks))
            except Unsupported as err:
                why = f"method.path: {err}"
        if why is not None:
            if choice == "functional":
                raise ZoftError(why)
            return None
        if choice == "auto" and not (self.device.type == "cuda" or quantized):
            path.close()
            return None
        if self.cfg.paired_forward == "always" and (reason := path.doubled_problem) is not None:
            path.close()
            raise ZoftError(f"method.paired_forward: {reason}; use auto or never")
        return path

    def alone(self) -> list[tuple[int, str, torch.Tensor]]:
        """(index, name, tensor) of the tensors a step moves one by one: neither grouped nor on the
        hooks; listed once a path (a step would otherwise ask it of every tensor, twice)."""
        if self._alone is None:
            self._alone = [(i, name, p) for i, (name, p) in enumerate(self.params) if not self.grouped(p) and not self.hooked(i)]
        return self._alone

    def off_hooks(self, index: int) -> bool:
        """Whether matrix `index` is moved in place while the functional path hooks others."""
        return self.functional is not None and index not in self.functional.hooked

    def hooked(self, index: int) -> bool:
        """Whether parameter `index` goes through the functional path's hooks (not written in steps)."""
        return self.functional is not None and index in self.functional.hooked

    def perturb(self, step: int, query: int, scale: float) -> None:
        """Every tensor not on the functional path's hooks: W += scale·ε·Z in place."""
        self.perturb_group(step, query, scale)
        self.plan_pass(step, query).add_([scale * self.cfg.eps] * len(self.plan(step, query).indices))
        for index, _, p in self.alone():
            if self.is_dense(p):
                self.perturb_dense(index, p, step, query, scale)

    def plan(self, step: int, query: int) -> Plan:
        """The matrices moved in place at (step, query) with their factors, gathered once a query
        (by `prefetch` on a GPU, while the forwards run): a pass is then one `plan_pass`."""
        def gather():
            plan = Plan([], [], [], [])
            for index, (_, p) in enumerate(self.params):
                if not self.is_dense(p) and not self.hooked(index):
                    a, b = self.factors(index, matrix(p), step, query)
                    for column, value in zip(plan, (index, matrix(p), a, b)):
                        column.append(value)
            return plan
        return self.drawn(("plan", query), step, gather)

    def plan_pass(self, step: int, query: int) -> lowrank_add.LowRankPass:
        """The kernel tables of `plan`'s matrices, built once a query (ahead, by `prefetch`)."""
        plan = self.plan(step, query)
        return self.drawn(("pass", query), step, lambda: lowrank_add.LowRankPass(plan.weights, plan.factors, plan.bases, self.fused_add))

    def update(self, step: int, grads: Sequence[float], lr: float) -> None:
        self.rebase(step)  # a replayed update comes without the estimate that rebases
        self.apply_update(step, grads, lr)

    def finish(self, step, grads, lr, pending, carry=False):
        """In place without weight decay, the last restore and the update share one addmm per
        matrix, both directions having this period's basis B: W += (A_update − s·ε·A_restored) Bᵀ
        (`add_sgd_in_place`: one query's SGD scales A in the addmm_ itself; else the factor is
        summed in fp32 and rounded once). Three weight passes a step, where there were
        four. (Carrying the next step's +ε into it too would save one more, but then whether a
        step folds would depend on what follows it, an evaluation or Ctrl-C, and a resumed run
        would differ from an uninterrupted one by roundings: MeZO's carrying is exact, this is not.)"""
        if not grads or self.functional is not None or self.optim.weight_decay:
            return super().finish(step, grads, lr, pending)
        self.apply_update(step, grads, lr, pending)

    def apply_update(self, step: int, grads: Sequence[float], lr: float, undo: Pending = None) -> None:
        self.update_group(step, grads, lr, undo)
        one_pass = self.plain_sgd() and len(grads) == 1
        if one_pass:
            self.add_sgd_in_place(step, grads[0], lr, undo)
        if self.plain_sgd() and self.functional is not None:
            self.add_sgd_hooked(step, grads, lr)
        if not self.plain_sgd() and self.ranks:
            flats = self.update_factors(step, grads, lr)
            if self.functional is not None:
                whole = flats[0] if len(flats) == 1 else torch.cat(flats)  # the segments end to end
                self.functional.accumulate(self.gathered(whole, [i for segment in self.segments for i in segment], self.functional.order))
            self.add_factored_in_place(step, flats, lr, undo)
        for index, name, p in self.alone():
            if self.is_dense(p):
                self.update_dense(index, name, p, step, grads, lr, undo=undo)
            elif self.plain_sgd() and not one_pass:
                self.add_sgd(index, self.like(index), step, grads, lr, undo)
        if self.functional is not None:
            self.functional.changed()
        self.updated(step)

    def add_factored_in_place(self, step: int, flats: list[torch.Tensor], lr: float, undo: Pending) -> None:
        """Momentum's or Adam's update of every matrix moved in place, W += A Bᵀ, the undoing of
        `undo` folded in (A − s·ε·A_undone, summed in fp32 and rounded once): per segment, the
        factors end to end combined by a few launches into a room kept for the period, then one
        pass whose tables were built with it. Launches per matrix, and then the host's building of
        per-matrix views and tables each step, cost OPT-1.3B's LOZO-M and TeZO-Adam 10-20 ms of
        host time a step while the GPU waited."""
        plan = self.plan(step, undo[0] if undo is not None else 0)  # each matrix's W, B and undone A
        position = {index: k for k, index in enumerate(plan.indices)}
        for number, (segment, flat) in enumerate(zip(self.segments, flats)):  # `number` keys the room
            moved = [index for index in segment if index in position]
            if not moved:
                continue
            summed = self.gathered(flat, segment, moved).float()
            if undo is not None:
                summed -= undo[1] * self.cfg.eps * self.gathered(self.flat_factors(step, undo[0], segment), segment, moved).float()
            key = (self.period(step), tuple(moved))
            if self._update_rooms.get(number, (None,))[0] != key:
                room = torch.empty_like(summed, dtype=plan.weights[position[moved[0]]].dtype)
                weights, bases = ([column[position[i]] for i in moved] for column in (plan.weights, plan.bases))
                self._update_rooms[number] = (key, room, lowrank_add.LowRankPass(weights, self.split_factors(room, moved), bases, self.fused_add))
            _, room, update = self._update_rooms[number]
            room.copy_(summed)
            if self.optim.weight_decay:
                for index in moved:
                    self.decay(self.params[index][1], lr)
            update.add_([1.0] * len(moved))

    def add_sgd_in_place(self, step: int, grad: float, lr: float, undo: Pending) -> None:
        """`add_sgd` of one query for every matrix moved in place: one `plan_pass`, each
        matrix's α (by its rank scale) applied in fp32, no factor built."""
        plan = self.plan(step, 0)
        alphas: dict[float, float] = {}  # rank scale -> α
        for index in plan.indices:
            scale = self.rank_scale(index)
            if scale not in alphas:
                alphas[scale] = self.sgd_alphas([grad], lr * scale, undo)[0]
        self.plan_pass(step, 0).add_([alphas[self.rank_scale(index)] for index in plan.indices])

    def add_sgd(self, index: int, w: torch.Tensor, step: int, grads: Sequence[float], lr: float, undo: Pending) -> None:
        """SGD's update of a matrix moved in place, W += Σ_q α_q A_q Bᵀ over the queries' own factors
        (an estimator's SGD step is that combination), the undoing of `undo` folded into its
        query's α; the sum in fp32, rounded once."""
        alphas = self.sgd_alphas(grads, lr * self.rank_scale(index), undo)
        summed = sum(alpha * self.factors(index, w, step, query)[0].float() for query, alpha in enumerate(alphas))
        w.addmm_(summed.to(w.dtype), self.basis_of(index, w, self.period(step)).T)

    def add_sgd_hooked(self, step: int, grads: Sequence[float], lr: float) -> None:
        """`add_sgd` on the functional path: A_acc += Σ_q α_q A_q in fp32 for every hooked matrix,
        one add per query and rank scale (the matrices of a scale lie together in `order`)."""
        for scale, indices in self._hooked_by_scale.items():
            for query, alpha in enumerate(self.sgd_alphas(grads, lr * scale, None)):
                self.functional.accumulate(self.directions(step, query), alpha, indices)

    def prefetch(self, step: int) -> None:
        """The small dense tensors' z of `step`'s first query, and the matrices' first direction
        when `step` keeps this step's basis (a new basis would push out the one this step's
        update needs): its in-place pass with the kernel's tables, and with momentum or Adam its
        factors end to end where the update reads them."""
        if self.group:
            self.group_directions(step, 0)
        if self.period(step) == self.period(step - 1):
            self.plan_pass(step, 0)
            if not self.plain_sgd() and (self.update_reads_factors or (self.functional is None and not self.optim.weight_decay)):
                for segment in self.segments:  # read by the update, or by the undoing folded into it
                    self.flat_factors(step, 0, segment)
            if self.functional is not None:
                self.directions(step, 0)

    def updated(self, step: int) -> None:
        """After each update (LOZO-M: the basis its momentum is now expressed in)."""

    # ---- the functional path -------------------------------------------------------------
    def _estimate(self, loss_fn, step, queries, keep_last):
        if self.functional is None:
            return super()._estimate(loss_fn, step, queries, keep_last)
        self.rebase(step)
        try:
            return super()._estimate(loss_fn, step, queries, keep_last)
        finally:
            self.functional.clear_direction()

    def moved_params(self) -> list[torch.Tensor]:
        """On the functional path the hooked matrices stay put: only the other tensors move."""
        return [p for i, (_, p) in enumerate(self.params) if not self.hooked(i)]

    def loss_at(self, loss_fn, step, query, scale):
        if self.functional is not None:  # the matrices' directions go on the hooks
            self.functional.set_direction(self.directions(step, query) if scale else None, self.cfg.eps, scale=scale)
        return loss_fn()

    def paired_losses(self, loss_fn, step, query):
        """One forward over a doubled batch: the hooks give its halves +εA and −εA, a Linear's bias
        is corrected and other modules' second halves are recomputed with their tensors at −ε
        (a dense tensor's z, or a matrix's A and Bᵀ, given to the hooks)."""
        if self.functional is None or not self.pairs(loss_fn):
            return None
        path = self.functional
        biases = self.dense_of(path.bias_indices, step, query)
        shifts = self.dense_of([i for i in path.recomputed if self.is_dense(self.params[i][1])], step, query)
        for index in path.recomputed:
            if index not in shifts:
                a, b = self.factors(index, matrix(self.params[index][1]), step, query)
                shifts[index] = (a, b.T)
        path.set_direction(self.directions(step, query), self.cfg.eps, rows=loss_fn.rows(), vectors=biases, shifts=shifts)
        return loss_fn.pair()

    def directions(self, step: int, query: int) -> torch.Tensor:
        """A of every hooked matrix for one query, end to end in the hooks' `order` (B is the
        period's basis on the hooks), built once a query (`flat_factors`)."""
        return self.flat_factors(step, query, self.functional.order)

    def pairs(self, loss_fn) -> bool:
        """Whether this step's ±ε passes share one doubled forward."""
        choice = self.cfg.paired_forward
        if choice == "never" or not hasattr(loss_fn, "pair") or self.cfg.perturbation != "two_side":
            return False
        if self.functional.doubled_problem is not None:
            return False
        return choice == "always" or loss_fn.examples() <= PAIRED_MAX_EXAMPLES

    def rebase(self, step: int) -> None:
        """At a new basis period: merge A_acc Bᵀ into W (or keep it aside for a read-only W)."""
        period = self.period(step)
        if self.functional is None or int(self.acc_period) == period:
            return
        self.merge()
        self.acc_period.fill_(period)
        self._load_bases()

    def merge(self) -> None:
        """W += A_acc Bᵀ for every matrix, then A_acc = 0 (the model no longer needs the hooks' terms)."""
        if self.functional is None:
            return
        for index in sorted(self.functional.live):
            acc, basis = self.functional.acc[index], self.functional.basis[index]
            w = matrix(self.params[index][1])
            if w.dtype.is_floating_point:
                w.addmm_(acc.to(w.dtype), basis.T)
            else:
                self.functional.freeze(index, acc.clone(), basis.clone())
            acc.zero_()
        self.functional.live.clear()
        self.functional.changed()

    def close(self) -> None:
        if self.functional is not None:
            self.functional.close()

    def deltas(self) -> dict[str, torch.Tensor]:
        """The terms not yet in W, for evaluating a checkpoint: {name.A, name.B} with W_eff = W + Σ A Bᵀ."""
        if self.functional is None:
            return {}
        out = {}
        for index in sorted(self.functional.hooked):
            terms = list(self.functional.frozen.get(index, ()))
            if index in self.functional.live:
                terms.append((self.functional.acc[index], self.functional.basis[index]))
            if terms:
                name = self.params[index][0]
                out[f"{name}.A"] = torch.cat([a.float() for a, _ in terms], 1)
                out[f"{name}.B"] = torch.cat([b.float() for _, b in terms], 1)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict() | {"path": self.path_state}
        if self.functional is not None:
            state |= {f"acc.{self.params[i][0]}": self.functional.acc[i] for i in sorted(self.functional.hooked)}
            state["acc.period"] = self.acc_period
            for index, terms in self.functional.frozen.items():  # merged-out terms of a quantized W
                name = self.params[index][0]
                state[f"frozen.A.{name}"] = torch.cat([a for a, _ in terms], 1)
                state[f"frozen.B.{name}"] = torch.cat([b for _, b in terms], 1)
        return state

    def load_state_dict(self, state):
        if "path" in state and int(state["path"]) >= 0:  # the path the run had chosen
            self.use_path("functional" if int(state["path"]) else "inplace")
        if self.functional is not None:
            self.functional.set_frozen({
                index: [(state[f"frozen.A.{name}"].to(p.device), state[f"frozen.B.{name}"].to(p.device))]
                for index, (name, p) in enumerate(self.params)
                if f"frozen.A.{name}" in state
            })
        super().load_state_dict(state)
        if self.functional is not None:  # the basis of the loaded accumulators' period
            self.functional.live.update(self.functional.hooked)
            self._load_bases()

    def _load_bases(self) -> None:
        """Put the basis B of period `acc_period` on the hooks; what `periodic` keeps then holds
        the hooks' copy of B in place of its own (one copy, not two: SubZO's Q at rank 8 is
        6.8 MiB on OPT-1.3B)."""
        period, drawn = int(self.acc_period), {}
        for index in sorted(self.functional.hooked):
            drawn[index] = self.basis_of(index, self.like(index), period)
            self.functional.set_basis(index, drawn[index])
        for index, basis in drawn.items():  # after every set_basis: a group's buffer may be made anew by its first
            kept, held = self._periodic.get(index), self.functional.basis[index]
            if kept is not None and kept[0] == period:
                parts = kept[1] if isinstance(kept[1], tuple) else (kept[1],)
                shared = tuple(held if part is basis else part for part in parts)
                self._periodic[index] = (period, shared if isinstance(kept[1], tuple) else shared[0])
