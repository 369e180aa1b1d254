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
seed, after every training run, or taking its turns with the --first arms when --first names
it (`icl`); the zero-shot row comes from the runs themselves.

Each run is a plain `agzo train` in its own process, up to --jobs at once, each limited to
--threads threads (several multi-threaded runs on few cores slow each other several-fold).
Runs go to OUT/<arm>-lr<rate>-seed<seed>, their output to OUT/logs/. Nothing is lost to an
interruption: a finished run (summary.json written) is never run again, an unfinished one
resumes from its last checkpoint (`agzo train --resume`), and an in-context evaluation cut
off continues from the batches it has scored (`agzo eval --output` journals them), so the
same command continues a study where it stopped. Ctrl-C or `kill` (SIGTERM) stops the runner
and its runs, each of which saves a checkpoint of its last completed step first. `--until
2h30m` (or `--until 22:10`) stops them at a deadline the same way, and starts no training run
that runs like it say would not end by then (benchmarks/study_clock.py). `--continue OUT`
repeats the command that last ran in OUT (kept in OUT/command.json, less any --until);
`--jobs`, `--threads` and `--until` given after it replace the recorded ones (how runs share
the machine and for how long, never what a run does). Checkpoints of finished runs are
deleted (--keep-checkpoints keeps them). --report-only writes the tables from the finished
runs alone. Arguments after `--` go to every run.

OUT is scratch space, lost with its machine. `--record DIR` names a folder to commit
(benchmarks/study_record.py): every finished run's summary and metrics, the command and the
report are kept there too, so `--continue DIR` on a fresh checkout reads the finished runs
from it and trains only what is missing (a run cut off with OUT starts over, in full; an
in-context evaluation writes into the record, so one cut off continues from its journal
there once that is committed).

