"""What a task trains on and how it is scored, per task kind (MeZO's protocol).

- classify: loss = cross-entropy over candidates of each candidate's mean option-token
  log-likelihood; metric = accuracy of the argmax of that length-normalised score.
- choice: loss = LM loss on the gold candidate's tokens only; metric = the same argmax accuracy.
- generate: loss = LM loss on the gold answer's tokens; metric = SQuAD F1 (and exact match) of
  greedy decoding (50 new tokens, stopped at a newline).
- encoder: a sequence-classification head; loss = cross-entropy; metric = accuracy.
"""

from __future__ import annotations

import collections
import re
import string
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from zoft.data.tasks import Example


@dataclass(frozen=True)
class Encoded:
    prompt: tuple[int, ...]
    options: tuple[tuple[int, ...], ...]
    label: int
    answers: tuple[str, ...] = ()


def encode(tokenizer, examples: list[Example], max_length: int, kind: str) -> list[Encoded]:
    """Token ids of prompts (left-truncated to `max_length`) and of each candidate."""
    if kind == "encoder":
        return [
            Encoded(tuple(tokenizer(e.prompt, e.pair, truncation=True, max_length=max_length)["input_ids"]), (), e.label)
            for e in examples
        ]
    option_ids: dict[str, tuple[int, ...]] = {}
    out = []
    for ex in examples:
        for cand in ex.candidates:
            if cand not in option_ids:
                option_ids[cand] = tuple(tokenizer(cand, add_special_tokens=False)["input_ids"])
        prompt = tuple(tokenizer(ex.prompt)["input_ids"])[-max_length:]
        out.append(Encoded(prompt, tuple(option_ids[c] for c in ex.candidates), ex.label, ex.answers))
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

    def padded_to(self, length: int) -> "Batch":
        """The same rows left-padded to `length` tokens (masked, position 0): the same loss."""
        extra = length - self.input_ids.shape[1]
        pad = lambda t: F.pad(t, (extra, 0))  # noqa: E731
        return replace(self, input_ids=pad(self.input_ids), attention_mask=pad(self.attention_mask), position_ids=pad(self.position_ids))


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


