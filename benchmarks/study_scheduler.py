"""The scheduler: which runs a study still wants, launching them as `agzo train` and `agzo
eval` processes a few at a time, and rewriting the report after each one ends."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from agzo.train.checkpoint import checkpoint_step, list_checkpoints
from agzo.train.eval_journal import journal_path
from study_clock import Durations, expected_seconds
from study_record import Record
from study_report import plot, report, study_json
from study_search import (
    FAILED,
    IN_CONTEXT,
    Arm,
    ArmPlan,
    IclSpec,
    RunResult,
    RunSpec,
    plan_arm,
    read_icl,
    read_result,
)


@dataclass
class Study:
    args: argparse.Namespace
    arms: dict[str, Arm]
    grid: dict[str, list[float]]
    seeds: list[int]
    record: Record | None = None  # where finished runs are kept beyond the run folder
    deadline: datetime | None = None  # --until: no run is under way past it
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
        """An in-context result, kept in the record too when found in the folder only (as
        a study begun without a record wrote it)."""
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
        arms named by --first finish before the others start. The in-context baseline
        comes last, or takes its turns among the --first arms when named there (`icl`)."""
        queues: list[list[RunSpec | IclSpec]] = []
        first: list[list[RunSpec | IclSpec]] = []
        for label, plan in self.plans(results).items():
            queue: list[RunSpec | IclSpec] = [
                RunSpec(label, lr, self.seeds[0]) for lr in _middle_out(plan.waiting_for)
            ]
            if plan.chosen is not None:
                queue += [RunSpec(label, plan.chosen, seed) for seed in self.seeds[1:]]
            queue = [s for s in queue if s not in results and s.name not in self.failed]
            (first if label in self.args.first else queues).append(queue)
        in_context: list[RunSpec | IclSpec] = []
        for seed in self.seeds if self.args.icl else []:
            spec = IclSpec(self.args.icl, seed)
            if self.icl_result(spec) is None and spec.name not in self.failed:
                in_context.append(spec)
        last = [in_context]
        if IN_CONTEXT in self.args.first:
            first.append(in_context)
            last = []
        order: list[RunSpec | IclSpec] = []
        for tier in (first, queues, last):  # the --first arms' whole studies before the others
            for turn in range(max((len(q) for q in tier), default=0)):
                order += [q[turn] for q in tier if turn < len(q)]
        return order

    @property
    def durations(self) -> Durations:
        return Durations(self.record.root if self.record else self.out)

    def run(self) -> str | None:
        """Launch what is wanted, up to --jobs at once, until nothing more is wanted, or
        until the deadline: then what is left, said in a line (None when nothing is)."""
        running: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
        fresh: set[str] = set()  # launched from step 0: their wall time is a whole run's
        deferred: set[str] = set()  # wanted, but would not end in time: said once
        try:
            while True:
                results = self.results()
                if self.deadline is not None and datetime.now() >= self.deadline:
                    return self._left_at_deadline(results, running)
                pending = [s for s in self.wanted(results) if s.name not in running]
                while pending and len(running) < self.args.jobs:
                    spec = pending.pop(0)
                    if spec.name in deferred:
                        continue  # judged once: the time left only shrinks
                    if (why := self._would_not_end_in_time(spec, results)) is not None:
                        print(f"  not started, {spec.name}: {why}", flush=True)
                        deferred.add(spec.name)
                        continue
                    if isinstance(spec, RunSpec) and not list_checkpoints(self.out / spec.name):
                        fresh.add(spec.name)
                    print(f"  start {spec.name}{self._resuming(spec)}", flush=True)
                    running[spec.name] = (self.launch(spec), time.time())
                if not running:
                    if deferred:
                        return f"{len(deferred)} wanted run(s) would not end by --until"
                    return None
                time.sleep(5)
                for name, (process, started) in list(running.items()):
                    code = process.poll()
                    if code is None:
                        continue
                    del running[name]
                    took = time.time() - started
                    if code == 0:
                        print(f"  {name}: done in {took:.0f}s", flush=True)
                        if name in fresh:
                            self.durations.keep(name, took)
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

    def _would_not_end_in_time(
        self, spec: RunSpec | IclSpec, results: dict[RunSpec, RunResult]
    ) -> str | None:
        """Why a training run should not start before the deadline, or None when it may.
        An in-context evaluation always may: what it scores is kept (study_clock.py)."""
        if self.deadline is None or isinstance(spec, IclSpec):
            return None
        expected = expected_seconds(spec, results, self.durations.read())
        if expected is None:
            return None  # nothing has finished to judge by
        checkpoints = list_checkpoints(self.out / spec.name)
        if checkpoints:
            done = checkpoint_step(checkpoints[-1]) / self.args.steps
            expected *= max(0.0, 1.0 - done)
        left = (self.deadline - datetime.now()).total_seconds()
        if expected <= left:
            return None
        return f"needs about {expected / 60:.0f} min, {max(left, 0) / 60:.0f} min left"

    def _left_at_deadline(self, results: dict[RunSpec, RunResult], running: dict[str, Any]) -> str:
        stopped = ", ".join(running) or "none"
        wanted = len(self.wanted(results))
        return f"--until reached: stopped {stopped}; {wanted} wanted run(s) left"

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
        if isinstance(spec, IclSpec) and journal_path(self.icl_output(spec), "test").is_file():
            return " (continuing from the batches it has scored)"
        return ""

    def icl_output(self, spec: IclSpec) -> Path:
        """Where an in-context evaluation writes: into the record when there is one, its
        journal beside it, so that one cut off with the run folder continues from a
        committed record."""
        return self.record.icl_path(spec.name) if self.record else self.out / f"{spec.name}.json"

    def launch(self, spec: RunSpec | IclSpec) -> subprocess.Popen[bytes]:
        args = self.args
        data = ["--data-dir", args.data_dir] if args.data_dir else []
        if isinstance(spec, IclSpec):
            output = self.icl_output(spec)
            output.parent.mkdir(parents=True, exist_ok=True)
            command = [
                sys.executable, "-m", "agzo", "eval", "--model", args.model,
                "--task", args.task, *data, "--seed", str(spec.seed), "--split", "test",
                "--demonstrations", str(spec.demonstrations),
                "--output", str(output), *args.eval_args,
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
