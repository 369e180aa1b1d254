"""The one seam through which a step combines quantities computed over examples.

A zeroth-order step reduces three things over the examples of its batch: the losses
whose difference is the estimate, AGZO's power-iteration products HᵀHq and their norms
(sums over tokens), and the embedding rows the batch looked up (lists, gathered). Every such
reduction goes through a `Reducer`, so that a run whose batch is split across processes
only has to supply another reducer: no method changes.

In one process each reduction is the identity (`LOCAL`). A reducer for several
processes must be called by every process in the same order, so code that reduces must
do so unconditionally (a layer that saw no real token still reduces its zero product).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# The id of a position that looks up no embedding row (padding); it sorts after every id.
NO_ROW = torch.iinfo(torch.int64).max


class PendingSum:
    """A sum over processes under way; `wait()` returns it (here, already done)."""

    def __init__(self, value: torch.Tensor) -> None:
        self._value = value

    def wait(self) -> torch.Tensor:
        return self._value


class Reducer:
    """Reductions over the examples of one step; the identity in a single process."""

    #: True when every process must make each reduction (a collective call), even one
    #: whose local input is empty.
    collective = False

    def loss(self, value: float) -> float:
        """The batch's mean loss from this process's mean loss over its examples."""
        return value

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over processes, in place (products and squared norms)."""
        return tensor

    def sum_async(self, tensor: torch.Tensor) -> PendingSum:
        """Start summing `tensor` over processes; `.wait()` gives the sum. In between the
        caller computes on, so the exchange overlaps with it. Calls must come in the same
        order on every process, like every reduction."""
        return PendingSum(tensor)

    def flush(self) -> None:
        """Send the sums started since the last flush (a reducer may hold them back to
        send several as one exchange); `wait()` on one of them flushes too."""

    def norm(self, norms: torch.Tensor) -> torch.Tensor:
        """Euclidean norms over processes from this process's norms (root of summed squares)."""
        return norms

    def gather_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Every process's looked-up ids (a 1-D list, `NO_ROW` at padding) as one list,
        in any order; processes may pad their lists with `NO_ROW`."""
        return ids

    def mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Means over this process's examples (first-order gradients) made means over the
        step's examples, in place."""


LOCAL = Reducer()
