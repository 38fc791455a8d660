"""First-order baseline: backpropagation and a torch optimizer, so comparisons run in one tool.

`optim.name`: sgd, momentum (SGD with momentum) or adam (AdamW, decoupled weight decay); weight
decay skips 1-D tensors as in the ZO methods. Optimizer state is checkpointed as tensors.
"""

from __future__ import annotations

import math

import torch

from zoft.methods.base import METHODS, Method, StepResult


@METHODS.register("fo")
class FirstOrder(Method):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for _, p in self.params:
            p.requires_grad_(True)
        groups = [
            {"params": [p for _, p in self.params if p.ndim > 1], "weight_decay": self.optim.weight_decay},
            {"params": [p for _, p in self.params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        betas = self.optim.beta_values()
        if self.optim.name == "adam":
            self.optimizer = torch.optim.AdamW(groups, lr=self.optim.lr, betas=tuple(betas), eps=self.optim.adam_eps)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=self.optim.lr, momentum=betas[0] if betas else 0.0)
        self._order = [p for group in groups for p in group["params"]]

    def step(self, loss_fn, step: int, lr: float, queries=None, carry: bool = False) -> StepResult:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = loss_fn()
            value = float(loss.detach())
            finite = math.isfinite(value)
            if finite:
                loss.backward()
                finite = all(torch.isfinite(p.grad).all() for p in self._order if p.grad is not None)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(value, [], applied=finite)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for index, p in enumerate(self._order):
            for key, value in self.optimizer.state.get(p, {}).items():
                out[f"{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            index, name = key.split(".", 1)
            p = self._order[int(index)]
            self.optimizer.state[p][name] = value.to(p.device) if name != "step" else value
