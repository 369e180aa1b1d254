"""Gradient alignment: how well does an estimator's g·Δ point along the true gradient?

The true gradient ∇ is computed once by backprop. Each draw then builds the estimator's
own probe Δ (the same sampler and seeds training uses, with the activation capture for
AGZO) and takes the μ → 0 limit of its estimate, ⟨∇, Δ⟩Δ. Its cosine with ∇ is

    cos = |⟨∇, Δ⟩| / (‖Δ‖ ‖∇‖),

which needs only per-tensor dot products and norms: Δ is materialized one tensor at a
time, so the probe fits wherever backprop fits. Per layer, the local cosine
|⟨∇ₜ, Δₜ⟩| / (‖Δₜ‖ ‖∇ₜ‖) says how well that tensor's probe is aimed, and for activation
probes the captured fraction ‖∇ₜ A Aᵀ‖ / ‖∇ₜ‖ says how much of the layer's gradient the
subspace can represent at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from agzo.core.optimizer import ZerothOrderOptimizer
from agzo.directions import ProbeContext
from agzo.observe import CapturedSubspaces
from agzo.seeding import derive_seed

OptimizerFactory = Callable[[nn.Module, int], ZerothOrderOptimizer]


@dataclass
class Summary:
    mean: float
    ci95: float  # half-width of the normal 95% interval of the mean
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        n = len(values)
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        return cls(mean, 1.96 * math.sqrt(var / n), n)


@dataclass
class AlignmentResult:
    name: str
    cosine: Summary
    per_tensor: dict[str, Summary] = field(default_factory=dict)
    captured_fraction: dict[str, float] = field(default_factory=dict)
    # With an adaptive rank: the rank each linear weight used, in the first draw.
    ranks: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "cosine": vars(self.cosine),
            "per_tensor": {k: vars(v) for k, v in self.per_tensor.items()},
            "captured_fraction": self.captured_fraction,
            "ranks": self.ranks,
        }


def true_gradient(model: nn.Module, closure: Callable[[], torch.Tensor]) -> dict[int, torch.Tensor]:
    """∇ of the closure's loss, keyed by id(param), in float32; leaves no .grad behind."""
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = closure()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    return {
        id(p): (g.detach().float() if g is not None else torch.zeros_like(p, dtype=torch.float32))
        for p, g in zip(params, grads)
    }


def measure_alignment(
    model: nn.Module,
    closure: Callable[[], torch.Tensor],
    estimators: dict[str, OptimizerFactory],
    draws: int = 30,
    attention_mask: torch.Tensor | None = None,
    gradient: dict[int, torch.Tensor] | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> list[AlignmentResult]:
    """Expected cosine between each estimator's g·Δ and the backprop gradient.

    estimators: name -> factory(model, seed) building the optimizer whose probes are
    measured (only its sampler and tensor selection are used; no step is taken).
    The cosine is taken over the tensors each optimizer trains.
    """
    grads = gradient if gradient is not None else true_gradient(model, closure)
    results = []
    for name, factory in estimators.items():
        cosines: list[float] = []
        local: dict[str, list[float]] = {}
        fractions: dict[str, float] = {}
        ranks: dict[str, int] = {}
        for draw in range(draws):
            opt = factory(model, draw)
            step_seed = derive_seed(opt.seed, 0)
            observed = opt.observation(closure, step_seed, attention_mask)
            probe = opt.probe(ProbeContext(0, step_seed, opt.seed, observed=observed))
            captured = observed if isinstance(observed, CapturedSubspaces) else None
            if draw == 0 and captured is not None:
                names = {t.index: t.name for t in opt.tensors}
                ranks = {names[i]: int(r) for i, r in captured.ranks.items()}
            dot, delta_sq, grad_sq = 0.0, 0.0, 0.0
            for tensor, direction in zip(probe.tensors, probe.directions):
                g = grads[id(tensor.param)]
                delta = direction.dense()
                t_dot = float((g * delta).sum())
                t_delta = float(delta.square().sum())
                t_grad = float(g.square().sum())
                dot, delta_sq, grad_sq = dot + t_dot, delta_sq + t_delta, grad_sq + t_grad
                if t_delta > 0 and t_grad > 0:
                    cos_t = abs(t_dot) / math.sqrt(t_delta * t_grad)
                    local.setdefault(tensor.name, []).append(cos_t)
                if draw == 0 and captured is not None and tensor.index in captured.bases:
                    fractions[tensor.name] = captured_fraction(
                        g, captured.bases[tensor.index], tensor.transposed
                    )
            denominator = math.sqrt(delta_sq * grad_sq)
            cosines.append(abs(dot) / denominator if denominator > 0 else 0.0)
            if progress is not None:
                progress(name, draw)
        results.append(
            AlignmentResult(
                name,
                Summary.of(cosines),
                {k: Summary.of(v) for k, v in local.items()},
                fractions,
                ranks,
            )
        )
    return results


def captured_fraction(grad: torch.Tensor, basis: torch.Tensor, transposed: bool) -> float:
    """‖∇ A Aᵀ‖ / ‖∇‖: the share of a linear weight's gradient inside the subspace."""
    rows = grad.T if transposed else grad
    basis = basis.to(rows.dtype)
    projected = (rows @ basis) @ basis.T
    norm = float(rows.norm())
    return float(projected.norm()) / norm if norm > 0 else 0.0


def plot_alignment(results: Sequence[AlignmentResult], path: str) -> None:
    """Bar chart of each estimator's expected cosine with its 95% interval (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(results) + 1), 3.5))
    names = [r.name for r in results]
    means = [r.cosine.mean for r in results]
    errors = [r.cosine.ci95 for r in results]
    ax.bar(names, means, yerr=errors, capsize=3, color="tab:blue")
    ax.set_yscale("log")
    ax.set_ylabel("E[cos(g·Δ, ∇)]")
    ax.tick_params(axis="x", rotation=45)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
