"""The fine-tuning loop: `train(config)`.

The loop reads top to bottom: zero-shot evaluation, then one minibatch and one optimizer
step per iteration (zeroth-order: a loss closure evaluated under no_grad; first-order:
backward through the same loss), dev evaluation every `eval_every` steps keeping the
best weights on disk, checkpoints every `checkpoint_every` steps, and at the end the best
weights evaluated on test and saved. Everything that could go wrong with the user's input
(data, model path, output directory, resume) fails before the first step, with a message
(rundir.py and setup.py); summary.py writes what the run reports.

Launched as several processes (`torchrun`), each step's batch is split among them and
only process 0 evaluates and writes (processes.py).
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agzo.core.optimizer import ZerothOrderOptimizer
from agzo.models import save_model
from agzo.placement import HostOffload, check_offload
from agzo.seeding import derive_seed
from agzo.tasks import Example
from agzo.train.checkpoint import (
    CHECKPOINTS_DIR,
    CONFIG,
    WEIGHTS,
    TrainState,
    best_weights_path,
    load_weights,
    save_best,
    save_checkpoint,
)
from agzo.train.config import TrainConfig
from agzo.train.errors import TrainError
from agzo.train.evaluate_saved import evaluate_model
from agzo.train.logging import MetricsLogger
from agzo.train.metric_objective import metric_objective
from agzo.train.objective import CandidateScorer, EncodedBatch
from agzo.train.optimizers import build_optimizer, trainable_parameters
from agzo.train.processes import Processes, check_batch_split, join, split_evenly
from agzo.train.report import (
    split_report,
    write_split_outputs,
)
from agzo.train.rundir import (
    CONFUSION_PLOT,
    GENERATIONS,
    MODEL_DIR,
    PREDICTIONS,
    SUMMARY,
    ZERO_SHOT_GENERATIONS,
    RunDirPlan,
    plan_run_dir,
)
from agzo.train.schedule import build_scheduler
from agzo.train.setup import Printer, RunData, load_run, resolve_device, user_errors
from agzo.train.summary import comparison, describe, run_summary, write_json

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

# Keeps the data-order seeds apart from the optimizer's own (seed, step) noise seeds.
_DATA_STREAM = 7


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
    """What a finished run produced. `model` holds the tested weights (best on dev unless
    `save` is "final"; saved to `output_dir/model` unless "none"); `summary` is the content
    of summary.json."""

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
    plan = plan_run_dir(config, resume=resume, overwrite=overwrite)
    config = config.replace(output_dir=str(plan.path))
    processes = join(resolve_device(config.device), config.dist_timeout)
    try:
        check_batch_split(config.batch_size, processes.world, config.accumulate)
        if processes.distributed and (config.device_map or config.offload):
            raise TrainError(
                "--device-map / --offload place one model over several devices, for one "
                "process: launch a single process with them (data parallel runs hold a "
                "whole model per process)"
            )
        # Every process has checked the directory before process 0 writes into it.
        processes.barrier("waiting for every process to start")
        say = Printer(quiet or not processes.is_main)
        run = load_run(config, say)  # resolves what needs the model (--layers dominant)
        with user_errors("optimizer"):
            optimizer = build_optimizer(run.model, run.config, processes.reducer)
        scheduler = build_scheduler(
            optimizer, config.lr_schedule, config.warmup_steps, config.steps
        )
        named = trainable_parameters(run.model, run.config)
        # After the optimizer: it holds the host tensors the offload hooks copy from.
        offload = check_offload(config.offload)
        host = HostOffload(run.model, offload) if offload is not None else None
        session = _Session.start(run, optimizer, scheduler, plan, say, processes, named, host)
        try:
            with _terminate_as_ctrl_c():
                session.evaluate_zero_shot()
                session.open_progress_bar()  # here, so that its ETA counts training steps only
                for step in range(session.state.step + 1, config.steps + 1):
                    loss = session.step(step)
                    if on_step is not None:
                        on_step(step, loss)
                    if session.stopped is not None:
                        break
                session.close()
        except KeyboardInterrupt:
            raise session.interrupted() from None
        return session.finish()
    finally:
        processes.close()


class _Session:
    """The state of one run between its steps: weights, optimizer, progress, metrics log."""

    def __init__(
        self,
        run: RunData,
        optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler | None,
        named: list[tuple[str, torch.nn.Parameter]],
        run_dir: Path,
        state: TrainState,
        log: MetricsLogger,
        say: Printer,
        saved_at: int,
        processes: Processes,
        host: HostOffload | None = None,
    ) -> None:
        self.run, self.optimizer, self.scheduler, self.run_dir = run, optimizer, scheduler, run_dir
        self.processes = processes
        self.host = host
        self.config = run.config
        self.named = named
        self.state, self.log, self.say = state, log, say
        self.saved_at = saved_at  # step of the latest checkpoint (-1: none yet)
        self.last_saved: Path | None = None  # its weights file, once this session saved one
        self.bar = tqdm(disable=True)  # the real bar starts with the first step
        self.recent: deque[float] = deque(maxlen=20)  # running mean shown on the bar
        self.stopped: dict[str, Any] | None = None  # why --stop-diverged ended the run early

    @classmethod
    def start(
        cls,
        run: RunData,
        optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler | None,
        plan: RunDirPlan,
        say: Printer,
        processes: Processes,
        named: list[tuple[str, torch.nn.Parameter]],
        host: HostOffload | None = None,
    ) -> _Session:
        """Create the run directory (the first write), restore a checkpoint if resuming.

        A checkpoint holds no per-process state (every process holds the whole model and
        optimizer state), so a run resumes with any number of processes. `named`: the
        trained tensors (taken before any offload, which leaves placeholders behind)."""
        if processes.is_main:
            plan.prepare()
            run.config.save(plan.path / CONFIG)
        state, checkpoint = TrainState(), plan.checkpoint
        if checkpoint is not None:
            checkpoint.restore(plan.path, named, optimizer, scheduler, write=processes.is_main)
            state = checkpoint.state
            say(f"resumed from {checkpoint.path} (step {state.step} of {run.config.steps})")
        processes.broadcast_weights([p for _, p in named])
        log = MetricsLogger(
            plan.path,
            checkpoint.metrics if checkpoint is not None else (),
            metric=run.metric,
            tensorboard=run.config.tensorboard,
            start_step=state.step,
            files=processes.is_main,
        )
        saved_at = state.step if checkpoint is not None else -1
        return cls(
            run, optimizer, scheduler, named, plan.path, state, log, say, saved_at, processes, host
        )

    # -- evaluation -----------------------------------------------------------------------
    def evaluate_dev(self, step: int) -> dict[str, float]:
        """Dev metrics at `step`; better than the best so far: its weights become best/."""
        run, state = self.run, self.state
        progress = step == 0 and not self.say.quiet
        metrics = run.evaluate(run.dev, progress=progress, desc="zero-shot dev")
        if _better(metrics, state.best_metrics, run.metric, self.config.select):
            with _ctrl_c_deferred("saving the best weights"):  # files and state agree
                save_best(self.run_dir, self.named, step, metrics)  # on disk, not in memory
                state.best_step, state.best_metrics = step, metrics
        self.log.log("dev", step, **metrics)
        state.last_eval_step, state.last_dev = step, metrics
        return metrics

    def evaluate_zero_shot(self) -> None:
        """Dev and test before any step (skipped on resume: the checkpoint holds them)."""
        run, state = self.run, self.state
        if not self.processes.is_main:
            return
        if "dev" not in state.zero_shot:
            state.zero_shot["dev"] = self.evaluate_dev(0)
        if "test" not in state.zero_shot:
            test, predictions = run.predict(
                run.splits.test, progress=not self.say.quiet, desc="zero-shot test"
            )
            if run.generative:  # what the model said before training, beside what it says after
                write_split_outputs(
                    self.run_dir,
                    run.splits.test,
                    predictions,
                    split_report(run.splits.test, predictions),
                    "test",
                    **_output_names(generations=ZERO_SHOT_GENERATIONS),
                )
            state.zero_shot["test"] = test
            self.log.log("test", 0, phase="zero-shot", **test)
        if "icl_test" not in state.zero_shot and run.icl:
            # The in-context baseline (--demonstrations), reported beside zero-shot.
            icl = run.evaluate(run.icl["test"], progress=not self.say.quiet, desc="in-context test")
            state.zero_shot["icl_test"] = icl
            self.log.log("test", 0, phase="in-context", **icl)
        if state.step == 0:
            self.say(describe("zero-shot", state.zero_shot, run.metric))
        if state.step > 0 and self.eval_due(state.step) and state.last_eval_step < state.step:
            self.evaluate_dev(state.step)  # the run was interrupted during this evaluation

    def eval_due(self, step: int) -> bool:
        return step % self.config.eval_every == 0 or step == self.config.steps

    # -- steps ----------------------------------------------------------------------------
    def open_progress_bar(self) -> None:
        self.bar = tqdm(
            total=self.config.steps,
            initial=self.state.step,
            desc="train",
            unit="step",
            disable=self.say.quiet,
        )

    def step(self, step: int) -> float | None:
        """One optimizer step, then the evaluation and checkpoint due at it."""
        config, run, state, processes = self.config, self.run, self.state, self.processes
        examples = sample_minibatch(run.splits.train, config.seed, step, config.batch_size)
        mine = processes.take(examples)
        losses: Callable[[], torch.Tensor] | list[Callable[[], torch.Tensor]]
        if config.objective == "metric":  # minus accuracy or F1: zeroth-order only
            losses, mask = metric_objective(run, mine)
        else:
            # One batch's token mask goes to the optimizer with the step; micro-batches'
            # masks are read from each model call (published by packed rows).
            batches = [
                training_batch(run.scorer, part)
                for part in (
                    split_evenly(mine, config.accumulate, i) for i in range(config.accumulate)
                )
            ]
            parts: list[Callable[[], torch.Tensor]] = [
                functools.partial(run.scorer.loss, batch) for batch in batches
            ]
            losses = parts[0] if len(parts) == 1 else parts
            mask = batches[0].attention_mask if len(batches) == 1 else None
        started = time.perf_counter()
        # The step is logged inside the deferred block: when Ctrl-C arrives during it, the
        # checkpoint saved next holds this step, and so must metrics.jsonl, CSV and plot.
        with _ctrl_c_deferred("this step"):
            loss = config.method.train_step(
                self.optimizer,
                run.model,
                losses,
                mask,
                processes.reducer,
            )
            state.step = step
            elapsed = time.perf_counter() - started
            state.train_seconds += elapsed
            state.skipped_steps += loss is None
            reported: dict[str, float] = {}
            if self.scheduler is not None:
                reported["lr"] = float(self.scheduler.get_last_lr()[0])  # the rate this step used
                self.scheduler.step()
            if loss is not None and isinstance(self.optimizer, ZerothOrderOptimizer):
                reported |= self.optimizer.step_statistics()  # e.g. an adaptive rank's
            self.log.log("train", step, loss=loss, step_time=elapsed, **reported)
        if loss is not None:
            self.recent.append(loss)
        if processes.distributed and (
            step == config.steps
            or (config.sync_check_every and step % config.sync_check_every == 0)
        ):
            processes.check_in_sync(self.named, step)
        if self.eval_due(step):
            if processes.is_main:
                self.evaluate_dev(step)
            if config.stop_diverged:
                self.stop_if_diverged(step)
        if config.checkpoint_every and step % config.checkpoint_every == 0:
            self.save()
        self.bar.update(1)
        dev = f"{state.last_dev[run.metric]:.3f}" if state.last_dev else "-"
        mean = sum(self.recent) / max(len(self.recent), 1)
        self.bar.set_postfix({"loss": f"{mean:.4f}", "dev": dev})
        return loss

    def stop_if_diverged(self, step: int) -> None:
        """--stop-diverged: end the run at this evaluation when it has diverged. Process 0
        decides (it alone evaluates) and every process learns it, so all stop together."""
        reason = None
        if self.processes.is_main:  # its evaluation at this step set last_dev
            reason = divergence(
                self.state.last_dev or {},
                self.state.zero_shot["dev"],
                self.run.metric,
                self.config.stop_diverged,
            )
        reason = self.processes.broadcast(reason, "sharing whether the run diverged")
        if reason is not None:
            self.stopped = {"step": step, "reason": reason}
            self.say(f"\nstopped at step {step} of {self.config.steps}: {reason}")

    def save(self) -> Path:
        if not self.processes.is_main:  # process 0 writes the checkpoint
            return self.run_dir / CHECKPOINTS_DIR
        path = save_checkpoint(
            self.run_dir,
            named_params=self.named,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state=self.state,
            metrics=self.log.upto(self.state.step),
            config=self.config,
            keep=self.config.keep_checkpoints,
        )
        self.saved_at = self.state.step
        self.last_saved = path / WEIGHTS
        return path

    def close(self) -> None:
        """After the last step: a checkpoint there, so `--resume --steps <more>` can extend."""
        self.bar.close()
        if self.saved_at != self.state.step:
            self.save()

    def interrupted(self) -> TrainingInterrupted:
        """Ctrl-C: save a checkpoint of the last completed step and the summaries so far."""
        self.bar.close()
        if isinstance(self.optimizer, ZerothOrderOptimizer):
            # The ZO optimizer counts exactly the steps it applied (a second Ctrl-C between
            # its return and `state.step = step` would otherwise lose one).
            self.state.step = self.optimizer.step_count
        path = self.save()
        self.log.write_summaries()
        self.log.close()
        return TrainingInterrupted(self.state.step, path, self.run_dir)

    # -- the end --------------------------------------------------------------------------
    def finish(self) -> TrainResult:
        """Test the weights that `save` names (best on dev, step 0 = zero-shot included,
        unless "final"), save them as model/ and write the summary. Process 0 does this
        and hands the results to the others."""
        if not self.processes.is_main:
            return self._results_of_main()
        run, state, run_dir, config = self.run, self.state, self.run_dir, self.config
        best_step = state.best_step if state.best_step is not None else state.step
        tested_step = state.step if config.save_mode == "final" else best_step
        if tested_step != state.step:
            load_weights(self.named, best_weights_path(run_dir))
        test = run.splits.test
        final_test, predictions = run.predict(test, progress=not self.say.quiet, desc="final test")
        self.log.log("test", state.step, phase="final", best_step=best_step, **final_test)
        report = split_report(test, predictions)
        write_split_outputs(run_dir, test, predictions, report, "test", **_output_names())
        self.say(report.table())
        if self.host is not None:
            self.host.close()  # the modules hold their weights again, to be saved
        if config.save_mode != "none":
            # The weights are already on disk (best/ or the last checkpoint): model/ links
            # them instead of holding a third copy.
            saved = best_weights_path(run_dir) if tested_step == best_step else self.last_saved
            save_model(run.model, run.tokenizer, run_dir / MODEL_DIR, weights_file=saved)
        self.log.write_summaries()
        self.log.close()
        final = {"dev": state.best_metrics or {}, "test": final_test}
        summary = run_summary(run, state, final, best_step, tested_step) | {
            "stopped_early": self.stopped,
            "test_report": report.to_json(),
        }
        write_json(run_dir / SUMMARY, summary)
        line = comparison(
            state.zero_shot["test"],
            final_test,
            run.metric,
            tested_step,
            run_dir,
            final_weights=config.save_mode == "final",
        )
        print(f"{line}\ntest {report.baseline_line()}")
        shared = {"zero_shot": state.zero_shot, "final": final, "best_step": best_step}
        shared |= {"tested_step": tested_step, "summary": summary}
        self.processes.broadcast(shared, "sharing the results")
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

    def _results_of_main(self) -> TrainResult:
        """Another process's end: process 0's results, and the weights it tested."""
        shared = self.processes.broadcast(None, "receiving the results")
        if shared["tested_step"] != self.state.step:
            load_weights(self.named, best_weights_path(self.run_dir))
        return TrainResult(
            output_dir=self.run_dir,
            metric=self.run.metric,
            zero_shot=shared["zero_shot"],
            final=shared["final"],
            best_step=shared["best_step"],
            steps=self.state.step,
            summary=shared["summary"],
            model=self.run.model,
            tokenizer=self.run.tokenizer,
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


def training_batch(
    scorer: CandidateScorer, examples: Sequence[Example], pack: bool | None = None
) -> EncodedBatch:
    """The batch the training loss actually forwards.

    With the "lm" loss and multi-token candidates, the loss needs only the correct
    candidates; giving the optimizer the batch of those alone makes the token mask it
    uses to drop padding match the activations AGZO captures.
    """
    return scorer.batch(examples, pack=pack, labels_only=scorer.loss_kind == "lm")


# SIGTERM (`kill`, a batch scheduler's time limit) stops a run as Ctrl-C does: with a
# checkpoint of the last completed step, from which --resume continues.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _on_stop_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Within the block `handler` receives Ctrl-C and SIGTERM; the previous handlers come
    back after it. (Signal handlers can only be set from the main thread: elsewhere the
    block runs with the handlers it has.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, restored in previous.items():
            signal.signal(sig, restored)


def _terminate_as_ctrl_c() -> contextlib.AbstractContextManager[None]:
    """Within the block SIGTERM raises KeyboardInterrupt, as Ctrl-C does, and so does
    SIGINT even where the process was started with it ignored (`nohup cmd &`)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return _on_stop_signals(interrupt)


