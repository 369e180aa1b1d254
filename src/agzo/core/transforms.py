"""How a zeroth-order step moves the weights once the estimate is known.

For every tensor a step estimates the gradient as Σₖ gₖ Δₖ / q over its q probes
(`Gradient`, lazy: each Δ regenerates from its seed). A `Transform` maps that gradient to
the step's update, possibly keeping state (a momentum buffer, Adam's moments), and
`chain` composes transforms in order, in the manner of optax:

    chain(adam(), weight_decay())       # AdamW on the estimate
    chain(momentum(0.9), weight_decay())

The optimizer then applies W ← W(1 − η·decay) − η·update, `decay` being what
`weight_decay()` adds (decoupled, as in AdamW; it must come last). Plain SGD is the empty
chain: with one probe the optimizer fuses the restore of the perturbed weights and the
step into one in-place pass, W −= (offset + ηg)Δ, and nothing dense is ever formed.

State may live in the probe's coordinates. When every direction of a tensor is a low-rank
U Vᵀ whose right factor V stays fixed over several steps (`LowRankDirection.basis_key`:
LOZO's refresh period, a calibration basis), `coordinates="probe"` keeps the state on the
d_out x r factor, r/d_in of a dense buffer. When V changes, momentum is carried into the
new factor by least squares (N Vᵀ ≈ N' V'ᵀ) and Adam starts afresh. Tensors without such
a direction (norms, biases, AGZO's per-step bases) keep dense state.

Low-precision weights (bfloat16, float16): dense state is float32, and gradients, moments
and updates are formed a few rows at a time (`row_chunks`), so no float32 copy of a whole
weight is made beyond the state itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from agzo.directions.base import (
    DenseDirection,
    Direction,
    LowRankDirection,
    Rows,
    is_low_precision,
    row_chunks,
)

Coordinates = Literal["weights", "probe"]
COORDINATES: tuple[str, ...] = ("weights", "probe")


class Gradient(Direction):
    """Σₖ cₖ Δₖ over a step's probes, for one tensor (cₖ = gₖ / q)."""

    def __init__(self, terms: Sequence[tuple[float, Direction]]) -> None:
        if not terms:
            raise ValueError("a gradient needs at least one probe")
        self.terms = list(terms)
        self.shape = terms[0][1].shape

    @property
    def cheap_rows(self) -> bool:  # type: ignore[override]
        return all(direction.cheap_rows for _, direction in self.terms)

    def scaled_dense(self, scale: float, rows: Rows = ...) -> torch.Tensor:
        """scale · Σ cₖ Δₖ[rows] as a new float32 tensor."""
        (c0, first), *rest = self.terms
        total = first.scaled_rows(c0 * scale, rows)
        for c, direction in rest:
            part = direction.dense() if rows is ... else direction.dense_rows(rows)
            total.add_(part, alpha=c * scale)
        return total

    def dense(self) -> torch.Tensor:
        return self.scaled_dense(1.0)

    def dense_rows(self, rows: Rows) -> torch.Tensor:
        return self.scaled_dense(1.0, rows)

    def add_to(self, param: torch.Tensor, alpha: float) -> None:
        for c, direction in self.terms:
            direction.add_to(param, alpha * c)

    def low_rank_factor(self, scale: float) -> tuple[torch.Tensor, LowRankDirection] | None:
        """(scale · Σ cₖ Uₖ, a direction with the shared V) when every probe is U Vᵀ with
        one fixed right factor; None otherwise (then state must be dense)."""
        first = self.terms[0][1]
        if not isinstance(first, LowRankDirection) or first.basis_key is None:
            return None
        for _, direction in self.terms:
            if not isinstance(direction, LowRankDirection) or (
                direction.basis_key != first.basis_key
            ):
                return None
        (c0, _), *rest = self.terms
        factor = first.left * (c0 * scale)
        for c, direction in rest:
            assert isinstance(direction, LowRankDirection)
            factor = factor + direction.left * (c * scale)
        return factor, first


@dataclass(frozen=True)
class Update:
    """What a transform passes on: W ← W(1 − η·decay) − η·direction."""

    direction: Direction
    decay: float = 0.0


