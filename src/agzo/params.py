"""Which tensors an optimizer trains, and what kind of layer each one feeds.

The kind decides where a direction sampler may probe: a weight used by a linear layer
(`nn.Linear`, or transformers' `Conv1D` whose weight is stored transposed) has a gradient
in the span of that layer's inputs; an embedding table's gradient sits in the rows of the
tokens it looked up; everything else (norms, biases) gets an isotropic probe.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for plain PyTorch models
        return None
    return Conv1D


@dataclass
class TrainableTensor:
    """One trainable tensor and the modules that consume it.

    `linear_modules` lists the linear layers whose weight this is (more than one when the
    weight is tied or shared); `transposed` is True for Conv1D, whose weight is
    (d_in, d_out). `embedding_modules` lists the embedding tables that look rows up.
    """

    index: int
    name: str
    param: nn.Parameter
    linear_modules: list[nn.Module] = field(default_factory=list)
    transposed: bool = False
    embedding_modules: list[nn.Embedding] = field(default_factory=list)

    @property
    def is_linear_weight(self) -> bool:
        return bool(self.linear_modules)

    @property
    def is_embedding(self) -> bool:
        return bool(self.embedding_modules)


def matches(name: str, pattern: str) -> bool:
    r"""Whether a parameter name matches one selection pattern.

    `=NAME` matches NAME exactly; `re:EXPR` is a regular expression searched in the name
    (`re:layers\.1\.` is layer 1 only); anything else is a glob (`*.q_proj.weight`) or a
    substring (`embed_tokens`). A substring is the loose form: `layers.1` also matches
    `layers.10` to `layers.19`, while `layers.1.` does not.
    """
    if pattern.startswith("="):
        return name == pattern[1:]
    if pattern.startswith("re:"):
        try:
            return re.search(pattern[3:], name) is not None
        except re.error as error:
            raise ValueError(f"invalid regular expression in {pattern!r}: {error}") from error
    return fnmatch.fnmatchcase(name, pattern) or pattern in name


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(matches(name, p) for p in patterns)


def select_named_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters of `model` filtered by name patterns (see `matches`: exact
    `=name`, regular expression `re:...`, glob or substring).

    `include=None` keeps everything; `exclude` wins over `include`. Parameters with
    `requires_grad=False` are never selected, and a tied parameter appears once, under
    its first name.
    """
    selected = []
    for name, param in model.named_parameters():  # de-duplicates tied parameters
        if not param.requires_grad:
            continue
        if include is not None and not _matches(name, include):
            continue
        if exclude and _matches(name, exclude):
            continue
        selected.append((name, param))
    if not selected:
        raise ValueError(
            "no trainable parameter matches: "
            f"include={list(include) if include is not None else None}, "
            f"exclude={list(exclude or [])}; check the patterns against "
            "model.named_parameters() and requires_grad"
        )
    return selected


def describe_tensors(
    named_params: Iterable[tuple[str, nn.Parameter]], model: nn.Module | None
) -> list[TrainableTensor]:
    """Attach to each parameter the linear and embedding modules of `model` using it."""
    tensors = [TrainableTensor(i, name, p) for i, (name, p) in enumerate(named_params)]
    if model is None:
        return tensors
    by_id = {id(t.param): t for t in tensors}
    conv1d = _conv1d_type()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or id(weight) not in by_id:
            continue
        tensor = by_id[id(weight)]
        if isinstance(module, nn.Linear):
            tensor.linear_modules.append(module)
        elif conv1d is not None and isinstance(module, conv1d):
            tensor.linear_modules.append(module)
            tensor.transposed = True
        elif isinstance(module, nn.Embedding):
            tensor.embedding_modules.append(module)
    for tensor in tensors:
        if tensor.transposed and len(tensor.linear_modules) > 1:
            # A weight shared by a Conv1D and an nn.Linear would need two layouts at once.
            kinds = {type(m).__name__ for m in tensor.linear_modules}
            if len(kinds) > 1:
                raise ValueError(f"{tensor.name} is shared by incompatible layers {kinds}")
    return tensors
