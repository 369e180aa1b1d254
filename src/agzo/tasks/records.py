"""Raw records read from task files, with enough provenance for useful error messages.

Every reader returns `Record`s that remember their file and line. Field access goes
through `Record.value` / `Record.text`, so a missing or mistyped field is reported as
"missing field 'premise' in .../rte/val.jsonl, line 12" instead of a bare KeyError.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agzo.tasks.errors import TaskDataError

# Extensions the readers understand, mapped to a short format name.
SUPPORTED_SUFFIXES: dict[str, str] = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}


@dataclass(frozen=True)
class Record:
    """One raw record (a JSONL object or a CSV/TSV row) and where it came from.

    data: the record's fields.
    source: the file path (or a hub id such as "hub:super_glue/rte (train)").
    line: 1-based line number in `source` (row number for hub data).
    prefix: where inside that line this record sits, for nested records
        ("passage.questions[3]."); empty for top-level records.
    """

    data: Mapping[str, object]
    source: str
    line: int
    prefix: str = ""

    def where(self) -> str:
        return f"{self.source}, line {self.line}"

    def value(self, field: str) -> object:
        """The raw value of `field`; a TaskDataError naming field, file and line if absent."""
        if field not in self.data:
            present = ", ".join(sorted(self.data)) or "none"
            raise TaskDataError(
                f"missing field '{self.prefix}{field}' in {self.where()} "
                f"(fields present: {present})"
            )
        return self.data[field]

    def text(self, field: str) -> str:
        """`field` as text. Numbers are accepted and converted, since CSV-like data and
        user files often hold ids or counts in text positions; anything else is an error."""
        value = self.value(field)
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise TaskDataError(
            f"field '{self.prefix}{field}' in {self.where()} should be text, "
            f"got {type(value).__name__} {value!r}"
        )

    def child(self, field: str) -> Record:
        """A nested object (e.g. WSC's `target`, MultiRC's `passage`) as its own Record."""
        value = self.value(field)
        if not isinstance(value, Mapping):
            raise TaskDataError(
                f"field '{self.prefix}{field}' in {self.where()} should be an object, "
                f"got {type(value).__name__}"
            )
        return Record(value, self.source, self.line, f"{self.prefix}{field}.")

    def children(self, field: str) -> list[Record]:
        """A nested list of objects (MultiRC's questions and answers) as Records."""
        value = self.value(field)
        if not isinstance(value, list):
            raise TaskDataError(
                f"field '{self.prefix}{field}' in {self.where()} should be a list, "
                f"got {type(value).__name__}"
            )
        out: list[Record] = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise TaskDataError(
                    f"field '{self.prefix}{field}[{i}]' in {self.where()} should be an object, "
                    f"got {type(item).__name__}"
                )
            out.append(Record(item, self.source, self.line, f"{self.prefix}{field}[{i}]."))
        return out


def read_records(path: Path) -> list[Record]:
    """Read a .jsonl, .csv or .tsv file into Records (format chosen by extension)."""
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise TaskDataError(
            f"cannot read {path}: unsupported extension '{path.suffix}' "
            f"(expected one of {', '.join(SUPPORTED_SUFFIXES)})"
        )
    if not path.is_file():
        raise TaskDataError(f"file not found: {path}")
    if kind == "jsonl":
        return read_jsonl(path)
    return read_delimited(path, delimiter="\t" if kind == "tsv" else ",")


def read_jsonl(path: Path) -> list[Record]:
    """One JSON object per line; blank lines are skipped (trailing newlines are common)."""
    records: list[Record] = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskDataError(f"invalid JSON in {path}, line {line_no}: {exc.msg}") from exc
            if not isinstance(obj, dict):
                raise TaskDataError(
                    f"{path}, line {line_no}: expected a JSON object, got {type(obj).__name__}"
                )
            records.append(Record(obj, str(path), line_no))
    return records


def read_delimited(path: Path, delimiter: str) -> list[Record]:
    """A CSV/TSV file whose first row names the columns.

    TSV is read without quote processing: GLUE's TSV files are unquoted and their text
    contains stray double quotes that a quoting reader would swallow. CSV uses the
    standard quoting rules, since CSV writers quote fields that contain commas.
    """
    records: list[Record] = []
    with path.open(encoding="utf-8", newline="") as handle:
        if delimiter == "\t":
            reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise TaskDataError(f"{path} is empty: expected a header row naming the columns")
        header = [name.strip() for name in header]
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) != len(header):
                raise TaskDataError(
                    f"{path}, line {reader.line_num}: expected {len(header)} columns "
                    f"({', '.join(header)}), found {len(row)}"
                )
            records.append(Record(dict(zip(header, row)), str(path), reader.line_num))
    return records