@contextlib.contextmanager
def _ctrl_c_deferred(doing: str) -> Iterator[None]:
    """Let the block finish on a first Ctrl-C (or SIGTERM), then raise KeyboardInterrupt.

    Used around each step (with its `state.step = step`) and each best-weights save, so a
    checkpoint written on Ctrl-C holds exactly a step boundary: resuming from it gives the
    same weights as an uninterrupted run. (Restoring the perturbed weights of an
    interrupted ZO step is exact only up to rounding; AdamW updates its moments and the
    weights in several calls.) A second Ctrl-C interrupts at once.
    """
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        tqdm.write(f"{name}: finishing {doing}, then saving (again to stop now)", sys.stderr)

    with _on_stop_signals(handler):
        yield
    if received:
        raise KeyboardInterrupt


def _output_names(generations: str = GENERATIONS) -> dict[str, str]:
    return {
        "predictions_file": PREDICTIONS,
        "generations_file": generations,
        "confusion_plot": CONFUSION_PLOT,
    }


def divergence(
    dev: dict[str, float], zero_shot: dict[str, float], metric: str, factor: float
) -> str | None:
    """Why a run whose dev evaluation gave `dev` has diverged, or None while it has not.

    Diverged: a non-finite dev loss, or a dev loss over `factor` times the zero-shot one
    while the dev metric is no better than zero-shot's. The metric condition spares a run
    that overfits (first-order AdamW's dev loss climbs while its predictions stay good);
    the two together say that everything learned is lost and the weights are far off."""
    loss = dev.get("loss")
    if loss is None:
        return None
    if not math.isfinite(loss):
        return f"dev loss is {loss}"
    if loss > factor * zero_shot["loss"] and dev[metric] <= zero_shot[metric]:
        return (
            f"dev loss {loss:.4g} is over {factor:g}x the zero-shot {zero_shot['loss']:.4g} "
            f"and dev {metric} {dev[metric]:.4f} is no better than zero-shot's "
            f"{zero_shot[metric]:.4f}"
        )
    return None


def _better(new: dict[str, float], old: dict[str, float] | None, metric: str, select: str) -> bool:
    """dev-accuracy: higher metric wins, on a tie (frequent with a few hundred dev
    examples) lower loss; dev-loss (MeZO's protocol): lower loss wins."""
    if old is None:
        return True
    if select == "dev-loss":
        return new["loss"] < old["loss"]
    return (new[metric], -new["loss"]) > (old[metric], -old["loss"])
