"""Gradient alignment: how well does an estimator's g·Δ point along the true gradient?

The true gradient ∇ is computed once by backprop. Each draw then builds the estimator's
own probe Δ (the same sampler and seeds training uses, with the activation capture for
AGZO) and takes the μ → 0 limit of its estimate, ⟨∇, Δ⟩Δ. Its cosine with ∇ is

    cos = |⟨∇, Δ⟩| / (‖Δ‖ ‖∇‖),

which needs only per-tensor dot products and norms: Δ is materialized one tensor at a
time, so the probe fits wherever backprop fits. Per layer, the local cosine
|⟨∇ₜ, Δₜ⟩| / (‖Δₜ‖ ‖∇ₜ‖) says how well that tensor's probe is aimed, and for activation
probes the captured fraction ‖∇ₜ A Aᵀ‖ / ‖∇ₜ‖ says how much of the layer's gradient the
subspace can represent at all. An estimator that trains part of the model (a layer subset,
adapters) is measured over its own tensors; its gradient share ‖∇_S‖ / ‖∇‖ turns that
cosine into the whole model's, cos · share, comparable across methods.

A better-aimed probe need not make a step do more: how far a step may go is set by the
loss's curvature along the probe. With `curvature=True` each draw also evaluates the loss
at W ± μΔ (μ the estimator's own eps), which gives

    ΔᵀHΔ ≈ (f(W+μΔ) + f(W−μΔ) − 2f(W)) / μ²     (second difference)
    g    = the estimator's own finite difference (two- or one-sided, as it trains)

and so the expected loss change of one SGD step W − ηgΔ in the quadratic model,
−η·E[g⟨∇,Δ⟩] + η²/2·E[g²ΔᵀHΔ]. Its minimum over η is at η* = E[g⟨∇,Δ⟩] / E[g²ΔᵀHΔ],
where the loss falls by E[g⟨∇,Δ⟩]² / (2E[g²ΔᵀHΔ]): the most one step of this estimator
can do on this batch, at the learning rate that does it. The Rayleigh quotient
ΔᵀHΔ / ‖Δ‖² says how curved the loss is along the probe's direction. The model is the
probed batch's: a step also descends along that batch's own noise, which other examples
do not share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from agzo.core.estimator import Probe
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
class OneStep:
    """An estimator's one-step quadratic model on the probed batch (see the module doc).

    The loss change of the step W − ηgΔ is modelled as −η·a + η²/2·b, with a = E[g⟨∇,Δ⟩]
    (descent along the gradient) and b = E[g²ΔᵀHΔ] (what the step's length costs through
    the curvature).
    """

    rayleigh: Summary  # ΔᵀHΔ / ‖Δ‖², the curvature along the probe's direction
    descent: float  # a
    cost: float  # b
    best_decrease_ci95: tuple[float, float]  # bootstrap percentile interval over draws
    negative_curvature_draws: int  # draws with ΔᵀHΔ < 0 (the quadratic model is local)

    @classmethod
    def of(cls, draws: Sequence[DrawCurvature], resamples: int = 2000) -> OneStep:
        def moments(sample: Sequence[DrawCurvature]) -> tuple[float, float]:
            n = len(sample)
            a = sum(d.g * d.directional for d in sample) / n
            return a, sum(d.g * d.g * d.curvature for d in sample) / n

        a, b = moments(draws)
        # A fixed generator: the same draws always give the same interval.
        generator = torch.Generator().manual_seed(0)
        picks = torch.randint(len(draws), (resamples, len(draws)), generator=generator)
        boot = sorted(_best_decrease(*moments([draws[i] for i in row])) for row in picks.tolist())
        return cls(
            Summary.of([d.curvature / d.delta_sq for d in draws]),
            a,
            b,
            (boot[int(0.025 * resamples)], boot[int(0.975 * resamples) - 1]),
            sum(d.curvature < 0 for d in draws),
        )

    @property
    def best_lr(self) -> float:
        """η* = a / b: the rate at which one step lowers the batch's loss the most."""
        return _best_lr(self.descent, self.cost)

    @property
    def best_decrease(self) -> float:
        """a² / 2b: how much one step at η* lowers the batch's loss."""
        return _best_decrease(self.descent, self.cost)

    def decrease_at(self, lr: float) -> float:
        """How much one step at `lr` lowers the batch's loss in the model: η·a − η²/2·b."""
        return lr * self.descent - lr * lr / 2 * self.cost

    def to_dict(self) -> dict[str, object]:
        return {
            **{k: v for k, v in vars(self).items() if k != "rayleigh"},
            "rayleigh": vars(self.rayleigh),
            "best_lr": self.best_lr,
            "best_decrease": self.best_decrease,
        }


def _best_lr(descent: float, cost: float) -> float:
    if descent <= 0:
        return 0.0
    return descent / cost if cost > 0 else math.inf


