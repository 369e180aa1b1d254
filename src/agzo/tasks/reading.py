"""Generative reading-comprehension benchmarks: SQuAD v1.1 and DROP, scored by F1 / EM.

Both read the official JSON layouts and use MeZO's templates; the model is trained on
" {answer}\\n" and answers by greedy decoding up to the newline. Sizes follow the MeZO
protocol (1,000 train / 500 dev / 1,000 test): SQuAD draws train and dev from its
training file and test from its dev file; DROP ships no training split here, so all three
are carved from its one file, and the run says so.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agzo.tasks.base import GenerativeExample
from agzo.tasks.errors import TaskDataError
from agzo.tasks.records import read_text
from agzo.tasks.sampling import (
    MEZO_SIZES,
    SplitSizes,
    TaskSplits,
    dedupe,
    finish,
    split_carved,
    split_with_train_pool,
    to_units,
)
from agzo.tasks.templates import clean

__all__ = ["READING_TASKS", "ReadingTask", "drop_answers", "drop_examples", "squad_examples"]

Parser = Callable[[Any, Path], list[GenerativeExample]]


def _load_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise TaskDataError(f"invalid JSON in {path}, line {error.lineno}: {error.msg}") from None


def _field(obj: Any, name: str, where: str) -> Any:
    if not isinstance(obj, Mapping) or name not in obj:
        raise TaskDataError(f"missing field '{name}' in {where}")
    return obj[name]


def _list(obj: Any, name: str, where: str) -> list[Any]:
    value = _field(obj, name, where)
    if not isinstance(value, list):
        raise TaskDataError(f"field '{name}' in {where} should be a list")
    return value


def _unique(texts: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t for t in (clean(t) for t in texts) if t))


# --- SQuAD v1.1: data -> paragraphs -> qas (question, answers[{text}]) -------------------


def squad_examples(document: Any, path: Path) -> list[GenerativeExample]:
    """MeZO's SQuAD prompt, one example per question, every gold answer kept."""
    examples = []
    for a, article in enumerate(_list(document, "data", str(path))):
        title = clean(str(_field(article, "title", f"{path}: data[{a}]")).replace("_", " "))
        for p, paragraph in enumerate(_list(article, "paragraphs", f"{path}: data[{a}]")):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = clean(str(_field(paragraph, "context", where)))
            for q, qa in enumerate(_list(paragraph, "qas", where)):
                at = f"{where}.qas[{q}] (id {qa.get('id', '?')})"
                question = clean(str(_field(qa, "question", at)))
                golds = _unique([str(_field(ans, "text", at)) for ans in _list(qa, "answers", at)])
                if not golds:
                    raise TaskDataError(f"{at}: the question has no answer")
                tail = f"Question: {question}\nAnswer:"
                examples.append(
                    GenerativeExample(
                        f"Title: {title}\nContext: {context}\n{tail}", answers=golds, keep=tail
                    )
                )
    return examples


# --- DROP: {passage_id: {passage, qa_pairs[{question, answer, validated_answers}]}} ------


def drop_answers(answer: Any, where: str) -> list[str]:
    """The gold strings of one DROP answer object: its number, its spans (joined, for a
    multi-span answer), or its date ("month day year", the parts that are given)."""
    if not isinstance(answer, Mapping):
        raise TaskDataError(f"{where}: an answer should be an object")
    number = str(answer.get("number", "") or "").strip()
    spans = [clean(str(s)) for s in answer.get("spans", []) or [] if clean(str(s))]
    date = answer.get("date") or {}
    date_text = " ".join(
        str(date.get(part, "")).strip() for part in ("month", "day", "year") if date.get(part)
    )
    texts = []
    if number:
        texts.append(number)
    if spans:
        texts.append(", ".join(spans))
    if date_text:
        texts.append(date_text)
    return texts


