"""`zoft profile-memory`: real steps of each method on the recipe's model and batch shape,
their peak memory split and step time, beside the analytic estimate and the forward-only floor."""

from __future__ import annotations

import dataclasses
import gc
import time

import torch

from zoft.config.methods import METHOD_CONFIGS, load_rank_file
from zoft.config.schema import Recipe
from zoft.engine.graphs import LossGraphs, one_stream
from zoft.engine.memory import GIB, VARIANTS, Split, estimate, forward_estimate, meta_model, shape_of
from zoft.engine.objective import OBJECTIVES, BatchLoss, Encoded
from zoft.errors import ZoftError
from zoft.methods import METHODS
from zoft.methods.fo import FirstOrder
from zoft.engine.trainer import prepare_model
from zoft.models.loading import load_model
from zoft.models.params import trainable


def synthetic_batch(vocab: int, batch: int, seq: int, device: torch.device):
    """`batch` sequences of `seq` random tokens, the last one scored (as a one-token answer)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(vocab, 30000), (batch, seq), generator=gen).tolist()
    items = [Encoded(tuple(row[:-1]), ((row[-1],),), 0) for row in ids]
    objective = OBJECTIVES["choice"]
    return objective, objective.train_batch(items, 0).to(device)


def method_config(recipe: Recipe, name: str):
    """The recipe's method section when it is that method's, else that method's defaults."""
    return recipe.method if recipe.method.name == name else METHOD_CONFIGS.get(name, "--methods")()


def method_for(recipe: Recipe, variant: str, params, seed: int, model=None):
    name, optimizer = VARIANTS[variant]
    optim = dataclasses.replace(recipe.optim, name=optimizer, betas=None)
    return METHODS.get(name, "--methods")(
        params, method_config(recipe, name), optim, seed, steps_per_epoch=1000, max_steps=1000, model=model
    )


def estimates(recipe: Recipe, variants: list[str], batch: int, seq: int) -> dict[str, Split]:
    """The analytic split of each variant (and of the forward pass, as "forward"), no GPU needed."""
    model = meta_model(recipe.model) if recipe.model.config else _loaded_shape_model(recipe)
    model, trained = trainable(model, recipe.params, recipe.run.seed)
    shape = shape_of(model, batch, seq, trained, recipe.model.quantization)
    out = {"forward": forward_estimate(shape)}
    for variant in variants:
        name, optimizer = VARIANTS[variant]
        cfg = method_config(recipe, name)
        rank = getattr(cfg, "rank", 2)
        if isinstance(rank, str):  # a rank file: its default rank stands for every layer
            rank = load_rank_file(rank)["default"]
        # the path the measurement takes: auto starts on the functional path on a GPU (and stays
        # there here: only the trainer times the two), or over a quantized base
        functional = getattr(cfg, "path", "inplace") != "inplace"
        out[variant] = estimate(shape, name, optimizer, rank, functional)
    return out


def _loaded_shape_model(recipe: Recipe):
    model, _ = load_model(dataclasses.replace(recipe.model, device="cpu"), recipe.run.seed)
    return model


def measure(recipe: Recipe, variants: list[str], batch: int, seq: int, steps: int) -> dict[str, dict]:
    """Peak allocated / reserved memory, its split and the mean step time of each variant on CUDA,
    ZO forwards replayed from CUDA graphs unless `train.cuda_graphs` is false (as in training)."""
    if not torch.cuda.is_available():
        raise ZoftError("profile-memory measures on a CUDA GPU; none is visible (--estimate-only needs none)", title="no GPU")
    torch.cuda.empty_cache()
    model, _, params = prepare_model(recipe, recipe.run.seed)
    device = next(model.parameters()).device
    with one_stream(device):  # as training runs: recordings and eager work share a cuBLAS workspace
        weights = torch.cuda.memory_allocated(device)
        objective, data = synthetic_batch(model.config.vocab_size, batch, seq, device)
        loss_fn = BatchLoss(objective, model, data)
        results = {"forward": run_steps(lambda step: forward_passes(loss_fn), steps, device, weights, lambda: 0)}
        for variant in variants:
            build = lambda: method_for(recipe, variant, params, recipe.run.seed, model)  # noqa: E731
            results[variant] = measure_built(build, params, loss_fn, steps, device, weights, recipe.train.cuda_graphs is not False)
        return results


def measure_built(build, params, loss_fn, steps: int, device, weights: int, graphs: bool = False) -> dict:
    """`measure_method` of the method `build()` makes ({"oom": True} when it runs out of memory),
    then the model left as the next method expects it: no hooks, no gradients, the cache emptied."""
    method = None
    try:
        method = build()
        result = measure_method(method, loss_fn, steps, device, weights, graphs)
    except torch.OutOfMemoryError:
        result = {"oom": True}
    if method is not None:
        method.close()
    for _, p in params:
        p.requires_grad_(False)
        p.grad = None
    del method
    gc.collect()
    torch.cuda.empty_cache()
    return result


def measure_method(method, loss_fn, steps: int, device, weights: int, graphs: bool = False) -> dict:
    """With `graphs`, forwards replayed from CUDA graphs where the method allows it, as training
    does (`train.cuda_graphs`); the peak then counts the recording, where the graphs' memory is taken."""
    if graphs:
        loss_fn = graphed(loss_fn, method.forward_state)
    trained = sum(p.numel() * p.element_size() for _, p in method.params)
    grads = trained if isinstance(method, FirstOrder) else 0  # first-order: gradients at the peak

    def state_bytes() -> int:
        return grads + sum(t.numel() * t.element_size() for t in method.state_dict().values())

    def step(index: int) -> None:  # as in training between evaluations: each step may carry into the next
        method.step(loss_fn, index, 1e-9, carry=index < steps)

    return run_steps(step, steps, device, weights, state_bytes, grads, count_warm_up=loss_fn.graphs is not None)


def graphed(loss_fn: BatchLoss, state=tuple) -> BatchLoss:
    """`loss_fn` replayed from CUDA graphs kept per forward `state` (engine/graphs.py); itself
    where the state is None (a forward no graph may record)."""
    if state() is None:
        return loss_fn
    return BatchLoss(loss_fn.objective, loss_fn.model, loss_fn.batch, loss_fn.reduce, LossGraphs(loss_fn.objective, loss_fn.model, state))


def forward_passes(loss_fn, times: int = 1) -> None:
    """`times` inference forwards of the batch (the floor a ZO step is measured against)."""
    with torch.inference_mode():
        for _ in range(times):
            loss_fn()


def run_steps(step_fn, steps: int, device, weights: int, state_bytes, transient_state: int = 0, count_warm_up: bool = False) -> dict:
    """Peak memory split and mean time of `steps` steps after a warm-up; `transient_state` bytes of
    the state (first-order gradients) exist only around the peak, not between steps. The peak is
    of the timed steps, or with `count_warm_up` of the warm-up's too (a CUDA graph's replays
    allocate nothing: its memory is taken while it is recorded, in the warm-up)."""
    if count_warm_up:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    step_fn(0)  # warm-up: kernels, caches, lazily built state
    torch.cuda.synchronize(device)
    if not count_warm_up:
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    for step in range(1, steps + 1):
        step_fn(step)
    torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - began) / steps
    persistent = torch.cuda.memory_allocated(device) + transient_state
    peak = torch.cuda.max_memory_allocated(device)
    optimizer = state_bytes()
    split = Split(weights, max(persistent - weights - optimizer, 0), optimizer, max(peak - persistent, 0))
    return {**split.gib(), "reserved": torch.cuda.max_memory_reserved(device) / GIB, "step_ms": seconds * 1000}
