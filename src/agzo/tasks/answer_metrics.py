"""SQuAD's answer metrics: token F1 and exact match after normalization, max over golds.

Normalization follows the official SQuAD v1.1 evaluation script: lower-case, remove
punctuation, remove the articles a/an/the, collapse whitespace. A prediction is scored
against every gold answer and keeps its best score, since questions often have several
acceptable phrasings ("Denver Broncos" / "the Broncos").
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

__all__ = ["answer_metrics", "exact_match_score", "f1_score", "normalize_answer"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        # Both empty (an answer that was only articles or punctuation) counts as a match.
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """Token-overlap F1 of the normalized prediction, best over the gold answers."""
    if not golds:
        raise ValueError("no gold answers to score against")
    return max(_f1(prediction, gold) for gold in golds)


def exact_match_score(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals some normalized gold answer."""
    if not golds:
        raise ValueError("no gold answers to score against")
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(gold) for gold in golds))


def answer_metrics(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean F1 and exact match over examples ("f1", "em"), each the max over its golds."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} examples")
    if not predictions:
        raise ValueError("cannot compute a metric over zero examples")
    n = len(predictions)
    return {
        "f1": sum(f1_score(p, g) for p, g in zip(predictions, golds)) / n,
        "em": sum(exact_match_score(p, g) for p, g in zip(predictions, golds)) / n,
    }
