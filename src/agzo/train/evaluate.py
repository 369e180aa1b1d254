"""Predictions, accuracy and loss of a model on a list of examples, by candidate scoring."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from agzo.tasks.base import Example
from agzo.train.eval_journal import EvalJournal
from agzo.train.objective import CandidateScorer

__all__ = ["MetricFn", "Predictions", "evaluate", "predict"]

# Task-specific metrics (F1, MultiRC's per-question exact match) from the predictions.
MetricFn = Callable[[Sequence[Example], Sequence[int]], dict[str, float]]


@dataclass(frozen=True)
class Predictions:
    """What scoring a list of examples gives, in the examples' order.

    predicted: index of the highest-scoring candidate. scores: every candidate's mean
    log-probability per token. losses: the scorer's per-example loss.
    """

    predicted: list[int]
    scores: list[list[float]]
    losses: list[float]


def predict(
    model: PreTrainedModel,
    scorer: CandidateScorer,
    examples: Sequence[Example],
    batch_size: int = 16,
    *,
    progress: bool = False,
    desc: str = "eval",
    journal: EvalJournal | None = None,
) -> Predictions:
    """Score every example once, under `torch.no_grad()` with the model in eval mode (its
    previous mode is restored afterwards). Examples are batched by length to waste little
    padding; results do not depend on the batching. With a `journal`, batches it holds
    are taken from it and each newly scored batch is kept in it."""
    if scorer.model is not model:
        raise ValueError("the scorer was built for a different model than the one evaluated")
    if not examples:
        raise ValueError("cannot evaluate on no examples")
    predicted = [0] * len(examples)
    scores: list[list[float]] = [[] for _ in examples]
    losses = [0.0] * len(examples)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=len(examples), desc=desc, disable=not progress) as bar:
            for chunk in scorer.length_sorted_chunks(examples, batch_size):
                rows = journal.recorded(chunk) if journal is not None else None
                if rows is None:
                    rows = _scored_rows(scorer, examples, chunk)
                    if journal is not None:
                        journal.record(chunk, rows)
                for i, (prediction, row, loss) in zip(chunk, rows):
                    predicted[i], scores[i], losses[i] = prediction, row, loss
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    return Predictions(predicted, scores, losses)


def _scored_rows(
    scorer: CandidateScorer, examples: Sequence[Example], chunk: Sequence[int]
) -> list[list[Any]]:
    """[prediction, candidate scores, loss] of each example of `chunk`."""
    scored = scorer.scores_and_losses(scorer.batch([examples[i] for i in chunk]))
    rows = zip(
        chunk, scored.scores.argmax(dim=1).tolist(), scored.scores.tolist(), scored.losses.tolist()
    )
    # Each example's own candidates only: the batch pads the others' with -inf.
    return [
        [prediction, row[: len(examples[i].candidates)], loss] for i, prediction, row, loss in rows
    ]


def metrics_of(
    examples: Sequence[Example], predictions: Predictions, metric_fn: MetricFn | None = None
) -> dict[str, float]:
    """Accuracy, mean loss, the number of examples and `metric_fn`'s metrics."""
    correct = sum(p == e.label for p, e in zip(predictions.predicted, examples))
    results = {
        "accuracy": correct / len(examples),
        "loss": sum(predictions.losses) / len(examples),
        "n_examples": float(len(examples)),
    }
    if metric_fn is not None:
        results |= metric_fn(examples, predictions.predicted)
    return results


def evaluate(
    model: PreTrainedModel,
    scorer: CandidateScorer,
    examples: Sequence[Example],
    batch_size: int = 16,
    metric_fn: MetricFn | None = None,
    *,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Score every example once (see `predict`); return accuracy, mean loss and
    `metric_fn`'s metrics.

    The loss is the scorer's per-example loss averaged over all examples.
    `metric_fn(examples, predictions)` values are merged into the result, and override
    "accuracy"/"loss" if they use those names.
    """
    predictions = predict(model, scorer, examples, batch_size, progress=progress, desc=desc)
    return metrics_of(examples, predictions, metric_fn)
