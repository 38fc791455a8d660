"""Which tensors a run trains (`params.mode`): every weight, or PEFT LoRA adapters."""

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
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU-kernel notice on import
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets), lora_dropout=0.0)
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # peft calls deprecated transformers APIs
            torch.manual_seed(seed)  # LoRA's A is initialised randomly: the same in every process
            model = get_peft_model(model, config)
    except ValueError as err:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ZoftError(f"params.lora_targets: {str(err).splitlines()[0][:160]} (linear modules here: {', '.join(names)})") from None
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    model.requires_grad_(False)
    return model, params
