"""A study's record: what a study needs to go on when its run folder is gone.

The runner's folder (`--out`) holds checkpoints, logs and each run's full output: far too
much to keep under version control, and gone with the machine it was on. The record
(`--record DIR`, a folder meant to be committed) keeps the small part that decides the
study: the command, and for every finished run its `summary.json` and its metrics
(`metrics.jsonl.gz`, every step and every evaluation). A study continued from a fresh
checkout reads its finished runs from the record and only trains what is still missing.

    DIR/command.json                     the study's arguments (what --continue repeats)
    DIR/runs/<run>/summary.json          a finished run, as `agzo train` wrote it
    DIR/runs/<run>/metrics.jsonl.gz      its metrics.jsonl, compressed
    DIR/runs/<icl-run>.json              an in-context result, as `agzo eval` wrote it
    DIR/runs/<icl-run>.test.progress.jsonl  the journal of one under way (`agzo eval --output`)
    DIR/sweep.md, sweep.json, sweep.png  the report
    DIR/durations.json                   each run's wall time, as the runner saw it (study_clock.py)

An in-context evaluation writes into the record directly: committed while it is under way,
its journal lets the next checkout continue it from the batches it has scored.

A run whose metrics are missing from its record (one restored from an earlier report) still
counts as finished; its report lines that need a curve say so.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"


def read_run_folder(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """A finished run's summary and metric rows from the run's own folder, or None while
    it has not finished (no summary yet)."""
    try:
        summary = json.loads((run_dir / SUMMARY).read_text())
        lines = (run_dir / METRICS).read_text().splitlines()
    except (OSError, ValueError):
        return None
    return summary, [json.loads(line) for line in lines if line.strip()]


class Record:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs = root / "runs"

    def run_names(self) -> list[str]:
        if not self.runs.is_dir():
            return []
        return sorted(p.name for p in self.runs.iterdir() if (p / SUMMARY).is_file())

    def has_run(self, name: str) -> bool:
        return (self.runs / name / SUMMARY).is_file()

    def keep_run(self, run_dir: Path) -> None:
        """Copy a finished run's summary and metrics in. The summary goes last: a run
        cut off half-kept has no summary, so it is kept again, whole, next time."""
        kept = self.runs / run_dir.name
        kept.mkdir(parents=True, exist_ok=True)
        # mtime=0 and no file name in the header: the same run always gives the same bytes.
        with (
            (run_dir / METRICS).open("rb") as source,
            (kept / f"{METRICS}.gz").open("wb") as target,
            gzip.GzipFile(fileobj=target, mode="wb", filename="", mtime=0) as packed,
        ):
            shutil.copyfileobj(source, packed)
        shutil.copyfile(run_dir / SUMMARY, kept / SUMMARY)

    def read_run(self, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        kept = self.runs / name
        try:
            summary = json.loads((kept / SUMMARY).read_text())
        except (OSError, ValueError):
            return None
        try:
            with gzip.open(kept / f"{METRICS}.gz", "rt") as rows:
                records = [json.loads(line) for line in rows if line.strip()]
        except FileNotFoundError:
            records = []  # restored from a report: the figures are kept, the curves are not
        return summary, records

    def icl_path(self, name: str) -> Path:
        """Where an in-context result lives in the record (its journal beside it)."""
        return self.runs / f"{name}.json"

    def keep_icl(self, path: Path) -> None:
        self.runs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, self.runs / path.name)

    def read_icl(self, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = json.loads(self.icl_path(name).read_text())
        except (OSError, ValueError):
            return None
        return found

    def keep_report(self, out: Path, names: tuple[str, ...]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(out / name, self.root / name)