class Transform(ABC):
    """One stage of an update rule: maps an update to an update, with per-tensor state."""

    @abstractmethod
    def __call__(
        self, update: Update, param: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> Update:
        """The transformed update for `param`; may read and write this tensor's `state`."""

    def describe(self) -> list[Any]:
        """Name and hyperparameters (a loaded state must have been saved with the same)."""
        return [type(self).__name__.lower()]

    @property
    def stateless(self) -> bool:
        """True when the update is the estimate itself (plain SGD): the step can be fused."""
        return False

    def reads_group_weight_decay(self) -> bool:
        return False

    def reserve(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        """Allocate this tensor's dense state before any update of the step runs, so that
        every tensor's long-lived state is allocated before the short-lived row chunks
        (interleaved, the freed chunks stay in the C heap between state blocks). Stateless
        transforms have nothing to allocate."""
        return None


def _reserved_dtype(param: torch.Tensor) -> torch.dtype:
    return torch.promote_types(param.dtype, torch.float32)


class Chain(Transform):
    """Transforms applied one after another (the empty chain is plain SGD)."""

    transforms: list[Transform]

    def __init__(self, *transforms: Transform) -> None:
        flat: list[Transform] = []
        for t in transforms:
            flat.extend(t.transforms if isinstance(t, Chain) else [t])
        decays = [i for i, t in enumerate(flat) if isinstance(t, WeightDecay)]
        if decays and any(not isinstance(t, WeightDecay) for t in flat[decays[0] :]):
            raise ValueError(
                "weight_decay() is decoupled (W <- W(1 - lr*wd) beside the step): put it last "
                "in the chain, after momentum/adam"
            )
        self.transforms = flat

    def __call__(
        self, update: Update, param: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> Update:
        for transform in self.transforms:
            update = transform(update, param, state, group)
        return update

    def describe(self) -> list[Any]:
        return [t.describe() for t in self.transforms] or ["sgd"]

    @property
    def stateless(self) -> bool:
        return all(t.stateless for t in self.transforms)

    def reads_group_weight_decay(self) -> bool:
        return any(t.reads_group_weight_decay() for t in self.transforms)

    def reserve(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        for transform in self.transforms:
            transform.reserve(param, state)


class WeightDecay(Transform):
    """Decoupled weight decay: W ← W(1 − η·rate) beside the step (rate None: the param
    group's `weight_decay`)."""

    def __init__(self, rate: float | None = None) -> None:
        if rate is not None and rate < 0:
            raise ValueError(f"weight decay must be >= 0, got {rate}")
        self.rate = rate

    def __call__(
        self, update: Update, param: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> Update:
        rate = group["weight_decay"] if self.rate is None else self.rate
        return replace(update, decay=update.decay + rate) if rate else update

    def describe(self) -> list[Any]:
        return ["weight_decay", self.rate]

    @property
    def stateless(self) -> bool:
        return True

    def reads_group_weight_decay(self) -> bool:
        return self.rate is None


# --------------------------------------------------------------------------- dense state


def _chunks(param: torch.Tensor) -> Iterator[Rows]:
    """All rows at once for float32 and wider; row chunks for low-precision weights."""
    if is_low_precision(param):
        yield from row_chunks(param.shape)
    else:
        yield ...


def _gradient_rows(
    param: torch.Tensor, gradient: Direction, scale: float
) -> Iterator[tuple[Rows, torch.Tensor]]:
    """(rows, scale · gradient[rows]) as new tensors (float32 or wider), chunked like
    `_chunks(param)`."""
    if not isinstance(gradient, Gradient):
        gradient = Gradient([(1.0, gradient)])
    whole = None
    if is_low_precision(param) and not gradient.cheap_rows:
        whole = gradient.scaled_dense(scale)  # drawn whole from one seed anyway
    for rows in _chunks(param):
        yield rows, (whole[rows] if whole is not None else gradient.scaled_dense(scale, rows))


class _RowwiseDirection(Direction):
    """Base for updates computed from dense state row by row (never whole in float32)."""

    def dense(self) -> torch.Tensor:
        return self.dense_rows(...)

    def add_to(self, param: torch.Tensor, alpha: float) -> None:
        for rows in _chunks(param):
            if rows is ...:
                self.add_rows_into(param, rows, alpha)
            else:
                part = param[rows]
                work = part.float()
                self.add_rows_into(work, rows, alpha)
                part.copy_(work)


# --------------------------------------------------------------------------- momentum


def _carry(factor: torch.Tensor, old_right: torch.Tensor, new_right: torch.Tensor) -> torch.Tensor:
    """N' = N Vᵀ V' (V'ᵀV')⁻¹: the least-squares image of N Vᵀ in the new factor."""
    return factor @ (old_right.T @ new_right) @ torch.linalg.inv(new_right.T @ new_right)


def _check_coordinates(coordinates: str) -> None:
    if coordinates not in COORDINATES:
        raise ValueError(f"coordinates must be one of {COORDINATES}, got {coordinates!r}")


def _factored(
    gradient: Direction, coordinates: str, scale: float
) -> tuple[torch.Tensor, LowRankDirection] | None:
    """The gradient on its low-rank factor, when state is to live there and can."""
    if coordinates != "probe" or not isinstance(gradient, Gradient):
        return None
    return gradient.low_rank_factor(scale)


class Momentum(Transform):
    """Heavy ball: m ← βm + (1 − dampening)·u; the update is m.

    dampening = β gives an exponential moving average (LOZO-M). With
    coordinates="probe", m lives on the low-rank factor while the probe's basis is fixed.
    """

    def __init__(
        self, beta: float = 0.9, dampening: float = 0.0, coordinates: Coordinates = "weights"
    ) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"momentum beta must be in [0, 1), got {beta}")
        if not 0.0 <= dampening < 1.0:
            raise ValueError(f"momentum dampening must be in [0, 1), got {dampening}")
        _check_coordinates(coordinates)
        self.beta, self.dampening, self.coordinates = beta, dampening, coordinates

    def describe(self) -> list[Any]:
        return ["momentum", self.beta, self.dampening, self.coordinates]

    def reserve(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        # In the probe's coordinates the state's shape is known only at the first update.
        if self.coordinates == "weights" and "momentum_buffer" not in state:
            # β·0 + g = g exactly: the first step is the same as with no buffer at all.
            state["momentum_buffer"] = torch.zeros_like(param, dtype=_reserved_dtype(param))

    def __call__(
        self, update: Update, param: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> Update:
        scale = 1 - self.dampening
        factored = _factored(update.direction, self.coordinates, scale)
        if factored is not None:
            return replace(update, direction=self._on_factor(*factored, state))
        fresh = "momentum_buffer" not in state
        for rows, grad in _gradient_rows(param, update.direction, scale):
            if not fresh:
                state["momentum_buffer"][rows].mul_(self.beta).add_(grad)
            elif rows is ...:
                state["momentum_buffer"] = grad
            else:
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.new_empty(param.shape)
                state["momentum_buffer"][rows] = grad
        return replace(update, direction=DenseDirection(state["momentum_buffer"]))

    def _on_factor(
        self, contribution: torch.Tensor, probe: LowRankDirection, state: dict[str, Any]
    ) -> LowRankDirection:
        buf = state.get("factor_momentum")
        if buf is not None and state["momentum_basis_key"] != probe.basis_key:
            buf = _carry(buf, state["momentum_basis"], probe.right)
        buf = contribution if buf is None else buf.mul_(self.beta).add_(contribution)
        state["factor_momentum"] = buf
        state["momentum_basis_key"], state["momentum_basis"] = probe.basis_key, probe.right
        return LowRankDirection(buf, probe.right, probe.transposed, probe.basis_key)


# --------------------------------------------------------------------------- adam


class _AdamStep(_RowwiseDirection):
    """m̂ / (√v̂ + ε) from Adam's moments, formed a few rows at a time."""

    def __init__(
        self, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int, adam: Adam
    ) -> None:
        self.exp_avg, self.exp_avg_sq, self.step, self.adam = exp_avg, exp_avg_sq, step, adam
        self.shape = exp_avg.shape

    def _parts(self, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
        beta1, beta2 = self.adam.betas
        m_hat = self.exp_avg[rows] / (1 - beta1**self.step)
        v_hat = self.exp_avg_sq[rows] / (1 - beta2**self.step)
        return m_hat, v_hat.sqrt_().add_(self.adam.eps)

    def dense_rows(self, rows: Rows) -> torch.Tensor:
        m_hat, denominator = self._parts(rows)
        return m_hat.div_(denominator)

    def add_rows_into(self, target: torch.Tensor, rows: Rows, alpha: float) -> None:
        target.addcdiv_(*self._parts(rows), value=alpha)


class Adam(Transform):
    """Adam on the estimate (Kingma & Ba): the update is m̂ / (√v̂ + ε).

    With coordinates="probe" the moments live on the low-rank factor while the probe's
    basis is fixed, and restart when it changes (second moments do not carry over).
    """

    def __init__(
        self,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        coordinates: Coordinates = "weights",
    ) -> None:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam betas must be in [0, 1), got {betas}")
        if eps <= 0:
            raise ValueError(f"Adam eps must be > 0, got {eps}")
        _check_coordinates(coordinates)
        self.betas, self.eps, self.coordinates = tuple(betas), eps, coordinates

    def describe(self) -> list[Any]:
        return ["adam", list(self.betas), self.eps, self.coordinates]

    def reserve(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        if self.coordinates == "weights" and "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(param, dtype=_reserved_dtype(param))
            state["exp_avg_sq"] = torch.zeros_like(param, dtype=_reserved_dtype(param))

    def _moments(self, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, grad: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

    def __call__(
        self, update: Update, param: torch.Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> Update:
        factored = _factored(update.direction, self.coordinates, 1.0)
        if factored is not None:
            return replace(update, direction=self._on_factor(*factored, state))
        state["step"] = state.get("step", 0) + 1
        for rows, grad in _gradient_rows(param, update.direction, 1.0):
            if "exp_avg" not in state:
                state["exp_avg"] = grad.new_zeros(param.shape)
                state["exp_avg_sq"] = grad.new_zeros(param.shape)
            self._moments(state["exp_avg"][rows], state["exp_avg_sq"][rows], grad)
        return replace(
            update, direction=_AdamStep(state["exp_avg"], state["exp_avg_sq"], state["step"], self)
        )

    def _on_factor(
        self, grad: torch.Tensor, probe: LowRankDirection, state: dict[str, Any]
    ) -> LowRankDirection:
        if state.get("adam_basis_key", probe.basis_key) != probe.basis_key or (
            "factor_exp_avg" not in state
        ):
            state["factor_exp_avg"] = torch.zeros_like(grad)
            state["factor_exp_avg_sq"] = torch.zeros_like(grad)
            state["factor_step"] = 0
        state["adam_basis_key"] = probe.basis_key
        state["factor_step"] += 1
        self._moments(state["factor_exp_avg"], state["factor_exp_avg_sq"], grad)
        step = _AdamStep(
            state["factor_exp_avg"], state["factor_exp_avg_sq"], state["factor_step"], self
        )
        return LowRankDirection(step.dense(), probe.right, probe.transposed, probe.basis_key)


# --------------------------------------------------------------------------- application


def apply_update(param: torch.Tensor, update: Update, lr: float) -> None:
    """W ← W(1 − η·decay) − η·update, in place; low-precision weights through float32
    copies of a few rows, rounded once."""
    keep = 1.0 - lr * update.decay
    direction = update.direction
    if not is_low_precision(param):
        if keep != 1.0:
            param.mul_(keep)
        direction.add_to(param, -lr)
        return
    if not direction.cheap_rows:
        direction = DenseDirection(direction.dense())
    for rows in row_chunks(param.shape):
        part = param[rows]
        work = part.float()
        if keep != 1.0:
            work.mul_(keep)
        direction.add_rows_into(work, rows, -lr)
        part.copy_(work)


# --------------------------------------------------------------------------- by name


def sgd() -> Chain:
    """Plain SGD on the estimate: the empty chain (fused with the restore when q = 1)."""
    return Chain()


def momentum(
    beta: float = 0.9, dampening: float = 0.0, coordinates: Coordinates = "weights"
) -> Momentum:
    return Momentum(beta, dampening, coordinates)


def adam(
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    coordinates: Coordinates = "weights",
) -> Adam:
    return Adam(betas, eps, coordinates)


def weight_decay(rate: float | None = None) -> WeightDecay:
    return WeightDecay(rate)


def chain(*transforms: Transform) -> Chain:
    return Chain(*transforms)


UPDATE_RULES: tuple[str, ...] = ("sgd", "momentum", "adam")


def make_transform(name: str) -> Chain:
    """A named update rule with the param group's decoupled weight decay."""
    rules: dict[str, Callable[[], Transform]] = {"sgd": sgd, "momentum": momentum, "adam": adam}
    if name not in rules:
        raise ValueError(f"unknown update rule {name!r}; choose one of {UPDATE_RULES}")
    return chain(rules[name](), weight_decay())
