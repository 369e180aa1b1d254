"""Evaluation a person can read: per-class precision / recall / F1, the confusion
matrix (a table and a PNG), the majority-class baseline, and every prediction in a file."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

from agzo.tasks.base import Example, GenerativeExample
from agzo.train.evaluate import Predictions
from agzo.train.evaluate_generation import Generations
from agzo.train.generation_report import GenerationReport, generation_report, write_generations

__all__ = [
    "ClassReport",
    "SplitReport",
    "class_report",
    "plot_confusion",
    "split_report",
    "write_predictions",
    "write_split_outputs",
]

# The report of one evaluated split: per class for classification, generations otherwise.
SplitReport = Union["ClassReport", GenerationReport]


@dataclass(frozen=True)
class ClassReport:
    """Per-class results of one split. confusion[i][j]: examples of class i predicted j.

    majority_baseline: the accuracy of always answering the split's most frequent class;
    an accuracy at or below it means the model has not learned to tell the classes apart.
    """

    classes: list[str]
    confusion: list[list[int]]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    accuracy: float
    majority_class: str
    majority_baseline: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """Per-class metrics and the confusion matrix as aligned text."""
        width = max(8, *(len(name) for name in self.classes))
        lines = [f"{'class':<{width}}  precision  recall     f1  support"]
        for i, name in enumerate(self.classes):
            lines.append(
                f"{name:<{width}}  {self.precision[i]:9.3f}  {self.recall[i]:6.3f}  "
                f"{self.f1[i]:5.3f}  {self.support[i]:7d}"
            )
        cell = max(5, *(len(name) for name in self.classes))
        lines.append("confusion (rows: true class, columns: predicted)")
        lines.append(" " * width + "  " + "  ".join(f"{n:>{cell}}" for n in self.classes))
        for name, row in zip(self.classes, self.confusion):
            lines.append(f"{name:<{width}}  " + "  ".join(f"{n:>{cell}d}" for n in row))
        return "\n".join(lines)

    def baseline_line(self) -> str:
        """Accuracy beside the majority-class baseline, said plainly when not above it."""
        line = (
            f"accuracy {self.accuracy:.4f}; majority-class baseline {self.majority_baseline:.4f} "
            f"(always {self.majority_class!r})"
        )
        if self.accuracy <= self.majority_baseline:
            line += ": NOT above the baseline, so the model does not separate the classes"
        return line


def class_names(examples: Sequence[Example]) -> list[str]:
    """The label words when every example has the same candidates, else positions."""
    first = examples[0].candidates
    if all(e.candidates == first for e in examples):
        return [candidate.strip() or repr(candidate) for candidate in first]
    return [f"candidate {i}" for i in range(max(len(e.candidates) for e in examples))]


def class_report(examples: Sequence[Example], predictions: Predictions) -> ClassReport:
    names = class_names(examples)
    n = len(names)
    confusion = [[0] * n for _ in range(n)]
    for example, predicted in zip(examples, predictions.predicted):
        confusion[example.label][predicted] += 1
    support = [sum(row) for row in confusion]
    predicted_counts = [sum(row[j] for row in confusion) for j in range(n)]
    precision = [
        confusion[i][i] / predicted_counts[i] if predicted_counts[i] else 0.0 for i in range(n)
    ]
    recall = [confusion[i][i] / support[i] if support[i] else 0.0 for i in range(n)]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
    majority, count = Counter(e.label for e in examples).most_common(1)[0]
    return ClassReport(
        classes=names,
        confusion=confusion,
        precision=precision,
        recall=recall,
        f1=f1,
        support=support,
        accuracy=sum(confusion[i][i] for i in range(n)) / len(examples),
        majority_class=names[majority],
        majority_baseline=count / len(examples),
    )


def write_predictions(
    path: Path, examples: Sequence[Example], predictions: Predictions, split: str
) -> None:
    """One JSON line per example: prompt, true and predicted label word, every score."""
    staging = path.with_name(f".{path.name}.tmp")
    with staging.open("w", encoding="utf-8") as handle:
        for i, (example, predicted) in enumerate(zip(examples, predictions.predicted)):
            record = {
                "split": split,
                "index": i,
                "prompt": example.prompt,
                "label": example.label,
                "label_word": example.candidates[example.label],
                "predicted": predicted,
                "predicted_word": example.candidates[predicted],
                "correct": predicted == example.label,
                "scores": [round(score, 5) for score in predictions.scores[i]],
                "loss": round(predictions.losses[i], 5),
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(staging, path)


def plot_confusion(report: ClassReport, path: Path, title: str = "test") -> None:
    """The confusion matrix as a PNG, counts in the cells."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(report.classes)
    size = min(12.0, 2.5 + 0.6 * n)
    figure = Figure(figsize=(size, size), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    axes.imshow(report.confusion, cmap="Blues")
    axes.set_xticks(range(n), report.classes, rotation=45, ha="right")
    axes.set_yticks(range(n), report.classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(
        f"{title}: accuracy {report.accuracy:.3f}, majority {report.majority_baseline:.3f}"
    )
    peak = max(max(row) for row in report.confusion) or 1
    for i, row in enumerate(report.confusion):
        for j, count in enumerate(row):
            color = "white" if count > peak / 2 else "black"
            axes.text(j, i, str(count), ha="center", va="center", color=color)
    staging = path.with_name(f".{path.name}.tmp")
    figure.savefig(staging, format="png", dpi=100)
    os.replace(staging, path)


def split_report(
    examples: Sequence[Example], predictions: Predictions | Generations
) -> SplitReport:
    """The report that fits the task: generations scored by F1, or classes and confusion."""
    if isinstance(predictions, Generations):
        return generation_report(_generative(examples), predictions)
    return class_report(examples, predictions)


def write_split_outputs(
    folder: Path,
    examples: Sequence[Example],
    predictions: Predictions | Generations,
    report: SplitReport,
    split: str,
    *,
    predictions_file: str,
    generations_file: str,
    confusion_plot: str | None,
) -> Path:
    """Write what a person reads after an evaluation into `folder`: every generation, or
    every prediction and the confusion plot (unless None). Returns the predictions' file."""
    if isinstance(predictions, Generations):
        path = folder / generations_file
        write_generations(path, _generative(examples), predictions, split)
        return path
    assert isinstance(report, ClassReport)
    write_predictions(folder / predictions_file, examples, predictions, split)
    if confusion_plot is not None:
        plot_confusion(report, folder / confusion_plot, title=f"final {split}")
    return folder / predictions_file


def _generative(examples: Sequence[Example]) -> list[GenerativeExample]:
    if not all(isinstance(e, GenerativeExample) for e in examples):
        raise TypeError("generations were given for classification examples")
    return [e for e in examples if isinstance(e, GenerativeExample)]
