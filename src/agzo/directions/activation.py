"""Activation-guided probes (AGZO): perturb only where the gradient can be.

For a linear weight the gradient's rows lie in the span of the layer's inputs, so
Δ = R Aᵀ with A the captured top-r input basis (d_in x r, orthonormal) and
R ~ N(0, I) (d_out x r): every row of Δ lies in span(A).

Embedding tables (beyond the paper): the input is one-hot, so the gradient is non-zero
only in the rows of the tokens the batch looked up. With `embedding_mode="activation"`
the probe is Gaussian on those rows only; a table tied to the output head also gets the
head's low-rank part R Aᵀ (A from the final hidden states), since its gradient is the sum
of both. `embedding_mode="gaussian"` is the paper's fallback: a Gaussian over the whole
table. Every other tensor (norms, biases) gets a Gaussian probe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch

from agzo.directions.base import (
    DenseDirection,
    Direction,
    LowRankDirection,
    RowDirection,
    SumDirection,
    ZeroDirection,
)
from agzo.directions.gaussian import gaussian_direction
from agzo.directions.low_rank import low_rank_dims
from agzo.directions.sampler import DirectionSampler, ObservationContext, ProbeContext
from agzo.observe import AccumulatedCapture, ActivationCapture, CapturedSubspaces
from agzo.observe.token_rows import TokenRows
from agzo.params import TrainableTensor
from agzo.seeding import (
    STREAM_PERTURBATION,
    STREAM_SHARED_FACTORS,
    STREAM_SHARED_SMALL,
    split_draw,
)

EmbeddingMode = Literal["activation", "gaussian"]
EMBEDDING_MODES: tuple[str, ...] = ("activation", "gaussian")
# How each layer's basis is found: K power-iteration steps (the method), or an exact SVD
# of the layer's input (a reference for what power iteration approximates).
BASES: tuple[str, ...] = ("power", "svd")


class ActivationSampler(DirectionSampler):
    """Probes inside each linear layer's top-`rank` input subspace, found by `power_steps`
    power-iteration steps while the unperturbed pass runs (its own observation)."""

    observes_model = True

    def __init__(
        self,
        rank: int = 1,
        power_steps: int = 3,
        embedding_mode: EmbeddingMode = "activation",
        energy: float = 1.0,
        basis: str = "power",
    ) -> None:
        if basis not in BASES:
            raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if power_steps < 0:
            raise ValueError(f"power_steps must be >= 0, got {power_steps}")
        if embedding_mode not in EMBEDDING_MODES:
            raise ValueError(
                f"embedding_mode must be one of {EMBEDDING_MODES}, got {embedding_mode!r}"
            )
        if not 0.0 < energy <= 1.0:
            raise ValueError(f"energy must be in (0, 1], got {energy}")
        self.rank = rank
        self.power_steps = power_steps
        self.embedding_mode = embedding_mode
        self.energy = energy
        self.basis = basis
        self.last_ranks: dict[int, torch.Tensor] = {}  # with an adaptive rank (energy < 1)

    def settings(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "power_steps": self.power_steps,
            "embedding_mode": self.embedding_mode,
            "energy": self.energy,
            # Only when not the default: states saved before the option existed still load.
            **({"basis": self.basis} if self.basis != "power" else {}),
        }

    def observer(self, context: ObservationContext) -> ActivationCapture:
        # A batch evaluated in micro-batches: with one power step the sum over them is
        # exact (`agzo.observe.accumulate`); with more, each micro-batch gets its own K
        # steps and the bases are merged (`merge_bases`, approximate).
        accumulated = context.micro_batches > 1 and self.power_steps == 1 and self.basis == "power"
        capture = AccumulatedCapture if accumulated else ActivationCapture
        return capture(
            context.tensors,
            self.rank,
            self.power_steps,
            context.step_seed,
            root=context.model,
            attention_mask=context.attention_mask,
            reducer=context.reducer,
            energy=self.energy,
            exact=self.basis == "svd",
        )

    def sample_all(self, tensors: Sequence[TrainableTensor], ctx: ProbeContext) -> list[Direction]:
        """Every tensor's direction for one probe.

        The d_out x r factors R of all linear parts come from one draw per device, and so
        do the Gaussians of the small tensors (norms, biases), kept for the step instead
        of regenerated: two kernel launches per probe instead of one per tensor per use.
        """
        observed = ctx.observed
        if not isinstance(observed, CapturedSubspaces):
            raise RuntimeError("ActivationSampler needs the subspaces of its observed forward pass")
        self.last_ranks = observed.ranks
        factor_shapes: dict[int, tuple[int, int]] = {}
        small: list[TrainableTensor] = []
        for tensor in tensors:
            basis = observed.bases.get(tensor.index)
            if tensor.is_embedding and self.embedding_mode == "gaussian":
                continue
            if basis is not None and (tensor.is_linear_weight or tensor.is_embedding):
                factor_shapes[tensor.index] = (low_rank_dims(tensor)[0], basis.shape[1])
            elif not (tensor.is_linear_weight or tensor.is_embedding) and (
                tensor.param.numel() <= SMALL_TENSOR
            ):
                small.append(tensor)
        by_index = {t.index: t for t in tensors}
        factors = _shared_draw(
            {i: (shape, by_index[i].param.device) for i, shape in factor_shapes.items()},
            (ctx.step_seed, ctx.probe, STREAM_SHARED_FACTORS),
        )
        stored = _shared_draw(
            {t.index: (tuple(t.param.shape), t.param.device) for t in small},
            (ctx.step_seed, ctx.probe, STREAM_SHARED_SMALL),
        )
        return [self._direction(t, ctx, observed, factors, stored) for t in tensors]

    def _direction(
        self,
        tensor: TrainableTensor,
        ctx: ProbeContext,
        observed: CapturedSubspaces,
        factors: dict[int, torch.Tensor],
        stored: dict[int, torch.Tensor],
    ) -> Direction:
        basis = observed.bases.get(tensor.index)
        rows = observed.token_rows.get(tensor.index)
        if tensor.is_embedding:
            if self.embedding_mode == "gaussian":
                return gaussian_direction(tensor, ctx)
            parts: list[Direction] = []
            if basis is not None:
                parts.append(self._linear_part(tensor, basis, factors[tensor.index]))
            if rows is not None:
                parts.append(self._row_part(tensor, rows, ctx))
            if not parts:
                return ZeroDirection(tensor.param.shape, tensor.param.device)
            return parts[0] if len(parts) == 1 else SumDirection(parts)
        if tensor.is_linear_weight:
            if basis is None:
                # The layer did not run in this forward pass: its gradient is exactly zero.
                return ZeroDirection(tensor.param.shape, tensor.param.device)
            return self._linear_part(tensor, basis, factors[tensor.index])
        if tensor.index in stored:
            return DenseDirection(stored[tensor.index])
        return gaussian_direction(tensor, ctx)

    def _linear_part(
        self, tensor: TrainableTensor, basis: torch.Tensor, factor: torch.Tensor
    ) -> LowRankDirection:
        return LowRankDirection(factor, basis.to(tensor.param.device), transposed=tensor.transposed)

    def _row_part(
        self, tensor: TrainableTensor, rows: TokenRows, ctx: ProbeContext
    ) -> RowDirection:
        # A stream distinct from the linear part's, so a tied table's two parts are independent.
        seed_parts = (ctx.step_seed, ctx.probe, tensor.index, STREAM_PERTURBATION, 1)
        return RowDirection(tensor.param.shape, rows, tensor.param.device, seed_parts)


# Tensors up to this many entries that no linear layer or embedding uses (norms, biases)
# get a Gaussian probe drawn with the others and kept for the step; larger ones are
# regenerated from their own seed on every use, so that no big copy is held.
SMALL_TENSOR = 1 << 20


def _shared_draw(
    shapes: dict[int, tuple[tuple[int, ...], torch.device]], parts: tuple[int, ...]
) -> dict[int, torch.Tensor]:
    """One Gaussian draw per device for every listed tensor, as views of the given shapes."""
    out: dict[int, torch.Tensor] = {}
    devices = dict.fromkeys(device for _, device in shapes.values())
    for device in devices:
        mine = {i: shape for i, (shape, d) in shapes.items() if d == device}
        sizes = [math.prod(shape) for shape in mine.values()]
        for (i, shape), flat in zip(mine.items(), split_draw(sizes, device, *parts)):
            out[i] = flat.view(shape)
    return out
