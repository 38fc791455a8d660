"""MeZO's prefix tuning (`params.mode: prefix`): learned key/value rows before every layer's own.

Built on peft's PrefixTuning rather than on attention hooks: with transformers 5, peft hands the
prefix to each layer as a KV cache, which covers grouped-query attention (SmolLM2: 3 kv heads
of 9), OPT and LLaMA alike, extends the attention mask, shifts `position_ids` past the prefix,
works under `generate`, and saves a standard adapter that `PeftModel.from_pretrained` reloads.
tests/test_peft_modes.py checks the result against the base model run on the prefix's tokens
followed by the prompt. What peft lacks is MeZO's `--prefix_init_by_real_act`, which the paper
found crucial for ZO stability; `real_activations` supplies it.
"""

from __future__ import annotations

import torch

from zoft.errors import ZoftError


def real_activations(model, tokens: int, seed: int) -> torch.Tensor:
    """The keys and values that `tokens` random vocabulary tokens (drawn with `seed`) leave in each
    layer, in peft's layout: [tokens, layers · 2 · kv_heads · head_dim], each layer's keys then values."""
    ids = torch.randint(model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        cache = model(input_ids=ids.to(next(model.parameters()).device), use_cache=True).past_key_values
    rows = torch.stack([t[0] for layer in cache.layers for t in (layer.keys, layer.values)])  # [2L, heads, tokens, dim]
    return rows.permute(2, 0, 1, 3).reshape(tokens, -1)


def add_prefix(model, tokens: int, seed: int):
    """`model` wrapped by peft with `tokens` prefix rows per layer, initialised from real activations
    (on the meta device, where nothing runs, peft's own init stands)."""
    from peft import PrefixTuningConfig

    from zoft.models.params import with_peft

    if not model.can_generate():
        raise ZoftError(f"params.mode: prefix needs a causal LM; {type(model).__name__} is not one (use full, lora or tt_adapter)")
    real = None if next(model.parameters()).is_meta else real_activations(model, tokens, seed)
    try:
        model = with_peft(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=tokens), seed)
    except ValueError as err:  # peft cannot read the layer layout from the model's config
        raise ZoftError(f"params.mode: prefix: {str(err).splitlines()[0][:160]}") from None
    embedding = model.prompt_encoder["default"].embedding.weight
    if real is not None:
        if real.shape != embedding.shape:
            raise ZoftError(
                f"params.mode: prefix: {type(model.get_base_model()).__name__} keeps keys/values of "
                f"{real.shape[1]} numbers per token, peft's prefix has {embedding.shape[1]}: this attention layout is not supported"
            )
        with torch.no_grad():
            embedding.copy_(real)
    return model
