"""User-defined classification tasks from a JSONL/CSV/TSV file and a prompt template,
without writing Python.

    task = custom_task_from_spec("reviews.csv", "Review: {text}\\nSentiment:",
                                 labels="0=negative,1=positive")
    splits = load_splits(task, data_dir=None, seed=0)
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agzo.tasks.base import Example
from agzo.tasks.errors import TaskDataError
from agzo.tasks.records import SUPPORTED_SUFFIXES, Record, read_records
from agzo.tasks.sampling import (
    MEZO_SIZES,
    SplitSizes,
    TaskSplits,
    Unit,
    dedupe,
    finish,
    split_carved,
    split_three_pools,
    split_with_train_pool,
    to_units,
)

# File stems recognised in a custom task folder, by role, in order of preference.
TRAIN_STEMS = ("train",)
DEV_STEMS = ("dev", "val", "validation")
TEST_STEMS = ("test",)


def template_fields(template: str) -> tuple[str, ...]:
    """The `{field}` names a template uses, in order of first use.

    Positional (`{}`, `{0}`) and attribute/index (`{a.b}`, `{a[0]}`) placeholders are
    rejected: records are flat name -> text mappings. Literal braces are written `{{ }}`.
    """
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"invalid template {template!r}: {exc}") from exc
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if not name or name.isdigit() or any(ch in name for ch in ".[]"):
            raise ValueError(
                f"invalid placeholder {{{name}}} in template {template!r}: use {{field_name}} "
                "with a field (column) name of the data"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"template {template!r} has no {{field}} placeholder")
    return tuple(names)


def label_key(value: object) -> str:
    """A label value as text, the way it appears in the file: JSON true -> "true",
    1 -> "1"; CSV/TSV cells are already text (surrounding blanks are ignored)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value.strip()
    return str(value)


@dataclass(frozen=True)
class CustomTask:
    """A classification task defined by data + template + verbalizer.

    path: a data file (train/dev/test are carved from it with the seed) or a folder with
        `train.<ext>` and optionally `dev|val|validation.<ext>` and `test.<ext>`
        (ext: jsonl, csv, tsv). With both a dev and a test file, each split comes from its
        own file; with one of them, it is the test set and dev is drawn from train (MeZO);
        with neither, all three are carved from train.
    template: prompt with `{field}` placeholders filled from each record's text fields.
    label_words: label value (as text, as in the file) -> candidate continuation, used
        verbatim (include the leading space, e.g. " positive"). Its order fixes the
        candidate order.
    label_field: the record field holding the label.
    columns: the column names of CSV/TSV files that have no header row.
    """

    path: Path
    template: str
    label_words: Mapping[str, str]
    label_field: str = "label"
    columns: tuple[str, ...] | None = None
    name: str = "custom"
    metric: str = "accuracy"
    description: str = "user-defined task"
    text_fields: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "label_words", dict(self.label_words))
        object.__setattr__(self, "text_fields", template_fields(self.template))
        if len(self.label_words) < 2:
            raise ValueError(
                f"{self.name}: label_words needs at least two labels, got {dict(self.label_words)}"
            )
        words = list(self.label_words.values())
        if len(set(words)) != len(words) or not all(word.strip() for word in words):
            raise ValueError(
                f"{self.name}: label words must be distinct and non-empty, got {words}"
            )

    @property
    def candidates(self) -> tuple[str, ...]:
        return tuple(self.label_words.values())

    def default_sizes(self) -> SplitSizes:
        return MEZO_SIZES

    def label_index(self, record: Record) -> int:
        raw = record.value(self.label_field)
        key = label_key(raw)
        keys = list(self.label_words)
        if key in keys:
            return keys.index(key)
        # Tolerate case differences ("True" in label_words vs JSON true) when unambiguous.
        folded = [k for k in keys if k.lower() == key.lower()]
        if len(folded) == 1:
            return keys.index(folded[0])
        raise TaskDataError(
            f"{self.name}: label {raw!r} in {record.where()} (field '{self.label_field}') "
            f"is not one of the --labels values (known labels: {', '.join(repr(k) for k in keys)})"
        )

    def to_example(self, record: Record) -> Example:
        values = {name: record.text(name) for name in self.text_fields}
        return Example(
            prompt=self.template.format_map(values),
            candidates=self.candidates,
            label=self.label_index(record),
        )

    def read_units(self, path: Path, seen: set[tuple[str, tuple[str, ...]]]) -> list[Unit]:
        records = read_records(path, self.columns)
        units, _ = dedupe(to_units(self.to_example(record) for record in records), seen)
        if not units:
            raise TaskDataError(f"{self.name}: {path} holds no examples")
        return units

    def load_splits(self, data_dir: Path | None, seed: int, sizes: SplitSizes) -> TaskSplits:
        """Splits from `data_dir` if given, else from the task's own `path`."""
        path = Path(data_dir) if data_dir is not None else self.path
        rng = random.Random(seed)
        seen: set[tuple[str, tuple[str, ...]]] = set()
        notes: list[str] = []
        if not path.exists():
            raise TaskDataError(
                f"{self.name}: {path} does not exist (expected a .jsonl/.csv/.tsv file, or a "
                "folder with train.<ext> and optionally dev/val/validation/test.<ext>)"
            )
        if path.is_file():
            units = self.read_units(path, seen)
            notes.append(f"{self.name}: train, dev and test were all drawn from {path.name}")
            parts = split_carved(units, [], sizes, rng)
            return finish(self.name, parts, sizes, notes, path.name)

        train_path = _find_role_file(path, TRAIN_STEMS, self.name)
        if train_path is None:
            found = sorted(p.name for p in path.iterdir() if p.is_file())
            raise TaskDataError(
                f"{self.name}: no training file in {path}: expected train.jsonl, train.csv or "
                f"train.tsv; files found: {', '.join(found) or 'none'}"
            )
        test_path = _find_role_file(path, TEST_STEMS, self.name)
        dev_path = _find_role_file(path, DEV_STEMS, self.name)
        notes.append(_files_note(self.name, path, [train_path, dev_path, test_path]))
        # Evaluation files claim their examples first, so duplicates leave the train pool.
        test_units = self.read_units(test_path, seen) if test_path else None
        dev_units = self.read_units(dev_path, seen) if dev_path else None
        train_units = self.read_units(train_path, seen)
        if test_units is not None and dev_units is not None:
            parts = split_three_pools(train_units, dev_units, test_units, sizes, rng)
            limited_by = "the train/dev/test files"
        elif test_units is not None or dev_units is not None:
            eval_units = test_units if test_units is not None else dev_units
            assert eval_units is not None
            eval_name = (test_path or dev_path or path).name
            notes.append(
                f"{self.name}: test from {eval_name}; train and dev from {train_path.name}"
            )
            parts = split_with_train_pool(train_units, eval_units, sizes, rng)
            limited_by = f"{train_path.name} / {eval_name}"
        else:
            notes.append(
                f"{self.name}: no dev/val/test file in {path}; train, dev and test were all "
                f"drawn from {train_path.name}"
            )
            parts = split_carved(train_units, [], sizes, rng)
            limited_by = train_path.name
        return finish(self.name, parts, sizes, notes, limited_by)


