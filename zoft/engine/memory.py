"""Memory: the peak of this process, and an analytic estimate of a method's memory from shapes.

The estimate needs no GPU and no weights: it reads parameter shapes from a model built on the
meta device, so "will LLaMA-70B with tezo-adam fit on 80 GB?" is answered on a laptop.
"""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass

import torch

from zoft.engine.lowrank_linear import pitch

GIB = 2**30

# profile-memory's names for (method, optimizer) pairs
VARIANTS: dict[str, tuple[str, str]] = {
    "mezo": ("mezo", "sgd"),
    "mezo-m": ("mezo", "momentum"),
    "mezo-adam": ("mezo", "adam"),
    "lozo": ("lozo", "sgd"),
    "lozo-m": ("lozo", "momentum"),
    "subzo": ("subzo", "sgd"),
    "tezo": ("tezo", "sgd"),
    "tezo-m": ("tezo", "momentum"),
    "tezo-adam": ("tezo", "adam"),
    "adazeta": ("adazeta", "sgd"),
    "fo": ("fo", "adam"),
    "fo-sgd": ("fo", "sgd"),
}


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class Peaks:
    """The process's peak kept apart for training and for evaluation (on a GPU): an evaluation's
    batches (SQuAD's generation, say) can need more than a training step, and the same for every
    method, so a step's `mem_gib` leaves them out and each evaluation reports its own."""

    def __init__(self, device: torch.device):
        self.device = device
        self.overall = 0.0

    def now(self) -> float:
        """The peak since the last `restart` (on a CPU: of the whole process, which cannot be reset)."""
        return peak_memory_gib(self.device)

    def restart(self) -> float:
        """Start a new window; returns the run's peak so far, every window included."""
        self.overall = max(self.overall, self.now())
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self.overall


@dataclass
class Split:
    """Bytes of each part of a step's peak: persistent weights and states, then what comes and goes."""

    weights: float
    method_state: float  # direction bases kept for their period (LOZO's V; SubZO's P, Q; TeZO's U, V)
    optimizer_state: float  # moments (and, first-order, gradients at the peak)
    activations: float  # activations and transient buffers at the peak (directions drawn, temporaries)

    @property
    def peak(self) -> float:
        return self.weights + self.method_state + self.optimizer_state + self.activations

    def gib(self) -> dict:
        return {k: v / GIB for k, v in {**asdict(self), "peak": self.peak}.items()}


@dataclass(frozen=True)
class Shape:
    """What the estimate needs to know of a model and a batch."""

    params: tuple[tuple[tuple[int, ...], int], ...]  # (shape, bytes per element) of each trained tensor
    hidden: int
    ffn: int
    layers: int
    vocab: int
    gated_mlp: bool  # LLaMA-style gate and up projections
    act_bytes: int
    tokens: int  # batch × sequence
    frozen: float = 0.0  # bytes of the weights that are not trained (the base model under LoRA)
    packed: frozenset[int] = frozenset()  # trained tensors stored quantized (by index in `params`)


# bytes per weight of a quantized linear layer: nf4 packs two per byte plus an fp32 absmax per
# 64-element block; int8 is one byte plus an fp32 scale per row (negligible)
QUANTIZED_BYTES = {"nf4": 0.5 + 4 / 64, "int8": 1.0}


