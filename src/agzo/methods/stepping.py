"""How a training loop takes one step with a method's optimizer, zeroth- or first-order.

A loop calls `method.train_step(optimizer, model, loss, attention_mask)` and gets the
step's loss back (None: not finite, step skipped), without knowing which kind it runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn

Loss = Callable[[], torch.Tensor]


def zeroth_order_step(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    loss: Loss,
    attention_mask: torch.Tensor | None,
) -> float | None:
    """Forward passes only, in eval mode: no dropout, so the passes of one difference see
    one network."""
    model.eval()
    value = optimizer.step(loss, attention_mask=attention_mask)  # type: ignore[call-overload]
    return None if value is None else float(value)


def first_order_step(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    loss: Loss,
    attention_mask: torch.Tensor | None,
) -> float | None:
    """Backprop in train mode; a non-finite loss skips the step (no gradients applied)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    value = loss()
    if not torch.isfinite(value):
        warnings.warn(f"non-finite loss {float(value)}: step skipped", stacklevel=2)
        return None
    value.backward()
    optimizer.step()
    return float(value.detach())
