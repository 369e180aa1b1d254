"""How a zeroth-order step moves the weights once the gradient estimate g·Δ is known.

Update rules are separate from direction samplers, so that any probe (Gaussian,
low-rank, activation-guided) can be combined with any rule. After measuring, the weights
sit at W₀ + offset·Δ; every rule first undoes that offset. Plain SGD fuses the restore
and the step into one in-place pass per tensor, W −= (offset + ηg)Δ, and keeps no state;
momentum and Adam materialize g·Δ one tensor at a time and keep float32 state, the same
memory cost they have in first-order training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from agzo.directions.base import Direction


class UpdateRule(ABC):
    name: str

    @abstractmethod
    def apply(
        self,
        param: torch.Tensor,
        direction: Direction,
        offset: float,
        g: float,
        lr: float,
        weight_decay: float,
        state: dict[str, Any],
    ) -> None:
        """Restore `param` from W₀ + offset·Δ and apply one step, in place."""


class SGD(UpdateRule):
    """W ← W₀(1 − ηλ) − ηgΔ, fused with the restore (no state, no dense Δ)."""

    name = "sgd"

    def apply(
        self,
        param: torch.Tensor,
        direction: Direction,
        offset: float,
        g: float,
        lr: float,
        weight_decay: float,
        state: dict[str, Any],
    ) -> None:
        keep = 1.0 - lr * weight_decay
        if keep != 1.0:
            # (W₀ + cΔ)·keep − (c·keep + ηg)Δ = W₀·keep − ηgΔ
            param.mul_(keep)
        direction.add_to(param, -(offset * keep + lr * g))


def _restored_gradient(
    param: torch.Tensor, direction: Direction, offset: float, g: float
) -> torch.Tensor:
    direction.add_to(param, -offset)
    return direction.dense().mul_(g)


def _write(param: torch.Tensor, value: torch.Tensor) -> None:
    param.copy_(value.to(param.dtype))


class Momentum(UpdateRule):
    """Heavy ball on the estimate: m ← βm + g·Δ; W ← W(1 − ηλ) − ηm (decoupled decay)."""

    name = "momentum"

    def __init__(self, beta: float = 0.9) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"momentum beta must be in [0, 1), got {beta}")
        self.beta = beta

    def apply(
        self,
        param: torch.Tensor,
        direction: Direction,
        offset: float,
        g: float,
        lr: float,
        weight_decay: float,
        state: dict[str, Any],
    ) -> None:
        grad = _restored_gradient(param, direction, offset, g)
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = grad
        else:
            buf.mul_(self.beta).add_(grad)
        weights = param.float()
        if weight_decay:
            weights.mul_(1 - lr * weight_decay)
        _write(param, weights.add_(buf, alpha=-lr))


class Adam(UpdateRule):
    """Adam on the estimate g·Δ (decoupled weight decay, as AdamW)."""

    name = "adam"

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8) -> None:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam betas must be in [0, 1), got {betas}")
        self.betas = betas
        self.adam_eps = adam_eps

    def apply(
        self,
        param: torch.Tensor,
        direction: Direction,
        offset: float,
        g: float,
        lr: float,
        weight_decay: float,
        state: dict[str, Any],
    ) -> None:
        grad = _restored_gradient(param, direction, offset, g)
        beta1, beta2 = self.betas
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
        state["step"] += 1
        t = state["step"]
        state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = state["exp_avg"] / (1 - beta1**t)
        v_hat = state["exp_avg_sq"] / (1 - beta2**t)
        weights = param.float()
        if weight_decay:
            weights.mul_(1 - lr * weight_decay)
        weights.addcdiv_(m_hat, v_hat.sqrt_().add_(self.adam_eps), value=-lr)
        _write(param, weights)


UPDATE_RULES = ("sgd", "momentum", "adam")


def make_update_rule(name: str, **kwargs: Any) -> UpdateRule:
    """Build an update rule by name ("sgd", "momentum", "adam")."""
    if name == "sgd":
        return SGD()
    if name == "momentum":
        return Momentum(**kwargs)
    if name == "adam":
        return Adam(**kwargs)
    raise ValueError(f"unknown update rule {name!r}; choose one of {UPDATE_RULES}")
