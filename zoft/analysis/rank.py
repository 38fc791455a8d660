"""Low-rankness of gradients: spectra per step, a streaming sketch across steps, subspace overlap.

Across time, the d×T matrix of a layer's normalised flattened gradients is never held: each
gradient G (m×n) is compressed to A·G·B (p×p, A and B Gaussian with variance 1/p), which keeps
inner products in expectation, E⟨A X B, A Y B⟩ = ⟨X, Y⟩; the temporal spectrum is that of the
T×p² matrix of sketches. With p = 0 the exact flattened gradients are kept (small models, tests).
"""

from __future__ import annotations

import torch


def normalized_spectrum(grad: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest singular values of a 2-D gradient over the largest (zeros past its rank)."""
    sv = torch.linalg.svdvals(grad.float())
    out = torch.zeros(k, device=sv.device)
    n = min(k, sv.numel())
    out[:n] = sv[:n] / sv[0].clamp_min(torch.finfo(torch.float32).tiny)
    return out


def threshold_rank(normalized: torch.Tensor, threshold: float) -> int:
    """How many normalised singular values are at least `threshold` (of the largest)."""
    return int((normalized >= threshold).sum())


def top_subspace(grad: torch.Tensor, r: int) -> torch.Tensor:
    """Orthonormal basis (m×r) of the top-r left singular subspace."""
    u, _, _ = torch.linalg.svd(grad.float(), full_matrices=False)
    return u[:, :r]


def subspace_overlap(u1: torch.Tensor, u2: torch.Tensor) -> float:
    """‖U1ᵀU2‖²_F / r: 1 for the same subspace, r/m expected for random ones."""
    return float((u1.T @ u2).pow(2).sum() / u1.shape[1])


class TemporalSketch:
    """Streams a layer's normalised gradients; `spectrum()` is the normalised singular values of
    the T×d matrix they form (exact with p = 0, else of their p×p sketches)."""

    def __init__(self, shape: tuple[int, int], p: int, seed: int, device: torch.device):
        self.p = p
        self.rows: list[torch.Tensor] = []
        if p:
            gen = torch.Generator(device=device).manual_seed(seed)
            self.a = torch.randn(p, shape[0], generator=gen, device=device) / p**0.5
            self.b = torch.randn(shape[1], p, generator=gen, device=device) / p**0.5

    def add(self, grad: torch.Tensor) -> None:
        g = grad.float()
        g = g / g.norm().clamp_min(torch.finfo(torch.float32).tiny)
        self.rows.append((self.a @ g @ self.b).flatten().cpu() if self.p else g.flatten().cpu())

    def spectrum(self) -> torch.Tensor:
        sv = torch.linalg.svdvals(torch.stack(self.rows))
        return sv / sv[0]
