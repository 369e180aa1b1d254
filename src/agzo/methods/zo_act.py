"""ZO-Act (Dong et al., arXiv 2607.01125): a basis computed once, coefficients trained.

`prepare` runs one calibration pass over the first training batch: each linear layer
(embeddings and the output head excepted) gets a fixed basis A (d_in x r), the top-r right
singular vectors of its inputs, and trainable coefficients C (d_out x r, float32, zero), so
that W = W₀ + C Aᵀ (`agzo.adapters.zo_act`). The zeroth-order step then perturbs C alone
with Gaussian probes, two-sided by default, and Adam (the default) or SGD keeps its state
in C's own coordinates: C plus two moments, 3·d_out·r floats per layer. The base weights
are never written, so they may stay in bfloat16 or be quantized (`--quantize 8|4`).

Choices where the paper is silent: the calibration batch is the run's first training
batch (the same one on resume); the basis is exact (an SVD of the layer's inputs, padding
excluded); the default learning rate, 1e-3, is a first guess for Adam on C, not measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from agzo.adapters.zo_act import adapted_layers, attach, calibrate
from agzo.core.optimizer import ParamsLike, ZerothOrderOptimizer
from agzo.directions.gaussian import GaussianSampler
from agzo.methods.options import ZerothOrderOptions, check, option
from agzo.methods.registry import BuildContext, Method, register


@dataclass(frozen=True)
class ZOActOptions(ZerothOrderOptions):
    lr: float = option(1e-3, "learning rate of the update on the coefficients C")
    update: str = option("adam", "update rule on C: adam | sgd | momentum")
    two_sided: bool = option(True, "two-sided difference; false: one-sided")
    rank: int = option(1, "basis rank r per linear layer")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rank >= 1, f"rank must be >= 1, got {self.rank}")


_DEFAULTS = ZOActOptions()


def prepare(
    model: nn.Module,
    options: ZOActOptions,
    calibration_batch: Any,
    forward: Callable[[Any], Any],
    base_spec: str | None = None,
) -> nn.Module:
    """Calibrate each linear layer's basis on one batch and attach zero coefficients;
    every base parameter is frozen. A model that already has them is returned as it is."""
    if any(True for _ in adapted_layers(model)):
        return model
    bases = calibrate(model, calibration_batch, options.rank, forward)
    attach(model, bases)
    model.agzo_zo_act = {"base_model": base_spec, "rank": options.rank}  # type: ignore[assignment]
    return model


class ZOAct(ZerothOrderOptimizer):
    """Zeroth-order training of ZO-Act's coefficients C on a prepared model."""

    def __init__(
        self,
        params: ParamsLike,
        lr: float = _DEFAULTS.lr,
        eps: float = _DEFAULTS.eps,
        update: Any = _DEFAULTS.update,
        two_sided: bool = _DEFAULTS.two_sided,
        queries: int = _DEFAULTS.queries,
        **kwargs: Any,
    ) -> None:
        model = params if isinstance(params, nn.Module) else kwargs.get("model")
        if model is not None and not any(True for _ in adapted_layers(model)):
            raise ValueError(
                "ZO-Act trains the coefficients of a prepared model: call "
                "agzo.methods.zo_act.prepare(model, options, calibration_batch, forward) first"
            )
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


def _build(model: nn.Module, options: ZOActOptions, context: BuildContext) -> ZOAct:
    kwargs = options.optimizer_kwargs(context)
    return ZOAct(model, **kwargs)


register(
    Method(
        name="zo-act",
        summary="ZO-Act: a fixed activation basis per layer, coefficients C trained (W0 + C A^T)",
        options=ZOActOptions,
        build_optimizer=_build,
        zeroth_order=True,
        optimizer_class=ZOAct,
        prepare=prepare,
        trains_base_weights=False,
    )
)
