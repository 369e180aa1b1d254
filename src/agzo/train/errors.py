"""The error a run raises when it cannot start as asked."""

from __future__ import annotations

__all__ = ["TrainError"]


class TrainError(ValueError):
    """The run cannot start as asked (output directory, resume, data, model, patterns)."""
