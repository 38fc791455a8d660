"""Built-in model shapes (`model.config: opt-13b`), for random-weight runs and memory estimates.

The numbers are those of the public Hugging Face configs of each model.
"""

from __future__ import annotations

from pathlib import Path

_OPT = dict(vocab_size=50272, max_position_embeddings=2048, do_layer_norm_before=True)
_LLAMA = dict(vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)

SHAPES: dict[str, tuple[str, dict]] = {
    "opt-125m": ("opt", dict(_OPT, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072, word_embed_proj_dim=768)),
    "opt-1.3b": ("opt", dict(_OPT, hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192, word_embed_proj_dim=2048)),
    "opt-2.7b": ("opt", dict(_OPT, hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, ffn_dim=10240, word_embed_proj_dim=2560)),
    "opt-6.7b": ("opt", dict(_OPT, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, ffn_dim=16384, word_embed_proj_dim=4096)),
    "opt-13b": ("opt", dict(_OPT, hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, ffn_dim=20480, word_embed_proj_dim=5120)),
    "opt-30b": ("opt", dict(_OPT, hidden_size=7168, num_hidden_layers=48, num_attention_heads=56, ffn_dim=28672, word_embed_proj_dim=7168)),
    "opt-66b": ("opt", dict(_OPT, hidden_size=9216, num_hidden_layers=64, num_attention_heads=72, ffn_dim=36864, word_embed_proj_dim=9216)),
    "llama-7b": ("llama", dict(_LLAMA, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32)),
    "llama-13b": ("llama", dict(_LLAMA, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40)),
    "llama-30b": ("llama", dict(_LLAMA, hidden_size=6656, intermediate_size=17920, num_hidden_layers=60, num_attention_heads=52, num_key_value_heads=52)),
    "llama-65b": ("llama", dict(_LLAMA, hidden_size=8192, intermediate_size=22016, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=64)),
    "llama-70b": ("llama", dict(_LLAMA, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8)),
    "smollm2-135m": ("llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True)),
}


def shape_problem(name: str) -> str | None:
    if name in SHAPES or Path(name).expanduser().is_file():
        return None
    return f"model.config: {name!r} is neither a config file nor a built-in shape ({', '.join(SHAPES)})"


def model_config(name: str):
    """A transformers config for a built-in shape or a config.json file."""
    from transformers import AutoConfig, LlamaConfig, OPTConfig

    if name in SHAPES:
        family, values = SHAPES[name]
        return (OPTConfig if family == "opt" else LlamaConfig)(**values)
    return AutoConfig.from_pretrained(str(Path(name).expanduser()))
