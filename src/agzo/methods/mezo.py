"""MeZO: memory-efficient zeroth-order SGD (Malladi et al., 2023).

Isotropic Gaussian probes Δ = z ~ N(0, I) for every tensor, two-sided by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from agzo.core.optimizer import ParamsLike, ZerothOrderOptimizer
from agzo.directions.gaussian import GaussianSampler
from agzo.methods.options import ZerothOrderOptions, option
from agzo.methods.registry import BuildContext, Method, register


@dataclass(frozen=True)
class MeZOOptions(ZerothOrderOptions):
    # Chosen on dev by the 500-step SST-2 search with the language-model loss
    # (docs/RESULTS.md); a task's study-chosen rate comes first (`agzo tasks`).
    lr: float = option(3e-6, "learning rate")
    two_sided: bool = option(True, "two-sided difference (MeZO's SPSA); false: one-sided")


_DEFAULTS = MeZOOptions()


class MeZO(ZerothOrderOptimizer):
    """Memory-efficient zeroth-order SGD: isotropic Gaussian probes, two-sided by default."""

    def __init__(
        self,
        params: ParamsLike,
        lr: float = _DEFAULTS.lr,
        eps: float = _DEFAULTS.eps,
        two_sided: bool = _DEFAULTS.two_sided,
        update: Any = _DEFAULTS.update,
        queries: int = _DEFAULTS.queries,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            params,
            GaussianSampler(),
            update,
            lr=lr,
            eps=eps,
            two_sided=two_sided,
            queries=queries,
            **kwargs,
        )


def _build(model: nn.Module, options: MeZOOptions, context: BuildContext) -> MeZO:
    return MeZO(model, **options.optimizer_kwargs(context))


register(
    Method(
        name="mezo",
        summary="MeZO: isotropic Gaussian probes over every weight, two-sided SPSA",
        options=MeZOOptions,
        build_optimizer=_build,
        zeroth_order=True,
        optimizer_class=MeZO,
    )
)
