"""AdaZeta's tensor-train adapters (`params.mode: tt_adapter`), in plain torch.

A bottleneck adapter h + up(relu(down(h))) follows each layer's attention output and MLP output;
`down` (hidden → adapter_dim) and `up` (back) exist only as tensor-train cores, so a ZO method
perturbs a few thousand numbers per layer instead of millions. Both sides of a matrix are split
into at most three balanced modes (`tt_modes`), which fits any hidden size, where AdaZeta's code
hard-codes 4096 = 16·16·16. The adapters hook onto the frozen base's projections: the base
keeps its own module names and weights, and only the adapters (and a classification head, which
is new and so trains with them) are saved.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from zoft.errors import ZoftError
from zoft.models.params import is_classifier

ATTENTION_OUT = ("o_proj", "out_proj", "attention.output.dense")  # LLaMA-style, OPT, BERT (paths within a layer)
MLP_OUT = ("down_proj", "fc2", "output.dense")
HEAD = ("classifier", "score")  # the head of a sequence-classification model: new, so trained with the adapters
WEIGHTS_FILE = "tt_adapter.safetensors"
CONFIG_FILE = "tt_adapter_config.json"


def tt_modes(n: int, parts: int = 3) -> list[int]:
    """`n` as a product of at most `parts` factors (AdaZeta: 3) of the smallest sum, ascending: 4096 →
    16·16·16, 576 → 8·8·9, 64 → 4·4·4, a prime p → p. A core holds mode × rank² numbers, so the sum
    of the modes is what the TT costs."""
    best = [n]
    if parts == 1:
        return best
    for factor in range(2, math.isqrt(n) + 1):
        if n % factor == 0:
            rest = tt_modes(n // factor, parts - 1)
            if factor + sum(rest) < sum(best):
                best = sorted([factor, *rest])
    return best


def tt_ranks(modes: list[int], rank: int) -> list[int]:
    """Bond ranks of a TT over `modes`: `rank`, capped by what either side can hold (1 at the ends),
    so no core carries directions that cannot matter."""
    return [1] + [min(rank, math.prod(modes[:k]), math.prod(modes[k:])) for k in range(1, len(modes))] + [1]


def _chain(cores) -> torch.Tensor:
    """Contract consecutive cores [r0, m0, r1], [r1, m1, r2], ... into one [r0·m0·m1·…, r_last] block."""
    block = cores[0].reshape(-1, cores[0].shape[-1])
    for core in cores[1:]:
        block = (block @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
    return block


class TTMatrix(nn.Module):
    """An in × out matrix W (applied as x @ W) held as TT cores over the modes of `in`, then of `out`."""

    def __init__(self, in_features: int, out_features: int, rank: int, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.in_modes, self.out_modes = tt_modes(in_features), tt_modes(out_features)
        modes = self.in_modes + self.out_modes
        ranks = tt_ranks(modes, rank)
        self.cores = nn.ParameterList(
            nn.Parameter(torch.empty(ranks[k], m, ranks[k + 1], device=device)) for k, m in enumerate(modes)
        )

    def blocks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """AdaZeta's fast-forward: the input-side cores contracted into A [in, r], the output-side ones
        into B [r, out]; W = A·B is never formed."""
        split = len(self.in_modes)
        inner = self.cores[split].shape[0]
        return _chain(self.cores[:split]), _chain(self.cores[split:]).reshape(inner, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.blocks()
        return (x @ a) @ b

    @torch.no_grad()
    def factorize(self, weight: torch.Tensor) -> None:
        """Set the cores to the TT-SVD of `weight` [in, out] at this TT's ranks: exact when the ranks
        are full, else the truncation; every core but the last is left-orthonormal."""
        rest, rows = weight.reshape(1, -1), 1
        for core in self.cores[:-1]:
            u, s, vh = torch.linalg.svd(rest.reshape(rows * core.shape[1], -1), full_matrices=False)
            rows = core.shape[2]
            core.copy_(u[:, :rows].reshape(core.shape))
            rest = s[:rows, None] * vh[:rows]
        self.cores[-1].copy_(rest.reshape(self.cores[-1].shape))


class TTAdapter(nn.Module):
    """h + up(relu(down(h))) in fp32 whatever the base's dtype (as peft's adapters)."""

    def __init__(self, hidden: int, adapter_dim: int, rank: int, device=None):
        super().__init__()
        self.down = TTMatrix(hidden, adapter_dim, rank, device)
        self.up = TTMatrix(adapter_dim, hidden, rank, device)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h.float()
        return (x + self.up(torch.relu(self.down(x)))).to(h.dtype)

    @torch.no_grad()
    def initialise(self, generator: torch.Generator) -> None:
        """`down`: the TT-SVD of nn.Linear's default init, rescaled to its norm (the left cores being
        orthonormal, the TT's norm is its last core's). `up`: the same with its last core zeroed, so
        the adapter starts as the identity and a perturbation z of that core moves W_up by exactly |z|."""
        for matrix in (self.down, self.up):
            bound = 1 / math.sqrt(matrix.in_features)
            weight = (torch.rand(matrix.in_features, matrix.out_features, generator=generator) * 2 - 1) * bound
            matrix.factorize(weight.to(matrix.cores[0].device))
            matrix.cores[-1].mul_(weight.norm() / matrix.cores[-1].norm())
        self.up.cores[-1].zero_()


def adapter_sites(model) -> list[tuple[nn.Linear, nn.Linear]]:
    """(attention output, MLP output) projections of each transformer layer, else ZoftError."""
    layers = next(
        (m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == model.config.num_hidden_layers), None
    )
    sites = []
    for layer in layers if layers is not None else []:
        linears = [(n, m) for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
        attn = [m for n, m in linears if n in ATTENTION_OUT or n.rsplit(".", 1)[-1] in ATTENTION_OUT]
        mlp = [m for n, m in linears if n in MLP_OUT or n.rsplit(".", 1)[-1] in MLP_OUT]
        if len(attn) != 1 or len(mlp) != 1:
            break
        sites.append((attn[0], mlp[0]))
    if layers is None or len(sites) != len(layers):
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ZoftError(
            f"params.mode: tt_adapter needs layers with one attention output ({', '.join(ATTENTION_OUT)}) "
            f"and one MLP output ({', '.join(MLP_OUT)}) projection; {type(model).__name__} has linear modules "
            f"{', '.join(names)}"
        )
    return sites


class TTAdapterModel(nn.Module):
    """The frozen base with a TTAdapter hooked after each layer's attention and MLP outputs.

    It behaves as the base (forward, generate, config: attributes it lacks come from the base, as
    a PeftModel's do); `save_pretrained` writes only the adapters and their settings, which
    `load_tt_adapter` puts back on a base model. `seed` None leaves the cores uninitialised (to be
    loaded); on the meta device (memory estimates) they are shapes only.
    """

    def __init__(self, base, adapter_dim: int, tt_rank: int, seed: int | None = None):
        super().__init__()
        self.base_model = base.requires_grad_(False)
        self.settings = {"adapter_dim": adapter_dim, "tt_rank": tt_rank}
        self.head = [(n, p.requires_grad_(True)) for n, p in base.named_parameters()
                     if is_classifier(base) and n.split(".", 1)[0] in HEAD]
        device = next(base.parameters()).device
        sites = adapter_sites(base)
        self.adapters = nn.ModuleList(
            nn.ModuleDict({kind: TTAdapter(proj.out_features, adapter_dim, tt_rank, device) for kind, proj in zip(("attn", "mlp"), pair)})
            for pair in sites
        )
        for pair, adapters in zip(sites, self.adapters):
            for proj, adapter in zip(pair, adapters.values()):
                proj.register_forward_hook(lambda module, args, output, adapter=adapter: adapter(output))
        if seed is not None and device.type != "meta":
            generator = torch.Generator().manual_seed(seed)
            for adapters in self.adapters:
                for adapter in adapters.values():
                    adapter.initialise(generator)
        self.train(base.training)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def save_pretrained(self, folder) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {**dict(self.adapters.named_parameters(prefix="adapters")), **{f"head.{n}": p for n, p in self.head}}
        save_file({n: p.detach().contiguous().cpu() for n, p in tensors.items()}, folder / WEIGHTS_FILE)
        settings = {"mode": "tt_adapter", **self.settings, "base_model": self.base_model.config._name_or_path}
        (folder / CONFIG_FILE).write_text(json.dumps(settings, indent=1) + "\n")


def load_tt_adapter(base, folder) -> TTAdapterModel:
    """`base` (the run's base model, frozen) with the TT adapters that `save_pretrained` wrote to `folder`."""
    folder = Path(folder)
    settings = json.loads((folder / CONFIG_FILE).read_text())
    model = TTAdapterModel(base, settings["adapter_dim"], settings["tt_rank"])
    tensors = load_file(folder / WEIGHTS_FILE)
    model.adapters.load_state_dict({n.removeprefix("adapters."): t for n, t in tensors.items() if n.startswith("adapters.")})
    head = {n.removeprefix("head."): t for n, t in tensors.items() if n.startswith("head.")}
    if unexpected := base.load_state_dict(head, strict=False).unexpected_keys:
        raise ZoftError(f"{folder / WEIGHTS_FILE}: head tensors {unexpected[:3]} are not in {type(base).__name__}")
    return model.requires_grad_(False)
