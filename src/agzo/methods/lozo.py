"""LOZO and LOZO-M: low-rank zeroth-order SGD (Chen et al., 2024).

Δ = U Vᵀ with U redrawn every step and V every `refresh_every` steps. LOZO-M
(momentum > 0) keeps its momentum on the d_out x r factor, N ← βN + (1−β)gU,
W ← W − ηNVᵀ, r/d_in of a dense buffer; when V is redrawn N is carried into the new
factor by least squares. It is the momentum transform with its state in the probe's
coordinates (`agzo.core.transforms`), not a path of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from agzo.core.optimizer import ParamsLike, ZerothOrderOptimizer
from agzo.core.transforms import Transform, chain, momentum, weight_decay
from agzo.directions.low_rank import LowRankSampler
from agzo.methods.options import ZerothOrderOptions, check, option
from agzo.methods.registry import BuildContext, Method, register


@dataclass(frozen=True)
class LOZOOptions(ZerothOrderOptions):
    lr: float = option(3e-6, "learning rate")
    two_sided: bool = option(True, "two-sided difference; false: one-sided")
    rank: int = option(2, "rank r of the probe U V^T (LOZO paper: 2)")
    refresh_every: int = option(50, "redraw V every N steps")
    factor_momentum: float = option(0.0, "LOZO-M: momentum beta on the low-rank factor (0: off)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rank >= 1, f"rank must be >= 1, got {self.rank}")
        check(self.refresh_every >= 1, f"refresh_every must be >= 1, got {self.refresh_every}")
        check(
            0.0 <= self.factor_momentum < 1.0,
            f"factor_momentum must be in [0, 1), got {self.factor_momentum}",
        )
        check(
            not (self.factor_momentum and self.update != "sgd"),
            "LOZO-M (factor_momentum > 0) is its own update rule; leave update at sgd",
        )


_DEFAULTS = LOZOOptions()


def lozo_m(beta: float) -> Transform:
    """LOZO-M's update: an exponential average of the estimate on U's coordinates."""
    return chain(momentum(beta, dampening=beta, coordinates="probe"), weight_decay())


class LOZO(ZerothOrderOptimizer):
    """Low-rank zeroth-order SGD; momentum > 0 gives LOZO-M (see the module doc)."""

    def __init__(
        self,
        params: ParamsLike,
        lr: float = _DEFAULTS.lr,
        eps: float = _DEFAULTS.eps,
        rank: int = _DEFAULTS.rank,
        refresh_every: int = _DEFAULTS.refresh_every,
        momentum: float = _DEFAULTS.factor_momentum,
        two_sided: bool = _DEFAULTS.two_sided,
        update: Any = _DEFAULTS.update,
        queries: int = _DEFAULTS.queries,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if momentum and update != "sgd":
            raise ValueError("LOZO-M (momentum > 0) applies its own update; leave update='sgd'")
        self.momentum = momentum
        self.low_rank = LowRankSampler(rank, refresh_every)
        super().__init__(
            params,
            self.low_rank,
            lozo_m(momentum) if momentum else update,
            lr=lr,
            eps=eps,
            two_sided=two_sided,
            queries=queries,
            **kwargs,
        )


def _build(model: nn.Module, options: LOZOOptions, context: BuildContext) -> LOZO:
    return LOZO(
        model,
        rank=options.rank,
        refresh_every=options.refresh_every,
        momentum=options.factor_momentum,
        **options.optimizer_kwargs(context),
    )


register(
    Method(
        name="lozo",
        summary="LOZO: low-rank probes U V^T with V redrawn every N steps (LOZO-M with momentum)",
        options=LOZOOptions,
        build_optimizer=_build,
        zeroth_order=True,
        optimizer_class=LOZO,
    )
)
