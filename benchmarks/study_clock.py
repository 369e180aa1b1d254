"""The runner's deadline (`--until`): when a study stops, and which runs still fit before it.

A machine lent for a few hours (a batch job's wall time, a session) ends wherever the study
is, and a training run cut off with it is lost when its checkpoints go with the machine.
With a deadline the runner starts a training run only when runs like it have finished in
the time left, and stops whatever is still under way at the deadline: a training run
checkpoints its last step (`--continue` resumes it on the same machine), an in-context
evaluation keeps the batches it has scored (its journal, in the record when there is one).
An in-context evaluation may always start, since nothing of it is lost to the deadline.

How long a training run takes is read from the study's finished runs: the wall time the
runner measured for each run it launched afresh and saw to its end (`durations.json` beside
the report), else the run's own training time (`train_seconds`) with EVALUATION_ALLOWANCE
added for its evaluations, which that figure leaves out. The estimate is the longest run of
the same arm, so that a run stopped early (a diverged one) does not make its arm look
quick; an arm with no finished run yet takes the study's median run, since its slowest
(a first-order arm, about twice a zeroth-order one) would keep a new arm from ever starting.
"""

from __future__ import annotations

import json
import re
import statistics
from datetime import datetime, timedelta
from pathlib import Path

from study_search import RunResult, RunSpec

__all__ = ["EVALUATION_ALLOWANCE", "Durations", "expected_seconds", "parse_until"]

# Evaluations (and loading the model) on top of `train_seconds`, measured on the 2-core
# CPU: an SST-2 run (500 dev examples every 100 steps) took 12% longer than its steps
# (2,947 s against 2,623 s, MeZO's language-model-loss seed 2 from step 107 to 1,000), an
# RTE run (500 longer dev examples every 50 steps) 39% longer (4,886 s against 3,511 s,
# ZO-Act 3e-4 seed 0 from step 22 to 500; an AdamW run 24%, 9,699 s against 7,828 s).
# Half again covers them.
EVALUATION_ALLOWANCE = 1.5

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})$")


def parse_until(text: str, now: datetime) -> datetime:
    """`--until`: a time left ("2h30m", "90m", "45s") or a clock time ("22:10", the next
    one to come: today, or tomorrow when it has passed)."""
    if clock := _CLOCK.match(text):
        hour, minute = int(clock.group(1)), int(clock.group(2))
        if hour > 23 or minute > 59:
            raise SystemExit(f"--until {text}: no such clock time (HH:MM, 00:00 to 23:59)")
        when = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return when if when > now else when + timedelta(days=1)
    duration = _DURATION.match(text)
    if not text or duration is None:
        raise SystemExit(
            f"--until {text}: give a time left (2h30m, 90m, 45s) or a clock time (22:10)"
        )
    hours, minutes, seconds = (int(part or 0) for part in duration.groups())
    return now + timedelta(hours=hours, minutes=minutes, seconds=seconds)


class Durations:
    """The wall time of each run the runner launched afresh and saw finish, by run name,
    kept in FOLDER/durations.json (the record's when there is one, so that it lasts)."""

    FILE = "durations.json"

    def __init__(self, folder: Path) -> None:
        self.path = folder / self.FILE

    def read(self) -> dict[str, float]:
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(name): float(seconds) for name, seconds in found.items()}

    def keep(self, name: str, seconds: float) -> None:
        durations = self.read() | {name: round(seconds, 1)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(dict(sorted(durations.items())), indent=1) + "\n")


def expected_seconds(
    spec: RunSpec, results: dict[RunSpec, RunResult], durations: dict[str, float]
) -> float | None:
    """How long a run of `spec`'s arm takes from its start to its report, from the study's
    finished runs (see the module doc); None when no run has finished yet."""

    def seconds(done: RunSpec, result: RunResult) -> float | None:
        if done.name in durations:
            return durations[done.name]
        trained = result.summary.get("train_seconds")
        return None if trained is None else float(trained) * EVALUATION_ALLOWANCE

    known = {done: value for done, result in results.items()
             if (value := seconds(done, result)) is not None}  # fmt: skip
    own = [value for done, value in known.items() if done.arm == spec.arm]
    if own:
        return max(own)
    return statistics.median(known.values()) if known else None
