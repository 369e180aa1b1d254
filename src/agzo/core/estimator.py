"""Perturb, evaluate, difference: the measurement shared by every zeroth-order method.

A step measures q probes (`queries`), each with its own seed; their estimates are
averaged. One-sided estimates reuse the unperturbed loss f0 for every probe. A `Probe`
holds one direction per trainable tensor. Shifting the weights along it is
done tensor by tensor in place; if anything interrupts a shift (an exception, Ctrl-C)
the tensors already moved are moved back, so the model is never left half perturbed.
The estimators return where the weights sit after measuring (`offset`, in units of the
last Δ), so a single-probe SGD step can restore and step in one pass. Every shift back
regenerates the same Δ from its seed (or reuses it, with `keep_noise`), so W₀ is
recovered up to one rounding per shift.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch.autograd.profiler import record_function

from agzo.core.reduce import LOCAL, Reducer
from agzo.core.transforms import Gradient
from agzo.directions.base import DenseDirection, Direction, batchable, row_chunks
from agzo.params import TrainableTensor

Closure = Callable[[], "torch.Tensor | float"]


class NonFiniteLossError(ArithmeticError):
    """The closure returned NaN or infinity; the step was skipped, weights restored."""


class PrecisionWarning(UserWarning):
    """The perturbation μΔ is too small to change weights stored in a low-precision dtype."""


def loss_value(output: torch.Tensor | float) -> float:
    """The closure's loss as a Python float; a clear error for anything that is not scalar."""
    if isinstance(output, torch.Tensor):
        if output.numel() != 1:
            shape = tuple(output.shape)
            raise ValueError(f"the closure must return a scalar loss, got shape {shape}")
        return float(output.detach().item())
    if isinstance(output, (int, float)):
        return float(output)
    raise TypeError(f"the closure must return a scalar tensor or a float, got {type(output)!r}")


def evaluate(closure: Closure, reducer: Reducer = LOCAL) -> float:
    """The closure's loss, reduced over the step's examples; non-finite is an error."""
    with record_function("agzo.forward"):
        value = reducer.loss(loss_value(closure()))
    if not math.isfinite(value):
        raise NonFiniteLossError(f"the closure returned a non-finite loss ({value})")
    return value


@dataclass
class Probe:
    """One direction per trainable tensor, applied to all of them together."""

    tensors: Sequence[TrainableTensor]
    directions: Sequence[Direction]

    def shift(self, alpha: float) -> None:
        """W += alpha * Δ for every tensor; undone for all tensors if interrupted.

        Held small directions (AGZO's norms and biases) move in one multi-tensor add:
        one kernel launch for all of them.
        """
        pairs = [(t.param.data, d) for t, d in zip(self.tensors, self.directions)]
        single = [(p, d) for p, d in pairs if not batchable(p, d)]
        together = [(p, cast(DenseDirection, d).values) for p, d in pairs if batchable(p, d)]
        moved = 0
        try:
            with record_function("agzo.perturb"):
                for param, direction in single:
                    direction.add_to(param, alpha)
                    moved += 1
                if together:
                    params, values = zip(*together)
                    torch._foreach_add_(list(params), list(values), alpha=alpha)
        except BaseException:
            for param, direction in single[:moved]:
                direction.add_to(param, -alpha)
            raise


@dataclass(frozen=True)
class Estimate:
    """A step's measurement: projected gradients gₖ ≈ ∇f·Δₖ, one per probe.

    After measuring, the weights sit at W₀ + offset·Δ of the last probe: with one probe
    the update restores them in the same pass; with several, every probe was shifted back
    before the next one, and offset is 0.
    """

    probes: Sequence[Probe]
    gs: Sequence[float]
    offset: float
    loss: float  # the loss to report for this step
    f_plus: Sequence[float]
    f_minus: Sequence[float] | None = None

    def gradient(self, i: int) -> Gradient:
        """Tensor i's estimate Σₖ gₖ Δₖ / q (lazy)."""
        q = len(self.probes)
        return Gradient([(g / q, probe.directions[i]) for g, probe in zip(self.gs, self.probes)])

    @property
    def last(self) -> Probe:
        return self.probes[-1]


