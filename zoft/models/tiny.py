"""`tiny:<arch>[-<hidden>x<layers>]`: random-init tiny models with a local tokenizer, for tests and CPU.

No download is involved: the architecture comes from a transformers config class and the
tokenizer from `tiny_tokenizer.json` (built by tools/build_tiny_tokenizer.py).
"""

from __future__ import annotations

import re
from pathlib import Path

TINY_PREFIX = "tiny:"
TINY_ARCHS = ("llama", "opt", "bert")  # bert is an encoder: encoder (classification-head) tasks only
_SPEC = re.compile(r"^tiny:(?P<arch>[a-z0-9_]+)(-(?P<hidden>\d+)x(?P<layers>\d+))?$")
TOKENIZER_FILE = Path(__file__).with_name("tiny_tokenizer.json")


def tiny_spec_problem(name: str) -> str | None:
    match = _SPEC.match(name)
    if not match:
        return f"{name!r} is not of the form tiny:<arch>[-<hidden>x<layers>], e.g. tiny:llama-32x2"
    if match["arch"] not in TINY_ARCHS:
        return f"unknown tiny architecture {match['arch']!r}; choose one of: {', '.join(TINY_ARCHS)}"
    if match["hidden"] and (int(match["hidden"]) % 8 or int(match["layers"]) < 1):
        return f"{name!r}: hidden size must be a multiple of 8 and layers >= 1"
    return None


def tiny_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_FILE), bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def build_tiny(name: str, seed: int, num_labels: int = 0):
    """A random-init model (seeded, so every process builds the same weights) and its tokenizer."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        OPTConfig,
        OPTForCausalLM,
        OPTForSequenceClassification,
    )

    match = _SPEC.match(name)
    hidden, layers = int(match["hidden"] or 32), int(match["layers"] or 2)
    tokenizer = tiny_tokenizer()
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if match["arch"] == "llama":
        config = LlamaConfig(intermediate_size=2 * hidden, num_key_value_heads=2, num_labels=num_labels or 2, **common)
        model_cls = LlamaForSequenceClassification if num_labels else LlamaForCausalLM
    elif match["arch"] == "opt":
        config = OPTConfig(ffn_dim=2 * hidden, word_embed_proj_dim=hidden, num_labels=num_labels or 2, **common)
        model_cls = OPTForSequenceClassification if num_labels else OPTForCausalLM
    else:
        config = BertConfig(intermediate_size=2 * hidden, num_labels=num_labels or 2, **common)
        model_cls = BertForSequenceClassification
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    return model, tokenizer
