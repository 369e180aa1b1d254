"""Counting the tensor operators a piece of code dispatches, and its host syncs.

On a GPU a small model's step is bound by the host: every operator that computes is a
kernel launch, and every host sync (a Python number read off a tensor, an output whose
size depends on the data) drains the launch queue. Both counts are exact on any device.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

SYNCING = frozenset({"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "masked_select"})
# Operators that only make a new view of existing memory or do bookkeeping: no kernel.
NO_KERNEL = frozenset(
    {
        *("view", "_unsafe_view", "reshape", "select", "slice", "t", "transpose", "permute"),
        *("expand", "unsqueeze", "squeeze", "as_strided", "detach", "alias", "lift_fresh"),
        *("promote_types", "result_type", "empty", "empty_like", "split", "chunk", "unbind"),
        "split_with_sizes",
        *("_record_function_enter_new", "_record_function_exit"),
    }
)


class OperatorCounter(TorchDispatchMode):
    """`with OperatorCounter() as c: ...` counts each dispatched operator by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))

    @property
    def kernels(self) -> Counter[str]:
        return Counter({name: n for name, n in self.ops.items() if name not in NO_KERNEL})

    @property
    def launches(self) -> int:
        return sum(self.kernels.values())

    @property
    def syncs(self) -> int:
        return sum(n for name, n in self.ops.items() if name in SYNCING)
