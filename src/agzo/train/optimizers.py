"""Build the optimizer a `TrainConfig` names, one small builder per method.

Zeroth-order methods (`agzo`, `mezo`, `lozo`) are agzo's own optimizers, driven by a loss
closure. First-order baselines (`fo-adamw`, `fo-sgd`) are plain torch.optim optimizers fed
by backprop through the same loop and the same loss, as the upper reference. Both kinds
train the parameters selected by the config's include/exclude patterns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from agzo.methods import AGZO, LOZO, MeZO
from agzo.params import select_named_parameters
from agzo.train.config import OPTIMIZERS, TrainConfig

__all__ = ["BUILDERS", "build_optimizer", "trainable_parameters"]

Builder = Callable[[nn.Module, TrainConfig], torch.optim.Optimizer]


def trainable_parameters(model: nn.Module, config: TrainConfig) -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs a run trains and checkpoints (tied tensors once)."""
    return select_named_parameters(model, config.include, config.exclude)


def _zo_common(config: TrainConfig) -> dict[str, Any]:
    return {
        "lr": config.learning_rate,
        "eps": config.setting("eps"),
        "weight_decay": config.weight_decay,
        "update": config.setting("update"),
        "two_sided": config.setting("two_sided"),
        "seed": config.seed,
        "include": config.include,
        "exclude": config.exclude,
    }


def _agzo(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return AGZO(
        model,
        rank=config.setting("rank"),
        power_steps=config.setting("power_steps"),
        embedding_mode=config.setting("embedding_mode"),
        **_zo_common(config),
    )


def _mezo(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return MeZO(model, **_zo_common(config))


def _lozo(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return LOZO(
        model,
        rank=config.setting("rank"),
        refresh_every=config.setting("refresh_every"),
        momentum=config.setting("momentum"),
        **_zo_common(config),
    )


def _first_order_params(model: nn.Module, config: TrainConfig) -> list[nn.Parameter]:
    selected = [p for _, p in trainable_parameters(model, config)]
    keep = {id(p) for p in selected}
    # Frozen tensors need no gradient: backward then skips their weight gradients, which
    # is most of the memory when only a few layers are trained.
    for param in model.parameters():
        if id(param) not in keep:
            param.requires_grad_(False)
    return selected


def _adamw(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = _first_order_params(model, config)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def _sgd(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = _first_order_params(model, config)
    return torch.optim.SGD(
        params,
        lr=config.learning_rate,
        momentum=config.setting("momentum"),
        weight_decay=config.weight_decay,
    )


BUILDERS: dict[str, Builder] = {
    "agzo": _agzo,
    "mezo": _mezo,
    "lozo": _lozo,
    "fo-adamw": _adamw,
    "fo-sgd": _sgd,
}
assert tuple(BUILDERS) == OPTIMIZERS, "every optimizer name in config.py needs a builder"


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `config.optimizer` names, over the parameters the config selects.

    First-order optimizers set requires_grad=False on the parameters they do not train.
    """
    return BUILDERS[config.optimizer](model, config)
