"""What a study runs and how it chooses: its arms and runs, their results, and the rate
search, replayed from the finished runs (benchmarks/method_sweep.py drives it)."""

from __future__ import annotations

import json
import math
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agzo.methods import get_method
from study_record import Record, read_run_folder


@dataclass(frozen=True)
class Arm:
    """One way of training: a label, the registered method it runs, its extra train flags."""

    label: str
    method: str
    flags: tuple[str, ...]

    def train_flags(self) -> list[str]:
        if "--optimizer" in self.flags:
            return list(self.flags)
        return ["--optimizer", self.method, *self.flags]


@dataclass(frozen=True)
class RunSpec:
    arm: str
    lr: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm}-lr{self.lr:g}-seed{self.seed}"


IN_CONTEXT = "icl"  # the in-context baseline's name in --first (no arm may take it)


@dataclass(frozen=True)
class IclSpec:
    """The in-context baseline of one seed (its splits and its drawn demonstrations)."""

    demonstrations: int
    seed: int

    @property
    def name(self) -> str:
        return f"icl-k{self.demonstrations}-seed{self.seed}"


def parse_arms(items: list[str]) -> dict[str, Arm]:
    arms: dict[str, Arm] = {}
    for item in items:
        label, _, flags_text = item.partition("=")
        label = label.strip()
        if not label or "/" in label or label in arms:
            raise SystemExit(f"--arm {item!r}: needs a new label without '/' before '='")
        if label == IN_CONTEXT:
            raise SystemExit(f"--arm {item!r}: {IN_CONTEXT!r} names the in-context baseline")
        flags = tuple(shlex.split(flags_text))
        method_name = label
        if "--optimizer" in flags:
            at = flags.index("--optimizer")
            if at + 1 == len(flags):
                raise SystemExit(f"--arm {item!r}: --optimizer needs a method name")
            method_name = flags[at + 1]
        try:
            method = get_method(method_name).name  # any registered method (`agzo methods`)
        except ValueError as error:
            raise SystemExit(
                f"--arm {item!r}: {error} (name the method with --optimizer in its flags)"
            ) from None
        if "--lr" in flags or "--seed" in flags:
            raise SystemExit(f"--arm {item!r}: the sweep sets --lr and --seed itself")
        arms[label] = Arm(label, method, flags)
    return arms


def parse_grid(items: list[str], arms: dict[str, Arm]) -> dict[str, list[float]]:
    """LABEL=LR[,LR...] per arm; a registered method's name is an arm of its own."""
    grid: dict[str, list[float]] = {}
    for item in items:
        label, _, rates = item.partition("=")
        if not rates:
            raise SystemExit(f"--grid expects ARM=LR[,LR...], got {item!r}")
        if label not in arms:
            try:
                arms[label] = Arm(label, get_method(label).name, ())
            except ValueError as error:
                raise SystemExit(f"--grid {item!r}: {error}, and no --arm {label}") from None
        try:
            values = sorted({float(r) for r in rates.split(",") if r.strip()})
        except ValueError:
            raise SystemExit(f"--grid {item!r}: learning rates must be numbers") from None
        if not values or min(values) <= 0:
            raise SystemExit(f"--grid {item!r}: learning rates must be positive")
        grid[label] = values
    missing = [label for label in arms if label not in grid]
    if missing:
        raise SystemExit(f"--arm {', '.join(missing)} has no --grid of learning rates")
    return grid


