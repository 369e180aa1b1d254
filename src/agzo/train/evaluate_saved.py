"""`agzo eval`: a saved run, model directory or checkpoint, or a zero-shot model spec,
evaluated on a task's splits drawn exactly as training draws them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agzo.adapters.lora import is_adapter_dir
from agzo.tasks.base import Example
from agzo.train.checkpoint import (
    CONFIG,
    best_weights_path,
    is_checkpoint_dir,
    load_checkpoint,
    load_weights,
)
from agzo.train.config import TrainConfig
from agzo.train.evaluate import Predictions
from agzo.train.evaluate_generation import Generations
from agzo.train.optimizers import trainable_parameters
from agzo.train.report import SplitReport, split_report
from agzo.train.rundir import MODEL_DIR
from agzo.train.setup import Printer, load_run

__all__ = ["SplitResult", "evaluate_model", "evaluate_splits", "saved_settings"]


def saved_settings(spec: str) -> tuple[dict[str, Any], Path | None]:
    """Settings implied by what a model spec points at, and checkpoint weights if any.

    A run directory or its model/ gives the run's config (task, data, seed, sizes) with
    the model replaced by model/; a run saved without model/ (`--save none`) gives its
    config and the weights it tested, best/'s; a checkpoint gives the run's config and its
    trained weights; anything else is a plain model spec.
    """
    path = Path(spec)
    if is_checkpoint_dir(path):
        checkpoint = load_checkpoint(path)
        return checkpoint.config().resolved(), checkpoint.weights_path
    for run_dir, model_dir in ((path, path / MODEL_DIR), (path.parent, path)):
        saved_model = (model_dir / "config.json").is_file() or is_adapter_dir(model_dir)
        if (run_dir / CONFIG).is_file() and saved_model:
            base = TrainConfig.from_file(run_dir / CONFIG).resolved()
            return base | {"model": str(model_dir)}, None
    if (path / CONFIG).is_file() and best_weights_path(path).is_file():
        return TrainConfig.from_file(path / CONFIG).resolved(), best_weights_path(path)
    return {"model": spec}, None


@dataclass(frozen=True)
class SplitResult:
    """One evaluated split: the task's metrics, every prediction (or generation), and the
    report (per class, or of the generations)."""

    examples: list[Example]
    metrics: dict[str, float]
    predictions: Predictions | Generations
    report: SplitReport


def evaluate_splits(
    config: TrainConfig,
    *,
    weights: Path | None = None,
    splits: Sequence[str] = ("test",),
    quiet: bool = False,
) -> dict[str, SplitResult]:
    """Evaluate `config.model` (optionally with a checkpoint's trained `weights` on top)
    on the named splits of `config.task`, drawn exactly as training draws them."""
    run = load_run(config, Printer(quiet))
    if weights is not None:
        load_weights(trainable_parameters(run.model, config), weights)
    results = {}
    for split in splits:
        # With --demonstrations, the in-context baseline: each prompt after k solved examples.
        examples = list(run.icl.get(split) or getattr(run.splits, split))
        metrics, predictions = run.predict(examples, progress=not quiet, desc=split)
        report = split_report(examples, predictions)
        results[split] = SplitResult(examples, metrics, predictions, report)
    return results


def evaluate_model(
    config: TrainConfig,
    *,
    weights: Path | None = None,
    splits: Sequence[str] = ("test",),
    quiet: bool = False,
) -> dict[str, dict[str, float]]:
    """The metrics of `evaluate_splits`, by split."""
    results = evaluate_splits(config, weights=weights, splits=splits, quiet=quiet)
    return {split: result.metrics for split, result in results.items()}
