"""The functional perturbation path of SPEC.md: trained matrices are not written during a step.

A forward hook on every module that uses a trained matrix W (an nn.Linear's weight or a plain
nn.Embedding's table, tied ones included) adds the low-rank terms of

    W_eff = W + A_acc Bᵀ + s·ε·A Bᵀ

to the module's output: (x B)(A_acc + s ε A)ᵀ for a linear layer, (A_acc + s ε A)[ids] Bᵀ for an
embedding. A_acc is the update accumulated in factor space since the last merge, A Bᵀ the current
direction, s = ±1 for the whole batch, or per half of a doubled batch (+ε first, −ε second).

Every other trained tensor (biases, norm weights, matrices of other modules such as OPT's learned
positions) is perturbed in place as usual; over a doubled batch a Linear's bias is corrected on
the second half (−2εz), and any other module owning one recomputes its second half with the
tensor at −ε. Nothing here knows which method made A and B.

A plain nn.Linear gets `_linear_forward` in place of its forward, which on a GPU adds its terms
inside the layer's GEMM (engine/lowrank_linear.py), x B taken once for the siblings that read one
input (q, k and v), and elsewhere computes the layer, then the hook's terms.

A forward with the hooks can be recorded as a CUDA graph (engine/graphs.py): every tensor the
hooks read is copied into a buffer kept from call to call (`_held`), the factors are built inside
the forward from those, and `state()` names what a recording bakes in (the sign of ε, whether the
batch is doubled), so that a graph is replayed only where the same Python would have run.

The matrices' A_acc are views of one fp32 buffer, and a query's A comes as one tensor, the
matrices' factors end to end in the same order (`order`): building the factors, holding a
direction and accumulating an update are then a few launches and no Python per matrix, which
on a GPU the host would otherwise spend between a step's losses and its next forward while the
GPU waits (OPT-1.3B has 146 matrices).
"""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from zoft.engine import lowrank_linear

_generations = itertools.count(1)  # 0: a forward without hooks


class Unsupported(ValueError):
    """A trained tensor is used by a module the functional path cannot hook."""


def is_plain_embedding(module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding) and type(module).forward is nn.Embedding.forward


def _siblings(model: nn.Module, index_of: dict[int, list[int]], hooked: set[int]) -> list[list[int]]:
    """Every hooked matrix once, in groups whose x B one product takes: the nn.Linear children of
    one module with one input width, dtype and device (q, k, v and out_proj of an attention;
    a LLaMA MLP's gate and up), whose bases then share a buffer; every other matrix alone. A
    group is a guess that its members read one input; `_projected` checks it at each call."""
    groups: list[list[int]] = []
    grouped: set[int] = set()
    for parent in model.modules():
        by_input: dict[tuple, list[int]] = {}
        for child in parent.children():
            if isinstance(child, nn.Linear) and id(child) in index_of:
                index = index_of[id(child)][0]
                if index not in grouped:
                    by_input.setdefault((child.in_features, child.weight.dtype, child.weight.device), []).append(index)
                    grouped.add(index)
        groups.extend(by_input.values())
    return groups + [[index] for index in sorted(hooked - grouped)]


