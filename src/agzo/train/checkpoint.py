"""Checkpoints: everything needed to continue a run exactly where it stopped.

Layout of a run directory (only what this module owns):

    checkpoints/step-000050/
        weights.safetensors   the trained tensors only (frozen ones come from the base model)
        optimizer.pt          optimizer.state_dict(): ZO step count and seed, Adam moments...
        scheduler.pt          the learning-rate scheduler's state (--lr-schedule, --warmup-steps)
        rng.pt                torch RNG states (dropout in first-order runs)
        state.json            step, zero-shot and best-on-dev metrics, timings
        metrics.jsonl         the metrics log up to this step
        config.yaml           the resolved config of the run
        best.safetensors      hard link to the best-on-dev weights as of this step
    (weights.safetensors is itself a hard link to them when this step is the best one)
    best/weights.safetensors, best/meta.json   the best-on-dev weights so far

A checkpoint is written to a temporary directory and renamed into place (`os.replace`),
so a crash or Ctrl-C while saving leaves the previous checkpoints intact, never a half
one. The data order needs no saved state: each step's minibatch is drawn from a generator
seeded by (seed, step). The best weights are linked into each checkpoint (no extra disk
on the same file system) because `best/` may move past the latest checkpoint before a
crash; restoring a checkpoint puts back the best weights that belong to it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from agzo.fileio import link_or_copy
from agzo.train.config import TrainConfig

__all__ = [
    "BEST_DIR",
    "CHECKPOINTS_DIR",
    "Checkpoint",
    "CheckpointError",
    "TrainState",
    "best_weights_path",
    "checkpoint_step",
    "is_checkpoint_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_weights",
    "save_best",
    "save_checkpoint",
    "save_weights",
]

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
WEIGHTS = "weights.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
RNG = "rng.pt"
STATE = "state.json"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
BEST_LINK = "best.safetensors"
FORMAT = 1

_STEP_DIR = re.compile(r"^step-(\d+)$")

NamedParams = Sequence[tuple[str, nn.Parameter]]


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or does not fit the model."""


@dataclass
class TrainState:
    """The loop's progress, small enough for JSON.

    step: optimizer steps completed. last_eval_step: step of the latest dev evaluation
    (-1: none yet), so a run interrupted during an evaluation redoes it on resume.
    best_step / best_metrics: the best dev evaluation so far (step 0 is zero-shot).
    """

    step: int = 0
    zero_shot: dict[str, dict[str, float]] = field(default_factory=dict)
    best_step: int | None = None
    best_metrics: dict[str, float] | None = None
    last_eval_step: int = -1
    last_dev: dict[str, float] | None = None
    train_seconds: float = 0.0
    skipped_steps: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        data = dict(data)
        version = data.pop("format", None)
        data.pop("extra", None)  # an unused field that earlier checkpoints wrote
        if version != FORMAT:
            raise CheckpointError(f"unsupported checkpoint format {version!r} (expected {FORMAT})")
        return cls(**data)


# --------------------------------------------------------------------------- weights


def save_weights(named_params: NamedParams, path: Path) -> None:
    """The given tensors as safetensors, by name, written atomically."""
    tensors = {name: p.detach().to("cpu").contiguous() for name, p in named_params}
    staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        # The metadata save_pretrained writes: a file of every parameter can then be
        # linked as a model directory's model.safetensors.
        save_file(tensors, str(staging), metadata={"format": "pt"})
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


@torch.no_grad()
def load_weights(named_params: NamedParams, path: Path) -> None:
    """Copy saved tensors into the parameters (in place: optimizers keep their references)."""
    saved = load_file(str(path))
    names = {name for name, _ in named_params}
    missing, unexpected = sorted(names - saved.keys()), sorted(saved.keys() - names)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the trained parameters: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (different model or include/exclude patterns?)"
        )
    for name, param in named_params:
        tensor = saved[name]
        if tensor.shape != param.shape:
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, the model {tuple(param.shape)}"
            )
        param.copy_(tensor)


def best_weights_path(run_dir: Path) -> Path:
    return run_dir / BEST_DIR / WEIGHTS


def save_best(
    run_dir: Path, named_params: NamedParams, step: int, metrics: dict[str, float]
) -> Path:
    """Replace the best-on-dev weights (kept on disk, not as a second model in memory)."""
    folder = run_dir / BEST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(named_params, folder / WEIGHTS)
    _write_json(folder / "meta.json", {"step": step, "dev": metrics})
    return folder / WEIGHTS


# --------------------------------------------------------------------------- checkpoints


