"""The run directory: what a run writes there, and whether it may start writing.

Everything here only reads the file system until `prepare_run_dir`, so a mistyped
command fails before any model is loaded and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agzo.train.checkpoint import BEST_DIR, CHECKPOINTS_DIR, CONFIG, Checkpoint, latest_checkpoint
from agzo.train.config import TrainConfig, default_output_dir
from agzo.train.errors import TrainError
from agzo.train.logging import METRICS_CSV, METRICS_JSONL, PLOT, TENSORBOARD_DIR

__all__ = [
    "CONFUSION_PLOT",
    "GENERATIONS",
    "MODEL_DIR",
    "PREDICTIONS",
    "RUN_OUTPUTS",
    "SUMMARY",
    "ZERO_SHOT_GENERATIONS",
    "RunDirPlan",
    "RunFinished",
    "check_writable_dir",
    "check_writable_file",
    "clear_run",
    "plan_run_dir",
]

MODEL_DIR = "model"
SUMMARY = "summary.json"
PREDICTIONS = "predictions.jsonl"  # the final test's predictions, one line per example
GENERATIONS = "generations.jsonl"  # generative tasks: the final test's answers
ZERO_SHOT_GENERATIONS = "generations-zero-shot.jsonl"  # ... and those before training
CONFUSION_PLOT = "confusion.png"
# Everything a run writes: what --overwrite may delete, and nothing else.
RUN_OUTPUTS = (
    CONFIG,
    METRICS_JSONL,
    METRICS_CSV,
    PLOT,
    SUMMARY,
    PREDICTIONS,
    GENERATIONS,
    ZERO_SHOT_GENERATIONS,
    CONFUSION_PLOT,
    MODEL_DIR,
    CHECKPOINTS_DIR,
    BEST_DIR,
    TENSORBOARD_DIR,
)


class RunFinished(TrainError):
    """`--resume` of a run that already reached its steps: nothing to do, nothing changed."""


@dataclass(frozen=True)
class RunDirPlan:
    """Where a run writes, the checkpoint it resumes from, whether to clear a previous run."""

    path: Path
    checkpoint: Checkpoint | None
    clear: bool

    def prepare(self) -> None:
        """Clear the previous run's outputs if asked, and create the directory."""
        if self.clear:
            clear_run(self.path)
        self.path.mkdir(parents=True, exist_ok=True)


def plan_run_dir(config: TrainConfig, *, resume: bool, overwrite: bool) -> RunDirPlan:
    """Check the output directory against resume/overwrite; only reads the file system."""
    if resume and overwrite:
        raise TrainError("--resume continues a run and --overwrite replaces it: pass only one")
    if config.output_dir is None:
        if resume:
            raise TrainError("--resume needs --output-dir: the directory of the run to continue")
        run_dir = Path(default_output_dir(config)).absolute()
        check_writable_dir(run_dir, "output directory")
        return RunDirPlan(run_dir, None, False)
    run_dir = Path(config.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainError(f"output directory {run_dir} exists and is not a directory")
    check_writable_dir(run_dir, "output directory")
    if resume:
        if not (run_dir / CONFIG).is_file():
            raise TrainError(f"nothing to resume in {run_dir}: no {CONFIG} (not an agzo run)")
        saved = TrainConfig.from_file(run_dir / CONFIG)
        differences = saved.differences(config)
        if differences:
            listed = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differences.items())
            raise TrainError(
                f"cannot resume {run_dir}: the config differs from the saved one in "
                f"{', '.join(differences)} ({listed}). Only steps, evaluation and checkpoint "
                "settings may change; use a new --output-dir for a different run"
            )
        checkpoint = latest_checkpoint(run_dir)
        done = _finished_steps(run_dir)
        if checkpoint is not None and done is not None and config.steps <= done:
            raise RunFinished(
                f"the run in {run_dir} is finished ({done} steps, {SUMMARY} written); nothing "
                f"was changed. To train it further, pass --steps with more than {done}"
            )
        return RunDirPlan(run_dir, checkpoint, False)
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return RunDirPlan(run_dir, None, False)
    if not overwrite:
        raise TrainError(
            f"output directory {run_dir} is not empty; pass --resume to continue the run "
            "in it, --overwrite to replace it, or choose another --output-dir"
        )
    if not (run_dir / CONFIG).is_file():
        raise TrainError(
            f"output directory {run_dir} is not empty and is not an agzo run (no {CONFIG}); "
            "refusing to delete its contents: choose another --output-dir"
        )
    return RunDirPlan(run_dir, None, True)


def clear_run(run_dir: Path) -> None:
    """Delete a previous run's outputs, and only those (other files stay)."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _finished_steps(run_dir: Path) -> int | None:
    """Steps of a finished run (its summary is written last), None if it did not finish."""
    try:
        return int(json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_writable_dir(path: Path, what: str) -> None:
    """Fail now, in one line, if directory `path` cannot be created or written into.

    Tried for real (a probe directory made and removed in the nearest existing ancestor):
    permission bits do not tell about read-only or virtual file systems such as /sys and
    /proc, nor about a path that runs through a regular file.
    """
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise TrainError(f"{what} {path} cannot be created: {existing} is a file")
    try:
        probe = tempfile.mkdtemp(prefix=".agzo-write-check-", dir=existing)
    except OSError as error:
        raise TrainError(
            f"{what} {path} cannot be written: creating anything in {existing} fails "
            f"({error.strerror or error}); choose a writable location"
        ) from error
    os.rmdir(probe)


def check_writable_file(path: Path, what: str) -> None:
    """Fail now, in one line, if file `path` cannot be written (see `check_writable_dir`)."""
    if path.is_dir():
        raise TrainError(f"{what} {path} is a directory; give a file name")
    check_writable_dir(path.parent, f"{what} {path}: its folder")
