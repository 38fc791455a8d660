"""`zoft analyze-rank`: follow T training steps and record how low-rank each chosen layer's true
gradient is, per step and across steps, without holding T full gradients."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch

from zoft.analysis.rank import TemporalSketch, normalized_spectrum, subspace_overlap, threshold_rank, top_subspace
from zoft.config.schema import Recipe
from zoft.engine.trainer import Batcher, build_session
from zoft.errors import ZoftError

EXCLUDED = ("*embed*", "*lm_head*", "*wte*", "*wpe*")  # default layer choice leaves these out


@dataclass
class LayerStudy:
    name: str
    shape: tuple[int, int]
    spectra: list[list[float]] = field(default_factory=list)  # per step: top-k σ/σ1
    ranks: list[int] = field(default_factory=list)  # per step: σ ≥ threshold·σ1
    temporal: list[float] = field(default_factory=list)  # σ/σ1 of the (sketched) d×T matrix
    overlap_steps: list[int] = field(default_factory=list)
    overlap: list[list[float]] = field(default_factory=list)  # top-r subspace overlap between those steps

    def suggested_rank(self, cap: int) -> int:
        """The median of the per-step threshold ranks, at least 1 and at most `cap`."""
        ordered = sorted(self.ranks)
        return max(1, min(cap, ordered[len(ordered) // 2]))


def choose_layers(model, patterns: str | None) -> list[tuple[str, torch.Tensor]]:
    """2-D weights matching any comma-separated glob (default: all but embeddings and the head)."""
    globs = [p.strip() for p in patterns.split(",")] if patterns else ["*"]
    chosen = []
    for name, p in model.named_parameters():
        if p.ndim != 2 or not any(fnmatch.fnmatch(name, g) for g in globs):
            continue
        if patterns is None and any(fnmatch.fnmatch(name, e) for e in EXCLUDED):
            continue
        chosen.append((name, p))
    if not chosen:
        names = [n for n, p in model.named_parameters() if p.ndim == 2][:4]
        raise ZoftError(f"--layers: no 2-D weight matches {patterns!r} (names look like: {', '.join(names)})", title="bad option")
    return chosen


def study(recipe: Recipe, steps: int, layers: str | None, top_k: int, threshold: float, sketch: int,
          train: str, subspace_rank: int = 8, overlap_points: int = 12) -> list[LayerStudy]:
    """Gradients of the chosen layers by backpropagation restricted to them, at each of `steps`
    steps of training: first-order AdamW on those layers (`train="fo"`) or the recipe's method."""
    session = build_session(recipe, with_method=train == "recipe")
    chosen = choose_layers(session.model, layers)
    results = [LayerStudy(name, tuple(p.shape)) for name, p in chosen]
    sketches = [TemporalSketch(tuple(p.shape), sketch, recipe.run.seed + i, p.device) for i, (_, p) in enumerate(chosen)]
    overlap_at = sorted({round(i * (steps - 1) / max(1, overlap_points - 1)) for i in range(min(steps, overlap_points))})
    bases: list[list[torch.Tensor]] = [[] for _ in chosen]
    weights = [p for _, p in chosen]
    optimizer = torch.optim.AdamW(weights, lr=recipe.optim.lr, weight_decay=0.0) if train == "fo" else None
    batcher = Batcher(session.train, recipe.train.batch_size, recipe.run.seed)
    for step in range(steps):
        loss_fn = session.batch_loss(batcher.batch(step))
        for p in weights:
            p.requires_grad_(True)
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_fn(), weights)
        for i, g in enumerate(grads):
            full = normalized_spectrum(g, max(top_k, min(g.shape)))
            results[i].spectra.append([round(float(v), 6) for v in full[:top_k]])
            results[i].ranks.append(threshold_rank(full, threshold))
            sketches[i].add(g)
            if step in overlap_at:
                bases[i].append(top_subspace(g, min(subspace_rank, *g.shape)))
        if optimizer is not None:
            for p, g in zip(weights, grads):
                p.grad = g
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            for p in weights:
                p.requires_grad_(False)  # ZO updates weights in place
            session.method.step(loss_fn, step, recipe.optim.lr)
    for i, result in enumerate(results):
        result.temporal = [round(float(v), 6) for v in sketches[i].spectrum()]
        result.overlap_steps = overlap_at
        result.overlap = [[round(subspace_overlap(a, b), 4) for b in bases[i]] for a in bases[i]]
    return results