def _best_decrease(descent: float, cost: float) -> float:
    """max over η ≥ 0 of η·descent − η²/2·cost: 0 when the step does not descend (a
    learning rate is positive), unbounded when nothing curves the step back."""
    if descent <= 0:
        return 0.0
    if cost <= 0:
        return math.inf
    return descent * descent / (2 * cost)


@dataclass(frozen=True)
class DrawCurvature:
    """One draw's measurements along its probe Δ."""

    directional: float  # ⟨∇, Δ⟩ from backprop
    g: float  # the estimator's own finite difference
    curvature: float  # ΔᵀHΔ by second difference
    delta_sq: float  # ‖Δ‖²


@dataclass
class AlignmentResult:
    name: str
    cosine: Summary
    per_tensor: dict[str, Summary] = field(default_factory=dict)
    captured_fraction: dict[str, float] = field(default_factory=dict)
    # With an adaptive rank: the rank each linear weight used, in the first draw.
    ranks: dict[str, int] = field(default_factory=dict)
    one_step: OneStep | None = None  # with curvature=True
    gradient_share: float = 1.0  # ‖∇ over the estimator's tensors‖ / ‖∇ over the model‖

    @property
    def whole_model_cosine(self) -> float:
        """The cosine with the whole model's gradient: the probe is zero elsewhere."""
        return self.cosine.mean * self.gradient_share

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "cosine": vars(self.cosine),
            "per_tensor": {k: vars(v) for k, v in self.per_tensor.items()},
            "captured_fraction": self.captured_fraction,
            "ranks": self.ranks,
            "one_step": self.one_step.to_dict() if self.one_step is not None else None,
            "gradient_share": self.gradient_share,
            "whole_model_cosine": self.whole_model_cosine,
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
    curvature: bool = False,
    whole_norm: float | None = None,
) -> list[AlignmentResult]:
    """Expected cosine between each estimator's g·Δ and the backprop gradient.

    estimators: name -> factory(model, seed) building the optimizer whose probes are
    measured (only its sampler and tensor selection are used; no step is taken).
    The cosine is taken over the tensors each optimizer trains.
    curvature: also measure the loss along each probe and fit the one-step quadratic
    model (`OneStep`; two more forward passes per draw).
    whole_norm: the whole model's ‖∇‖ that gradient shares are taken of (default: over
    every trainable parameter of `model`; pass the base model's when `model` is an adapted
    copy whose trainable tensors stand in for its weights).
    """
    grads = gradient if gradient is not None else true_gradient(model, closure)
    norm = whole_norm if whole_norm is not None else gradient_norm(grads)
    f0 = _loss(closure) if curvature else math.nan
    results = []
    for name, factory in estimators.items():
        along: list[DrawCurvature] = []
        cosines: list[float] = []
        local: dict[str, list[float]] = {}
        fractions: dict[str, float] = {}
        ranks: dict[str, int] = {}
        share = 0.0
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
            share = math.sqrt(grad_sq) / norm if norm > 0 else 0.0
            denominator = math.sqrt(delta_sq * grad_sq)
            cosines.append(abs(dot) / denominator if denominator > 0 else 0.0)
            if curvature:
                along.append(_along_probe(closure, probe, opt, f0, dot, delta_sq))
            if progress is not None:
                progress(name, draw)
        results.append(
            AlignmentResult(
                name,
                Summary.of(cosines),
                {k: Summary.of(v) for k, v in local.items()},
                fractions,
                ranks,
                OneStep.of(along) if along else None,
                share,
            )
        )
    return results


def _loss(closure: Callable[[], torch.Tensor]) -> float:
    with torch.no_grad():
        return float(closure())


def _along_probe(
    closure: Callable[[], torch.Tensor],
    probe: Probe,
    opt: ZerothOrderOptimizer,
    f0: float,
    directional: float,
    delta_sq: float,
) -> DrawCurvature:
    """f(W ± μΔ) with the estimator's μ, then the weights shifted back (as MeZO's SPSA
    does: up to one rounding per shift)."""
    eps = opt.eps
    probe.shift(eps)
    offset = eps  # where the weights sit, in units of Δ: shifted back whatever happens
    try:
        f_plus = _loss(closure)
        probe.shift(-2 * eps)
        offset = -eps
        f_minus = _loss(closure)
    finally:
        probe.shift(-offset)
    g = (f_plus - f_minus) / (2 * eps) if opt.two_sided else (f_plus - f0) / eps
    return DrawCurvature(directional, g, (f_plus + f_minus - 2 * f0) / eps**2, delta_sq)


def gradient_norm(gradient: dict[int, torch.Tensor]) -> float:
    """‖∇‖ over every tensor of a gradient as `true_gradient` returns it."""
    return math.sqrt(sum(float(g.square().sum()) for g in gradient.values()))


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