class FunctionalPath:
    """Hooks adding factor-space terms to the outputs of the modules using trained matrices."""

    def __init__(self, model: nn.Module, params: list[tuple[str, torch.Tensor]], matrices: set[int]):
        """`matrices`: indices of the trained matrices taking low-rank directions. Those used only as
        an nn.Linear weight or a plain nn.Embedding table are `hooked`; every other trained tensor
        (vectors, matrices of other modules) stays in place and `owners` maps it to its modules."""
        by_id = {id(p): index for index, (_, p) in enumerate(params)}
        users: dict[int, list[nn.Module]] = {}
        self.owners: dict[int, list[tuple[nn.Module, str]]] = {}
        for module in model.modules():
            for attr, p in module.named_parameters(recurse=False):
                if id(p) in by_id:
                    users.setdefault(by_id[id(p)], []).append(module)
                    self.owners.setdefault(by_id[id(p)], []).append((module, attr))
        self.hooked = {
            index for index in matrices
            if users.get(index) and all(
                attr == "weight" and (isinstance(m, nn.Linear) or is_plain_embedding(m)) for m, attr in self.owners[index]
            )
        }
        if not self.hooked:
            raise Unsupported("no trained matrix is an nn.Linear weight or an nn.Embedding table")
        for index in self.hooked:
            del self.owners[index]
        self.params = params
        device = params[min(self.hooked)][1].device
        self.on_gpu = device.type == "cuda"
        self._signs = torch.tensor([1.0, -1.0], device=device).view(2, 1)  # of a doubled batch's halves
        self.order: list[int] = []  # the hooked matrices in the order of the flat buffers (`allocate`)
        self._offsets: dict[int, int] = {}  # where each matrix's factor starts in them
        self._runs: list[list[int]] = []  # `order` cut into runs of consecutive matrices of one rank
        self.acc_flat = torch.zeros(0)  # every A_acc end to end, fp32, updated in place
        self.acc: dict[int, torch.Tensor] = {}  # A_acc (m×r) of each matrix: a view of `acc_flat`
        self.live: set[int] = set()  # matrices whose A_acc may be non-zero (no GPU sync to ask)
        self.basis: dict[int, torch.Tensor] = {}  # B (n×r) of the accumulator and the direction
        self.frozen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # merged-out terms of a read-only W (`freeze`)
        self.direction: torch.Tensor | None = None  # the query's A of every matrix end to end (`order`), unscaled
        self.eps = 0.0  # ε of the direction
        self.rows: int | None = None  # over a doubled batch: the examples of each half, else None
        self.scale = 0.0  # s over a whole batch
        self.vectors: dict[int, torch.Tensor] = {}  # z of Linear biases over a doubled batch
        self.shifts: dict[int, object] = {}  # over a doubled batch: Z of in-place tensors of recomputing modules
        self.generation = next(_generations)  # changes when the hooks' Python would run differently
        self._held: dict[tuple, torch.Tensor] = {}  # buffers the hooks read, the same from call to call
        self._held_from: dict[tuple, tuple] = {}  # the last two tensors each buffer was checked against
        self._cache: dict[int, tuple | None] = {}  # the factors the hooks add, until a direction or term changes
        self._cache_recorded = False  # whether `_cache` was built while a CUDA graph was being recorded
        self._frozen_cache: dict[int, list] = {}  # merged-out terms in the activations' dtype, until they change
        self._index_of: dict[int, list[int]] = {}
        modules: dict[int, nn.Module] = {}
        for index in self.hooked:
            for module in users[index]:
                self._index_of.setdefault(id(module), []).append(index)
                modules[id(module)] = module
        self.handles = [self._attach(module) for module in modules.values()]
        self._siblings = _siblings(model, self._index_of, self.hooked)
        self._slots: dict[int, tuple[tuple, slice]] = {}  # matrix -> its group's key, its B's columns there (`allocate`)
        self._widths: dict[tuple, int] = {}  # a group's key -> columns of its bases, each widened
        self._groups_of_many: set[tuple] = set()  # the keys of groups of two or more
        self._shared: tuple | None = None  # (group's key, recording?, x, x B) of the last layer, for its siblings
        self._bias_index = {
            id(module.bias): index for index, owners in self.owners.items() for module, attr in owners
            if isinstance(module, nn.Linear) and attr == "bias"
        }
        self._owned: dict[int, dict[int, list[str]]] = {}  # module recomputing its second half -> index -> names there
        for index, owners in self.owners.items():
            for module, attr in owners:
                if not (isinstance(module, nn.Linear) and attr == "bias"):
                    if id(module) not in self._owned:
                        self.handles.append(module.register_forward_hook(self._recompute_hook))
                    self._owned.setdefault(id(module), {}).setdefault(index, []).append(attr)

    @functools.cached_property
    def bias_indices(self) -> list[int]:
        """The trained Linear biases, whose z the second half of a doubled batch subtracts."""
        return sorted(set(self._bias_index.values()))

    @functools.cached_property
    def recomputed(self) -> list[int]:
        """The in-place tensors of modules that recompute the second half of a doubled batch."""
        return sorted({index for owned in self._owned.values() for index in owned})

    @functools.cached_property
    def doubled_problem(self) -> str | None:
        """None when a doubled batch can carry ±ε; else why not (the modules never change)."""
        for index, owners in self.owners.items():
            for module, attr in owners:
                if not (isinstance(module, nn.Linear) and attr == "bias") and any(True for _ in module.children()):
                    return f"{self.params[index][0]} belongs to a {type(module).__name__} with submodules"
        return None

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self._shared = None

    # ---- what the method sets ------------------------------------------------------------
    def allocate(self, order: list[int], shapes: dict[int, tuple[int, int]]) -> None:
        """Zero accumulators A_acc of the hooked matrices, laid end to end in `order` (every hooked
        matrix once); a query's direction is given in the same order."""
        assert sorted(order) == sorted(self.hooked)
        self.order = order
        sizes = [shapes[i][0] * shapes[i][1] for i in order]
        self._offsets = dict(zip(order, itertools.accumulate(sizes, initial=0)))
        device = self.params[order[0]][1].device
        self.acc_flat = torch.zeros(sum(sizes), dtype=torch.float32, device=device)
        self.acc = dict(zip(order, split_like(self.acc_flat, [torch.empty(shapes[i], device="meta") for i in order])))
        self._runs = [list(run) for _, run in itertools.groupby(order, key=lambda i: shapes[i][1])]  # of one rank each
        for members in self._siblings:
            key, start = ("basis", members[0]), 0
            for index in members:
                width = lowrank_linear.pitch(shapes[index][1])
                self._slots[index] = (key, slice(start, start + width))
                start += width
            self._widths[key] = start
            if len(members) > 1:
                self._groups_of_many.add(key)
        self._cache.clear()

    def span(self, indices: list[int]) -> slice:
        """Where matrices `indices`, consecutive in `order`, lie in the flat buffers."""
        return slice(self._offsets[indices[0]], self._offsets[indices[-1]] + self.acc[indices[-1]].numel())

    def set_basis(self, index: int, basis: torch.Tensor) -> None:
        """B of matrix `index`, copied where the hooks read it: its columns of its group's buffer
        (`_siblings`), each B widened there with zero columns to a multiple of 8, so that one
        product gives x B of the whole group in rows of 16 bytes, what the linear kernel reads."""
        key, columns = self._slots[index]
        assert basis.shape[1] <= columns.stop - columns.start, "a basis wider than its slot"
        held = self._held.get(key)
        if held is None or (held.shape, held.dtype, held.device) != ((basis.shape[0], self._widths[key]), basis.dtype, basis.device):
            held = self._held[key] = basis.new_zeros(basis.shape[0], self._widths[key])
            self.generation = next(_generations)  # a buffer no recording has read
            for sibling, (other, _) in self._slots.items():
                if other == key:
                    self.basis.pop(sibling, None)  # views of the old buffer: set again
        self.basis[index] = held[:, columns.start:columns.start + basis.shape[1]]
        self.basis[index].copy_(basis)
        self._cache.clear()
        self._shared = None  # a product of the old B

    def set_direction(self, direction: torch.Tensor | None, eps: float = 0.0, scale: float = 0.0, rows=None, vectors=None, shifts=None) -> None:
        """The query's A of every hooked matrix, end to end in `order` (None: no direction), and its
        ε, applied with `scale` over the whole batch, or over a doubled batch of `rows` examples a
        half, +ε first, −ε second (the in-place tensors then being at +ε: `vectors` holds the
        biases' z, `shifts` the Z of the other in-place tensors, a dense z or a matrix's (A, Bᵀ),
        by which the second half's recomputation moves them)."""
        shifts = shifts or {}
        held = self._hold(
            ({} if direction is None else {("direction",): direction})
            | {("vector", i): z for i, z in (vectors or {}).items()}
            | {("shift", i, k): t for i, z in shifts.items() for k, t in enumerate(z if isinstance(z, tuple) else (z,))}
        )
        self.direction = None if direction is None else held[("direction",)]
        self.vectors = {i: held[("vector", i)] for i in vectors or {}}
        self.shifts = {
            i: tuple(held[("shift", i, k)] for k in range(len(z))) if isinstance(z, tuple) else held[("shift", i, 0)]
            for i, z in shifts.items()
        }
        self.eps, self.scale, self.rows = eps, scale, rows
        self._cache.clear()
        self._shared = None  # a new forward: its inputs are new tensors (or the same, changed)

    def clear_direction(self) -> None:
        self.set_direction(None)

    def changed(self) -> None:
        """A_acc changed: the hooks' factors are built again."""
        self._cache.clear()

    def freeze(self, index: int, a: torch.Tensor, b: torch.Tensor) -> None:
        """Keep the term A Bᵀ of a read-only matrix on the hooks for good."""
        self.set_frozen({**self.frozen, index: [*self.frozen.get(index, ()), (a, b)]})

    def set_frozen(self, frozen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        self.frozen = frozen
        self._frozen_cache.clear()
        self._cache.clear()
        self.generation = next(_generations)  # a recorded forward adds the old list of terms

    def state(self) -> tuple:
        """What a CUDA graph of a forward with these hooks bakes in besides the tensors' values."""
        return (self.generation, self.rows is not None, None if self.rows is not None else self.scale, self.eps)

    def _hold(self, given: dict[tuple, torch.Tensor]) -> dict[tuple, torch.Tensor]:
        """Each tensor copied into the buffer kept for its key (one multi-tensor copy), which a
        recorded forward reads; a buffer made anew (a first call) is one no recording has read.
        A tensor given for a key in one of the last two calls (the same object: a method's z come
        from two rooms it keeps, a step's and the next one's) fits its buffer without asking its
        shape again: asked of about 250 tensors a doubled forward, that took 0.5 ms while the GPU
        waited."""
        for key, tensor in given.items():
            last = self._held_from.get(key)
            if last is not None and (tensor is last[0] or tensor is last[1]):
                continue
            held = self._held.get(key)
            if held is None or (held.shape, held.stride(), held.dtype) != (tensor.shape, tensor.stride(), tensor.dtype):
                self._held[key] = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device=tensor.device)
                self.generation = next(_generations)
                last = None  # tensors checked against the old buffer
            self._held_from[key] = (tensor, tensor if last is None else last[0])
        out = {key: self._held[key] for key in given}
        if out:
            torch._foreach_copy_(list(out.values()), list(given.values()))
        return out

    # ---- hooks ---------------------------------------------------------------------------
    def _attach(self, module: nn.Module):
        """A plain nn.Linear gets `_linear_forward` as its forward; any other module a forward hook.
        Either way a handle whose `remove()` undoes it."""
        if type(module).forward is nn.Linear.forward and "forward" not in vars(module):
            module.forward = functools.partial(self._linear_forward, module)
            return _SwappedForward(module)
        return module.register_forward_hook(self._matrix_hook)

    def _linear_forward(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """The layer and its terms by engine/lowrank_linear.py where it can run: one GEMM that adds
        the term, the bias and a doubled batch's correction of it to its tile before writing the
        output, with no pass over the output after the layer. Elsewhere F.linear, then the hook's
        terms."""
        index = self._index_of[id(module)][0]
        factors = None
        if not self.frozen.get(index) and lowrank_linear.usable(x, module.weight):
            factors = self._factors(index, x.dtype)
        if factors is None:
            return self._matrix_hook(module, (x,), F.linear(x, module.weight, module.bias))
        key, columns = self._slots[index]
        xb, pair = self._projected(key, x)[:, columns], factors[1]
        if self.rows is None:
            return lowrank_linear.fused(x, module.weight, module.bias, xb, pair.unsqueeze(0))
        self._halves(x)
        return lowrank_linear.fused(
            x, module.weight, module.bias, xb, pair, half=x.numel() // x.shape[-1] // 2, shift=self._bias_z(module), shift_scale=-2 * self.eps
        )

    def _projected(self, key: tuple, x: torch.Tensor) -> torch.Tensor:
        """x times every basis of group `key`: one product, which reads x once for all of them. The
        product is kept with x until the next layer, so that a sibling called on the same tensor
        (q, k and v on one normalized input) takes its columns from it: x is compared by identity
        (no module changes its input in place between its siblings' calls), and a new basis or
        direction, or a CUDA graph's recording, takes a product of its own (`_factors`, called
        just before, has set `_cache_recorded` to whether one is being recorded)."""
        shared = self._shared
        if shared is not None and shared[:2] == (key, self._cache_recorded) and shared[2] is x:
            return shared[3]
        xb = lowrank_linear.project(x, self._held[key])
        self._shared = (key, self._cache_recorded, x, xb) if key in self._groups_of_many else None
        return xb

    def _bias_z(self, module: nn.Module) -> torch.Tensor | None:
        """Over a doubled batch, the z of a Linear's trained bias (at +εz for the whole batch, so
        the second half takes −2εz); None for any other module or bias."""
        if self.rows is None or not isinstance(module, nn.Linear) or module.bias is None:
            return None
        return self.vectors.get(self._bias_index.get(id(module.bias)))

    def _factors(self, index: int, dtype: torch.dtype):
        """(B, A) with the output's term (x B) Aᵀ: A = A_acc + s ε A_dir, summed in fp32 and rounded
        once to the activations' dtype; over a doubled batch A is (2, m, r), A₊ then A₋, so that one
        batched product adds both halves' terms. The first hook after a change builds every
        matrix's factors (a CUDA graph being recorded builds them again, so that its replays do)."""
        recording = self.on_gpu and torch.cuda.is_current_stream_capturing()
        if not self._cache or self._cache_recorded != recording:
            self._build(dtype)
            self._cache_recorded = recording
        factors = self._cache.get(index)
        if factors is not None and factors[1].dtype != dtype:  # a module computing in another dtype
            factors = (factors[0], factors[1].to(dtype))
        return factors

    def _build(self, dtype: torch.dtype) -> None:
        """Every matrix's factors at once, on the flat buffers: A_acc + s ε A (or the pair for a
        doubled batch) summed in fp32 and rounded by one launch a run of matrices of one rank
        (inside a recorded forward, a graph node each), each matrix's factor a view of the result.
        The result is laid out transposed, r × Σm (a half), so that each matrix's Aᵀ is a row-major
        r × m view, which the linear kernel reads by TMA without a copy; the factor handed on is
        its transpose (m × r, or 2 × m × r)."""
        self._cache = dict.fromkeys(self.hooked)  # None: nothing to add (a path of frozen terms only)
        for run in self._runs:
            span, rows, rank = self.span(run), sum(self.acc[i].shape[0] for i in run), self.acc[run[0]].shape[1]
            acc = self.acc_flat[span].view(rows, rank).T
            if self.direction is None:
                summed = acc.to(dtype).contiguous()
                summed = summed.expand(2, -1, -1) if self.rows is not None else summed
            elif self.rows is not None:  # (A_acc + εA, A_acc − εA): 2 × r × Σm
                summed = torch.empty((2, rank, rows), dtype=dtype, device=acc.device)
                torch.addcmul(acc, self._signs.view(2, 1, 1), self.direction[span].view(rows, rank).T.float(), value=self.eps, out=summed)
            else:  # A_acc + s ε A
                summed = torch.empty((rank, rows), dtype=dtype, device=acc.device)
                torch.add(acc, self.direction[span].view(rows, rank).T.float(), alpha=self.scale * self.eps, out=summed)
            starts = itertools.accumulate((self.acc[i].shape[0] for i in run), initial=0)
            self._cache.update(
                (index, (self.basis[index], summed[..., start:start + self.acc[index].shape[0]].transpose(-1, -2)))
                for index, start in zip(run, starts) if index in self.basis
            )

    def accumulate(self, flat: torch.Tensor, alpha: float = 1.0, indices: list[int] | None = None) -> None:
        """A_acc += alpha · A (16-bit A summed in fp32) by one launch, `flat` holding every matrix's
        A end to end in `order`, for the matrices `indices` (consecutive in `order`) or all."""
        indices = indices or self.order
        span = self.span(indices)
        self.acc_flat[span].add_(flat[span], alpha=alpha)
        self.live.update(indices)

    def _frozen_terms(self, index: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The merged-out terms of a read-only matrix in the activations' dtype, cast once."""
        if index not in self._frozen_cache:
            self._frozen_cache[index] = [(a.to(dtype), b.to(dtype)) for a, b in self.frozen.get(index, ())]
        return self._frozen_cache[index]

    def _halves(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The +ε and −ε halves of a doubled batch's tensor: batch-first, or (as OPT's MLP) tokens
        flattened batch-major."""
        if t.shape[0] % (2 * self.rows):
            raise RuntimeError(
                f"a doubled batch needs batch-first activations, got {tuple(t.shape)} for {2 * self.rows} rows; "
                "use method.paired_forward=never"
            )
        half = t.shape[0] // 2
        return t[:half], t[half:]

    def _matrix_hook(self, module, args, out):
        for index in self._index_of[id(module)]:
            for frozen_a, frozen_b in self._frozen_terms(index, out.dtype):
                self._add(module, args[0], out, frozen_b, frozen_a)
            factors = self._factors(index, out.dtype)
            if factors is None:
                continue
            if self.rows is None:
                self._add(module, args[0], out, *factors)
            elif isinstance(module, nn.Embedding):
                for ids, half, a in zip(self._halves(args[0]), self._halves(out), factors[1]):
                    self._add(module, ids, half, factors[0], a)
            else:  # both halves at once: out[h] += (x[h] B) A_hᵀ
                self._halves(out)  # (checks that they are batch-first)
                basis, pair = factors
                xb = (args[0] @ basis).view(2, -1, basis.shape[-1])
                out.view(2, -1, out.shape[-1]).baddbmm_(xb, pair.transpose(1, 2))
        z = self._bias_z(module)
        if z is not None:
            self._halves(out)[1].sub_(z.to(out.dtype), alpha=2 * self.eps)
        return out

    @staticmethod
    def _add(module, x, out, b, a) -> None:
        """out += the term (x B) Aᵀ (an embedding's: A[ids] Bᵀ), in place; no m×n tensor is formed."""
        if isinstance(module, nn.Embedding):
            out.add_(F.embedding(x, a) @ b.T)
        else:
            out.view(-1, out.shape[-1]).addmm_((x @ b).view(-1, b.shape[-1]), a.T)

    def _recompute_hook(self, module, args, out):
        """Over a doubled batch: the second half again, with this module's in-place tensors at −ε.
        They are swapped for shifted copies, not moved and moved back: a round trip would round
        them (a CUDA graph's warm-up would then change a run), and a copy of a bias, a norm or
        OPT's positions is small."""
        if self.rows is None or not self.shifts:
            return out
        half = out.shape[0] // 2
        held = module._parameters
        shifted = {attr: self._shifted(index, -2.0) for index, attrs in self._owned[id(module)].items() for attr in attrs}
        kept = {attr: held[attr] for attr in shifted}
        try:
            held.update(shifted)
            out[half:] = module.forward(*(a[half:] if torch.is_tensor(a) and a.shape[:1] == out.shape[:1] else a for a in args))
        finally:
            held.update(kept)
        return out

    def _shifted(self, index: int, scale: float) -> torch.Tensor:
        """In-place tensor `index` + scale·ε·Z, as a new tensor: a dense z, or a matrix's A Bᵀ."""
        p, z = self.params[index][1], self.shifts[index]
        if isinstance(z, tuple):
            return p.view(p.shape[0], -1).addmm(*z, alpha=scale * self.eps).view(p.shape)
        return p.add(z, alpha=scale * self.eps)


class _SwappedForward:
    """The handle of a module whose forward `_attach` replaced: `remove()` gives back its class's."""

    def __init__(self, module: nn.Module):
        self.module = module

    def remove(self) -> None:
        vars(self.module).pop("forward", None)


def concatenated(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors flattened end to end by one launch: ops on the result then replace a
    multi-tensor op over two dtypes, or a cast of each tensor, which take a launch per tensor.
    Tensors that already lie end to end in one buffer (a method's factors made together) give
    that part of it, a view, not a copy: read it, do not write it."""
    first, position = tensors[0], tensors[0].storage_offset()
    storage = first.untyped_storage().data_ptr()
    for t in tensors:
        if t.storage_offset() != position or t.dtype != first.dtype or not t.is_contiguous() or t.untyped_storage().data_ptr() != storage:
            return torch.cat([t.reshape(-1) for t in tensors])
        position += t.numel()
    return first.as_strided((position - first.storage_offset(),), (1,))


def split_like(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """`concatenated`'s inverse: views of `flat`'s last dimension shaped as the tensors of `like`,
    any leading dimensions of `flat` kept in front."""
    parts = flat.split([t.numel() for t in like], dim=-1)
    return [part.view(*flat.shape[:-1], *t.shape) for part, t in zip(parts, like)]


def attach_terms(model: nn.Module, params, terms: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> FunctionalPath:
    """Hooks adding fixed terms A Bᵀ to matrices that cannot hold them (a quantized base), for evaluation."""
    path = FunctionalPath(model, params, set(terms))
    path.set_frozen({index: [ab] for index, ab in terms.items()})
    return path
