"""What every zeroth-order method's options share, and how options declare their help."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agzo.core.transforms import UPDATE_RULES
from agzo.methods.registry import BuildContext


def option(default: Any, help: str) -> Any:
    """A dataclass field whose help text the CLI and `agzo methods` show."""
    return field(default=default, metadata={"help": help})


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class ZerothOrderOptions:
    """Options of every zeroth-order method; subclasses set their own defaults."""

    lr: float = option(1e-4, "learning rate")
    eps: float = option(1e-3, "perturbation scale mu")
    update: str = option("sgd", "update rule: " + " | ".join(UPDATE_RULES))
    two_sided: bool = option(False, "two-sided difference (f(W+mu D) - f(W-mu D)) / 2mu")
    queries: int = option(1, "probes per step; their estimates are averaged")

    def __post_init__(self) -> None:
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.eps > 0, f"eps (the perturbation scale) must be > 0, got {self.eps}")
        check(
            self.update in UPDATE_RULES,
            f"unknown update rule {self.update!r}; choose one of {', '.join(UPDATE_RULES)}",
        )
        check(self.queries >= 1, f"queries must be >= 1, got {self.queries}")

    def optimizer_kwargs(self, context: BuildContext) -> dict[str, Any]:
        """Keyword arguments every zeroth-order constructor takes."""
        return {
            "lr": self.lr,
            "eps": self.eps,
            "update": self.update,
            "two_sided": self.two_sided,
            "queries": self.queries,
            "weight_decay": context.weight_decay,
            "seed": context.seed,
            "include": context.include,
            "exclude": context.exclude,
            "reducer": context.reducer,
            "keep_noise": context.keep_noise,
        }