def drop_examples(document: Any, path: Path) -> list[GenerativeExample]:
    """MeZO's DROP prompt; gold answers from the answer and every validated answer."""
    if not isinstance(document, Mapping):
        raise TaskDataError(f"{path}: expected DROP's layout, an object of passages")
    examples = []
    for passage_id, entry in document.items():
        where = f"{path}: {passage_id}"
        passage = clean(str(_field(entry, "passage", where)))
        for q, qa in enumerate(_list(entry, "qa_pairs", where)):
            at = f"{where}.qa_pairs[{q}]"
            question = clean(str(_field(qa, "question", at)))
            answers = [_field(qa, "answer", at), *(qa.get("validated_answers") or [])]
            golds = _unique([text for answer in answers for text in drop_answers(answer, at)])
            if not golds:
                raise TaskDataError(f"{at}: the question has no answer")
            tail = f"Question: {question}\nAnswer:"
            examples.append(
                GenerativeExample(f"Passage: {passage}\n{tail}", answers=golds, keep=tail)
            )
    return examples


@dataclass(frozen=True)
class ReadingTask:
    """A generative benchmark read from its official JSON file(s).

    train_files / eval_files: accepted names, in order of preference; no train file means
    train and dev are carved from the evaluation file with the seed.
    """

    name: str
    description: str
    folders: tuple[str, ...]
    train_files: tuple[str, ...]
    eval_files: tuple[str, ...]
    parse: Parser
    metric: str = "f1"

    def default_sizes(self) -> SplitSizes:
        return MEZO_SIZES

    def _candidates(self, data_dir: Path) -> Iterator[Path]:
        yield data_dir
        for sub in self.folders:
            if (data_dir / sub).is_dir():
                yield data_dir / sub

    def locate(self, data_dir: Path | None) -> tuple[Path | None, Path]:
        if data_dir is None:
            raise TaskDataError(
                f"{self.name}: give the folder of its JSON files with --data-dir "
                f"(expected {', '.join(self.eval_files)})"
            )
        if not data_dir.is_dir():
            raise TaskDataError(f"{self.name}: data directory {data_dir} does not exist")
        for folder in self._candidates(data_dir):
            evaluation = next((folder / n for n in self.eval_files if (folder / n).is_file()), None)
            if evaluation is not None:
                train = next((folder / n for n in self.train_files if (folder / n).is_file()), None)
                return train, evaluation
        found = sorted(p.name for p in data_dir.iterdir() if p.is_file())
        raise TaskDataError(
            f"{self.name}: could not find {' or '.join(self.eval_files)} in {data_dir} "
            f"(sub-folders tried: {', '.join(self.folders)}); files found: "
            f"{', '.join(found) or 'none'}"
        )

    def load_splits(self, data_dir: Path | None, seed: int, sizes: SplitSizes) -> TaskSplits:
        train_path, eval_path = self.locate(data_dir)
        seen: set[tuple[str, tuple[str, ...]]] = set()
        eval_units, _ = dedupe(to_units(self.parse(_load_json(eval_path), eval_path)), seen)
        notes: list[str] = []
        rng = random.Random(seed)
        if train_path is None:
            notes.append(
                f"{self.name}: no training split, so train and dev were carved from "
                f"{eval_path.name} with the seed, disjoint from the test set drawn from it"
            )
            parts = split_carved(eval_units, [], sizes, rng)
            limited_by = eval_path.name
        else:
            train_units, _ = dedupe(to_units(self.parse(_load_json(train_path), train_path)), seen)
            parts = split_with_train_pool(train_units, eval_units, sizes, rng)
            limited_by = f"{train_path.name} / {eval_path.name}"
        return finish(self.name, parts, sizes, notes, limited_by)


READING_TASKS: tuple[ReadingTask, ...] = (
    ReadingTask(
        name="squad",
        description="SQuAD v1.1 question answering, generated answers; F1 and exact match",
        folders=("squad", "SQuAD"),
        train_files=("train-v1.1.json", "train-v1.1.part.json"),
        eval_files=("dev-v1.1.json",),
        parse=squad_examples,
    ),
    ReadingTask(
        name="drop",
        description="DROP discrete reasoning over paragraphs, generated answers; F1 and EM",
        folders=("drop", "DROP"),
        train_files=("drop_dataset_train.json",),
        eval_files=("drop_dataset_dev.json", "drop_dataset_dev.subset.json"),
        parse=drop_examples,
    ),
)