Writes, after every finished run: OUT/sweep.md (search and seed tables, and each chosen rate's
lead over the next best on dev, in dev examples), OUT/sweep.json (what
benchmarks/study_table.py reads to put several tasks in one table) and OUT/sweep.png
(training loss and dev metric of each arm's chosen rate, mean over seeds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from study_clock import parse_until
from study_record import Record
from study_scheduler import Study
from study_search import IN_CONTEXT, parse_arms, parse_grid


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


# How runs share the machine and how long the runner may go on: never what a run does.
SCHEDULING = {"--jobs": int, "--threads": int, "--until": str}
# Of this sitting only: a deadline is not kept with the command that --continue repeats.
NOT_RECORDED = ("--until",)


def parse_continue(argv: list[str]) -> tuple[Path, dict[str, str]]:
    """`--continue`'s arguments: the study folder, and the scheduling flags given."""
    usage = "usage: method_sweep.py --continue STUDY_FOLDER [--jobs N] [--threads N] [--until T]"
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("out", type=Path, nargs="?")
    for flag, kind in SCHEDULING.items():
        parser.add_argument(flag, type=kind, default=None)
    try:
        given, extra = parser.parse_known_args(argv)
    except argparse.ArgumentError as error:
        raise SystemExit(f"{usage} ({error})") from None
    if given.out is None or extra:
        raise SystemExit(usage + (f" (not taken: {' '.join(extra)})" if extra else ""))
    values = {flag: getattr(given, flag.lstrip("-")) for flag in SCHEDULING}
    return given.out, {flag: str(value) for flag, value in values.items() if value is not None}


def split_at_passed_on(argv: list[str]) -> tuple[list[str], list[str]]:
    """The runner's own arguments, and those from `--` on that go to every run."""
    cut = argv.index("--") if "--" in argv else len(argv)
    return argv[:cut], argv[cut:]


def without_flag(words: list[str], flag: str) -> list[str]:
    """`words` less every `flag VALUE` and `flag=VALUE`."""
    kept: list[str] = []
    remaining = iter(words)
    for word in remaining:
        if word == flag:
            next(remaining, None)  # and its value
        elif not word.startswith(flag + "="):
            kept.append(word)
    return kept


def continued_command(argv: list[str]) -> list[str]:
    """The command `--continue OUT [--jobs N] [--threads N] [--until T]` repeats: OUT's
    recorded one, with the runs' scheduling replaced where given (it changes no run's
    result)."""
    out, scheduling = parse_continue(argv)
    own, passed_on = split_at_passed_on(recorded_command(out))
    for flag, value in scheduling.items():
        own = [*without_flag(own, flag), flag, value]
    return own + passed_on


def recordable(argv: list[str]) -> list[str]:
    """The command as kept for --continue: without what holds for this sitting only."""
    own, passed_on = split_at_passed_on(argv)
    for flag in NOT_RECORDED:
        own = without_flag(own, flag)
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
        "--first",
        default="",
        help=f"ARM[,ARM...]: studied to the end before the other arms ({IN_CONTEXT}: the "
        "in-context baseline, else last)",
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
    parser.add_argument("--until", default=None,
                        help="stop by then: a time left (2h30m) or a clock time (22:10); "
                        "only runs that fit start (benchmarks/study_clock.py)")  # fmt: skip
    parser.add_argument("train_args", nargs="*", help="after --: passed to every agzo train")
    args = parser.parse_args(argv)
    # The study's command, as a report names it: --report-only is how a report was made.
    study_argv = [word for word in recordable(argv) if word != "--report-only"]
    args.command = shlex.join(["benchmarks/method_sweep.py", *study_argv])
    if args.widen <= 1 or args.max_widen < 0 or args.jobs < 1:
        raise SystemExit("--widen must exceed 1, --max-widen be >= 0, --jobs be >= 1")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    args.eval_args = shlex.split(args.eval_args)
    arms = parse_arms(args.arm)
    grid = parse_grid(args.grid, arms)
    args.first = [label for label in args.first.split(",") if label]
    if IN_CONTEXT in args.first and not args.icl:
        raise SystemExit(f"--first {IN_CONTEXT}: the in-context baseline needs --icl K")
    unknown = [label for label in args.first if label not in grid and label != IN_CONTEXT]
    if unknown:
        raise SystemExit(f"--first {','.join(unknown)}: no such arm (give each a --grid)")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    record = Record(args.record) if args.record else None
    study = Study(args, arms, grid, seeds, record)
    if args.until is not None:
        study.deadline = parse_until(args.until, datetime.now())
    continue_from = args.record or args.out
    left: str | None = None  # what a deadline left undone
    if not args.report_only:
        hold_lock(args.out)
        for folder in (args.out, args.record) if args.record else (args.out,):
            folder.mkdir(parents=True, exist_ok=True)
            recorded = {"argv": recordable(argv)}
            (folder / COMMAND_FILE).write_text(json.dumps(recorded, indent=1) + "\n")
        print(f"study in {args.out}: arms {', '.join(grid)}; {args.jobs} at once, "
              f"{args.threads} thread(s) each; {study.progress({})}", flush=True)  # fmt: skip
        if study.deadline is not None:
            print(f"  until {study.deadline:%Y-%m-%d %H:%M}", flush=True)
        try:
            with stop_on_signals():
                left = study.run()
        except KeyboardInterrupt:
            study.write_report()
            print("stopped; the runs saved checkpoints. Continue with: python "
                  f"benchmarks/method_sweep.py --continue {continue_from}",
                  file=sys.stderr)  # fmt: skip
            raise SystemExit(130) from None
    text = study.write_report()
    then = ""
    if left is not None:
        then = (
            f"{left}. Continue with: python benchmarks/method_sweep.py --continue {continue_from}"
        )
    if text is None:
        raise SystemExit(f"no run finished; see the logs under {args.out}. {then}".rstrip())
    print(text)
    print(f"\nwrote {args.out}/sweep.md, sweep.json, sweep.png")
    if then:
        print(then)


if __name__ == "__main__":
    main()
