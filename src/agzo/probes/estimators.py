"""Named estimator variants for the probes: every registered zeroth-order method, AGZO's
rank and power-step grid, and its embedding options."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from torch import nn

import agzo
from agzo.methods import BuildContext, get_method, methods
from agzo.probes.alignment import OptimizerFactory

# AGZO's settings the probes compare with its defaults (r = 1, K = 3, activation-probed
# embeddings): the paper's Gaussian embedding probe, higher ranks, an adaptive rank up to
# 4 (per layer, the fewest directions holding 90% of the energy), the power-step grid,
# and the exact top-1 SVD basis that K power steps approximate.
AGZO_VARIANTS: dict[str, dict[str, Any]] = {
    "agzo-embed-gaussian": {"embedding_mode": "gaussian"},
    "agzo-r4": {"rank": 4},
    "agzo-r16": {"rank": 16},
    "agzo-adaptive": {"rank": 4, "energy": 0.9},
    "agzo-k1": {"power_steps": 1},
    "agzo-k5": {"power_steps": 5},
    "agzo-k20": {"power_steps": 20},
    "agzo-svd": {"basis": "svd"},
}


# Variants of cost alone: a method with each step's Gaussian noise kept instead of drawn
# again (`keep_noise`), measured beside the same method drawing it. Their probes are the
# method's own, so alignment has nothing to compare and leaves them out.
KEPT_NOISE_VARIANTS: dict[str, str] = {"mezo-kept-noise": "mezo"}


def kept_noise_variant(name: str) -> tuple[str, bool]:
    """(the variant or method the name stands for, whether its noise is kept)."""
    return (KEPT_NOISE_VARIANTS[name], True) if name in KEPT_NOISE_VARIANTS else (name, False)


def variant_settings() -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (registered method, options given beside its defaults): every zeroth-order
    method that trains the model's own weights (a probe's cosine is taken against their
    gradient), then AGZO's variants."""
    named: dict[str, tuple[str, dict[str, Any]]] = {
        m.name: (m.name, {}) for m in methods() if m.zeroth_order and m.prepare is None
    }
    return named | {name: ("agzo", options) for name, options in AGZO_VARIANTS.items()}


def variant_of(name: str) -> tuple[str, dict[str, Any]]:
    """(registered method, options) behind a probe variant's name; a method's own name
    (or any other) stands for itself with no options."""
    return variant_settings().get(name, (name, {}))


def method_of(name: str) -> str:
    """The registered method behind a probe's name (a method, a variant, a kept-noise
    variant)."""
    return variant_of(kept_noise_variant(name)[0])[0]


def estimator_variants(
    include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> dict[str, OptimizerFactory]:
    """name -> factory(model, seed); every variant trains the same selected tensors."""

    def factory(method: str, options: dict[str, Any]) -> OptimizerFactory:
        spec = get_method(method)

        def make(model: nn.Module, seed: int) -> agzo.ZerothOrderOptimizer:
            context = BuildContext(seed=seed, include=include, exclude=exclude)
            built = spec.build(model, spec.make_options(**options), context)
            return cast(agzo.ZerothOrderOptimizer, built)

        return make

    return {name: factory(*setting) for name, setting in variant_settings().items()}
