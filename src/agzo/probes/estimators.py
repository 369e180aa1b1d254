"""Named estimator variants for the probes: every registered zeroth-order method, AGZO's
rank and power-step grid, and its embedding options."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from torch import nn

import agzo
from agzo.directions.activation import EmbeddingMode
from agzo.methods import BuildContext, Method, methods
from agzo.probes.alignment import OptimizerFactory


def estimator_variants(
    include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> dict[str, OptimizerFactory]:
    """name -> factory(model, seed); every variant trains the same selected tensors."""

    def agzo_variant(
        rank: int,
        steps: int,
        embedding: EmbeddingMode = "activation",
        energy: float = 1.0,
        basis: str = "power",
    ) -> OptimizerFactory:
        def make(model: nn.Module, seed: int) -> agzo.ZerothOrderOptimizer:
            return agzo.AGZO(
                model,
                rank=rank,
                power_steps=steps,
                embedding_mode=embedding,
                energy=energy,
                basis=basis,
                seed=seed,
                include=include,
                exclude=exclude,
            )

        return make

    def registered(method: Method) -> OptimizerFactory:
        def make(model: nn.Module, seed: int) -> agzo.ZerothOrderOptimizer:
            context = BuildContext(seed=seed, include=include, exclude=exclude)
            return cast(agzo.ZerothOrderOptimizer, method.build(model, method.defaults(), context))

        return make

    # Every zeroth-order method that trains the model's own weights (the cosine is taken
    # against their gradient), with its defaults; then AGZO's paper grid.
    variants: dict[str, OptimizerFactory] = {
        m.name: registered(m) for m in methods() if m.zeroth_order and m.prepare is None
    }
    variants["agzo-embed-gaussian"] = agzo_variant(1, 3, "gaussian")
    for rank in (4, 16):
        variants[f"agzo-r{rank}"] = agzo_variant(rank, 3)
    # An adaptive rank up to 4: per layer, the fewest directions holding 90% of the energy.
    variants["agzo-adaptive"] = agzo_variant(4, 3, energy=0.9)
    for steps in (1, 5, 20):
        variants[f"agzo-k{steps}"] = agzo_variant(1, steps)
    # The exact top-1 SVD basis: what K power steps approximate.
    variants["agzo-svd"] = agzo_variant(1, 3, basis="svd")
    return variants