def _measure_shifted(
    evaluate_loss: Callable[[], float], probe: Probe, alpha: float, back: float
) -> float:
    """Shift by `alpha`, evaluate; on any failure shift by `back` (undo everything) first."""
    probe.shift(alpha)
    try:
        return evaluate_loss()
    except BaseException:
        probe.shift(back)
        raise


def one_sided(
    evaluate_loss: Callable[[], float],
    probes: Callable[[int], Probe],
    queries: int,
    eps: float,
    f0: float,
) -> Estimate:
    """gₖ = (f(W + μΔₖ) − f(W)) / μ for q probes, all reusing the unperturbed loss f0."""
    made, f_plus = [], []
    for k in range(queries):
        probe = probes(k)
        f_plus.append(_measure_shifted(evaluate_loss, probe, eps, -eps))
        made.append(probe)
        if queries > 1:
            probe.shift(-eps)  # back to W₀ before the next probe
    gs = [(fp - f0) / eps for fp in f_plus]
    return Estimate(made, gs, offset=eps if queries == 1 else 0.0, loss=f0, f_plus=f_plus)


def two_sided(
    evaluate_loss: Callable[[], float],
    probes: Callable[[int], Probe],
    queries: int,
    eps: float,
) -> Estimate:
    """gₖ = (f(W + μΔₖ) − f(W − μΔₖ)) / 2μ (SPSA) for q probes."""
    made, f_plus, f_minus = [], [], []
    for k in range(queries):
        probe = probes(k)
        f_plus.append(_measure_shifted(evaluate_loss, probe, eps, -eps))
        f_minus.append(_measure_shifted(evaluate_loss, probe, -2 * eps, eps))
        made.append(probe)
        if queries > 1:
            probe.shift(eps)  # back to W₀ before the next probe
    return Estimate(
        made,
        [(fp - fm) / (2 * eps) for fp, fm in zip(f_plus, f_minus)],
        offset=-eps if queries == 1 else 0.0,
        loss=sum(0.5 * (fp + fm) for fp, fm in zip(f_plus, f_minus)) / queries,
        f_plus=f_plus,
        f_minus=f_minus,
    )


def vanishing_fraction(param: torch.Tensor, direction: Direction, eps: float) -> float:
    """Share of the entries probed by Δ that W + μΔ leaves unchanged in W's dtype."""
    # Row by row, so that checking a large embedding costs no more memory than probing it.
    whole = None if direction.cheap_rows else direction.dense()
    unchanged = probed = 0
    for rows in row_chunks(param.shape):
        delta = whole[rows] if whole is not None else direction.dense_rows(rows)
        weights = param[rows]
        hit = delta != 0
        shifted = (weights.float() + eps * delta).to(param.dtype)
        unchanged += int(((shifted == weights) & hit).sum())
        probed += int(hit.sum())
    return unchanged / probed if probed else 0.0


def check_precision(probe: Probe, eps: float, threshold: float = 0.5) -> None:
    """Warn when μΔ rounds away in most probed entries of a low-precision weight."""
    for tensor, direction in zip(probe.tensors, probe.directions):
        if tensor.param.dtype not in (torch.float16, torch.bfloat16):
            continue
        fraction = vanishing_fraction(tensor.param.data, direction, eps)
        if fraction > threshold:
            warnings.warn(
                f"{tensor.name}: the perturbation eps*Δ leaves {fraction:.0%} of its "
                f"{tensor.param.dtype} entries unchanged, so the difference of losses "
                "mostly measures rounding. Raise eps or keep float32 master weights "
                "(load the model in float32).",
                PrecisionWarning,
                stacklevel=3,
            )
