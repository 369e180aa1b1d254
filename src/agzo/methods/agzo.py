"""AGZO: activation-guided zeroth-order optimization (Lin et al., ICML 2026).

The unperturbed pass doubles as the observation: hooks on every linear layer extract the
top-`rank` input directions with `power_steps` power-iteration steps, and linear weights
are probed with Δ = R Aᵀ inside that subspace (`agzo.directions.activation`, also for
embeddings and other tensors). One-sided by default: the observed pass is f(W₀).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from agzo.core.optimizer import ParamsLike, ZerothOrderOptimizer
from agzo.directions.activation import (
    BASES,
    EMBEDDING_MODES,
    ActivationSampler,
    EmbeddingMode,
)
from agzo.methods.options import ZerothOrderOptions, check, option
from agzo.methods.registry import BuildContext, Method, register


@dataclass(frozen=True)
class AGZOOptions(ZerothOrderOptions):
    # 1e-4 learns the embedded generated task in 150 steps; on SST-2 with every
    # parameter trained it diverges, and the study chose 3e-5 there (a task's own rate,
    # `BenchmarkTask.chosen_rates`, comes first).
    lr: float = option(1e-4, "learning rate (a task's study-chosen rate first: `agzo tasks`)")
    rank: int = option(1, "subspace rank r per linear layer (paper: 1)")
    power_steps: int = option(3, "power-iteration steps K (paper: 3)")
    embedding_mode: str = option("activation", "embedding probes: " + " | ".join(EMBEDDING_MODES))
    energy: float = option(
        1.0,
        "adaptive rank: per layer and step, the fewest of the rank directions that capture "
        "this share of the input's energy (1: always rank)",
    )

    basis: str = option(
        "power",
        "each layer's basis: power (K power-iteration steps, the paper's) | svd (the exact "
        "top-r SVD of the layer's input, a reference; one process only)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.basis in BASES, f"unknown basis {self.basis!r}; choose {' | '.join(BASES)}")
        check(self.rank >= 1, f"rank must be >= 1, got {self.rank}")
        check(self.power_steps >= 0, f"power_steps must be >= 0, got {self.power_steps}")
        check(0.0 < self.energy <= 1.0, f"energy must be in (0, 1], got {self.energy}")
        check(
            self.embedding_mode in EMBEDDING_MODES,
            f"unknown embedding_mode {self.embedding_mode!r}; "
            f"choose one of {', '.join(EMBEDDING_MODES)}",
        )


_DEFAULTS = AGZOOptions()


class AGZO(ZerothOrderOptimizer):
    """Activation-guided zeroth-order optimization (see the module doc)."""

    def __init__(
        self,
        params: ParamsLike,
        lr: float = _DEFAULTS.lr,
        eps: float = _DEFAULTS.eps,
        rank: int = _DEFAULTS.rank,
        power_steps: int = _DEFAULTS.power_steps,
        embedding_mode: EmbeddingMode = "activation",
        energy: float = _DEFAULTS.energy,
        basis: str = _DEFAULTS.basis,
        update: Any = _DEFAULTS.update,
        two_sided: bool = _DEFAULTS.two_sided,
        queries: int = _DEFAULTS.queries,
        **kwargs: Any,
    ) -> None:
        sampler = ActivationSampler(rank, power_steps, embedding_mode, energy, basis)
        super().__init__(
            params, sampler, update, lr=lr, eps=eps, two_sided=two_sided, queries=queries, **kwargs
        )
        self.rank = rank
        self.power_steps = power_steps

    def ranks(self) -> dict[str, int]:
        """With an adaptive rank: the rank each linear weight used in the last step."""
        sampler = cast(ActivationSampler, self.sampler)
        return {t.name: int(sampler.last_ranks[t.index]) for t in self.tensors
                if t.index in sampler.last_ranks}  # fmt: skip

    def step_statistics(self) -> dict[str, float]:
        """With an adaptive rank: the mean, least and most directions a linear weight
        kept in the last step (`ranks()` has each weight's)."""
        kept = list(cast(ActivationSampler, self.sampler).last_ranks.values())
        if not kept:
            return {}
        used = torch.stack([r.to(kept[0].device) for r in kept]).float()
        mean, least, most = torch.stack([used.mean(), used.min(), used.max()]).tolist()
        return {"rank_mean": mean, "rank_min": least, "rank_max": most}  # one host sync


def _build(model: nn.Module, options: AGZOOptions, context: BuildContext) -> AGZO:
    return AGZO(
        model,
        rank=options.rank,
        power_steps=options.power_steps,
        embedding_mode=options.embedding_mode,  # type: ignore[arg-type]
        energy=options.energy,
        basis=options.basis,
        **options.optimizer_kwargs(context),
    )


register(
    Method(
        name="agzo",
        summary="activation-guided ZO: probes inside each linear layer's top input subspace",
        options=AGZOOptions,
        build_optimizer=_build,
        zeroth_order=True,
        optimizer_class=AGZO,
        presets={
            # The paper's own setting: a Gaussian over every tensor that no linear layer
            # reads (the embedding table included), r = 1, K = 3, one-sided.
            "paper": {
                "embedding_mode": "gaussian",
                "rank": 1,
                "power_steps": 3,
                "two_sided": False,
                "energy": 1.0,
            },  # fmt: skip
        },
    )
)
