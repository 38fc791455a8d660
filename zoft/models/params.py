"""Which tensors a run trains (`params.mode`): every weight, PEFT LoRA adapters, a MeZO prefix,
or AdaZeta's tensor-train adapters."""

from __future__ import annotations

import logging
import warnings

import torch

from zoft.config.schema import ParamsConfig
from zoft.errors import ZoftError


def trainable(model, cfg: ParamsConfig, seed: int):
    """(the model, possibly wrapped, and its trained tensors by name); nothing requires grad."""
    if cfg.mode == "full":
        return model, list(model.named_parameters())
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU-kernel notice when peft is imported
    if cfg.mode == "prefix":
        from zoft.models.prefix import add_prefix

        model = add_prefix(model, cfg.prefix_tokens, seed)
    elif cfg.mode == "tt_adapter":
        from zoft.models.tt_adapter import TTAdapterModel

        model = TTAdapterModel(model, cfg.adapter_dim, cfg.tt_rank, seed)
    else:
        model = _lora(model, cfg, seed)
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    model.requires_grad_(False)
    return model, params


def is_classifier(model) -> bool:
    """A sequence-classification model (encoder tasks): its head is new, so every mode trains it."""
    return type(model).__name__.endswith("ForSequenceClassification")


def with_peft(model, config, seed: int):
    """get_peft_model with its random init drawn from `seed` (the same in every process), leaving
    the global RNG as it was."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls deprecated transformers APIs
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def _lora(model, cfg: ParamsConfig, seed: int):
    from peft import LoraConfig

    # SEQ_CLS makes peft train the new classification head too (modules_to_save), not only the adapters
    task_type = "SEQ_CLS" if is_classifier(model) else None
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets),
                        lora_dropout=0.0, task_type=task_type)
    try:
        return with_peft(model, config, seed)
    except ValueError as err:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ZoftError(f"params.lora_targets: {str(err).splitlines()[0][:160]} (linear modules here: {', '.join(names)})") from None
