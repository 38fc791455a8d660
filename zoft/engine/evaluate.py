"""Score encoded examples: accuracy (argmax of length-normalised log-likelihood) and mean loss."""

from __future__ import annotations

import torch

from zoft.engine.objective import Encoded, collate, loss_and_correct


def score(model, items: list[Encoded], pad_id: int, batch_size: int) -> dict:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            loss, right = loss_and_correct(model, collate(chunk, pad_id).to(device))
            correct += int(right)
            loss_sum += float(loss) * len(chunk)
    model.train(was_training)
    n = max(1, len(items))
    return {"accuracy": correct / n, "loss": loss_sum / n, "n": len(items)}
