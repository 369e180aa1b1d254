"""Raw records read from task files, with enough provenance for useful error messages.

Every reader returns `Record`s that remember their file and line. Field access goes
through `Record.value` / `Record.text`, so a missing or mistyped field is reported as
"missing field 'premise' in .../rte/val.jsonl, line 12" instead of a bare KeyError.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
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
    hint: str = ""  # added to a missing-field error (e.g. "the file may have no header")

    def where(self) -> str:
        return f"{self.source}, line {self.line}"

    def value(self, field: str) -> object:
        """The raw value of `field`; a TaskDataError naming field, file and line if absent."""
        if field not in self.data:
            present = ", ".join(sorted(self.data)) or "none"
            raise TaskDataError(
                f"missing field '{self.prefix}{field}' in {self.where()} "
                f"(fields present: {present}){self.hint}"
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


def read_records(path: Path, columns: Sequence[str] | None = None) -> list[Record]:
    """Read a .jsonl, .csv or .tsv file into Records (format chosen by extension).

    columns: the column names of a CSV/TSV file without a header row (every row is data).
    """
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise TaskDataError(
            f"cannot read {path}: unsupported extension '{path.suffix}' "
            f"(expected one of {', '.join(SUPPORTED_SUFFIXES)})"
        )
    if not path.is_file():
        raise TaskDataError(f"file not found: {path}")
    if kind == "jsonl":
        if columns:
            raise TaskDataError(f"{path}: --columns names CSV/TSV columns; JSONL names its own")
        return read_jsonl(path)
    return read_delimited(path, delimiter="\t" if kind == "tsv" else ",", columns=columns)


def read_text(path: Path) -> str:
    """The file as UTF-8 text; anything else fails naming the file, the line and a fix."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark, as some editors write, is fine
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise TaskDataError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{raw[error.start]:02x}). Save the "
            f"file as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}"
        ) from error


def read_jsonl(path: Path) -> list[Record]:
    """One JSON object per line; blank lines are skipped (trailing newlines are common)."""
    records: list[Record] = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other line breaks.
    for line_no, line in enumerate(read_text(path).split("\n"), start=1):
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


def read_delimited(
    path: Path, delimiter: str, columns: Sequence[str] | None = None
) -> list[Record]:
    """A CSV/TSV file whose first row names the columns, or whose `columns` are given.

    TSV is read without quote processing: GLUE's TSV files are unquoted and their text
    contains stray double quotes that a quoting reader would swallow. CSV uses the
    standard quoting rules, since CSV writers quote fields that contain commas.
    """
    records: list[Record] = []
    handle = io.StringIO(read_text(path), newline="")
    if delimiter == "\t":
        reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(handle, delimiter=delimiter)
    hint = ""
    if columns:
        header = [name.strip() for name in columns]
    else:
        first = next(reader, None)
        if first is None:
            raise TaskDataError(f"{path} is empty: expected a header row naming the columns")
        header = [name.strip() for name in first]
        if looks_like_data(header):
            hint = (
                f"; the first row ({delimiter.join(first)[:60]!r}) looks like data, not column "
                "names: no header? Name the columns with --columns, e.g. --columns text,label"
            )
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(header):
            raise TaskDataError(
                f"{path}, line {reader.line_num}: expected {len(header)} columns "
                f"({', '.join(header)}), found {len(row)}"
            )
        records.append(Record(dict(zip(header, row)), str(path), reader.line_num, hint=hint))
    return records


def looks_like_data(header: Sequence[str]) -> bool:
    """Whether a first row reads as values rather than column names: a number, an empty
    or repeated name, or a long phrase."""
    for cell in header:
        try:
            float(cell)
        except ValueError:
            pass
        else:
            return True
    return len(set(header)) < len(header) or any(
        not cell or len(cell) > 40 or len(cell.split()) > 4 for cell in header
    )
