"""`agzo eval`: a saved run, model directory or checkpoint, or a zero-shot model spec,
evaluated on a task's splits drawn exactly as training draws them."""

from __future__ import annotations

import contextlib
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
from agzo.train.eval_journal import EvalJournal, examples_digest, journal_path
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
    journal_beside: Path | None = None,
) -> dict[str, SplitResult]:
    """Evaluate `config.model` (optionally with a checkpoint's trained `weights` on top)
    on the named splits of `config.task`, drawn exactly as training draws them.

    journal_beside: an output file; each split's finished batches are then journaled
    beside it (agzo.train.eval_journal), and a journal left by an interrupted evaluation
    of the same settings is continued. The caller removes the journals (`journal_path`)
    once its output is written.
    """
    printer = Printer(quiet)
    run = load_run(config, printer)
    if weights is not None:
        load_weights(trainable_parameters(run.model, config), weights)
    results = {}
    for split in splits:
        # With --demonstrations, the in-context baseline: each prompt after k solved examples.
        examples = list(run.icl.get(split) or getattr(run.splits, split))
        with contextlib.ExitStack() as stack:
            journal = None
            if journal_beside is not None:
                identity = _identity(config, weights, split, examples)
                path = journal_path(journal_beside, split)
                journal = stack.enter_context(EvalJournal(path, identity, note=printer))
                if journal.rows:
                    done = len(journal.rows)
                    printer(
                        f"{split}: continuing, {done} of {len(examples)} examples scored in {path}"
                    )
            metrics, predictions = run.predict(
                examples, progress=not quiet, desc=split, journal=journal
            )
        report = split_report(examples, predictions)
        results[split] = SplitResult(examples, metrics, predictions, report)
    return results


def _identity(
    config: TrainConfig, weights: Path | None, split: str, examples: Sequence[Example]
) -> dict[str, Any]:
    """What an evaluation's journal must match to be continued: the settings, the files
    the model and weights come from as they are now, the split and its examples."""
    sources = [Path(config.model), *([weights] if weights is not None else [])]
    return {
        "settings": config.resolved(),
        "files": {str(p): _stamp(p) for p in sources if p.exists()},
        "split": split,
        "examples": examples_digest(examples),
    }


def _stamp(path: Path) -> list[tuple[str, int, int]]:
    """Name, size and modification time of a weights file, or of each one in a folder (a
    retrained model rewrites them): cheap, where a digest of the weights is not. Other
    files are left out: an output written into the folder must not count."""
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    weights = [f for f in files if f.is_file() and f.suffix in _WEIGHT_SUFFIXES]
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in weights]


_WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".gguf", ".pt", ".pth"})


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