def option_logprobs(model, batch: Batch) -> torch.Tensor:
    """[rows, K] log-probability of each of the last K tokens (mask with `batch.option_mask`)."""
    k = batch.option_mask.shape[1]
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=k + 1,
        use_cache=False,  # a KV cache would hold 2·layers·hidden numbers per token for nothing
    ).logits[:, -k - 1 : -1]
    targets = batch.input_ids[:, -k:]
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def option_sums(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of the option's tokens, and how many there are."""
    token_lp = option_logprobs(model, batch)
    mask = batch.option_mask.to(token_lp.dtype)
    return (token_lp * mask).sum(-1), mask.sum(-1)


def scores_of(sums: torch.Tensor, counts: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[examples, candidates] mean log-likelihood of each candidate's tokens (-inf where absent).

    Rows run example by example, candidate by candidate, so a present candidate's row is the count
    of present candidates before it: a gather, with no data-dependent shape (a CUDA graph can hold it).
    """
    present = batch.candidate_mask
    rows = (present.flatten().cumsum(0) - 1).clamp(min=0).view(present.shape)
    return torch.where(present, (sums / counts)[rows], float("-inf"))


def candidate_scores(model, batch: Batch) -> torch.Tensor:
    return scores_of(*option_sums(model, batch), batch)


def gold_only(items: list[Encoded]) -> list[Encoded]:
    return [replace(it, options=(it.options[it.label],), label=0) for it in items]


@dataclass
class EncoderBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device) -> "EncoderBatch":
        return EncoderBatch(*(t.to(device) for t in vars(self).values()))

    def padded_to(self, length: int) -> "EncoderBatch":
        """The same rows right-padded to `length` tokens (masked): the same loss."""
        extra = length - self.input_ids.shape[1]
        return replace(self, input_ids=F.pad(self.input_ids, (0, extra)), attention_mask=F.pad(self.attention_mask, (0, extra)))


def doubled(batch):
    """The batch twice over, one copy after the other (a Batch or an EncoderBatch)."""
    return type(batch)(*(torch.cat([t, t]) for t in vars(batch).values()))


class BatchLoss:
    """The training loss of one batch at the current weights, as a ZO method calls it.

    `pair()` scores the batch twice in one forward (a doubled batch): the functional path
    perturbs the two halves by +ε and −ε. `reduce` averages over data-parallel ranks. With
    `graphs` (a LossGraphs), both are replayed from CUDA graphs of the batch's shape.
    """

    def __init__(self, objective: "Objective", model, batch, reduce=lambda t: t, graphs=None):
        self.objective, self.model, self.batch, self.reduce, self.graphs = objective, model, batch, reduce, graphs
        self._doubled = None

    def __call__(self) -> torch.Tensor:
        if self.graphs is not None:
            return self.reduce(self.graphs.loss(self.batch))
        return self.reduce(self.objective.loss(self.model, self.batch))

    def rows(self) -> int:
        """Sequences in one forward of the batch (examples × candidates for classification)."""
        return self.batch.input_ids.shape[0]

    def examples(self) -> int:
        return self.batch.labels.shape[0]

    def pair(self) -> torch.Tensor:
        """[loss of the first copy, loss of the second] over a doubled batch."""
        if self._doubled is None:
            self._doubled = doubled(self.batch)
        if self.graphs is not None:
            return self.reduce(self.graphs.loss(self._doubled, parts=2))
        return self.reduce(self.objective.part_losses(self.model, self._doubled, 2))


class Objective:
    """Training batches, the loss, and the evaluation metric of one task kind."""

    metric = "accuracy"

    def train_batch(self, items: list[Encoded], pad_id: int):
        return collate(items, pad_id)

    def loss(self, model, batch) -> torch.Tensor:
        return self.part_losses(model, batch, 1)[0]

    def part_losses(self, model, batch, parts: int) -> torch.Tensor:
        """The loss of each of `parts` equal consecutive slices of the batch's examples."""
        each = F.cross_entropy(candidate_scores(model, batch), batch.labels, reduction="none")
        return each.view(parts, -1).mean(1)

    def evaluate(self, model, tokenizer, items: list[Encoded], batch_size: int) -> dict:
        """{metric: value, "loss": mean loss, "n": examples}, without autograd and in eval mode."""
        device = next(model.parameters()).device
        correct, loss_sum = 0, 0.0
        with torch.inference_mode():
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                right, loss = self.score_chunk(model, chunk, tokenizer.pad_token_id, device)
                correct += right
                loss_sum += loss * len(chunk)
        n = max(1, len(items))
        return {self.metric: correct / n, "loss": loss_sum / n, "n": len(items)}

    def score_chunk(self, model, chunk: list[Encoded], pad_id: int, device) -> tuple[int, float]:
        batch = collate(chunk, pad_id).to(device)
        scores = candidate_scores(model, batch)
        return int((scores.argmax(-1) == batch.labels).sum()), float(F.cross_entropy(scores, batch.labels))


class GoldTokens(Objective):
    """Multiple choice: trained on the gold candidate's tokens, scored over all candidates."""

    def train_batch(self, items, pad_id):
        return collate(gold_only(items), pad_id)

    def part_losses(self, model, batch, parts):
        sums, counts = option_sums(model, batch)
        return -sums.view(parts, -1).sum(1) / counts.view(parts, -1).sum(1)

    def score_chunk(self, model, chunk, pad_id, device):
        """Accuracy over all candidates and the gold-token loss, from one forward of all of them."""
        batch = collate(chunk, pad_id).to(device)
        sums, counts = option_sums(model, batch)
        scores = scores_of(sums, counts, batch)
        first_row = torch.tensor([0] + [len(it.options) for it in chunk[:-1]], device=device).cumsum(0)
        gold = first_row + batch.labels
        return int((scores.argmax(-1) == batch.labels).sum()), float(-sums[gold].sum() / counts[gold].sum())


class Generation(GoldTokens):
    """Extractive QA: trained on the gold answer's tokens, scored by greedy decoding."""

    metric = "f1"
    max_new_tokens = 50

    def evaluate(self, model, tokenizer, items, batch_size):
        from transformers import GenerationConfig

        device = next(model.parameters()).device
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
        stops = [t for t in (tokenizer.eos_token_id, newline[-1] if len(newline) == 1 else None) if t is not None]
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id
        )
        f1 = em = loss_sum = 0.0
        with torch.inference_mode():
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                length = max(len(it.prompt) for it in chunk)
                ids = torch.full((len(chunk), length), tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for r, it in enumerate(chunk):
                    ids[r, length - len(it.prompt) :] = torch.tensor(it.prompt)
                    mask[r, length - len(it.prompt) :] = 1
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
                for it, row in zip(chunk, out[:, length:]):
                    text = tokenizer.decode(row, skip_special_tokens=True).split("\n")[0]
                    f1 += max(squad_f1(text, gold) for gold in it.answers)
                    em += max(float(normalize_answer(text) == normalize_answer(gold)) for gold in it.answers)
                loss_sum += float(self.loss(model, self.train_batch(chunk, tokenizer.pad_token_id).to(device))) * len(chunk)
        n = max(1, len(items))
        return {"f1": f1 / n, "exact_match": em / n, "loss": loss_sum / n, "n": len(items)}


class EncoderClassification(Objective):
    def train_batch(self, items, pad_id):
        length = max(len(it.prompt) for it in items)
        ids = torch.full((len(items), length), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, it in enumerate(items):
            ids[r, : len(it.prompt)] = torch.tensor(it.prompt)
            mask[r, : len(it.prompt)] = 1
        return EncoderBatch(ids, mask, torch.tensor([it.label for it in items]))

    def part_losses(self, model, batch, parts):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        return F.cross_entropy(logits, batch.labels, reduction="none").view(parts, -1).mean(1)

    def score_chunk(self, model, chunk, pad_id, device):
        batch = self.train_batch(chunk, pad_id).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        return int((logits.argmax(-1) == batch.labels).sum()), float(F.cross_entropy(logits, batch.labels))


OBJECTIVES: dict[str, Objective] = {
    "classify": Objective(),
    "choice": GoldTokens(),
    "generate": Generation(),
    "encoder": EncoderClassification(),
}


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if not pred or not ref:
        return float(pred == ref)
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)