def shape_of(model, batch: int, seq: int, trained=None, quantization: str = "none") -> Shape:
    """Read a Shape from a (meta, or real) model, the tensors it trains (default: all) and the batch;
    with `quantization`, the linear layers that bitsandbytes would store (all but the head) count
    at their packed size."""
    c = model.config
    ffn = getattr(c, "intermediate_size", None) or getattr(c, "ffn_dim", None) or 4 * c.hidden_size
    trained = [p for _, p in trained] if trained is not None else list(model.parameters())
    ids = {id(p) for p in trained}
    packed = set()
    if quantization != "none":
        from zoft.models.quantize import quantizable_linears

        packed = {id(layer.weight) for _, _, layer in quantizable_linears(model)}
    size = lambda p: QUANTIZED_BYTES[quantization] if id(p) in packed else p.element_size()  # noqa: E731
    params = tuple((tuple(p.shape), size(p)) for p in trained)
    frozen = float(sum(p.numel() * size(p) for p in model.parameters() if id(p) not in ids))
    dtype = next(model.parameters()).dtype
    return Shape(params, c.hidden_size, ffn, c.num_hidden_layers, c.vocab_size, hasattr(c, "intermediate_size"),
                 torch.finfo(dtype).bits // 8, batch * seq, frozen, frozenset(i for i, p in enumerate(trained) if id(p) in packed))


def forward_activations(s: Shape) -> float:
    """Peak bytes live inside one inference forward (no KV cache): at the MLP, per token, the
    residual and its normed copy (2h) with two tensors of width ffn (OPT: fc1 and its ReLU), or
    three for gated MLPs (SiLU(gate), up, and their product)."""
    per_token = (3 * s.ffn) if s.gated_mlp else (2 * s.hidden + 2 * s.ffn)
    return s.tokens * per_token * s.act_bytes


def stored_activations(s: Shape) -> float:
    """Bytes autograd keeps for the backward pass, per layer and token: 5h + 2·ffn for OPT
    (projection and norm inputs, fc1's output and its ReLU); 12h + 5·ffn for LLaMA (also q and k
    before and after the rotary embedding, RMSNorm's fp32 upcast, the gate, up, SiLU and product).
    These counts were checked against H100 measurements of OPT-1.3B and LLaMA-7B (docs/benchmarks.md)."""
    per_token = (12 * s.hidden + 5 * s.ffn) if s.gated_mlp else (5 * s.hidden + 2 * s.ffn)
    return s.layers * s.tokens * per_token * s.act_bytes


def forward_estimate(s: Shape) -> Split:
    """The floor: weights and one inference forward."""
    return Split(s.frozen + sum(int(torch.Size(shape).numel()) * b for shape, b in s.params), 0.0, 0.0, forward_activations(s))


def estimate(s: Shape, method: str, optimizer: str, rank: int = 2, functional: bool = False) -> Split:
    """The memory split of one step of `method` with `optimizer`, from shapes alone (SPEC.md's state);
    `functional`: a low-rank method on the functional path (engine.md), which also keeps the
    update accumulated in factor space (m×r, fp32) and copies of what its hooks read."""
    matrices = [(shape, b) for shape, b in s.params if len(shape) >= 2]
    # a direction is drawn in its tensor's dtype, or the compute dtype for a packed (quantized) one
    drawn_bytes = [s.act_bytes if i in s.packed else b for i, (shape, b) in enumerate(s.params) if len(shape) >= 2]
    vectors = [(shape, b) for shape, b in s.params if len(shape) < 2]
    numel = lambda shape: int(torch.Size(shape).numel())  # noqa: E731
    trained = float(sum(numel(shape) * b for shape, b in s.params))
    weights = s.frozen + trained
    largest = max(numel(shape) * b for shape, b in s.params)
    moments = {"sgd": 0, "momentum": 1, "adam": 2}[optimizer]
    dense_moments = moments * sum(numel(shape) * b for shape, b in (s.params if method in ("mezo", "adazeta", "fo") else vectors))
    method_state = optimizer_state = 0.0
    r = lambda shape: min(rank, shape[0], numel(shape) // shape[0])  # noqa: E731
    if method in ("mezo", "adazeta"):
        optimizer_state = dense_moments
        transient = largest * (1 + moments)  # z, plus the estimate and Adam's denominator
    elif method == "fo":  # moments and gradients; activations stored for backward are freed as
        optimizer_state = dense_moments + trained  # gradients fill in, so only the excess counts
        transient = max(stored_activations(s) - trained, 0.0)
    else:
        transient = 0.0  # rank-r factors only: no m×n tensor is built
        cols = lambda shape: numel(shape) // shape[0]  # noqa: E731
        kept = {"lozo": cols, "tezo": lambda shape: shape[0] + cols(shape), "subzo": lambda shape: shape[0] + cols(shape)}[method]
        # each matrix's basis for its period (LOZO's V; TeZO's U, V; SubZO's orthonormal P, Q)
        method_state = sum(kept(shape) * r(shape) * b for (shape, _), b in zip(matrices, drawn_bytes))
        if method == "lozo" and optimizer == "momentum":  # N, m·r per layer
            optimizer_state = sum(shape[0] * r(shape) * b for shape, b in matrices)
        if method == "tezo":  # r (momentum) or 2r (adam) fp32 numbers per layer
            optimizer_state = moments * 4 * sum(r(shape) for shape, _ in matrices)
        optimizer_state += dense_moments  # 1-D tensors: dense moments
        if functional:  # and the update accumulated in factor space, m·r fp32 per matrix, and the
            # buffers its hooks (and CUDA graphs of them) read: the query's A and B per matrix (B
            # widened to a multiple of 8 columns, what the linear kernel reads), and over a doubled
            # batch the z of the tensors moved in place (taken to be the 1-D ones)
            method_state += sum(shape[0] * r(shape) * 4 for shape, _ in matrices)
            method_state += sum((shape[0] * r(shape) + cols(shape) * pitch(r(shape))) * b for (shape, _), b in zip(matrices, drawn_bytes))
            method_state += sum(numel(shape) * b for shape, b in vectors)
    activations = max(forward_activations(s), transient)
    return Split(weights, method_state, optimizer_state, activations)


def meta_model(model_cfg):
    """The model of `model.config` (a shape or config file) on the meta device: shapes, no memory."""
    from transformers import AutoModelForCausalLM

    from zoft.models.loading import DTYPES
    from zoft.models.shapes import model_config

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config(model_cfg.config), dtype=DTYPES[model_cfg.dtype])
