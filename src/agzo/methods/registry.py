"""Every optimization method, registered once by name with its options and their defaults.

A method is a name, a one-line summary, an options dataclass that validates itself in
`__post_init__` (its field defaults are the method's defaults, the learning rate
included), and a builder. The CLI, `TrainConfig`, `ZOTrainer`, the probes and the
benchmarks all read this registry; no other list of methods exists. Adding a method is
one module that calls `register` (imported by `agzo.methods`).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from agzo.core.reduce import LOCAL, Reducer
from agzo.methods.stepping import Losses, first_order_step, zeroth_order_step


@dataclass(frozen=True)
class BuildContext:
    """Run settings every method's builder receives beside its own options."""

    weight_decay: float = 0.0
    seed: int = 0
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    # How a step's quantities are combined over its examples when the batch is split
    # across processes (`agzo.core.reduce`); zeroth-order builders hand it on.
    reducer: Reducer = LOCAL
    # Zeroth-order: keep each step's Gaussian noise instead of drawing it again (the same
    # numbers; memory for speed). First-order builders ignore it.
    keep_noise: bool = False


Builder = Callable[[nn.Module, Any, BuildContext], torch.optim.Optimizer]


@dataclass(frozen=True)
class Method:
    """One registered method."""

    name: str
    summary: str
    options: type  # a frozen dataclass: its fields are the method's options
    build_optimizer: Builder
    zeroth_order: bool
    # The class a user constructs by hand (agzo.AGZO): integrations that build the
    # optimizer from keyword arguments (ZOTrainer's zo_kwargs) call it. None for methods
    # that are plain torch optimizers.
    optimizer_class: type | None = None
    # Called once before the optimizer is built, for methods that add layers to the model
    # (ZO-Act): prepare(model, options, calibration_batch, forward, base_spec) -> model.
    prepare: Callable[..., nn.Module] | None = None
    # False for methods that never write the base weights, which may then be quantized.
    trains_base_weights: bool = True
    # Named sets of option values (`--preset NAME`), e.g. a paper's exact setting.
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def train_step(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        loss: Losses,
        attention_mask: torch.Tensor | None = None,
        reducer: Reducer = LOCAL,
    ) -> float | None:
        """One training step on the batch `loss` evaluates (or on its micro-batches, a
        sequence); its loss (None: skipped). reducer: for first-order steps, how the
        gradients combine over processes (a zeroth-order optimizer holds its own)."""
        step = zeroth_order_step if self.zeroth_order else first_order_step
        return step(optimizer, model, loss, attention_mask, reducer)

    def defaults(self) -> Any:
        return self.options()

    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.options))

    def option_help(self, name: str) -> str:
        for f in dataclasses.fields(self.options):
            if f.name == name:
                return str(f.metadata.get("help", ""))
        raise KeyError(name)

    def make_options(self, **given: Any) -> Any:
        """The options dataclass from the given values (None: the default); a name this
        method does not take is a ValueError naming the methods that do."""
        unknown = [k for k, v in given.items() if v is not None and k not in self.option_names()]
        if unknown:
            name = unknown[0]
            users = [m.name for m in methods() if name in m.option_names()]
            where = f" (it applies to {', '.join(users)})" if users else ""
            raise ValueError(
                f"{name} is not an option of {self.name}{where}; {self.name} takes: "
                f"{', '.join(self.option_names())}"
            )
        return self.options(**{k: v for k, v in given.items() if v is not None})

    def build(
        self, model: nn.Module, options: Any, context: BuildContext | None = None
    ) -> torch.optim.Optimizer:
        return self.build_optimizer(model, options, context or BuildContext())


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method`; a name may be registered only once."""
    if method.name in _REGISTRY:
        raise ValueError(f"a method named {method.name!r} is already registered")
    if not dataclasses.is_dataclass(method.options):
        raise TypeError(f"{method.name}: options must be a dataclass")
    _REGISTRY[method.name] = method
    return method


def methods() -> list[Method]:
    """Every registered method, in registration order."""
    return list(_REGISTRY.values())


def method_names(zeroth_order: bool | None = None) -> tuple[str, ...]:
    """Registered names; only the zeroth-order (or only the first-order) ones if asked."""
    return tuple(
        m.name for m in _REGISTRY.values() if zeroth_order is None or m.zeroth_order == zeroth_order
    )


def get_method(name: str) -> Method:
    """The method registered as `name` (case-insensitive); a ValueError with the choices."""
    key = name.strip().lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, list(_REGISTRY), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown method {name!r}{hint}; choose one of {', '.join(_REGISTRY)}")


def all_option_names() -> tuple[str, ...]:
    """The union of every method's option names, in first-seen order (CLI flags)."""
    return tuple(dict.fromkeys(n for m in _REGISTRY.values() for n in m.option_names()))
