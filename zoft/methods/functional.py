"""The functional perturbation path of SPEC.md: trained matrices are not written during a step.

A forward hook on every module that uses a trained matrix W (an nn.Linear's weight or a plain
nn.Embedding's table, tied ones included) adds the low-rank terms of

    W_eff = W + A_acc Bᵀ + s·ε·A Bᵀ

to the module's output: (x B)(A_acc + s ε A)ᵀ for a linear layer, (A_acc + s ε A)[ids] Bᵀ for an
embedding. A_acc is the update accumulated in factor space since the last merge, A Bᵀ the current
direction, s = ±1 for the whole batch, or per row of a doubled batch (+ε first half, −ε second).

Every other trained tensor (biases, norm weights, matrices of other modules such as OPT's learned
positions) is perturbed in place as usual; over a doubled batch a Linear's bias is corrected on
the second half (−2εz), and any other module owning one recomputes its second half with the
tensor at −ε. Nothing here knows which method made A and B.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


class Unsupported(ValueError):
    """A trained tensor is used by a module the functional path cannot hook."""


def is_plain_embedding(module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding) and type(module).forward is nn.Embedding.forward


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
        self.acc: dict[int, torch.Tensor] = {}  # A_acc (m×r), fp32
        self.live: set[int] = set()  # matrices whose A_acc may be non-zero (no GPU sync to ask)
        self.basis: dict[int, torch.Tensor] = {}  # B (n×r) of the accumulator and the direction
        self.frozen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # merged-out terms of a read-only W
        self.direction: dict[int, torch.Tensor] = {}  # ε·A (m×r) of the query being evaluated
        self.signs: torch.Tensor | None = None  # per batch row over a doubled batch, else None
        self.scale = 0.0  # s over a whole batch
        self.vectors: dict[int, torch.Tensor] = {}  # ε·z of Linear biases over a doubled batch
        self.move = None  # over a doubled batch: move(index, scale) shifts an in-place tensor by scale·ε·Z
        self._cache: dict[int, tuple | None] = {}  # the factors the hooks add, until a direction or term changes
        self._frozen_cache: dict[int, list] = {}  # merged-out terms in the activations' dtype, until they change
        self._index_of: dict[int, list[int]] = {}
        modules: dict[int, nn.Module] = {}
        for index in self.hooked:
            for module in users[index]:
                self._index_of.setdefault(id(module), []).append(index)
                modules[id(module)] = module
        self.handles = [module.register_forward_hook(self._matrix_hook) for module in modules.values()]
        self._bias_index = {
            id(module.bias): index for index, owners in self.owners.items() for module, attr in owners
            if isinstance(module, nn.Linear) and attr == "bias"
        }
        self._owned: dict[int, list[int]] = {}  # modules recomputing their second half
        for index, owners in self.owners.items():
            for module, attr in owners:
                if not (isinstance(module, nn.Linear) and attr == "bias"):
                    if id(module) not in self._owned:
                        self.handles.append(module.register_forward_hook(self._recompute_hook))
                    self._owned.setdefault(id(module), []).append(index)

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

    # ---- what the method sets ------------------------------------------------------------
    def set_basis(self, index: int, basis: torch.Tensor, acc: torch.Tensor) -> None:
        self.basis[index], self.acc[index] = basis, acc

    def set_direction(self, directions: dict[int, torch.Tensor], scale: float = 0.0, signs=None, vectors=None, move=None) -> None:
        """The query's ε·A per hooked matrix, applied with `scale` (uniform) or `signs` (per row of
        a doubled batch, the in-place tensors then being at +ε: `vectors` holds the biases' ε·z and
        `move` shifts any in-place tensor for the second half's recomputation)."""
        self.direction, self.scale, self.signs, self.vectors, self.move = directions, scale, signs, vectors or {}, move
        self._cache.clear()

    def clear_direction(self) -> None:
        self.set_direction({})

    def changed(self) -> None:
        """A_acc, B or the frozen terms changed: the hooks' factors are built again."""
        self._cache.clear()
        self._frozen_cache.clear()

    # ---- hooks ---------------------------------------------------------------------------
    def _factors(self, index: int, dtype: torch.dtype):
        """(A, B, doubled) with the output's term (x B) Aᵀ; when `doubled`, A = [A_acc, εA] and
        B = [B, B], and the second r columns of x B are scaled by the row signs."""
        if index not in self._cache:
            acc, direction, basis = self.acc.get(index), self.direction.get(index), self.basis.get(index)
            if basis is None or (direction is None and index not in self.live):
                factors = None
            elif direction is None:
                factors = (acc.to(dtype), basis, False)
            elif self.signs is None:
                factors = ((acc + self.scale * direction).to(dtype), basis, False)
            else:
                factors = (torch.cat([acc, direction], 1).to(dtype), torch.cat([basis, basis], 1), True)
            self._cache[index] = factors
        return self._cache[index]

    def _frozen_terms(self, index: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The merged-out terms of a read-only matrix in the activations' dtype, cast once."""
        if index not in self._frozen_cache:
            self._frozen_cache[index] = [(a.to(dtype), b.to(dtype)) for a, b in self.frozen.get(index, ())]
        return self._frozen_cache[index]

    def _row_signs(self, h: torch.Tensor) -> torch.Tensor:
        """The signs broadcast over h: batch-first, or (as OPT's MLP) tokens flattened batch-major."""
        rows = self.signs.shape[0]
        if h.shape[0] % rows:
            raise RuntimeError(
                f"a doubled batch needs batch-first activations, got {tuple(h.shape)} for {rows} rows; "
                "use method.paired_forward=never"
            )
        return self.signs.to(h.dtype).repeat_interleave(h.shape[0] // rows).view(-1, *([1] * (h.ndim - 1)))

    def _matrix_hook(self, module, args, out):
        for index in self._index_of[id(module)]:
            for frozen_a, frozen_b in self._frozen_terms(index, out.dtype):
                self._add(module, args[0], out, frozen_a, frozen_b, False)
            factors = self._factors(index, out.dtype)
            if factors is not None:
                self._add(module, args[0], out, *factors)
        if self.signs is not None and isinstance(module, nn.Linear) and module.bias is not None:
            index = self._bias_index.get(id(module.bias))
            if index in self.vectors:  # the bias is at +εz for the whole batch: the second half wants −εz
                out[out.shape[0] // 2 :] -= 2 * self.vectors[index].to(out.dtype)
        return out

    def _add(self, module, x, out, a, b, doubled: bool) -> None:
        """out += the term of (A, B), in place; no m×n tensor is formed."""
        if isinstance(module, nn.Embedding):
            h = F.embedding(x, a)  # A's rows for the ids: (..., r)
        else:
            h = x @ b
        if doubled:
            r = h.shape[-1] // 2
            h = torch.cat([h[..., :r], h[..., r:] * self._row_signs(h)], -1)
        if isinstance(module, nn.Embedding):
            out.add_(h @ b.T)
        else:
            out.view(-1, out.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), a.T)

    def _recompute_hook(self, module, args, out):
        """Over a doubled batch: the second half again, with this module's in-place tensors at −ε."""
        if self.signs is None or self.move is None:
            return out
        owned = self._owned[id(module)]
        half = out.shape[0] // 2
        for index in owned:
            self.move(index, -2.0)
        try:
            out[half:] = module.forward(*(a[half:] if torch.is_tensor(a) and a.shape[:1] == out.shape[:1] else a for a in args))
        finally:
            for index in owned:
                self.move(index, +2.0)
        return out


def attach_terms(model: nn.Module, params, terms: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> FunctionalPath:
    """Hooks adding fixed terms A Bᵀ to matrices that cannot hold them (a quantized base), for evaluation."""
    path = FunctionalPath(model, params, set(terms))
    path.frozen = {index: [ab] for index, ab in terms.items()}
    return path
