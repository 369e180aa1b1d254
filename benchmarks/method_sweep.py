"""The study runner: per method, a learning rate chosen on dev inside its grid, then more seeds.

    python benchmarks/method_sweep.py --task sst2 --data-dir ../shared/data/sst2 \
        --arm agzo-paper="--optimizer agzo --preset paper" \
        --grid agzo=3e-6,1e-5,3e-5 --grid agzo-paper=3e-6,1e-5,3e-5 --grid mezo=1e-6,3e-6,1e-5 \
        --seeds 0,1,2 --icl 32 --steps 1000 --jobs 2 --out runs/study-sst2 -- --device cpu

An *arm* is one way of training: a registered method (`--grid mezo=...` needs no `--arm`) or a
variant named by `--arm LABEL="agzo train flags"` (a preset, `--layers dominant`,
`--lora-rank 8`, `--energy 0.9`, ...). Per arm:

1. Every rate of its grid is trained with the first seed.
2. The rate whose best-on-dev weights score best on dev wins: the highest dev metric (ties: the
   lower dev loss), or the lowest dev loss for runs that keep checkpoints by dev loss
   (`--select dev-loss`). Test figures play no part in the choice.
3. A winner at an edge of the grid widens it: one more rate beyond that edge (x / --widen or
   x * --widen), up to --max-widen rates per side. The table marks a winner left at an edge.
   When every rate of the grid scores exactly alike on dev (each kept the zero-shot weights:
   none learned, or each diverged from its first steps), dev points in no direction: the arm
   ends with no rate chosen and says so, and no seeds follow.
4. The winning rate is trained with the remaining seeds (each seed also redraws the splits and
   the data order, as `agzo train --seed` does).

With --icl K the in-context baseline (`agzo eval --demonstrations K`) is evaluated for every
seed; the zero-shot row comes from the runs themselves.

Each run is a plain `agzo train` in its own process, up to --jobs at once, each limited to
--threads threads (several multi-threaded runs on few cores slow each other several-fold).
Runs go to OUT/<arm>-lr<rate>-seed<seed>, their output to OUT/logs/. Nothing is lost to an
interruption: a finished run (summary.json written) is never run again, an unfinished one
resumes from its last checkpoint (`agzo train --resume`), so the same command continues a
study where it stopped. Ctrl-C or `kill` (SIGTERM) stops the runner and its runs, each of
which saves a checkpoint of its last completed step first. `--continue OUT` repeats the
command that last ran in OUT (kept in OUT/command.json); `--jobs` and `--threads` given
after it replace the recorded ones (how runs share the machine, never what a run does).
Checkpoints of finished runs are deleted (--keep-checkpoints keeps them). --report-only
writes the tables from the finished runs alone. Arguments after `--` go to every run.

OUT is scratch space, lost with its machine. `--record DIR` names a folder to commit
(benchmarks/study_record.py): every finished run's summary and metrics, the command and the
report are kept there too, so `--continue DIR` on a fresh checkout reads the finished runs
from it and trains only what is missing (a run cut off with OUT starts over, in full).

Writes, after every finished run: OUT/sweep.md (search and seed tables), OUT/sweep.json (what
benchmarks/study_table.py reads to put several tasks in one table) and OUT/sweep.png
(training loss and dev metric of each arm's chosen rate, mean over seeds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agzo.methods import get_method
from agzo.train.checkpoint import list_checkpoints
from agzo.train.config import paper_loss
from compare_runs import smoothed  # the sibling script: one smoothing for both reports
from study_record import Record, read_run_folder

# --------------------------------------------------------------------------- what to run


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


# --------------------------------------------------------------------------- results


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


# --------------------------------------------------------------------------- the scheduler


@dataclass
class Study:
    args: argparse.Namespace
    arms: dict[str, Arm]
    grid: dict[str, list[float]]
    seeds: list[int]
    record: Record | None = None  # where finished runs are kept beyond the run folder
    failed: set[str] = field(default_factory=set)  # names that ended without a result
    # Finished runs never change: each is read once, not at every look at the folder.
    finished: dict[RunSpec, RunResult] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.args.out)

    def results(self) -> dict[RunSpec, RunResult]:
        """Every finished run of the study's arms, in its folder or in its record. A run
        found finished in the folder and not yet in the record is kept there now."""
        names = {run_dir.name for run_dir in self.out.iterdir() if run_dir.is_dir()}
        names |= set(self.record.run_names()) if self.record else set()
        for label in self.grid:
            for name in sorted(names):
                spec = _spec_from_name(label, name)
                if spec is None or spec in self.finished:
                    continue
                if (result := read_result(spec, self.out, self.record)) is not None:
                    self.finished[spec] = result
                    if self.record and not self.record.has_run(name):
                        self.record.keep_run(self.out / name)
        return dict(self.finished)

    def icl_result(self, spec: IclSpec) -> dict[str, Any] | None:
        """An in-context result, kept in the record too when found in the folder only."""
        found = read_icl(spec, self.out, self.record)
        path = self.out / f"{spec.name}.json"
        if self.record and path.is_file() and self.record.read_icl(spec.name) is None:
            self.record.keep_icl(path)
        return found

    def plans(self, results: dict[RunSpec, RunResult]) -> dict[str, ArmPlan]:
        plans = {}
        for label, initial in self.grid.items():
            keys = {s.lr: r.selection_key() for s, r in results.items()
                    if s.arm == label and s.seed == self.seeds[0]}  # fmt: skip
            for name in self.failed:
                spec = _spec_from_name(label, name)
                if spec is not None and spec.seed == self.seeds[0]:
                    keys.setdefault(spec.lr, FAILED)
            plans[label] = plan_arm(initial, keys, self.args.widen, self.args.max_widen)
        return plans

    def wanted(self, results: dict[RunSpec, RunResult]) -> list[RunSpec | IclSpec]:
        """Every run the study still needs now, the most informative first: the arms take
        turns, each searching from the middle of its grid outwards, then its seeds; the
        arms named by --first finish before the others start."""
        queues, first = [], []
        for label, plan in self.plans(results).items():
            queue: list[RunSpec | IclSpec] = [
                RunSpec(label, lr, self.seeds[0]) for lr in _middle_out(plan.waiting_for)
            ]
            if plan.chosen is not None:
                queue += [RunSpec(label, plan.chosen, seed) for seed in self.seeds[1:]]
            queue = [s for s in queue if s not in results and s.name not in self.failed]
            (first if label in self.args.first else queues).append(queue)
        order: list[RunSpec | IclSpec] = []
        for tier in (first, queues):  # the --first arms' whole studies before the others
            for turn in range(max((len(q) for q in tier), default=0)):
                order += [q[turn] for q in tier if turn < len(q)]
        if self.args.icl:
            for seed in self.seeds:
                spec = IclSpec(self.args.icl, seed)
                if self.icl_result(spec) is None and spec.name not in self.failed:
                    order.append(spec)
        return order

    def run(self) -> None:
        """Launch what is wanted, up to --jobs at once, until nothing more is wanted."""
        running: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
        try:
            while True:
                results = self.results()
                pending = [s for s in self.wanted(results) if s.name not in running]
                while pending and len(running) < self.args.jobs:
                    spec = pending.pop(0)
                    print(f"  start {spec.name}{self._resuming(spec)}", flush=True)
                    running[spec.name] = (self.launch(spec), time.time())
                if not running:
                    return
                time.sleep(5)
                for name, (process, started) in list(running.items()):
                    code = process.poll()
                    if code is None:
                        continue
                    del running[name]
                    took = time.time() - started
                    if code == 0:
                        print(f"  {name}: done in {took:.0f}s", flush=True)
                        self.prune(name)
                    else:
                        self.failed.add(name)
                        print(f"  {name}: FAILED (exit {code}; see logs/{name}.txt)", flush=True)
                    self.write_report()
                    print(f"  {self.progress(running)}", flush=True)
        finally:
            # An interrupted study: each run checkpoints its last step (on SIGTERM, as on
            # Ctrl-C) and resumes from it later.
            for process, _ in running.values():
                process.send_signal(signal.SIGTERM)
            for process, _ in running.values():
                process.wait()

    def progress(self, running: dict[str, Any]) -> str:
        """How far the study is: runs finished, under way and still wanted. Wanted counts
        what is known now; a search that widens, or a rate chosen, adds runs later."""
        results = self.results()
        finished = {spec.name for spec in results}
        under_way = [name for name in running if name not in finished]  # not yet reaped
        waiting = [s for s in self.wanted(results) if s.name not in running]
        return (
            f"{len(results)} runs finished, {len(under_way)} under way, {len(waiting)} more "
            "wanted now (a search that widens or chooses its rate adds more)"
        )

    def _resuming(self, spec: RunSpec | IclSpec) -> str:
        if isinstance(spec, RunSpec) and list_checkpoints(self.out / spec.name):
            return " (resuming from its last checkpoint)"
        return ""

    def launch(self, spec: RunSpec | IclSpec) -> subprocess.Popen[bytes]:
        args = self.args
        data = ["--data-dir", args.data_dir] if args.data_dir else []
        if isinstance(spec, IclSpec):
            command = [
                sys.executable, "-m", "agzo", "eval", "--model", args.model,
                "--task", args.task, *data, "--seed", str(spec.seed), "--split", "test",
                "--demonstrations", str(spec.demonstrations),
                "--output", str(self.out / f"{spec.name}.json"), *args.eval_args,
            ]  # fmt: skip
        else:
            run_dir = self.out / spec.name
            command = [
                sys.executable, "-m", "agzo", "train",
                "--model", args.model, "--task", args.task, *data,
                *self.arms[spec.arm].train_flags(),
                "--lr", f"{spec.lr:g}", "--seed", str(spec.seed),
                "--steps", str(args.steps), "--eval-every", str(args.eval_every),
                "--eval-examples", "none", "--checkpoint-every", str(args.checkpoint_every),
                "--save", "none", "--no-tensorboard", "--output-dir", str(run_dir),
                # A run cut off is continued, never shortened or started over.
                "--resume" if list_checkpoints(run_dir) else "--overwrite",
                *args.train_args,
            ]  # fmt: skip
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        log = open(self.out / "logs" / f"{spec.name}.txt", "ab")  # noqa: SIM115 (closed when the process is reaped)
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        threads = str(args.threads)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads}  # fmt: skip
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def prune(self, name: str) -> None:
        checkpoints = self.out / name / "checkpoints"
        if not self.args.keep_checkpoints and checkpoints.is_dir():
            shutil.rmtree(checkpoints)

    def write_report(self) -> str | None:
        """Write sweep.json, sweep.md and sweep.png; the Markdown, or None before any run
        has finished."""
        results = self.results()
        if not results:
            return None
        plans = self.plans(results)
        icl = {}
        for seed in self.seeds if self.args.icl else []:
            spec = IclSpec(self.args.icl, seed)
            if (found := self.icl_result(spec)) is not None:
                icl[spec] = found
        data = study_json(self, results, plans, icl)
        (self.out / "sweep.json").write_text(json.dumps(data, indent=2) + "\n")
        text = report(self, results, plans, icl)
        (self.out / "sweep.md").write_text(text + "\n")
        plot(self, plans, results, self.out / "sweep.png")
        if self.record:
            self.record.keep_report(self.out, REPORT_FILES)
        return text


REPORT_FILES = ("sweep.md", "sweep.json", "sweep.png")


def _spec_from_name(label: str, name: str) -> RunSpec | None:
    prefix = f"{label}-lr"
    if not name.startswith(prefix) or "-seed" not in name:
        return None
    rate, _, seed = name[len(prefix) :].rpartition("-seed")
    try:
        return RunSpec(label, float(rate), int(seed))
    except ValueError:
        return None


def _middle_out(rates: list[float]) -> list[float]:
    """[1, 2, 3, 4, 5] -> [3, 2, 4, 1, 5]: the likeliest winner first."""
    rates = sorted(rates)
    middle = (len(rates) - 1) // 2
    return sorted(rates, key=lambda lr: (abs(rates.index(lr) - middle), lr))


# --------------------------------------------------------------------------- reports


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def flag_value(words: list[str], flag: str) -> str | None:
    """The value the last `flag VALUE` or `flag=VALUE` in `words` gives (argparse's rule)."""
    value = None
    for word, following in zip(words, [*words[1:], None], strict=True):
        if word == flag:
            value = following
        elif word.startswith(flag + "="):
            value = word.partition("=")[2]
    return value


def arm_loss(study: Study, label: str) -> str:
    """The loss an arm's runs train with, and measure their dev loss in: their --loss, else
    the task's (as `agzo train` resolves it). Known for runs restored without a config too."""
    words = [*study.arms[label].train_flags(), *study.args.train_args]
    return flag_value(words, "--loss") or paper_loss(study.args.task)


def reference_mezo_arm(arms: dict[str, Arm]) -> str | None:
    """The arm that is plain MeZO (no flags beyond the method), else the first MeZO arm:
    a variant such as `mezo-lm` is no reference while MeZO itself runs."""
    mezos = [arm for arm in arms.values() if arm.method == "mezo"]
    plain = [arm for arm in mezos if arm.train_flags() == ["--optimizer", "mezo"]]
    return (plain or mezos)[0].label if mezos else None


def best_step_text(result: RunResult) -> str:
    """ "300", or "300 (stopped at 500: diverged)" for a run `--stop-diverged` ended."""
    stopped = result.summary.get("stopped_early")
    best = str(result.summary["best_step"])
    return best if not stopped else f"{best} (stopped at {stopped['step']}: diverged)"


def first_step_reaching(result: RunResult, target_loss: float) -> int | None:
    for step, loss in zip(*result.curve("dev", "loss"), strict=True):
        if loss <= target_loss:
            return step
    return None


def chosen_runs(study: Study, plan: ArmPlan, label: str,
                results: dict[RunSpec, RunResult]) -> list[RunResult]:  # fmt: skip
    if plan.chosen is None:
        return []
    return [results[s] for seed in study.seeds
            if (s := RunSpec(label, plan.chosen, seed)) in results]  # fmt: skip


def leading_run(study: Study, plan: ArmPlan, label: str,
                results: dict[RunSpec, RunResult]) -> RunResult | None:  # fmt: skip
    """The first seed's run at the chosen rate, or while the search goes on, the best
    finished so far by the same key that will choose."""
    finished = [r for s, r in results.items() if s.arm == label and s.seed == study.seeds[0]]
    if plan.chosen is not None:
        finished = [r for r in finished if r.spec.lr == plan.chosen]
    return min(finished, key=lambda r: (r.selection_key(), r.spec.lr), default=None)


def dev_curves(study: Study, plans: dict[str, ArmPlan],
               results: dict[RunSpec, RunResult]) -> list[str]:  # fmt: skip
    """Markdown: every evaluation of each arm's leading first-seed run, dev metric / dev
    loss side by side, so the arms' pace can be read step by step."""
    found = {label: run for label, plan in plans.items()
             if (run := leading_run(study, plan, label, results)) is not None}  # fmt: skip
    leaders = {label: run for label, run in found.items() if run.has_curves}
    unrecorded = [f"{label} {run.spec.lr:g}" for label, run in found.items()
                  if not run.has_curves]  # fmt: skip
    if not leaders:
        return [f"Dev curves not recorded (restored without curves): {', '.join(unrecorded)}."
                ] if unrecorded else []  # fmt: skip
    metric = next(iter(leaders.values())).metric
    by_step: dict[int, dict[str, str]] = {}
    for label, run in leaders.items():
        steps, values = run.curve("dev", metric)
        losses = dict(zip(*run.curve("dev", "loss"), strict=True))
        for step, value in zip(steps, values, strict=True):
            loss = losses.get(step, math.nan)
            by_step.setdefault(step, {})[label] = f"{value:.3f} / {loss:.3f}"
    searching = {label for label in leaders if plans[label].chosen is None}
    heads = [f"{label} {run.spec.lr:g}" + (" (searching)" if label in searching else "")
             for label, run in leaders.items()]  # fmt: skip
    lines = [
        f"Dev {metric} / dev loss along seed {study.seeds[0]}, each arm at its chosen rate "
        "(while searching: its best finished so far):",
        "",
        "| step | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(heads),
    ]
    for step in sorted(by_step):
        cells = [by_step[step].get(label, "") for label in leaders]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    if unrecorded:
        lines += ["", f"Not recorded (restored without curves): {', '.join(unrecorded)}."]
    return lines


def icl_metric(report: dict[str, Any], metric: str) -> float:
    """The test metric from `agzo eval --output`'s JSON."""
    return float(report["results"]["test"][metric])


def zero_shot_by_seed(results: dict[RunSpec, RunResult], metric: str) -> dict[int, float]:
    return {s.seed: float(r.summary["zero_shot"]["test"][metric]) for s, r in results.items()}


def study_json(study: Study, results: dict[RunSpec, RunResult], plans: dict[str, ArmPlan],
               icl: dict[IclSpec, dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    metric = next(iter(results.values())).metric
    arms = {}
    for label, plan in plans.items():
        runs = chosen_runs(study, plan, label, results)
        arms[label] = {
            "method": study.arms[label].method,
            "flags": list(study.arms[label].train_flags()),
            "rates": plan.rates,
            "chosen": plan.chosen,
            "at_edge": plan.at_edge,
            "tied": plan.tied,
            "test": {str(r.spec.seed): r.test_metric for r in runs},
            "dev": {str(r.spec.seed): r.dev_metric for r in runs},
        }
    return {
        "task": study.args.task,
        "model": study.args.model,
        "metric": metric,
        "steps": study.args.steps,
        "seeds": study.seeds,
        "command": study.args.command,
        "zero_shot": {str(k): v for k, v in sorted(zero_shot_by_seed(results, metric).items())},
        "icl": {str(s.seed): icl_metric(r, metric) for s, r in icl.items()},
        "icl_demonstrations": study.args.icl,
        "arms": arms,
        "runs": {s.name: {"arm": s.arm, "lr": s.lr, "seed": s.seed,
                          "dev": r.dev_metric, "dev_loss": r.dev_loss, "test": r.test_metric,
                          "best_step": r.summary["best_step"],
                          "seconds_per_step": r.summary["seconds_per_step"],
                          "median_step_seconds": r.median_step_seconds}
                 for s, r in sorted(results.items(), key=lambda x: x[0].name)},
    }  # fmt: skip


def report(study: Study, results: dict[RunSpec, RunResult], plans: dict[str, ArmPlan],
           icl: dict[IclSpec, dict[str, Any]]) -> str:  # fmt: skip
    args, seeds = study.args, study.seeds
    metric = next(iter(results.values())).metric
    zero_shot = zero_shot_by_seed(results, metric)
    lines = [
        f"task {args.task}, model {args.model}, {args.steps} steps, seeds {seeds}",
        "",
        f"Learning-rate search, seed {seeds[0]} (best-on-dev weights):",
        "",
        f"| arm | lr | dev {metric} | dev loss | test {metric} | best step | median s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, plan in plans.items():
        for lr in plan.rates:
            spec = RunSpec(label, lr, seeds[0])
            result = results.get(spec)
            if result is None:
                status = "failed" if spec.name in study.failed else "not finished"
                lines.append(f"| {label} | {lr:g} | {status} | | | | |")
                continue
            mark = " **(chosen)**" if plan.chosen == lr else ""
            lines.append(
                f"| {label} | {lr:g}{mark} | {result.dev_metric:.3f} | {result.dev_loss:.3f} | "
                f"{result.test_metric:.3f} | {best_step_text(result)} | "
                f"{result.median_step_seconds:.2f} |"
            )
    lines += [
        "",
        f"Every seed (test {metric}; the arms at their chosen rate, best-on-dev weights):",
        "",
        f"| arm | lr | test {metric} per seed | mean ± sd | dev {metric} mean |",
        "|---|---|---|---|---|",
        f"| zero-shot | | {', '.join(f'{zero_shot[s]:.3f}' for s in seeds if s in zero_shot)} "
        f"| {mean_std([zero_shot[s] for s in seeds if s in zero_shot])} | |",
    ]
    if icl:
        values = [icl_metric(r, metric) for r in icl.values()]
        lines.append(f"| in-context, k = {args.icl} | | {', '.join(f'{v:.3f}' for v in values)} "
                     f"| {mean_std(values)} | |")  # fmt: skip
    for label, plan in plans.items():
        if plan.tied:
            lines.append(f"| {label} | none: every rate tied on dev | | | |")
            continue
        if plan.chosen is None:
            lines.append(f"| {label} | searching | | | |")
            continue
        runs = chosen_runs(study, plan, label, results)
        tests = [r.test_metric for r in runs]
        edge = " (grid edge)" if plan.at_edge else ""
        lines.append(
            f"| {label} | {plan.chosen:g}{edge} | {', '.join(f'{t:.3f}' for t in tests)} | "
            f"{mean_std(tests)} | {mean_std([r.dev_metric for r in runs])} |"
        )
    if curves := dev_curves(study, plans, results):
        lines += ["", *curves]
    if steps := steps_to_mezo(study, plans, results):
        lines += ["", *steps]
    return "\n".join(lines)


def steps_to_mezo(study: Study, plans: dict[str, ArmPlan],
                  results: dict[RunSpec, RunResult]) -> list[str]:  # fmt: skip
    """Markdown: per seed, the first evaluation at which each arm's chosen run reached
    MeZO's final and its lowest dev loss. The final loss alone flatters whoever beats a run
    that rose at its last evaluation; its lowest loss is the second target."""
    mezo = reference_mezo_arm(study.arms)
    if mezo is None or plans[mezo].chosen is None:
        return []
    lines = ["Steps to reach MeZO's final and its lowest dev loss (same seed, dev evaluated "
             f"every {study.args.eval_every} steps):", ""]  # fmt: skip
    untimed: set[str] = set()  # arms whose runs were restored without curves
    other_loss: dict[str, str] = {}  # arms whose dev loss is another loss than MeZO's
    mezo_loss = arm_loss(study, mezo)
    for seed in study.seeds:
        reference = results.get(RunSpec(mezo, plans[mezo].chosen, seed))
        targets = None if reference is None else reference.last_and_lowest_dev_loss()
        if targets is None:
            continue
        for kind, target in zip(("final", "lowest"), targets, strict=True):
            reached = []
            for label, plan in plans.items():
                result = results.get(RunSpec(label, plan.chosen or math.nan, seed))
                if result is None:
                    continue
                if not result.has_curves:
                    untimed.add(label)
                    continue
                if (loss := arm_loss(study, label)) != mezo_loss:
                    # A language-model loss and the candidates' softmax loss are on
                    # different scales: reaching one's value says nothing of the other.
                    other_loss[label] = loss
                    continue
                step = first_step_reaching(result, target)
                reached.append(f"{label} {'never' if step is None else step}")
            lines.append(f"- seed {seed}, MeZO's {kind} dev loss {target:.3f}: "
                         + (", ".join(reached) or "no arm's curve is kept"))  # fmt: skip
    if len(lines) == 2:
        return [*lines, "- MeZO's dev curves are not kept (restored without curves)"]
    if untimed:
        labels = ", ".join(label for label in plans if label in untimed)
        lines += ["", f"Not timed (runs restored without curves): {labels}."]
    if other_loss:
        labels = ", ".join(f"{arm} ({other_loss[arm]})" for arm in plans if arm in other_loss)
        lines += ["", f"Not timed (their dev loss is another loss than MeZO's): {labels}."]
    return lines


def legend_labels(curves: dict[str, tuple[float | None, int, str]]) -> dict[str, str]:
    """A legend label per arm shown (its rate, how many seeds, its loss), such as "agzo lr
    3e-05 (3 seeds)". Arms trained on different losses share the training-loss axis, so
    then each label names its loss."""
    name_loss = len({loss for _, _, loss in curves.values()}) > 1
    labels = {}
    for label, (lr, n_seeds, loss) in curves.items():
        seeds = f"{n_seeds} seed{'s' if n_seeds > 1 else ''}"
        labels[label] = f"{label} lr {lr:g} ({seeds}{f'; {loss} loss' if name_loss else ''})"
    return labels


def plot(study: Study, plans: dict[str, ArmPlan], results: dict[RunSpec, RunResult],
         path: Path, window: int = 25) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    metric = "accuracy"
    shown = {label: [r for r in chosen_runs(study, plan, label, results) if r.has_curves]
             for label, plan in plans.items()}  # fmt: skip
    shown = {label: runs for label, runs in shown.items() if runs}
    labels = legend_labels(
        {
            label: (plans[label].chosen, len(runs), arm_loss(study, label))
            for label, runs in shown.items()
        }
    )
    for label, runs in shown.items():
        metric = runs[0].metric
        label_text = labels[label]
        steps, _ = runs[0].curve("train", "loss")
        losses = [smoothed(r.curve("train", "loss")[1], window) for r in runs]
        n = min(len(x) for x in losses)
        top.plot(steps[:n], [statistics.fmean(x[i] for x in losses) for i in range(n)],
                 label=label_text)  # fmt: skip
        dev_steps, _ = runs[0].curve("dev", metric)
        devs = [r.curve("dev", metric)[1] for r in runs]
        m = min(len(x) for x in devs)
        mean = [statistics.fmean(x[i] for x in devs) for i in range(m)]
        (line,) = bottom.plot(dev_steps[:m], mean, marker="o", label=label_text)
        low = [min(x[i] for x in devs) for i in range(m)]
        high = [max(x[i] for x in devs) for i in range(m)]
        bottom.fill_between(dev_steps[:m], low, high, color=line.get_color(), alpha=0.15)
    top.set_ylabel(f"training loss (mean of last {window})")
    bottom.set_ylabel(f"dev {metric} (mean; band: min-max)")
    bottom.set_xlabel("step (0 = zero-shot)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- command line


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Ctrl-C and SIGTERM stop the study through its `finally`, which stops its runs
    cleanly; SIGINT too when the runner was started with it ignored (`nohup ... &`). The
    caller's handlers are back afterwards (main() may be called as a function)."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def hold_lock(out: Path) -> None:
    """One runner per study folder: two would start the same runs twice."""
    lock = out / ".runner.pid"
    try:
        pid = int(lock.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        lock.write_text(str(os.getpid()))
        return
    if pid != os.getpid():
        raise SystemExit(f"another runner (pid {pid}) is working in {out}; stop it first")


COMMAND_FILE = "command.json"


def recorded_command(out: Path) -> list[str]:
    """The arguments of the last runner that worked in study folder `out`."""
    path = out / COMMAND_FILE
    if not path.is_file():
        raise SystemExit(f"--continue: {path} not found; run the study's full command once")
    argv = json.loads(path.read_text())["argv"]
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise SystemExit(f"--continue: {path} holds no argument list")
    return argv


SCHEDULING = ("--jobs", "--threads")  # how runs share the machine, never what a run does


def parse_continue(argv: list[str]) -> tuple[Path, dict[str, int]]:
    """`--continue`'s arguments: the study folder, and the scheduling flags given."""
    usage = "usage: method_sweep.py --continue STUDY_FOLDER [--jobs N] [--threads N]"
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("out", type=Path, nargs="?")
    for flag in SCHEDULING:
        parser.add_argument(flag, type=int, default=None)
    try:
        given, extra = parser.parse_known_args(argv)
    except argparse.ArgumentError as error:
        raise SystemExit(f"{usage} ({error})") from None
    if given.out is None or extra:
        raise SystemExit(usage + (f" (not taken: {' '.join(extra)})" if extra else ""))
    values = {flag: getattr(given, flag.lstrip("-")) for flag in SCHEDULING}
    return given.out, {flag: value for flag, value in values.items() if value is not None}


def continued_command(argv: list[str]) -> list[str]:
    """The command `--continue OUT [--jobs N] [--threads N]` repeats: OUT's recorded one,
    with the runs' scheduling replaced where given (it changes no run's result)."""
    out, scheduling = parse_continue(argv)
    recorded = recorded_command(out)
    cut = recorded.index("--") if "--" in recorded else len(recorded)
    own, passed_on = recorded[:cut], recorded[cut:]
    for flag, value in scheduling.items():
        kept: list[str] = []
        words = iter(own)
        for word in words:
            if word == flag:
                next(words, None)  # and its value
            elif not word.startswith(flag + "="):
                kept.append(word)
        own = [*kept, flag, str(value)]
    return own + passed_on


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--continue"]:
        argv = continued_command(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--arm", action="append", default=[], help='LABEL="train flags"')
    parser.add_argument("--grid", action="append", required=True, help="ARM=LR[,LR...]")
    parser.add_argument("--widen", type=float, default=3.0, help="factor past an edge [3]")
    parser.add_argument("--max-widen", type=int, default=3, help="added rates per side [3]")
    parser.add_argument(
        "--first", default="", help="ARM[,ARM...]: studied to the end before the other arms"
    )
    parser.add_argument("--seeds", default="0,1,2", help="the first seed searches [0,1,2]")
    parser.add_argument("--icl", type=int, default=0, help="in-context baseline: K demos")
    parser.add_argument("--eval-args", default="", help="extra flags for the in-context eval")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--keep-checkpoints", action="store_true", help="after a run ends")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per run [cores // jobs]")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--record", type=Path, default=None,
                        help="folder to commit: finished runs, command, report")  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="run nothing; report")
    parser.add_argument("train_args", nargs="*", help="after --: passed to every agzo train")
    args = parser.parse_args(argv)
    # The study's command, as a report names it: --report-only is how a report was made.
    study_argv = [word for word in argv if word != "--report-only"]
    args.command = shlex.join(["benchmarks/method_sweep.py", *study_argv])
    if args.widen <= 1 or args.max_widen < 0 or args.jobs < 1:
        raise SystemExit("--widen must exceed 1, --max-widen be >= 0, --jobs be >= 1")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    args.eval_args = shlex.split(args.eval_args)
    arms = parse_arms(args.arm)
    grid = parse_grid(args.grid, arms)
    args.first = [label for label in args.first.split(",") if label]
    unknown = [label for label in args.first if label not in grid]
    if unknown:
        raise SystemExit(f"--first {','.join(unknown)}: no such arm (give each a --grid)")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    record = Record(args.record) if args.record else None
    study = Study(args, arms, grid, seeds, record)
    continue_from = args.record or args.out
    if not args.report_only:
        hold_lock(args.out)
        for folder in (args.out, args.record) if args.record else (args.out,):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / COMMAND_FILE).write_text(json.dumps({"argv": argv}, indent=1) + "\n")
        print(f"study in {args.out}: arms {', '.join(grid)}; {args.jobs} at once, "
              f"{args.threads} thread(s) each; {study.progress({})}", flush=True)  # fmt: skip
        try:
            with stop_on_signals():
                study.run()
        except KeyboardInterrupt:
            study.write_report()
            print("stopped; the runs saved checkpoints. Continue with: python "
                  f"benchmarks/method_sweep.py --continue {continue_from}",
                  file=sys.stderr)  # fmt: skip
            raise SystemExit(130) from None
    text = study.write_report()
    if text is None:
        raise SystemExit(f"no run finished; see the logs under {args.out}")
    print(text)
    print(f"\nwrote {args.out}/sweep.md, sweep.json, sweep.png")


if __name__ == "__main__":
    main()