def _step_dir(step: int) -> str:
    return f"step-{step:06d}"


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint folder (`step-000500`) holds."""
    match = _STEP_DIR.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder (step-NNNNNN)")
    return int(match.group(1))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run_dir / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if (match := _STEP_DIR.match(path.name)) and (path / STATE).is_file()
    ]
    return [path for _, path in sorted(found)]


def save_checkpoint(
    run_dir: Path,
    *,
    named_params: NamedParams,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler | None = None,
    state: TrainState,
    metrics: Sequence[dict[str, Any]],
    config: TrainConfig,
    keep: int,
) -> Path:
    """Write `checkpoints/step-<state.step>/` atomically and keep only the last `keep`."""
    folder = run_dir / CHECKPOINTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / _step_dir(state.step)
    staging = folder / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        best = best_weights_path(run_dir)
        if best.is_file() and state.best_step == state.step:
            link_or_copy(best, staging / WEIGHTS)  # the same weights: no second copy
        else:
            save_weights(named_params, staging / WEIGHTS)
        torch.save(optimizer.state_dict(), staging / OPTIMIZER)
        if scheduler is not None:
            torch.save(scheduler.state_dict(), staging / SCHEDULER)
        torch.save(_rng_state(), staging / RNG)
        _write_json(staging / STATE, state.to_json())
        _write_jsonl(staging / METRICS, metrics)
        config.save(staging / CONFIG)
        if best.is_file():
            link_or_copy(best, staging / BEST_LINK)
        _replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _prune(folder, keep)
    return target


def _replace_dir(new: Path, target: Path) -> None:
    """Rename `new` to `target`; an existing `target` (same step, saved again after a
    resume) is swapped out first and deleted only once the new one is in place."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".old-{target.name}-{uuid.uuid4().hex[:8]}")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _prune(folder: Path, keep: int) -> None:
    for stale in folder.glob(".tmp-*"):  # left by a process killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    for old in list_checkpoints(folder.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class Checkpoint:
    """A saved checkpoint, read lazily: tensors are loaded only by `restore`."""

    path: Path
    state: TrainState
    metrics: list[dict[str, Any]]

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    def config(self) -> TrainConfig:
        return TrainConfig.from_file(self.path / CONFIG)

    def restore(
        self,
        run_dir: Path,
        named_params: NamedParams,
        optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler | None = None,
        write: bool = True,
    ) -> None:
        """Load weights, optimizer, scheduler and RNG state; put back this checkpoint's
        best (unless `write` is False: a process other than the one that writes)."""
        if scheduler is not None and not (self.path / SCHEDULER).is_file():
            raise CheckpointError(
                f"{self.path} holds no learning-rate schedule ({SCHEDULER}): it was saved by "
                f"a run with a constant rate"
            )
        load_weights(named_params, self.weights_path)
        optimizer.load_state_dict(torch.load(self.path / OPTIMIZER, weights_only=True))
        if scheduler is not None:
            scheduler.load_state_dict(torch.load(self.path / SCHEDULER, weights_only=True))
            # The next step's rate from the schedule as it is now: a run resumed with more
            # --steps has stretched it since the rate was saved.
            scheduler.last_epoch -= 1
            scheduler.step()
        _restore_rng(torch.load(self.path / RNG, weights_only=True))
        best = self.path / BEST_LINK
        if write and best.is_file() and self.state.best_step is not None:
            (run_dir / BEST_DIR).mkdir(parents=True, exist_ok=True)
            link_or_copy(best, best_weights_path(run_dir))
            meta = {"step": self.state.best_step, "dev": self.state.best_metrics}
            _write_json(run_dir / BEST_DIR / "meta.json", meta)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint directory's state and metrics."""
    missing = [
        name for name in (WEIGHTS, OPTIMIZER, RNG, STATE, CONFIG) if not (path / name).is_file()
    ]
    if missing:
        raise CheckpointError(f"{path} is not a complete checkpoint (missing {', '.join(missing)})")
    state = TrainState.from_json(json.loads((path / STATE).read_text(encoding="utf-8")))
    metrics_file = path / METRICS
    metrics = (
        [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines() if line]
        if metrics_file.is_file()
        else []
    )
    return Checkpoint(path=path, state=state, metrics=metrics)


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    checkpoints = list_checkpoints(run_dir)
    return load_checkpoint(checkpoints[-1]) if checkpoints else None


def is_checkpoint_dir(path: Path) -> bool:
    return (path / STATE).is_file() and (path / WEIGHTS).is_file()


# --------------------------------------------------------------------------- helpers


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_json(path: Path, data: Any) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(staging, path)


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
