"""The contract every direction sampler follows: where a step probes, tensor by tensor."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from agzo.capture import CapturedSubspaces
from agzo.directions.base import Direction
from agzo.params import TrainableTensor


@dataclass(frozen=True)
class ProbeContext:
    """What a sampler may use to build one step's directions.

    step: optimizer step count (0-based); step_seed: the seed of this step's noise;
    base_seed: the optimizer's seed (for draws that persist over several steps);
    probe: index of the probe within the step (several probes average their estimates);
    captured: the activation subspaces of the unperturbed pass, for samplers that ask.
    """

    step: int
    step_seed: int
    base_seed: int
    probe: int = 0
    captured: CapturedSubspaces | None = None


class DirectionSampler(ABC):
    """Builds Δ for one tensor. Must be a pure function of (tensor, context)."""

    #: True when the sampler needs `ProbeContext.captured` from an activation capture.
    needs_capture: bool = False

    @abstractmethod
    def sample(self, tensor: TrainableTensor, ctx: ProbeContext) -> Direction:
        """The direction for `tensor` in this step."""
