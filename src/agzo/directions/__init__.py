"""Where a zeroth-order step probes: one sampler per family of methods."""

from agzo.directions.activation import EMBEDDING_MODES, ActivationSampler
from agzo.directions.base import (
    Direction,
    GaussianDirection,
    LowRankDirection,
    RowDirection,
    SumDirection,
    ZeroDirection,
)
from agzo.directions.gaussian import GaussianSampler
from agzo.directions.low_rank import LowRankSampler
from agzo.directions.sampler import DirectionSampler, ProbeContext

__all__ = [
    "EMBEDDING_MODES",
    "ActivationSampler",
    "Direction",
    "DirectionSampler",
    "GaussianDirection",
    "GaussianSampler",
    "LowRankDirection",
    "LowRankSampler",
    "ProbeContext",
    "RowDirection",
    "SumDirection",
    "ZeroDirection",
]
