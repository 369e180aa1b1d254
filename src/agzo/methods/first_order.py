"""First-order baselines: backprop with AdamW or SGD through the same loop and loss.

They are the upper reference a zeroth-order method is measured against. Parameters the
run does not train get requires_grad=False, so backward skips their weight gradients
(most of the memory when only a few layers are trained).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from agzo.methods.options import check, option
from agzo.methods.registry import BuildContext, Method, register
from agzo.params import select_named_parameters


def _trained_parameters(model: nn.Module, context: BuildContext) -> list[nn.Parameter]:
    selected = [p for _, p in select_named_parameters(model, context.include, context.exclude)]
    keep = {id(p) for p in selected}
    for param in model.parameters():
        if id(param) not in keep:
            param.requires_grad_(False)
    return selected


@dataclass(frozen=True)
class AdamWOptions:
    # Chosen on dev by the SST-2 search (docs/RESULTS.md).
    lr: float = option(3e-5, "learning rate")

    def __post_init__(self) -> None:
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class SGDOptions:
    lr: float = option(1e-3, "learning rate (a common value, not measured here)")
    momentum: float = option(0.0, "heavy-ball momentum of torch.optim.SGD")

    def __post_init__(self) -> None:
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")


def _adamw(model: nn.Module, options: AdamWOptions, context: BuildContext) -> torch.optim.AdamW:
    params = _trained_parameters(model, context)
    return torch.optim.AdamW(params, lr=options.lr, weight_decay=context.weight_decay)


def _sgd(model: nn.Module, options: SGDOptions, context: BuildContext) -> torch.optim.SGD:
    params = _trained_parameters(model, context)
    return torch.optim.SGD(
        params, lr=options.lr, momentum=options.momentum, weight_decay=context.weight_decay
    )


register(
    Method(
        name="fo-adamw",
        summary="first-order AdamW with backprop (the upper reference)",
        options=AdamWOptions,
        build_optimizer=_adamw,
        zeroth_order=False,
    )
)
register(
    Method(
        name="fo-sgd",
        summary="first-order SGD with backprop",
        options=SGDOptions,
        build_optimizer=_sgd,
        zeroth_order=False,
    )
)
