"""An encoder's classification head built from its own embeddings of the label names
(`model.encoder_head: labels`).

ZO fine-tuning needs a model that already does the task a little: MeZO gets there with prompts
and label words, and with a new random linear head its encoder rows stay at chance. Here a text
is scored the way a sentence-embedding model scores a pair: logits = scale · cos(mean-pooled text,
label embedding), each label's embedding starting as the encoder's embedding of the task's
description of that label (`Task.label_texts`) and trained with the rest in full-parameter mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import SequenceClassifierOutput

from zoft.errors import ZoftError

SCALE = 20.0  # sentence-transformers' scale for cosine-similarity logits (MultipleNegativesRankingLoss)
SAVED = "label_head.safetensors"  # beside the encoder's weights in a saved model folder


@dataclass(frozen=True)
class EncoderHead:
    """What an encoder task puts on its encoder: label embeddings when `label_texts` is given,
    otherwise transformers' new linear head of `num_labels` outputs."""

    num_labels: int
    label_texts: tuple[str, ...] = ()


def mean_pooled(encoder, input_ids, attention_mask) -> torch.Tensor:
    """The mean of the last hidden states over the real (unmasked) tokens: how the sentence
    encoder itself pools (all-MiniLM-L6-v2's 1_Pooling)."""
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)


class LabelSimilarityClassifier(torch.nn.Module):
    """encoder + one trainable embedding per label; `forward` returns logits like a
    *ForSequenceClassification model, so the encoder objective needs nothing else."""

    def __init__(self, encoder, label_embeddings: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.labels = torch.nn.Parameter(label_embeddings.to(next(encoder.parameters()).dtype), requires_grad=False)

    def forward(self, input_ids, attention_mask, **_):
        texts = F.normalize(mean_pooled(self.encoder, input_ids, attention_mask), dim=-1)
        return SequenceClassifierOutput(logits=SCALE * texts @ F.normalize(self.labels, dim=-1).T)

    def save_pretrained(self, folder, **kwargs) -> None:
        from safetensors.torch import save_file

        self.encoder.save_pretrained(folder, **kwargs)
        save_file({"labels": self.labels.detach().contiguous().cpu()}, str(Path(folder) / SAVED))


def with_label_head(model, tokenizer, texts: tuple[str, ...], folder: Path | None) -> LabelSimilarityClassifier:
    """Wrap a *ForSequenceClassification model's encoder (its linear head and pooler dropped) with
    label embeddings: those saved in `folder` by a trained run, else the encoder's own of `texts`."""
    encoder = model.base_model.eval()  # the embeddings without dropout
    if getattr(encoder, "pooler", None) is not None:  # BERT's CLS pooler: not how the encoder pools
        encoder.pooler = None
    saved = folder / SAVED if folder is not None else None
    if saved is not None and saved.is_file():
        from safetensors.torch import load_file

        embeddings = load_file(str(saved))["labels"]
        if len(embeddings) != len(texts):
            raise ZoftError(f"model.name_or_path: {saved} holds {len(embeddings)} label embeddings; the task has {len(texts)} labels")
    else:
        device = next(encoder.parameters()).device
        batch = tokenizer(list(texts), padding=True, return_tensors="pt").to(device)
        with torch.no_grad():
            embeddings = mean_pooled(encoder, batch["input_ids"], batch["attention_mask"]).float()
    return LabelSimilarityClassifier(encoder, embeddings)
