"""Build the optimizer a `TrainConfig` names, from the method registry.

Zeroth-order methods are agzo's own optimizers, driven by a loss closure; first-order
baselines are plain torch.optim optimizers fed by backprop through the same loop and the
same loss (`agzo.methods.first_order`). Both train the parameters the config's
include/exclude patterns select.
"""

from __future__ import annotations

import torch
from torch import nn

from agzo.core.reduce import LOCAL, Reducer
from agzo.methods import BuildContext
from agzo.params import select_named_parameters
from agzo.train.config import TrainConfig

__all__ = ["build_optimizer", "trainable_parameters"]


def trainable_parameters(model: nn.Module, config: TrainConfig) -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs a run trains and checkpoints (tied tensors once)."""
    return select_named_parameters(model, config.include, config.exclude)


def build_optimizer(
    model: nn.Module, config: TrainConfig, reducer: Reducer = LOCAL
) -> torch.optim.Optimizer:
    """The optimizer `config.optimizer` names, with the config's settings for it.

    First-order optimizers set requires_grad=False on the parameters they do not train.
    reducer: how a step's quantities combine over processes (see `agzo.train.processes`).
    """
    context = BuildContext(
        weight_decay=config.weight_decay,
        seed=config.seed,
        include=config.include,
        exclude=config.exclude,
        reducer=reducer,
        keep_noise=config.keep_noise,
    )
    return config.method.build(model, config.method_options, context)
