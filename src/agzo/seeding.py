"""Per-tensor random streams that never touch the global RNG.

A zeroth-order step must apply the *same* random direction up to four times (perturb,
evaluate, restore, update). Instead of storing a model-sized noise tensor, every tensor's
direction is regenerated from a generator seeded by (step seed, tensor index, stream).
Mixing the integers through a hash keeps neighbouring steps and tensors uncorrelated.
"""

from __future__ import annotations

import hashlib

import torch

_SEED_MASK = (1 << 63) - 1

# Named streams, so that the power-iteration start vector and the perturbation of the
# same tensor in the same step never share random numbers.
STREAM_PERTURBATION = 0
STREAM_POWER_ITERATION = 1
STREAM_LOW_RANK_V = 2


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of integers (stable across runs and platforms)."""
    payload = b",".join(str(int(p)).encode() for p in parts)
    digest = hashlib.blake2b(payload, digest_size=8).digest()
    return int.from_bytes(digest, "little") & _SEED_MASK


def generator_for(device: torch.device | str, *parts: int) -> torch.Generator:
    """A fresh generator on `device`, seeded by `derive_seed(*parts)`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(*parts))
    return gen
