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
        self.direction: dict[int, torch.Tensor] = {}  # A (m×r) of the query being evaluated, unscaled
        self.eps = 0.0  # ε of the direction
        self.rows: int | None = None  # over a doubled batch: the examples of each half, else None
        self.scale = 0.0  # s over a whole batch
        self.vectors: dict[int, torch.Tensor] = {}  # z of Linear biases over a doubled batch
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

    def set_direction(self, directions: dict[int, torch.Tensor], eps: float = 0.0, scale: float = 0.0, rows=None, vectors=None, move=None) -> None:
        """The query's A per hooked matrix and its ε, applied with `scale` over the whole batch, or
        over a doubled batch of `rows` examples a half, +ε first, −ε second (the in-place tensors
        then being at +ε: `vectors` holds the biases' z and `move` shifts any in-place tensor for
        the second half's recomputation)."""
        self.direction, self.eps, self.scale, self.rows = directions, eps, scale, rows
        self.vectors, self.move = vectors or {}, move
        self._cache.clear()

    def clear_direction(self) -> None:
        self.set_direction({})

    def changed(self) -> None:
        """A_acc, B or the frozen terms changed: the hooks' factors are built again."""
        self._cache.clear()
        self._frozen_cache.clear()

    # ---- hooks ---------------------------------------------------------------------------
    def _factors(self, index: int, dtype: torch.dtype):
        """(B, A) with the output's term (x B) Aᵀ, or over a doubled batch (B, A₊, A₋) for its two
        halves: A = A_acc + s ε A_dir, summed in fp32 and rounded once to the activations' dtype.
        The first hook after a change builds every matrix's factors with multi-tensor operations
        (a few kernels when A_dir is fp32 like A_acc; one per matrix when it is in a 16-bit dtype)."""
        if not self._cache:
            self._build(dtype)
        factors = self._cache.get(index)
        if factors is not None and factors[1].dtype != dtype:  # a module computing in another dtype
            factors = (factors[0], *(a.to(dtype) for a in factors[1:]))
        return factors

    def _build(self, dtype: torch.dtype) -> None:
        self._cache = dict.fromkeys(self.hooked)  # None: nothing to add
        with_direction = [i for i in self.hooked if i in self.direction and i in self.basis]
        alone = [i for i in self.hooked if i not in self.direction and i in self.live and i in self.basis]
        signs = [+1.0, -1.0] if self.rows is not None else [self.scale]
        sums = [
            torch._foreach_add([self.acc[i] for i in with_direction], [self.direction[i] for i in with_direction], alpha=s * self.eps)
            for s in signs
        ] if with_direction else []
        for k, index in enumerate(with_direction):
            self._cache[index] = (self.basis[index], *(terms[k].to(dtype) for terms in sums))
        for index in alone:
            acc = self.acc[index].to(dtype)
            self._cache[index] = (self.basis[index], *([acc] * len(signs)))

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
            if len(factors) == 2:
                self._add(module, args[0], out, *factors)
            else:
                basis, plus, minus = factors
                for x, half, a in zip(self._halves(args[0]), self._halves(out), (plus, minus)):
                    self._add(module, x, half, basis, a)
        if self.rows is not None and isinstance(module, nn.Linear) and module.bias is not None:
            index = self._bias_index.get(id(module.bias))
            if index in self.vectors:  # the bias is at +εz for the whole batch: the second half wants −εz
                self._halves(out)[1].sub_(self.vectors[index].to(out.dtype), alpha=2 * self.eps)
        return out

    @staticmethod
    def _add(module, x, out, b, a) -> None:
        """out += the term (x B) Aᵀ (an embedding's: A[ids] Bᵀ), in place; no m×n tensor is formed."""
        if isinstance(module, nn.Embedding):
            out.add_(F.embedding(x, a) @ b.T)
        else:
            out.view(-1, out.shape[-1]).addmm_((x @ b).view(-1, b.shape[-1]), a.T)

    def _recompute_hook(self, module, args, out):
        """Over a doubled batch: the second half again, with this module's in-place tensors at −ε."""
        if self.rows is None or self.move is None:
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
