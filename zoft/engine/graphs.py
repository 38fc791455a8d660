"""CUDA graphs for the training loss: a batch's forward replayed without Python or launch costs.

A small model's forward is launch-bound: SmolLM2-135M launches about 1,100 kernels a forward,
and on an H100 the launching, not the arithmetic, sets the time. A CUDA graph records the loss of
one batch shape once and replays it. The graph reads every tensor where it was when recorded, so
in-place perturbations of the weights are seen, but a forward that reads anything else that
changes between replays (the functional path's factor tensors, autograd) must not use one: the
trainer asks the method (`Method.static_forward`). Padded lengths are rounded up to a multiple
of `BUCKET` tokens (masked padding leaves the loss as it was), so a few shapes cover a task.
"""

from __future__ import annotations

import torch

BUCKET = 32  # tokens


class LossGraphs:
    """One recorded loss per batch shape, all drawing on one memory pool (replayed one at a time)."""

    def __init__(self, objective, model):
        self.objective, self.model = objective, model
        self.recorded: dict[tuple, tuple[object, torch.Tensor, torch.cuda.CUDAGraph]] = {}
        self.pool = torch.cuda.graph_pool_handle()

    def loss(self, batch) -> torch.Tensor:
        """The objective's loss of `batch` (on the GPU), a fresh tensor each call."""
        length = -(-batch.input_ids.shape[1] // BUCKET) * BUCKET
        batch = batch.padded_to(length)
        key = tuple(tuple(t.shape) for t in vars(batch).values())
        if key not in self.recorded:
            self.recorded[key] = self._record(batch)
        inputs, output, graph = self.recorded[key]
        for held, given in zip(vars(inputs).values(), vars(batch).values()):
            held.copy_(given)
        graph.replay()
        return output.clone()  # the next replay overwrites `output`

    def _record(self, batch):
        """Warm up on a side stream (as recording requires), then record the loss of a copy of `batch`."""
        inputs = type(batch)(*(t.clone() for t in vars(batch).values()))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.objective.loss(self.model, inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = self.objective.loss(self.model, inputs)
        return inputs, output, graph
