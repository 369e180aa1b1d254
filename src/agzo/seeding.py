"""Per-tensor random streams that never touch the global RNG.

A zeroth-order step must apply the *same* random direction up to four times (perturb,
evaluate, restore, update). Instead of storing a model-sized noise tensor, every tensor's
direction is regenerated from a generator seeded by (step seed, tensor index, stream).
Mixing the integers through a hash keeps neighbouring steps and tensors uncorrelated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

_SEED_MASK = (1 << 63) - 1

# Named streams, so that the power-iteration start vector and the perturbation of the
# same tensor in the same step never share random numbers.
STREAM_PERTURBATION = 0
STREAM_POWER_ITERATION = 1
STREAM_LOW_RANK_V = 2
# One draw per step (or probe) shared by many tensors, split into views: a kernel launch
# per step instead of one per tensor.
STREAM_SHARED_FACTORS = 3
STREAM_SHARED_SMALL = 4


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


# Pieces of a shared draw start at multiples of this many entries (64 bytes of float32),
# as separate allocations would: matrix kernels may round differently on unaligned data,
# and a probe's rows must give the same bits whether updated whole or in row chunks.
ALIGN_ENTRIES = 16


def split_draw(
    sizes: Sequence[int], device: torch.device | str, *parts: int, scale: float = 1.0
) -> list[torch.Tensor]:
    """Gaussian noise for several tensors from one draw, seeded by `parts`: flat pieces
    of the given sizes, in order, each starting at a multiple of ALIGN_ENTRIES (scaled by
    `scale`, exactly when it is a power of two)."""
    padded = [-(-size // ALIGN_ENTRIES) * ALIGN_ENTRIES for size in sizes]
    gen = generator_for(device, *parts)
    flat = torch.randn(sum(padded), generator=gen, dtype=torch.float32, device=device)
    if scale != 1.0:
        flat.mul_(scale)
    return [piece[:size] for piece, size in zip(flat.split(padded), sizes)]


@contextmanager
def seeded_global_rng(seed: int, cuda_devices: Sequence[int] = ()) -> Iterator[None]:
    """Seed the host's global generator (and those of `cuda_devices`) for code that draws
    from it, such as a module's initialization, and restore the caller's state after."""
    with torch.random.fork_rng(devices=list(cuda_devices)):
        # Not torch.manual_seed: it would also reseed every other GPU, outside the fork.
        torch.default_generator.manual_seed(seed)
        for index in cuda_devices:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield
