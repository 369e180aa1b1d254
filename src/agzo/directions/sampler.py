"""The contract every direction sampler follows: what it observes, and where it probes.

A sampler may observe the unperturbed forward pass (AGZO: each linear layer's input
subspace) by returning an observer from `observer`; the optimizer runs it around that
pass and hands its result back in `ProbeContext.observed`. Then `sample` builds the
direction of each trainable tensor, as a pure function of (tensor, context), so that
every use of a direction in a step (perturb, restore, update) regenerates the same one.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agzo.core.reduce import LOCAL, Reducer
from agzo.directions.base import Direction
from agzo.observe import Observer
from agzo.params import TrainableTensor


@dataclass(frozen=True)
class ObservationContext:
    """What an observer of the unperturbed pass may use.

    tensors: the trainable tensors (with the modules that consume them); step_seed: this
    step's seed; model: the hooked module; attention_mask: (batch, seq) with 1 on real
    tokens, or None to read it from the model call; reducer: sums and unions over the
    examples of the step (see `agzo.core.reduce`); micro_batches: how many model calls
    the observed pass splits its batch into (gradient accumulation).
    """

    tensors: Sequence[TrainableTensor]
    step_seed: int
    model: nn.Module | None
    attention_mask: torch.Tensor | None = None
    reducer: Reducer = LOCAL
    micro_batches: int = 1


@dataclass(frozen=True)
class ProbeContext:
    """What a sampler may use to build one step's directions.

    step: optimizer step count (0-based); step_seed: the seed of this step's noise;
    base_seed: the optimizer's seed (for draws that persist over several steps);
    probe: index of the probe within the step (several probes average their estimates);
    observed: the result of the sampler's own observer, if it has one; keep_noise: Gaussian
    directions draw their noise once and keep it for the step's later uses, instead of
    drawing it again each time (the same numbers; memory for speed).
    """

    step: int
    step_seed: int
    base_seed: int
    probe: int = 0
    observed: Any = None
    keep_noise: bool = False


class DirectionSampler(ABC):  # noqa: B024 (either sample or sample_all is overridden)
    """Builds each tensor's Δ for a probe, as a pure function of (tensors, context)."""

    #: True when the sampler observes the model's layers (it then needs the model).
    observes_model: bool = False

    def observer(self, context: ObservationContext) -> Observer | None:
        """What to run around the unperturbed pass; None: nothing to observe."""
        return None

    def settings(self) -> dict[str, Any]:
        """The hyperparameters that decide the directions (checked when state is loaded)."""
        return {}

    def sample_all(self, tensors: Sequence[TrainableTensor], ctx: ProbeContext) -> list[Direction]:
        """Every tensor's direction for one probe (a sampler may share one draw among
        them); a pure function of (tensors, context)."""
        return [self.sample(t, ctx) for t in tensors]

    def sample(self, tensor: TrainableTensor, ctx: ProbeContext) -> Direction:
        """The direction for `tensor` alone, for samplers whose tensors are independent."""
        raise NotImplementedError(
            f"{type(self).__name__} samples every tensor of a probe together: use sample_all"
        )
