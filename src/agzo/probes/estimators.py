"""Named estimator variants for the probes: the paper's grid plus the embedding options."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

import agzo
from agzo.directions.activation import EmbeddingMode
from agzo.probes.alignment import OptimizerFactory


def estimator_variants(
    include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> dict[str, OptimizerFactory]:
    """name -> factory(model, seed); every variant trains the same selected tensors."""

    def agzo_variant(
        rank: int, steps: int, embedding: EmbeddingMode = "activation"
    ) -> OptimizerFactory:
        def make(model: nn.Module, seed: int) -> agzo.ZerothOrderOptimizer:
            return agzo.AGZO(
                model,
                rank=rank,
                power_steps=steps,
                embedding_mode=embedding,
                seed=seed,
                include=include,
                exclude=exclude,
            )

        return make

    variants: dict[str, OptimizerFactory] = {
        "mezo": lambda m, s: agzo.MeZO(m, seed=s, include=include, exclude=exclude),
        "lozo": lambda m, s: agzo.LOZO(m, seed=s, include=include, exclude=exclude),
        "agzo": agzo_variant(1, 3),
        "agzo-embed-gaussian": agzo_variant(1, 3, "gaussian"),
    }
    for rank in (4, 16):
        variants[f"agzo-r{rank}"] = agzo_variant(rank, 3)
    for steps in (1, 5, 20):
        variants[f"agzo-k{steps}"] = agzo_variant(1, steps)
    return variants
