"""The token mask of a model call that carries none.

An observer leaves padding out of what it measures, and reads which tokens are padding
from the `attention_mask` of the model call. A packed batch (`agzo.train.packing`) calls
the decoder without one: its sequences are kept apart by their position ids, which a mask
would override. The code making such a call publishes the rows' token mask here for the
call's duration, so that each micro-batch of an accumulated step is observed with its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor

_PUBLISHED: ContextVar[Tensor | None] = ContextVar("agzo_token_mask_of_call", default=None)


@contextmanager
def token_mask_of_call(mask: Tensor) -> Iterator[None]:
    """Within the block, `published_token_mask()` is `mask` (batch, seq; 1 on real tokens)."""
    published = _PUBLISHED.set(mask)
    try:
        yield
    finally:
        _PUBLISHED.reset(published)


def published_token_mask() -> Tensor | None:
    """The mask published for the model call under way, or None."""
    return _PUBLISHED.get()
