"""What a sampler learns from the unperturbed forward pass, through forward hooks.

An observer is a context manager entered around that pass; its `result` is handed to the
sampler that asked for it (as `ProbeContext.observed`). AGZO observes each linear
layer's top input directions and the embedding rows a batch looked up
(`ActivationCapture`); other samplers may observe outlier statistics or a one-time
calibration basis. The optimizer core runs whatever observer its sampler returns and
knows nothing of what it measures.
"""

from __future__ import annotations

from typing import Any, Protocol

from agzo.observe.accumulate import AccumulatedCapture
from agzo.observe.subspaces import (
    ActivationCapture,
    CapturedSubspaces,
    Subspace,
    merge_bases,
    power_iteration,
)


class Observer(Protocol):
    """A context manager around the unperturbed forward pass; `result` after it exits."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> Any: ...

    @property
    def result(self) -> Any: ...


__all__ = [
    "AccumulatedCapture",
    "ActivationCapture",
    "CapturedSubspaces",
    "Observer",
    "Subspace",
    "merge_bases",
    "power_iteration",
]
