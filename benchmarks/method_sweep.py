"""A fair comparison of optimizers on one task: learning rate chosen on dev, then more seeds.

    python benchmarks/method_sweep.py --task sst2 --data-dir ../shared/data/sst2 \
        --grid agzo=1e-5,3e-5,1e-4 --grid mezo=1e-7,1e-6 --grid fo-adamw=1e-5 \
        --seeds 0,1 --steps 1000 --jobs 4 --out runs/sweep-sst2 -- --device cuda

1. Every learning rate in each method's grid is trained with the first seed.
2. Per method, the rate whose best-on-dev weights score highest on dev wins (ties: lower dev
   loss, then the smaller rate). Test accuracy plays no part in the choice.
3. The winning rate is trained with the remaining seeds (each seed also redraws the splits
   and the data order, as `agzo train --seed` does).

Each run is a plain `agzo train` in its own process (up to --jobs at once) writing to
OUT/<method>-lr<rate>-seed<seed>, its output to OUT/logs/. A run whose summary.json exists
is not run again, so an interrupted sweep continues where it stopped (and runs made
elsewhere can be copied in); --report-only writes the tables from the finished runs alone.
Arguments after `--` go to every run.
Writes OUT/sweep.json, OUT/sweep.md (grid and seed tables) and OUT/sweep.png (training loss
and dev accuracy of each method's chosen rate, mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agzo.methods import get_method
from compare_runs import smoothed  # the sibling script: one smoothing for both reports


@dataclass(frozen=True)
class RunSpec:
    method: str
    lr: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-lr{self.lr:g}-seed{self.seed}"


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

    def selection_key(self) -> tuple[float, float, float]:
        # NaN (a diverged run) sorts last.
        metric = self.dev_metric if not math.isnan(self.dev_metric) else -math.inf
        loss = self.dev_loss if not math.isnan(self.dev_loss) else math.inf
        return (-metric, loss, self.spec.lr)

    def curve(self, split: str, key: str) -> tuple[list[int], list[float]]:
        rows = [r for r in self.records if r["split"] == split and key in r]
        return [int(r["step"]) for r in rows], [float(r[key]) for r in rows]


def parse_grid(items: list[str]) -> dict[str, list[float]]:
    grid: dict[str, list[float]] = {}
    for item in items:
        method, _, rates = item.partition("=")
        if not rates:
            raise SystemExit(f"--grid expects METHOD=LR[,LR...], got {item!r}")
        try:
            name = get_method(method).name  # any registered method (`agzo methods`)
        except ValueError as error:
            raise SystemExit(f"--grid {item!r}: {error}") from None
        try:
            grid[name] = [float(r) for r in rates.split(",") if r.strip()]
        except ValueError:
            raise SystemExit(f"--grid {item!r}: learning rates must be numbers") from None
    return grid


def run_all(specs: list[RunSpec], args: argparse.Namespace) -> dict[RunSpec, RunResult]:
    """Run every spec not already finished, at most args.jobs at a time."""
    pending = [s for s in specs if not (args.out / s.name / "summary.json").exists()]
    if args.report_only:
        pending = []
    running: dict[RunSpec, tuple[subprocess.Popen[bytes], float]] = {}
    done = len(specs) - len(pending)
    if done:
        print(f"{done} of {len(specs)} runs already finished", flush=True)
    while pending or running:
        while pending and len(running) < args.jobs:
            spec = pending.pop(0)
            running[spec] = (launch(spec, args), time.time())
        time.sleep(2)
        for spec, (process, started) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            del running[spec]
            took = time.time() - started
            status = "done" if code == 0 else f"FAILED (exit {code}; see logs/{spec.name}.txt)"
            print(f"  {spec.name}: {status} in {took:.0f}s", flush=True)
    return {s: r for s in specs if (r := read_result(s, args.out)) is not None}


def launch(spec: RunSpec, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    run_dir = args.out / spec.name
    command = [
        sys.executable, "-m", "agzo", "train",
        "--model", args.model, "--task", args.task,
        "--optimizer", spec.method, "--lr", f"{spec.lr:g}", "--seed", str(spec.seed),
        "--steps", str(args.steps), "--eval-every", str(args.eval_every),
        "--eval-examples", "none", "--checkpoint-every", "0", "--no-tensorboard",
        "--output-dir", str(run_dir), "--overwrite",  # an unfinished run starts over
        *(["--data-dir", args.data_dir] if args.data_dir else []),
        *args.train_args,
    ]  # fmt: skip
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    log = open(args.out / "logs" / f"{spec.name}.txt", "wb")  # noqa: SIM115 (closed when the process is reaped)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def read_result(spec: RunSpec, out: Path) -> RunResult | None:
    run_dir = out / spec.name
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except (OSError, ValueError):
        return None
    return RunResult(spec, summary, [json.loads(line) for line in lines if line.strip()])


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def first_step_reaching(result: RunResult, target_loss: float) -> int | None:
    for step, loss in zip(*result.curve("dev", "loss"), strict=True):
        if loss <= target_loss:
            return step
    return None


def _demonstrations(result: RunResult) -> int:
    return int(result.summary.get("config", {}).get("demonstrations", 0))


def report(
    grid: dict[str, list[float]],
    seeds: list[int],
    chosen: dict[str, float],
    results: dict[RunSpec, RunResult],
    args: argparse.Namespace,
) -> str:
    any_result = next(iter(results.values()))
    metric = any_result.metric
    zero_shot = any_result.summary["zero_shot"]
    lines = [
        f"task {args.task}, model {args.model}, {args.steps} steps, seeds {seeds}",
        f"zero-shot (seed {seeds[0]} splits): dev {metric} "
        f"{zero_shot['dev'][metric]:.3f}, test {metric} {zero_shot['test'][metric]:.3f}"
        + (
            f"; in-context ({_demonstrations(any_result)} demonstrations) test {metric} "
            f"{zero_shot['icl_test'][metric]:.3f}"
            if "icl_test" in zero_shot
            else ""
        ),
        "",
        f"Learning-rate search, seed {seeds[0]} (best-on-dev weights):",
        "",
        f"| method | lr | dev {metric} | dev loss | test {metric} | best step |",
        "|---|---|---|---|---|---|",
    ]
    for method, rates in grid.items():
        for lr in rates:
            result = results.get(RunSpec(method, lr, seeds[0]))
            if result is None:
                lines.append(f"| {method} | {lr:g} | failed | | | |")
                continue
            mark = " **(chosen)**" if chosen.get(method) == lr else ""
            lines.append(
                f"| {method} | {lr:g}{mark} | {result.dev_metric:.3f} | {result.dev_loss:.3f} | "
                f"{result.test_metric:.3f} | {result.summary['best_step']} |"
            )
    lines += [
        "",
        f"Chosen rate, every seed (test {metric} of the best-on-dev weights):",
        "",
        f"| method | lr | test {metric} per seed | mean ± sd | dev {metric} mean |",
        "|---|---|---|---|---|",
    ]
    for method, lr in chosen.items():
        runs = [results[s] for seed in seeds if (s := RunSpec(method, lr, seed)) in results]
        tests = [r.test_metric for r in runs]
        lines.append(
            f"| {method} | {lr:g} | {', '.join(f'{t:.3f}' for t in tests)} | {mean_std(tests)} | "
            f"{mean_std([r.dev_metric for r in runs])} |"
        )
    if "mezo" in chosen:
        lines += ["", "Steps to reach MeZO's final dev loss (same seed, dev evaluated every "
                  f"{args.eval_every} steps):", ""]  # fmt: skip
        for seed in seeds:
            mezo = results.get(RunSpec("mezo", chosen["mezo"], seed))
            if mezo is None:
                continue
            target = mezo.curve("dev", "loss")[1][-1]
            reached = []
            for method, lr in chosen.items():
                result = results.get(RunSpec(method, lr, seed))
                if result is not None:
                    step = first_step_reaching(result, target)
                    reached.append(f"{method} {'never' if step is None else step}")
            lines.append(f"- seed {seed} (MeZO final dev loss {target:.3f}): " + ", ".join(reached))
    return "\n".join(lines)


def plot(chosen: dict[str, float], seeds: list[int], results: dict[RunSpec, RunResult],
         path: Path, window: int = 25) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for method, lr in chosen.items():
        runs = [results[s] for seed in seeds if (s := RunSpec(method, lr, seed)) in results]
        if not runs:
            continue
        label = f"{method} lr {lr:g} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
        steps, _ = runs[0].curve("train", "loss")
        losses = [smoothed(r.curve("train", "loss")[1], window) for r in runs]
        n = min(len(x) for x in losses)
        top.plot(steps[:n], [statistics.fmean(x[i] for x in losses) for i in range(n)], label=label)
        dev_steps, _ = runs[0].curve("dev", runs[0].metric)
        devs = [r.curve("dev", r.metric)[1] for r in runs]
        m = min(len(x) for x in devs)
        mean = [statistics.fmean(x[i] for x in devs) for i in range(m)]
        (line,) = bottom.plot(dev_steps[:m], mean, marker="o", label=label)
        low = [min(x[i] for x in devs) for i in range(m)]
        high = [max(x[i] for x in devs) for i in range(m)]
        bottom.fill_between(dev_steps[:m], low, high, color=line.get_color(), alpha=0.15)
    top.set_ylabel(f"training loss (mean of last {window})")
    bottom.set_ylabel("dev accuracy (mean; band: min-max)")
    bottom.set_xlabel("step (0 = zero-shot)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--grid", action="append", required=True, help="METHOD=LR[,LR...]")
    parser.add_argument("--seeds", default="0,1", help="first seed searches, the rest repeat")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report-only", action="store_true", help="run nothing; report")
    parser.add_argument("train_args", nargs="*", help="after --: passed to every agzo train")
    args = parser.parse_args()
    grid = parse_grid(args.grid)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)

    search = [RunSpec(m, lr, seeds[0]) for m, rates in grid.items() for lr in rates]
    print(f"learning-rate search: {len(search)} runs, seed {seeds[0]}", flush=True)
    results = run_all(search, args)
    chosen = {}
    for method, rates in grid.items():
        finished = [results[s] for lr in rates if (s := RunSpec(method, lr, seeds[0])) in results]
        if finished:
            chosen[method] = min(finished, key=RunResult.selection_key).spec.lr
    print("chosen: " + ", ".join(f"{m} {lr:g}" for m, lr in chosen.items()), flush=True)
    repeats = [RunSpec(m, lr, seed) for m, lr in chosen.items() for seed in seeds[1:]]
    if repeats:
        print(f"repeats: {len(repeats)} runs, seeds {seeds[1:]}", flush=True)
        results.update(run_all(repeats, args))
    if not results:
        raise SystemExit("no run finished; see the logs under " + str(args.out))

    text = report(grid, seeds, chosen, results, args)
    (args.out / "sweep.md").write_text(text + "\n")
    (args.out / "sweep.json").write_text(json.dumps({
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "chosen": chosen,
        "runs": {s.name: {"method": s.method, "lr": s.lr, "seed": s.seed,
                          "dev": r.dev_metric, "dev_loss": r.dev_loss, "test": r.test_metric,
                          "best_step": r.summary["best_step"],
                          "seconds_per_step": r.summary["seconds_per_step"],
                          "zero_shot": r.summary["zero_shot"]}
                 for s, r in results.items()},
    }, indent=2))  # fmt: skip
    plot(chosen, seeds, results, args.out / "sweep.png")
    print(text)
    print(f"\nwrote {args.out}/sweep.md, sweep.json, sweep.png")


if __name__ == "__main__":
    main()
