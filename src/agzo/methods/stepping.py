"""How a training loop takes one step with a method's optimizer, zeroth- or first-order.

A loop calls `method.train_step(optimizer, model, loss, attention_mask)` and gets the
step's loss back (None: not finite, step skipped), without knowing which kind it runs.
`loss` is the step's batch, or a sequence of equal micro-batches (gradient accumulation):
the step's loss is then their mean, the whole batch's mean, while only one micro-batch is
in memory at a time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from agzo.core.reduce import LOCAL, Reducer

Loss = Callable[[], torch.Tensor]
Losses = Loss | Sequence[Loss]


def zeroth_order_step(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    loss: Losses,
    attention_mask: torch.Tensor | None,
    reducer: Reducer = LOCAL,
) -> float | None:
    """Forward passes only, in eval mode: no dropout, so the passes of one difference see
    one network. (The optimizer reduces over processes with its own reducer.)"""
    model.eval()
    if isinstance(loss, Sequence):
        parts = list(loss)

        def closure() -> float:
            # float64: the mean is differenced and divided by eps.
            return math.fsum(float(part().detach()) for part in parts) / len(parts)

        # Each micro-batch's model call carries its own mask, which the observer reads.
        value = optimizer.step(closure, micro_batches=len(parts))  # type: ignore[call-overload]
    else:
        value = optimizer.step(loss, attention_mask=attention_mask)  # type: ignore[call-overload]
    return None if value is None else float(value)


def first_order_step(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    loss: Losses,
    attention_mask: torch.Tensor | None,
    reducer: Reducer = LOCAL,
) -> float | None:
    """Backprop in train mode; a non-finite loss skips the step (no gradients applied).

    Across processes the loss is reduced first, so every process skips the same steps,
    and the gradients are averaged weighted by examples before the update.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    parts = list(loss) if isinstance(loss, Sequence) else [loss]
    values = []
    for part in parts:
        value = part()
        values.append(float(value.detach()))
        if math.isfinite(values[-1]):
            (value / len(parts) if len(parts) > 1 else value).backward()
    mean = reducer.loss(values[0] if len(values) == 1 else math.fsum(values) / len(values))
    if not math.isfinite(mean):
        warnings.warn(f"non-finite loss {mean}: step skipped", stacklevel=2)
        optimizer.zero_grad(set_to_none=True)
        return None
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    reducer.mean_(grads)
    optimizer.step()
    return mean
