"""`model.quantization`: the base's linear layers stored in int8 or nf4 by bitsandbytes, frozen.

Checkpoints load through transformers' BitsAndBytesConfig; models built from a shape or `tiny:`
have their nn.Linear layers swapped for bitsandbytes' own (the output head stays as it is, as
transformers does). A quantized weight is a packed integer tensor: `logical_shape` says which
m×n matrix it stands for, so that low-rank methods can train a delta over it in factor space.
"""

from __future__ import annotations

import collections
import logging

import torch
from torch import nn

from zoft.errors import ZoftError


def bnb_config(kind: str, dtype: torch.dtype):
    """The transformers quantization config of `model.quantization` (compute in `model.dtype`)."""
    from transformers import BitsAndBytesConfig

    _quiet()
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def quantize_linears(model: nn.Module, kind: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Swap every nn.Linear but the output head (and tied ones) for its bitsandbytes version on `device`."""
    _quiet()
    import bitsandbytes as bnb

    todo = quantizable_linears(model)
    while todo:
        parent, child_name, child = todo.pop()  # off the list: each full-precision layer is freed once swapped
        bias = child.bias is not None
        if kind == "nf4":
            new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=bias, compute_dtype=dtype, quant_type="nf4")
            new.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4")
        else:
            new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=bias, has_fp16_weights=False)
            new.weight = bnb.nn.Int8Params(child.weight.data, requires_grad=False, has_fp16_weights=False)
        if bias:
            new.bias = nn.Parameter(child.bias.data, requires_grad=False)
        try:
            setattr(parent, child_name, new.to(device))
        except (RuntimeError, ValueError) as err:
            raise ZoftError(f"model.quantization: bitsandbytes cannot quantize on {device}: {str(err).splitlines()[0][:200]}") from None
    return model.requires_grad_(False)


def quantizable_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) of every nn.Linear bitsandbytes stores: all but the output head
    and layers whose weight is tied to another tensor."""
    head = model.get_output_embeddings()
    uses = collections.Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and child is not head and uses[id(child.weight)] == 1
    ]


def is_quantized(p: torch.Tensor) -> bool:
    return not p.dtype.is_floating_point


def logical_shape(p: torch.Tensor) -> tuple[int, ...]:
    """The shape of the matrix a (possibly packed) weight stands for."""
    state = getattr(p, "quant_state", None)
    return tuple(state.shape) if state is not None else tuple(p.shape)


def _quiet() -> None:
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its CPU-kernel notice on import
