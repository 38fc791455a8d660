"""Classification as LM scoring: each candidate's mean option-token log-likelihood.

Training loss = cross-entropy over candidates of those scores (MeZO `train_as_classification`);
prediction = argmax of the same length-normalised log-likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zoft.data.tasks import Example


@dataclass(frozen=True)
class Encoded:
    prompt: tuple[int, ...]
    options: tuple[tuple[int, ...], ...]
    label: int


def encode(tokenizer, examples: list[Example], max_length: int) -> list[Encoded]:
    """Token ids of prompts (left-truncated to `max_length`) and of each candidate."""
    option_ids: dict[str, tuple[int, ...]] = {}
    out = []
    for ex in examples:
        for cand in ex.candidates:
            if cand not in option_ids:
                option_ids[cand] = tuple(tokenizer(cand, add_special_tokens=False)["input_ids"])
        prompt = tuple(tokenizer(ex.prompt)["input_ids"])[-max_length:]
        out.append(Encoded(prompt, tuple(option_ids[c] for c in ex.candidates), ex.label))
    return out


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, length], left-padded; one row per (example, candidate)
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    option_mask: torch.Tensor  # [rows, K]: which of the last K tokens belong to the option
    candidate_mask: torch.Tensor  # [examples, max candidates]
    labels: torch.Tensor  # [examples]

    def to(self, device: torch.device) -> "Batch":
        return Batch(*(t.to(device) for t in vars(self).values()))


def collate(items: list[Encoded], pad_id: int) -> Batch:
    rows = [(it.prompt + opt, len(opt)) for it in items for opt in it.options]
    length = max(len(ids) for ids, _ in rows)
    k = max(n for _, n in rows)
    n_cands = max(len(it.options) for it in items)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    option_mask = torch.zeros((len(rows), k), dtype=torch.bool)
    for r, (ids, n_opt) in enumerate(rows):
        input_ids[r, length - len(ids) :] = torch.tensor(ids)
        attention[r, length - len(ids) :] = 1
        option_mask[r, k - n_opt :] = True
    cand_mask = torch.zeros((len(items), n_cands), dtype=torch.bool)
    for i, it in enumerate(items):
        cand_mask[i, : len(it.options)] = True
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    labels = torch.tensor([it.label for it in items])
    return Batch(input_ids, attention, positions, option_mask, cand_mask, labels)


def candidate_scores(model, batch: Batch) -> torch.Tensor:
    """[examples, candidates] mean log-likelihood of each candidate's tokens (-inf where absent)."""
    k = batch.option_mask.shape[1]
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=k + 1,
    ).logits[:, -k - 1 : -1]
    targets = batch.input_ids[:, -k:]
    token_lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    mask = batch.option_mask.to(token_lp.dtype)
    per_row = (token_lp * mask).sum(-1) / mask.sum(-1)
    scores = torch.full(batch.candidate_mask.shape, float("-inf"), device=per_row.device)
    scores[batch.candidate_mask] = per_row
    return scores


def loss_and_correct(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean candidate cross-entropy and the number of correct argmax predictions."""
    scores = candidate_scores(model, batch)
    loss = F.cross_entropy(scores, batch.labels)
    correct = (scores.argmax(-1) == batch.labels).sum()
    return loss, correct
