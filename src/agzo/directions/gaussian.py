"""Isotropic Gaussian probes (MeZO): Δ = z ~ N(0, I) for every tensor."""

from __future__ import annotations

from agzo.directions.base import Direction, GaussianDirection
from agzo.directions.sampler import DirectionSampler, ProbeContext
from agzo.params import TrainableTensor
from agzo.seeding import STREAM_PERTURBATION


def gaussian_direction(tensor: TrainableTensor, ctx: ProbeContext) -> GaussianDirection:
    """The Gaussian direction of `tensor` in this step; shared by every sampler's fallback."""
    param = tensor.param
    seed_parts = (ctx.step_seed, ctx.probe, tensor.index, STREAM_PERTURBATION)
    return GaussianDirection(param.shape, param.device, seed_parts, keep=ctx.keep_noise)


class GaussianSampler(DirectionSampler):
    def sample(self, tensor: TrainableTensor, ctx: ProbeContext) -> Direction:
        return gaussian_direction(tensor, ctx)
