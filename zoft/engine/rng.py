"""Random streams keyed by (run seed, step, query, parameter): never the global RNG.

Any parameter's direction can be regenerated alone, in any order, on any rank, which is what
lets zoft store no noise between the perturbation and the update.
"""

from __future__ import annotations

import hashlib
import struct

import torch

# purposes keep the streams of one (step, query, parameter) apart
DIRECTION, BASIS = 0, 1


def stream_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key (a hash, so nearby keys give unrelated streams)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(keys)}q", *keys), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


_GENERATORS: dict[torch.device, torch.Generator] = {}


def generator(device: torch.device, *keys: int) -> torch.Generator:
    """The generator of `device`, reseeded for `keys` (the same stream as a new one: reseeding
    resets its state; reusing it saves creating one per tensor and pass)."""
    gen = _GENERATORS.get(device)
    if gen is None:
        gen = _GENERATORS[device] = torch.Generator(device=device)
    gen.manual_seed(stream_seed(*keys))
    return gen


def gaussian(shape: tuple[int, ...], like: torch.Tensor, *keys: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """N(0, 1) noise of `shape` on `like`'s device (and dtype unless given), from the stream of `keys`."""
    return torch.randn(shape, generator=generator(like.device, *keys), device=like.device, dtype=dtype or like.dtype)
