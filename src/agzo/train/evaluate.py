"""Accuracy and loss of a model on a list of examples, by candidate scoring."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from agzo.tasks.base import Example
from agzo.train.objective import CandidateScorer

__all__ = ["MetricFn", "evaluate"]

# Task-specific metrics (F1, MultiRC's per-question exact match) from the predictions.
MetricFn = Callable[[Sequence[Example], Sequence[int]], dict[str, float]]


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
    """Score every example once; return accuracy, mean loss and `metric_fn`'s metrics.

    Runs under `torch.no_grad()` with the model in eval mode (its previous mode is restored
    afterwards). Examples are batched by length to waste little padding; results do not
    depend on the batching. The loss is the scorer's per-example loss averaged over all
    examples. `metric_fn(examples, predictions)` values are merged into the result, and
    override "accuracy"/"loss" if they use those names.
    """
    if scorer.model is not model:
        raise ValueError("the scorer was built for a different model than the one evaluated")
    if not examples:
        raise ValueError("cannot evaluate on no examples")
    predictions = [0] * len(examples)
    total_loss = 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=len(examples), desc=desc, disable=not progress) as bar:
            for chunk in scorer.length_sorted_chunks(examples, batch_size):
                scored = scorer.scores_and_losses(scorer.batch([examples[i] for i in chunk]))
                total_loss += float(scored.losses.sum())
                for i, prediction in zip(chunk, scored.scores.argmax(dim=1).tolist()):
                    predictions[i] = prediction
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    correct = sum(p == e.label for p, e in zip(predictions, examples))
    results = {
        "accuracy": correct / len(examples),
        "loss": total_loss / len(examples),
        "n_examples": float(len(examples)),
    }
    if metric_fn is not None:
        results |= metric_fn(examples, predictions)
    return results
