"""A journal of an evaluation's finished batches: an interrupted `agzo eval` continues.

An in-context evaluation puts every prompt behind k demonstrations, so it takes k + 1
times a plain evaluation's tokens or more; cut off near its end, it should not start
over. `agzo eval --output FILE` therefore keeps, beside FILE, one JSON-lines journal
per split: a first line naming what is evaluated (the resolved settings, the weights, the
split, a digest of its examples), then a line per finished batch with each example's
result. Run again, the same command reads the journal and scores only the batches it
lacks. The batches are the same ones (the examples are drawn and ordered the same way,
and each batch is scored on its own), so the results equal an uninterrupted run's.

A journal written for anything else is set aside, with a note, and the split starts
over. The last line of a journal cut off mid-write is dropped. The journal is removed
once FILE is written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from agzo.tasks.base import Example

__all__ = ["EvalJournal", "examples_digest", "journal_path"]


def journal_path(output: Path, split: str) -> Path:
    """Where `agzo eval --output OUTPUT` journals `split`: OUTPUT.SPLIT.progress.jsonl."""
    return output.with_name(f"{output.stem}.{split}.progress.jsonl")


def examples_digest(examples: Sequence[Example]) -> str:
    """A digest of the examples as evaluated (prompts, candidates, labels, in order), so
    that a journal is never continued on other data."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(repr(example).encode("utf-8"))
    return digest.hexdigest()


class EvalJournal:
    """Results of finished batches by example index, read back and appended to."""

    def __init__(
        self, path: Path, identity: dict[str, Any], note: Callable[[str], None] = print
    ) -> None:
        self.path = path
        # JSON's own round trip, so that a fresh identity compares equal to a read one.
        self.identity = json.loads(json.dumps(identity))
        self.rows: dict[int, list[Any]] = {}
        self._read(note)
        self._file = self.path.open("a", encoding="utf-8")
        if self.path.stat().st_size == 0:
            self._append({"identity": self.identity})

    def _read(self, note: Callable[[str], None]) -> None:
        if not self.path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return
        lines = self.path.read_text(encoding="utf-8").split("\n")
        kept: list[str] = []
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break  # the line a cut-off write left; nothing after it was written
            kept.append(line)
            if len(kept) == 1:
                if entry.get("identity") != self.identity:
                    note(f"note: {self.path} was written for other settings; starting over")
                    self.path.unlink()
                    return
            else:
                self.rows.update({int(i): row for i, row in entry["batch"]})
        # Rewritten without the torn line, so that appends start on a line of their own.
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def recorded(self, batch: Sequence[int]) -> list[list[Any]] | None:
        """The results of every example of `batch`, if the journal holds them all."""
        if all(i in self.rows for i in batch):
            return [self.rows[i] for i in batch]
        return None

    def record(self, batch: Sequence[int], rows: Sequence[Sequence[Any]]) -> None:
        """Keep a finished batch's results (one row per example), on disk at once."""
        self.rows.update({i: list(row) for i, row in zip(batch, rows)})
        self._append({"batch": [[i, list(row)] for i, row in zip(batch, rows)]})

    def _append(self, entry: dict[str, Any]) -> None:
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> EvalJournal:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
