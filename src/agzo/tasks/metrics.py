"""Metrics over predicted candidate indices, and each task's reported set of them."""

from __future__ import annotations

from collections.abc import Sequence

from agzo.tasks.base import Example
from agzo.tasks.registry import Task, resolve


def _check(preds: Sequence[int], labels: Sequence[int]) -> None:
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("cannot compute a metric over zero examples")


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    _check(preds, labels)
    return sum(p == y for p, y in zip(preds, labels)) / len(labels)


def _f1(preds: Sequence[int], labels: Sequence[int], positive: int) -> float:
    tp = sum(p == positive and y == positive for p, y in zip(preds, labels))
    fp = sum(p == positive and y != positive for p, y in zip(preds, labels))
    fn = sum(p != positive and y == positive for p, y in zip(preds, labels))
    # F1 = 2TP / (2TP + FP + FN); defined as 0 when the class never occurs nor is predicted.
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def f1_binary(preds: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the `positive` class (MultiRC's F1a uses positive=1, "the answer is right")."""
    _check(preds, labels)
    return _f1(preds, labels, positive)


def macro_f1(preds: Sequence[int], labels: Sequence[int], num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 (CB's second metric).

    Classes are 0..num_classes-1 when given, else those appearing in labels or preds.
    """
    _check(preds, labels)
    classes = range(num_classes) if num_classes is not None else sorted({*preds, *labels})
    scores = [_f1(preds, labels, c) for c in classes]
    return sum(scores) / len(scores)


def exact_match(preds: Sequence[int], labels: Sequence[int], groups: Sequence[str | None]) -> float:
    """Fraction of groups whose every example is predicted correctly (MultiRC's EM per
    question). Examples without a group count as groups of one."""
    _check(preds, labels)
    correct: dict[object, bool] = {}
    for i, (p, y, g) in enumerate(zip(preds, labels, groups)):
        key: object = ("example", i) if g is None else g
        correct[key] = correct.get(key, True) and p == y
    return sum(correct.values()) / len(correct)


def task_metric(
    task_name: str | Task, examples: Sequence[Example], predictions: Sequence[int]
) -> dict[str, float]:
    """The metrics reported for a task: always "accuracy"; "macro_f1" for tasks with more
    than two candidates (CB); for F1 tasks (MultiRC) "f1a" (F1 over answers, positive
    class 1), "em" (exact match per question group) and "f1" (= f1a). The dict always
    holds the key named by the task's `metric`.
    """
    task = resolve(task_name)
    labels = [example.label for example in examples]
    result = {"accuracy": accuracy(predictions, labels)}
    num_candidates = max(len(example.candidates) for example in examples)
    if num_candidates > 2:
        result["macro_f1"] = macro_f1(predictions, labels, num_classes=num_candidates)
    if task.metric == "f1":
        f1a = f1_binary(predictions, labels, positive=1)
        result["f1a"] = f1a
        result["f1"] = f1a
        result["em"] = exact_match(predictions, labels, [example.group for example in examples])
    return result
