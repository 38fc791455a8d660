"""CUDA graphs for the training loss: a batch's forward replayed without Python or launch costs.

A small model's forward is launch-bound: SmolLM2-135M launches about 1,100 kernels a forward,
and on an H100 the launching, not the arithmetic, sets the time. A CUDA graph records the loss of
one batch shape once and replays it. The graph reads every tensor where it was when recorded, so
in-place perturbations of the weights are seen, and so are the functional path's factors, which
its hooks read from buffers they keep (methods/functional.py). What else a recording bakes in (the
sign of ε those hooks apply, whether the batch is doubled) is the method's `forward_state()`:
graphs are kept per state, and a state of a new generation (other hooks, other buffers) drops the
old ones. Autograd cannot be recorded: such methods have no state. Padded lengths are rounded up
to a multiple of `BUCKET` tokens (masked padding leaves the loss as it was), so a few shapes cover
a task.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch

BUCKET = 32  # tokens


@functools.cache
def recording_stream(device: int) -> torch.cuda.Stream:
    """One side stream per GPU for every recording, its warm-up included: cuBLAS keeps a workspace
    (32 MiB on an H100) for each stream it has run on, so a fresh stream per recording would leak
    one each."""
    return torch.cuda.Stream(device)


@contextlib.contextmanager
def one_stream(device: torch.device):
    """Run what is inside on the recording stream (on a CUDA device; elsewhere nothing changes):
    eager forwards and recordings then share one cuBLAS workspace, where eager work on the default
    stream beside recordings on the side stream would keep two (32 MiB more at a step's peak). It
    starts after, and the default stream resumes after, what each had queued."""
    if device.type != "cuda":
        yield
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    side, before = recording_stream(index), torch.cuda.current_stream(index)
    side.wait_stream(before)
    try:
        with torch.cuda.stream(side):
            yield
    finally:
        before.wait_stream(side)


def generation_of(state: tuple) -> int:
    """A forward state's generation: its first item, 0 for the empty state (no hooks)."""
    return state[0] if state else 0


class LossGraphs:
    """One recorded loss per batch shape and forward state, all drawing on one memory pool
    (replayed one at a time)."""

    def __init__(self, objective, model, state: Callable[[], tuple] = tuple):
        self.objective, self.model, self.state = objective, model, state
        self.recorded: dict[tuple, tuple[object, torch.Tensor, torch.cuda.CUDAGraph]] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.generation = 0  # a state's first item, when it has one

    def current(self) -> bool:
        """Whether a graph of the method's current generation (its hooks, its buffers) was recorded."""
        return bool(self.recorded) and generation_of(self.state()) == self.generation

    def loss(self, batch, parts: int = 1) -> torch.Tensor:
        """The objective's loss of `batch` (on the GPU), or with `parts` > 1 the loss of each of that
        many equal slices of its examples; a fresh tensor each call."""
        state = self.state()
        generation = generation_of(state)
        if generation != self.generation:
            self.recorded.clear()
            self.pool = torch.cuda.graph_pool_handle()
            self.generation = generation
        length = -(-batch.input_ids.shape[1] // BUCKET) * BUCKET
        batch = batch.padded_to(length)
        key = (state, parts, *(tuple(t.shape) for t in vars(batch).values()))
        if key not in self.recorded:
            self.recorded[key] = self._record(batch, parts)
        inputs, output, graph = self.recorded[key]
        for held, given in zip(vars(inputs).values(), vars(batch).values()):
            held.copy_(given)
        graph.replay()
        return output.clone()  # the next replay overwrites `output`

    def _record(self, batch, parts: int):
        """The loss of a copy of `batch`, recorded (`record`)."""
        inputs = type(batch)(*(t.clone() for t in vars(batch).values()))
        loss = lambda: self.objective.part_losses(self.model, inputs, parts) if parts > 1 else self.objective.loss(self.model, inputs)  # noqa: E731
        graph, output = record(loss, self.pool)
        return inputs, output, graph


def record(fn: Callable[[], object], pool=None) -> tuple[torch.cuda.CUDAGraph, object]:
    """`fn` warmed up twice on the recording stream (as recording requires), then recorded there as
    a CUDA graph (memory from `pool`); the graph, and what the recorded call returned."""
    side = recording_stream(torch.cuda.current_device())
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=side):
        output = fn()
    return graph, output