@dataclass
class RunResult:
    spec: RunSpec
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(repr=False)

    def _final(self, split: str, key: str) -> float:
        value = self.summary["final"][split].get(key)
        return math.nan if value is None else float(value)

    @property
    def metric(self) -> str:
        return str(self.summary["metric"])

    @property
    def dev_metric(self) -> float:
        return self._final("dev", self.metric)

    @property
    def dev_loss(self) -> float:
        return self._final("dev", "loss")

    @property
    def test_metric(self) -> float:
        return self._final("test", self.metric)

    @property
    def select(self) -> str:
        return str(self.summary.get("config", {}).get("select", "dev-accuracy"))

    def selection_key(self) -> tuple[float, float]:
        """Smaller is better; a diverged run (NaN) sorts last."""
        metric = self.dev_metric if not math.isnan(self.dev_metric) else -math.inf
        loss = self.dev_loss if not math.isnan(self.dev_loss) else math.inf
        if self.select == "dev-loss":
            return (loss, -metric)
        return (-metric, loss)

    @property
    def has_curves(self) -> bool:
        """False for a run restored from an earlier report: its figures without its rows."""
        return bool(self.records)

    @property
    def median_step_seconds(self) -> float:
        """The median of the steps' own times: unlike the run's wall time per step, it
        leaves out evaluations and a pause (SIGSTOP, a suspended machine) that fell in a
        few steps. Still not a speed comparison: the study's runs share the cores."""
        _, times = self.curve("train", "step_time")
        if not times:  # a restored run carries the figure its report gave
            return float(self.summary.get("median_step_seconds", math.nan))
        return statistics.median(times)

    def last_and_lowest_dev_loss(self) -> tuple[float, float] | None:
        """The dev loss at the run's last evaluation and its lowest: what other arms are
        timed against. A restored run may carry the two (as its report printed them)."""
        if self.has_curves:
            losses = self.curve("dev", "loss")[1]
            return losses[-1], min(losses)
        kept = self.summary.get("dev_loss_last_and_lowest")
        return None if kept is None else (float(kept[0]), float(kept[1]))

    def curve(self, split: str, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.records if r["split"] == split and key in r]
        return [int(r["step"]) for r in rows], [float(r[key]) for r in rows]


FAILED = (math.inf, math.inf)  # the selection key of a run that ended without a summary


@dataclass(frozen=True)
class ArmPlan:
    """Where an arm's search stands, replayed from the finished runs."""

    rates: list[float]  # the grid with its widenings, ascending
    waiting_for: list[float]  # rates of seed 0 not finished yet
    chosen: float | None  # None while searching, or when every rate tied
    at_edge: bool  # the winner is an edge rate that may not be widened further
    tied: bool = False  # finished, and dev told no rate from another: nothing is chosen


def plan_arm(
    initial: list[float],
    keys: dict[float, tuple[float, float]],
    widen: float,
    max_widen: int,
) -> ArmPlan:
    """Replay the search: widen past a winning edge until the winner is interior.

    `keys` holds the selection key of every finished first-seed run (FAILED for a run that
    ended without a result). Deterministic in its inputs, so a resumed study takes the same
    decisions as an uninterrupted one.
    """
    rates = sorted(initial)
    added = {"low": 0, "high": 0}
    while True:
        waiting = [lr for lr in rates if lr not in keys]
        if waiting:
            return ArmPlan(rates, waiting, None, False)
        best = min(rates, key=lambda lr: (keys[lr], lr))
        if keys[best] == FAILED:  # nothing finished: no direction to widen in
            return ArmPlan(rates, [], None, False)
        if len(rates) > 1 and all(keys[lr] == keys[best] for lr in rates):
            # Every rate kept the same weights by dev (in practice the zero-shot ones:
            # none learned, or all diverged at once), so dev points neither up nor down.
            return ArmPlan(rates, [], None, False, tied=True)
        if len(rates) > 1 and best == rates[0] and added["low"] < max_widen:
            rates.insert(0, _rounded(rates[0] / widen))
            added["low"] += 1
        elif len(rates) > 1 and best == rates[-1] and added["high"] < max_widen:
            rates.append(_rounded(rates[-1] * widen))
            added["high"] += 1
        else:
            edge = len(rates) == 1 or best in (rates[0], rates[-1])
            return ArmPlan(rates, [], best, edge)


def _rounded(lr: float) -> float:
    # 1e-5 * 3 is 3.0000000000000004e-05: keep run names and tables readable.
    return float(f"{lr:.3g}")


def read_result(spec: RunSpec, out: Path, record: Record | None = None) -> RunResult | None:
    """A finished run from its folder, else from the study's record."""
    found = read_run_folder(out / spec.name)
    if found is None and record is not None:
        found = record.read_run(spec.name)
    return None if found is None else RunResult(spec, *found)


def read_icl(spec: IclSpec, out: Path, record: Record | None = None) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = json.loads((out / f"{spec.name}.json").read_text())
        return found
    except (OSError, ValueError):
        return None if record is None else record.read_icl(spec.name)