def _files_note(task_name: str, folder: Path, used: Sequence[Path | None]) -> str:
    """Which files of a data folder are read, and which are not (so none is ignored
    without a word: `train_full.jsonl` beside `train.jsonl` is not read)."""
    read = [p.name for p in used if p is not None]
    skipped = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name not in read
    )
    note = f"{task_name}: read {', '.join(read)} from {folder}"
    if skipped:
        roles = "/".join((*TRAIN_STEMS, *DEV_STEMS, *TEST_STEMS))
        note += (
            f"; not read: {', '.join(skipped)} (a folder's files are {roles} with "
            f"{'/'.join(SUPPORTED_SUFFIXES)}; pass a single file with --data-file to use it)"
        )
    return note


def _find_role_file(folder: Path, stems: Sequence[str], task_name: str) -> Path | None:
    """The single `<stem>.<ext>` file for one role; two candidates is an ambiguity error."""
    matches = [
        folder / f"{stem}{suffix}"
        for stem in stems
        for suffix in SUPPORTED_SUFFIXES
        if (folder / f"{stem}{suffix}").is_file()
    ]
    if len(matches) > 1:
        raise TaskDataError(
            f"{task_name}: ambiguous files in {folder}: {', '.join(p.name for p in matches)}; "
            "keep only one per split"
        )
    return matches[0] if matches else None


def parse_label_spec(spec: str) -> dict[str, str]:
    """Parse "value=word,value=word" (see `custom_task_from_spec`)."""
    label_words: dict[str, str] = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        value, sep, word = item.partition("=")
        value = value.strip()
        word = word.strip() if sep else value
        if not value or not word:
            raise ValueError(
                f"bad label spec item {item!r} in {spec!r}: expected value=word pairs "
                "separated by commas, e.g. '0=negative,1=positive'"
            )
        if value in label_words:
            raise ValueError(f"label {value!r} appears twice in label spec {spec!r}")
        label_words[value] = " " + word
    if len(label_words) < 2:
        raise ValueError(
            f"label spec {spec!r} needs at least two labels: expected value=word pairs "
            "separated by commas, e.g. '0=negative,1=positive'"
        )
    return label_words


def custom_task_from_spec(
    path: str | Path,
    template: str,
    labels: str,
    label_field: str = "label",
    name: str = "custom",
    columns: str | None = None,
) -> CustomTask:
    """Build a `CustomTask` from plain strings, as given on a command line.

    path: data file or folder (see `CustomTask`).
    template: prompt with `{field}` placeholders, e.g. "Review: {sentence}\\nSentiment:".
        The two characters backslash-n become a newline, since shells make real newlines
        awkward to pass; write `{{`/`}}` for literal braces.
    labels: comma-separated `value=word` pairs mapping each label value, as it appears
        in the file, to its answer word: "0=negative,1=positive". A bare `word` maps the
        label value `word` to itself ("negative,positive" for files whose labels are
        those words). The order is the candidate order. Words are stripped and get one
        leading space (" negative"), because candidates are appended to the prompt
        verbatim; words cannot contain commas.
    label_field: the field (column) holding the label.
    columns: comma-separated column names of CSV/TSV files without a header row.
    """
    return CustomTask(
        path=Path(path),
        template=template.replace("\\n", "\n"),
        label_words=parse_label_spec(labels),
        label_field=label_field,
        name=name,
        columns=parse_columns(columns) if columns else None,
    )


def parse_columns(spec: str) -> tuple[str, ...]:
    """ "text,label" -> ("text", "label"); names must be distinct and non-empty."""
    names = tuple(name.strip() for name in spec.split(","))
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise ValueError(
            f"columns {spec!r}: expected distinct column names separated by commas, "
            "e.g. 'text,label'"
        )
    return names
