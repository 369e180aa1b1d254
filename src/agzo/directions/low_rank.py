"""Low-rank random probes (LOZO): Δ = U Vᵀ for matrices, Gaussian for the rest.

U (d_out x r) is redrawn every step; V (d_in x r) only every `refresh_every` steps
("lazy sampling"), so successive updates share a column space, like a low-rank adapter
that moves slowly. Both factors come from their own seeded generators, and the factors
used for the update are exactly those used for the perturbation.
"""

from __future__ import annotations

from typing import Any

import torch

from agzo.directions.base import Direction, LowRankDirection
from agzo.directions.gaussian import gaussian_direction
from agzo.directions.sampler import DirectionSampler, ProbeContext
from agzo.params import TrainableTensor
from agzo.seeding import STREAM_LOW_RANK_V, STREAM_PERTURBATION, generator_for


def low_rank_dims(tensor: TrainableTensor) -> tuple[int, int]:
    """(d_out, d_in) of a matrix parameter, whatever its storage layout."""
    rows, cols = tensor.param.shape
    return (cols, rows) if tensor.transposed else (rows, cols)


class LowRankSampler(DirectionSampler):
    def __init__(self, rank: int = 2, refresh_every: int = 50) -> None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.rank = rank
        self.refresh_every = refresh_every

    def settings(self) -> dict[str, Any]:
        return {"rank": self.rank, "refresh_every": self.refresh_every}

    def right_factor(self, tensor: TrainableTensor, base_seed: int, period: int) -> torch.Tensor:
        """V for `tensor` during refresh period `period` (d_in x r)."""
        _, d_in = low_rank_dims(tensor)
        gen = generator_for(tensor.param.device, base_seed, period, tensor.index, STREAM_LOW_RANK_V)
        return torch.randn(d_in, self.rank, generator=gen, device=tensor.param.device)

    def sample(self, tensor: TrainableTensor, ctx: ProbeContext) -> Direction:
        if tensor.param.dim() != 2:
            return gaussian_direction(tensor, ctx)
        d_out, _ = low_rank_dims(tensor)
        gen = generator_for(
            tensor.param.device, ctx.step_seed, ctx.probe, tensor.index, STREAM_PERTURBATION
        )
        u = torch.randn(d_out, self.rank, generator=gen, device=tensor.param.device)
        period = ctx.step // self.refresh_every
        v = self.right_factor(tensor, ctx.base_seed, period)
        # V is fixed for the whole period: transforms may keep state in U's coordinates.
        return LowRankDirection(u, v, transposed=tensor.transposed, basis_key=period)
