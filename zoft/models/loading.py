"""Build the model and tokenizer a recipe names: tiny built-in, GGUF, local folder or hub id."""

from __future__ import annotations

import torch

from zoft.config.schema import ModelConfig
from zoft.errors import ZoftError
from zoft.models.label_head import EncoderHead, with_label_head
from zoft.models.quantize import bnb_config, quantize_linears
from zoft.models.source import local_dir
from zoft.models.tiny import TINY_PREFIX, build_tiny

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ZoftError("model.device: cuda was asked for but no CUDA GPU is visible", title="no GPU")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def load_model(cfg: ModelConfig, seed: int, head: EncoderHead | None = None):
    """(model in eval mode with no autograd, tokenizer with a pad token) on the chosen device.

    `head` (encoder tasks) asks for a classifier instead of an LM: label embeddings
    (label_head.py) when it has label texts, else transformers' new linear head.
    """
    device = pick_device(cfg.device)
    num_labels = head.num_labels if head is not None else 0
    # process-wide in torch; set either way so that one process's runs do not leak into the next
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    built = cfg.config is not None or cfg.name_or_path.startswith(TINY_PREFIX)  # not read from a checkpoint
    if cfg.config is not None:
        model, tokenizer = random_model(cfg, seed, num_labels, device)
    elif built:
        model, tokenizer = build_tiny(cfg.name_or_path, seed, num_labels)
        model = model.to(DTYPES[cfg.dtype])
    else:
        model, tokenizer = _from_pretrained(cfg, seed, num_labels, device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if head is not None and head.label_texts:
        model = with_label_head(model, tokenizer, head.label_texts, None if built else local_dir(cfg.name_or_path))
    model.requires_grad_(False)
    if cfg.device_map is None and (built or cfg.quantization == "none"):  # bitsandbytes placed a loaded one
        model = model.to(device)
    if built and cfg.quantization != "none":
        model = quantize_linears(model, cfg.quantization, DTYPES[cfg.dtype], device)
        if device.type == "cuda":  # the model was built whole in model.dtype first: not the run's peak
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    head_layer = getattr(model, "get_output_embeddings", lambda: None)()
    if isinstance(head_layer, torch.nn.Linear):
        head_layer.register_forward_pre_hook(contiguous_input)
    return model.eval(), tokenizer


def contiguous_input(module, args):
    """A forward pre-hook: the output embedding reads its input contiguous. Scoring only the last
    tokens (`logits_to_keep`) hands it a strided slice of the hidden states, which cuBLAS (torch
    2.11, H100) multiplied by OPT's 50272×2048 table 3.5-26× slower than a copy of the slice:
    1.09 ms against 80 µs at 32 rows (docs/benchmarks.md)."""
    return (args[0].contiguous(), *args[1:])


def random_model(cfg: ModelConfig, seed: int, num_labels: int, device: torch.device):
    """A model of shape `model.config` with random weights, built directly on `device` in
    `model.dtype` (a 13B shape takes seconds on a GPU), with the tiny tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from zoft.models.shapes import model_config
    from zoft.models.tiny import tiny_tokenizer

    config = model_config(cfg.config)
    if num_labels:
        config.num_labels = num_labels
    auto = AutoModelForSequenceClassification if num_labels else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)
        model = auto.from_config(config, dtype=DTYPES[cfg.dtype])
    return model, tiny_tokenizer()


def _from_pretrained(cfg: ModelConfig, seed: int, num_labels: int, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    folder = local_dir(cfg.name_or_path)
    source = str(folder) if folder is not None else cfg.name_or_path
    kwargs = dict(trust_remote_code=cfg.trust_remote_code)
    if cfg.gguf_file:
        kwargs["gguf_file"] = cfg.gguf_file
    weights = {} if cfg.gguf_file else {"use_safetensors": True}  # never unpickle weights
    if cfg.device_map is not None:  # accelerate places the layers over the GPUs, within max_memory
        weights["device_map"] = cfg.device_map
        if cfg.max_memory:
            weights["max_memory"] = dict(enumerate(cfg.max_memory))
    if cfg.quantization != "none":
        weights["quantization_config"] = bnb_config(cfg.quantization, DTYPES[cfg.dtype])
        weights.setdefault("device_map", {"": str(device)})
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if num_labels:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # the new head's initialisation
                model = AutoModelForSequenceClassification.from_pretrained(
                    source, dtype=DTYPES[cfg.dtype], num_labels=num_labels, **kwargs, **weights
                )
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[cfg.dtype], **kwargs, **weights)
    except (OSError, ValueError, ImportError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ZoftError(
            f"model.name_or_path: cannot load {cfg.name_or_path!r}: {first}",
            title="model not found",
        ) from None
    if cfg.gguf_file:  # the weights are dequantized now: plain tensors that save_pretrained can write
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
    return model, tokenizer
