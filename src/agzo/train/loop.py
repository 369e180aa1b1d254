"""The fine-tuning loop: `train(config)`, and `evaluate_model` for saved models.

The loop reads top to bottom: zero-shot evaluation, then one minibatch and one optimizer
step per iteration (zeroth-order: a loss closure evaluated under no_grad; first-order:
backward through the same loss), dev evaluation every `eval_every` steps keeping the
best weights on disk, checkpoints every `checkpoint_every` steps, and at the end the best
weights evaluated on test and saved. Everything that could go wrong with the user's input
(data, model path, output directory, resume) fails before the first step, with a message.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agzo.core.optimizer import ZerothOrderOptimizer
from agzo.models import load_model, save_model
from agzo.seeding import derive_seed
from agzo.tasks import (
    Example,
    TaskDataError,
    TaskSplits,
    custom_task_from_spec,
    get_task,
    load_splits,
    task_metric,
)
from agzo.tasks.registry import Task
from agzo.train.checkpoint import (
    BEST_DIR,
    CHECKPOINTS_DIR,
    CONFIG,
    Checkpoint,
    CheckpointError,
    TrainState,
    best_weights_path,
    latest_checkpoint,
    load_weights,
    save_best,
    save_checkpoint,
)
from agzo.train.config import CUSTOM_TASK, TrainConfig, default_output_dir
from agzo.train.evaluate import evaluate
from agzo.train.logging import METRICS_CSV, METRICS_JSONL, PLOT, TENSORBOARD_DIR, MetricsLogger
from agzo.train.objective import CandidateScorer, EncodedBatch, LossKind, SequenceBatch
from agzo.train.optimizers import build_optimizer, trainable_parameters

__all__ = [
    "RunData",
    "TrainError",
    "TrainResult",
    "TrainingInterrupted",
    "evaluate_model",
    "load_run",
    "sample_minibatch",
    "train",
]

MODEL_DIR = "model"
SUMMARY = "summary.json"
# Everything a run writes: what --overwrite may delete, and nothing else.
RUN_OUTPUTS = (
    CONFIG,
    METRICS_JSONL,
    METRICS_CSV,
    PLOT,
    SUMMARY,
    MODEL_DIR,
    CHECKPOINTS_DIR,
    BEST_DIR,
    TENSORBOARD_DIR,
)
# Keeps the data-order seeds apart from the optimizer's own (seed, step) noise seeds.
_DATA_STREAM = 7


class TrainError(ValueError):
    """The run cannot start as asked (output directory, resume, data, model, patterns)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a checkpoint of the last completed step was saved."""

    def __init__(self, step: int, checkpoint: Path, output_dir: Path) -> None:
        self.step, self.checkpoint, self.output_dir = step, checkpoint, output_dir
        super().__init__(
            f"interrupted after step {step}; checkpoint saved to {checkpoint}. "
            f"Resume with: agzo train --resume --output-dir {output_dir}"
        )

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class TrainResult:
    """What a finished run produced. `model` holds the best-on-dev weights (also saved
    to `output_dir/model`); `summary` is the content of summary.json."""

    output_dir: Path
    metric: str
    zero_shot: dict[str, dict[str, float]]
    final: dict[str, dict[str, float]]
    best_step: int
    steps: int
    summary: dict[str, Any]
    model: PreTrainedModel = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)


# --------------------------------------------------------------------------- the loop


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    on_step: Callable[[int, float | None], None] | None = None,
) -> TrainResult:
    """Fine-tune `config.model` on `config.task`; see the module doc for the steps.

    resume: continue from the latest checkpoint in `config.output_dir` (the saved config
        must match, except steps / evaluation / checkpoint settings), reaching the same
        weights as an uninterrupted run. overwrite: replace a previous run's outputs there.
    quiet: no progress bar and no progress messages (the final result line still prints).
    on_step(step, loss): called after every completed step (loss None if skipped).
    Raises TrainingInterrupted (a KeyboardInterrupt) after saving a checkpoint on Ctrl-C.
    """
    # Check everything that can fail before writing anything: a typo must not leave a
    # half-made run directory behind that blocks the corrected command.
    run_dir, checkpoint, clear = _check_run_dir(config, resume=resume, overwrite=overwrite)
    config = config.replace(output_dir=str(run_dir))
    say = _Printer(quiet)
    run = load_run(config, say)
    model, scorer = run.model, run.scorer
    with _user_errors("optimizer"):
        optimizer = build_optimizer(model, config)
    named = trainable_parameters(model, config)
    if clear:
        _clear_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / CONFIG)
    state = TrainState()
    if checkpoint is not None:
        checkpoint.restore(run_dir, named, optimizer)
        state = checkpoint.state
        say(f"resumed from {checkpoint.path} (step {state.step} of {config.steps})")
    log = MetricsLogger(
        run_dir,
        checkpoint.metrics if checkpoint is not None else (),
        metric=run.metric,
        tensorboard=config.tensorboard,
        start_step=state.step,
    )

    def evaluate_dev(step: int) -> dict[str, float]:
        metrics = run.evaluate(run.dev, progress=step == 0 and not quiet, desc="zero-shot dev")
        if _better(metrics, state.best_metrics, run.metric):
            with _ctrl_c_deferred("saving the best weights"):  # files and state agree
                save_best(run_dir, named, step, metrics)  # on disk: no second model in memory
                state.best_step, state.best_metrics = step, metrics
        log.log("dev", step, **metrics)
        state.last_eval_step, state.last_dev = step, metrics
        return metrics

    def save() -> Path:
        return save_checkpoint(
            run_dir,
            named_params=named,
            optimizer=optimizer,
            state=state,
            metrics=log.upto(state.step),
            config=config,
            keep=config.keep_checkpoints,
        )

    def eval_due(step: int) -> bool:
        return step % config.eval_every == 0 or step == config.steps

    bar = tqdm(disable=True)  # the real bar starts with the first step
    recent: deque[float] = deque(maxlen=20)  # running mean shown on the progress bar
    saved_at = state.step if checkpoint is not None else -1
    try:
        if "dev" not in state.zero_shot:
            state.zero_shot["dev"] = evaluate_dev(0)
        if "test" not in state.zero_shot:
            state.zero_shot["test"] = run.evaluate(
                run.splits.test, progress=not quiet, desc="zero-shot test"
            )
            log.log("test", 0, phase="zero-shot", **state.zero_shot["test"])
            say(_describe("zero-shot", state.zero_shot, run.metric))
        if state.step > 0 and eval_due(state.step) and state.last_eval_step < state.step:
            evaluate_dev(state.step)  # the run was interrupted during this evaluation

        # Created here so that its ETA counts training steps only, not the evaluations above.
        bar = tqdm(total=config.steps, initial=state.step, desc="train", unit="step", disable=quiet)
        for step in range(state.step + 1, config.steps + 1):
            batch = training_batch(
                scorer, sample_minibatch(run.splits.train, config.seed, step, config.batch_size)
            )
            started = time.perf_counter()
            loss: torch.Tensor | float | None
            with _ctrl_c_deferred("this step"):
                if isinstance(optimizer, ZerothOrderOptimizer):
                    model.eval()  # no dropout: the passes of one difference see one network
                    loss = optimizer.step(
                        functools.partial(scorer.loss, batch), attention_mask=batch.attention_mask
                    )
                else:
                    model.train()
                    loss = _backward(optimizer, scorer, batch)
                    if loss is not None:
                        optimizer.step()
                state.step = step
            elapsed = time.perf_counter() - started
            state.train_seconds += elapsed
            loss_value = None if loss is None else float(loss)
            state.skipped_steps += loss_value is None
            log.log("train", step, loss=loss_value, step_time=elapsed)
            if loss_value is not None:
                recent.append(loss_value)

            if eval_due(step):
                evaluate_dev(step)
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                save()
                saved_at = step
            bar.update(1)
            dev = f"{state.last_dev[run.metric]:.3f}" if state.last_dev else "-"
            bar.set_postfix({"loss": f"{sum(recent) / max(len(recent), 1):.4f}", "dev": dev})
            if on_step is not None:
                on_step(step, loss_value)
        bar.close()
        if saved_at != state.step:
            save()  # so `--resume --steps <more>` can extend the finished run
    except KeyboardInterrupt:
        bar.close()
        if isinstance(optimizer, ZerothOrderOptimizer):
            # The ZO optimizer counts exactly the steps it applied (a second Ctrl-C between
            # its return and `state.step = step` would otherwise lose one).
            state.step = optimizer.step_count
        path = save()
        log.write_summaries()
        log.close()
        raise TrainingInterrupted(state.step, path, run_dir) from None

    return _finish(run, state, named, log, quiet)


def _finish(
    run: RunData,
    state: TrainState,
    named: list[tuple[str, torch.nn.Parameter]],
    log: MetricsLogger,
    quiet: bool,
) -> TrainResult:
    """Test the best-on-dev weights (step 0 = zero-shot included), save model and summary."""
    config, run_dir = run.config, Path(run.config.output_dir or ".")
    best_step = state.best_step if state.best_step is not None else state.step
    if best_step != state.step:
        load_weights(named, best_weights_path(run_dir))
    final_test = run.evaluate(run.splits.test, progress=not quiet, desc="final test")
    log.log("test", state.step, phase="final", best_step=best_step, **final_test)
    save_model(run.model, run.tokenizer, run_dir / MODEL_DIR)
    log.write_summaries()
    log.close()

    final = {"dev": state.best_metrics or {}, "test": final_test}
    summary = {
        "task": config.task,
        "optimizer": config.optimizer,
        "model": config.model,
        "metric": run.metric,
        "steps": state.step,
        "best_step": best_step,
        "zero_shot": state.zero_shot,
        "final": final,
        "last_dev": state.last_dev,
        "train_seconds": round(state.train_seconds, 3),
        "seconds_per_step": round(state.train_seconds / max(state.step, 1), 4),
        "skipped_steps": state.skipped_steps,
        "split_sizes": {k: len(getattr(run.splits, k)) for k in ("train", "dev", "test")},
        "dev_examples_evaluated": len(run.dev),
        "notes": run.splits.notes,
        "model_dir": MODEL_DIR,
        "config": config.resolved(),
    }
    _write_json(run_dir / SUMMARY, summary)
    print(_comparison(state.zero_shot["test"], final_test, run.metric, best_step, run_dir))
    return TrainResult(
        output_dir=run_dir,
        metric=run.metric,
        zero_shot=state.zero_shot,
        final=final,
        best_step=best_step,
        steps=state.step,
        summary=summary,
        model=run.model,
        tokenizer=run.tokenizer,
    )


# --------------------------------------------------------------------------- one step


def sample_minibatch(
    examples: Sequence[Example], seed: int, step: int, batch_size: int
) -> list[Example]:
    """`batch_size` distinct examples drawn afresh for each step from a generator seeded
    by (seed, step): the data order is reproducible, and resuming at step k needs no saved
    sampler state. (Minibatches are i.i.d. across steps rather than epoch permutations.)"""
    generator = torch.Generator().manual_seed(derive_seed(seed, step, _DATA_STREAM))
    order = torch.randperm(len(examples), generator=generator)[:batch_size]
    return [examples[i] for i in order.tolist()]


def training_batch(scorer: CandidateScorer, examples: Sequence[Example]) -> EncodedBatch:
    """The batch the training loss actually forwards.

    With the "lm" loss and multi-token candidates, `scorer.loss` runs only the rows of the
    correct candidates; giving the optimizer that batch makes the attention mask it uses
    to drop padding match the activations AGZO captures.
    """
    batch = scorer.batch(examples)
    if scorer.loss_kind == "lm" and isinstance(batch, SequenceBatch):
        return batch.label_rows_only()
    return batch


def _backward(
    optimizer: torch.optim.Optimizer, scorer: CandidateScorer, batch: EncodedBatch
) -> float | None:
    """First-order: loss and gradients (None, and no gradients, if the loss is not finite)."""
    optimizer.zero_grad(set_to_none=True)
    loss = scorer.loss(batch)
    if not torch.isfinite(loss):
        warnings.warn(f"non-finite loss {float(loss)}: step skipped", stacklevel=2)
        return None
    loss.backward()
    return float(loss.detach())


@contextlib.contextmanager
def _ctrl_c_deferred(doing: str) -> Iterator[None]:
    """Let the block finish on a first Ctrl-C, then raise KeyboardInterrupt.

    Used around each step (with its `state.step = step`) and each best-weights save, so a
    checkpoint written on Ctrl-C holds exactly a step boundary: resuming from it gives the
    same weights as an uninterrupted run. (Restoring the perturbed weights of an
    interrupted ZO step is exact only up to rounding; AdamW updates its moments and the
    weights in several calls.) A second Ctrl-C interrupts at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        tqdm.write(f"Ctrl-C: finishing {doing}, then saving (press again to stop now)", sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _better(new: dict[str, float], old: dict[str, float] | None, metric: str) -> bool:
    """Higher metric wins; on a tie (frequent with a few hundred dev examples) lower loss."""
    if old is None:
        return True
    return (new[metric], -new["loss"]) > (old[metric], -old["loss"])


# --------------------------------------------------------------------------- setup


@dataclass
class RunData:
    """The model, data and scorer of a run, loaded from its config."""

    config: TrainConfig
    task: Task
    splits: TaskSplits
    dev: list[Example]  # the dev examples evaluated during training (capped)
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    scorer: CandidateScorer

    @property
    def metric(self) -> str:
        """The task's headline metric, which picks the best weights."""
        return self.task.metric

    def evaluate(
        self, examples: Sequence[Example], progress: bool = False, desc: str = "eval"
    ) -> dict[str, float]:
        return evaluate(
            self.model,
            self.scorer,
            examples,
            batch_size=self.config.eval_batch_size,
            metric_fn=functools.partial(task_metric, self.task),
            progress=progress,
            desc=desc,
        )


def make_task(config: TrainConfig) -> Task:
    if config.task == CUSTOM_TASK:
        return custom_task_from_spec(
            config.data_file or "",
            config.template or "",
            config.labels or "",
            label_field=config.label_field or "label",
        )
    return get_task(config.task)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"device {name!r} requested but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TrainError(f"device {name!r} requested but MPS is not available here")
    return device


def load_run(config: TrainConfig, say: Callable[[str], None] = lambda _: None) -> RunData:
    """Data first (seconds, and most input errors show there), then the model."""
    device = resolve_device(config.device)
    with _user_errors("task"):
        task = make_task(config)
        splits = load_splits(
            task, config.data_dir, config.seed, config.n_train, config.n_dev, config.n_test
        )
    for note in splits.notes:
        say(f"note: {note}")
    say(f"loading model {config.model} ({config.dtype}, {device})")
    with _user_errors(f"model {config.model!r}"):
        model, tokenizer = load_model(config.model, config.dtype, device)
    loss_kind = cast(LossKind, config.loss)  # validated by TrainConfig
    scorer = CandidateScorer(model, tokenizer, max_length=config.max_length, loss_kind=loss_kind)
    with _user_errors("tokenizing the examples"):
        # Encoding everything now catches candidates that encode to no tokens or prompts
        # that do not fit max_length before any step runs (and caches the encodings).
        encoded = scorer.encode([*splits.train, *splits.dev, *splits.test])
    if not all(e.single_token for e in encoded):
        say("note: some candidates span several tokens: scoring runs one row per candidate")
    dev = splits.dev[: config.eval_examples] if config.eval_examples else list(splits.dev)
    return RunData(config, task, splits, dev, model, tokenizer, scorer)


@contextlib.contextmanager
def _user_errors(what: str) -> Iterator[None]:
    """Turn a ValueError raised by bad input into a TrainError naming what failed."""
    try:
        yield
    except (TrainError, TaskDataError, CheckpointError):
        raise
    except ValueError as error:
        raise TrainError(f"{what}: {error}") from error


def _check_run_dir(
    config: TrainConfig, *, resume: bool, overwrite: bool
) -> tuple[Path, Checkpoint | None, bool]:
    """(run directory, checkpoint to resume from, whether to clear a previous run first).
    Only reads the file system."""
    if resume and overwrite:
        raise TrainError("--resume continues a run and --overwrite replaces it: pass only one")
    if config.output_dir is None:
        if resume:
            raise TrainError("--resume needs --output-dir: the directory of the run to continue")
        return Path(default_output_dir(config)), None, False
    run_dir = Path(config.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainError(f"output directory {run_dir} exists and is not a directory")
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
        return run_dir, latest_checkpoint(run_dir), False
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return run_dir, None, False
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
    return run_dir, None, True


def _clear_run(run_dir: Path) -> None:
    """Delete a previous run's outputs, and only those (other files stay)."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# --------------------------------------------------------------------------- evaluation


def evaluate_model(
    config: TrainConfig,
    *,
    weights: Path | None = None,
    splits: Sequence[str] = ("test",),
    quiet: bool = False,
) -> dict[str, dict[str, float]]:
    """Evaluate `config.model` (optionally with a checkpoint's trained `weights` on top)
    on the named splits of `config.task`, drawn exactly as training draws them."""
    say = _Printer(quiet)
    run = load_run(config, say)
    if weights is not None:
        load_weights(trainable_parameters(run.model, config), weights)
    return {
        split: run.evaluate(getattr(run.splits, split), progress=not quiet, desc=split)
        for split in splits
    }


# --------------------------------------------------------------------------- output


class _Printer:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(message)  # keeps an active progress bar intact


def _describe(label: str, metrics: dict[str, dict[str, float]], metric: str) -> str:
    parts = [f"{split} {m[metric]:.4f}" for split, m in metrics.items()]
    return f"{label} {metric}: " + ", ".join(parts)


def _comparison(
    zero_shot: dict[str, float], final: dict[str, float], metric: str, best_step: int, run_dir: Path
) -> str:
    gain = 100 * (final[metric] - zero_shot[metric])
    which = "zero-shot weights: no dev gain" if best_step == 0 else f"step {best_step}, best on dev"
    return (
        f"test {metric}: zero-shot {zero_shot[metric]:.4f} -> fine-tuned {final[metric]:.4f} "
        f"({gain:+.1f} points; {which}). Outputs in {run_dir}"
    )


def _write_json(path: Path, data: Any) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(staging, path)
