"""Loading what a run needs from its config: the task's splits, the model, the scorer.

Data first (seconds, and most input errors show there), then the model (the slow part).
Bad input becomes a TrainError naming what failed; the CLI prints it as one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from tqdm import std as tqdm_std
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agzo.adapters.lora import is_adapter_dir, wrap_with_lora
from agzo.adapters.zo_act import is_zo_act_dir
from agzo.models import check_model_spec, load_model
from agzo.placement import PlacementError, check_offload, parse_device_map, place
from agzo.quantize import quantize_linear_weights
from agzo.tasks import (
    Example,
    TaskDataError,
    TaskSplits,
    custom_task_from_spec,
    get_task,
    load_splits,
    task_metric,
)
from agzo.tasks.base import GenerativeExample
from agzo.tasks.chat import apply_chat_template
from agzo.tasks.custom_generative import custom_generative_task
from agzo.tasks.demonstrations import with_demonstrations
from agzo.tasks.registry import Task
from agzo.train.checkpoint import CheckpointError
from agzo.train.config import CUSTOM_TASK, TrainConfig
from agzo.train.errors import TrainError
from agzo.train.eval_journal import EvalJournal
from agzo.train.evaluate import Predictions, evaluate, metrics_of, predict
from agzo.train.evaluate_generation import (
    Generations,
    PromptEncoder,
    generate_answers,
    generation_metrics,
)
from agzo.train.layers import restrict_to_layers
from agzo.train.objective import LOSS_DESCRIPTIONS, CandidateScorer, LossKind

__all__ = ["Printer", "RunData", "load_run", "make_task", "resolve_device", "user_errors"]


class Printer:
    """Progress messages, unless quiet; printed through tqdm so an active bar stays intact."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(message)


# Below this many test examples, a run says that its test numbers are rough.
FEW_TEST_EXAMPLES = 50


def few_examples_warning(n: int) -> str:
    return (
        f"only {n} test examples: one example moves accuracy by {100 / n:.1f} points, so "
        "differences of a few points mean nothing; use more test data (--n-test)"
    )


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
    encoder: PromptEncoder | None = None  # generative tasks: prompts for decoding
    # The in-context baseline (--demonstrations k): dev and test with k demonstrations each.
    icl: dict[str, list[Example]] = dataclasses.field(default_factory=dict)

    @property
    def metric(self) -> str:
        """The task's headline metric, which picks the best weights."""
        return self.task.metric

    @property
    def generative(self) -> bool:
        """Whether answers are generated (F1 / exact match) rather than chosen."""
        return self.encoder is not None

    def generate(
        self,
        examples: Sequence[Example],
        progress: bool = False,
        desc: str = "eval",
        journal: EvalJournal | None = None,
    ) -> tuple[dict[str, float], Generations]:
        """F1 / exact match / loss of generated answers, and the generations."""
        assert self.encoder is not None, "generate() is for generative tasks"
        generative = [e for e in examples if isinstance(e, GenerativeExample)]
        generations = generate_answers(
            self.model,
            self.scorer,
            self.encoder,
            generative,
            self.config.eval_batch_size,
            progress=progress,
            desc=desc,
            journal=journal,
        )
        return generation_metrics(generative, generations), generations

    def evaluate(
        self, examples: Sequence[Example], progress: bool = False, desc: str = "eval"
    ) -> dict[str, float]:
        if self.generative:
            return self.generate(examples, progress, desc)[0]
        return evaluate(
            self.model,
            self.scorer,
            examples,
            batch_size=self.config.eval_batch_size,
            metric_fn=functools.partial(task_metric, self.task),
            progress=progress,
            desc=desc,
        )

    def predict(
        self,
        examples: Sequence[Example],
        progress: bool = False,
        desc: str = "eval",
        journal: EvalJournal | None = None,
    ) -> tuple[dict[str, float], Predictions | Generations]:
        """The task's metrics and every prediction (for a report and the predictions
        file); with a `journal`, the batches it holds are not scored again."""
        if self.generative:
            return self.generate(examples, progress, desc, journal)
        batch_size = self.config.eval_batch_size
        predictions = predict(
            self.model,
            self.scorer,
            examples,
            batch_size,
            progress=progress,
            desc=desc,
            journal=journal,
        )
        metric_fn = functools.partial(task_metric, self.task)
        return metrics_of(examples, predictions, metric_fn), predictions


def make_task(config: TrainConfig) -> Task:
    if config.task == CUSTOM_TASK and config.labels is None:
        return custom_generative_task(
            config.data_file or "", config.template, config.answer_field, columns=config.columns
        )
    if config.task == CUSTOM_TASK:
        return custom_task_from_spec(
            config.data_file or "",
            config.template or "",
            config.labels or "",
            label_field=config.label_field or "label",
            columns=config.columns,
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


def load_run(config: TrainConfig, say: Printer | None = None) -> RunData:
    """Data first (seconds, and most input errors show there), then the model."""
    say = say or Printer(quiet=True)
    device = resolve_device(config.device)
    with user_errors("offload"):
        check_offload(config.offload)
    check_model_spec(config.model)  # a mistyped path fails before anything is read
    with user_errors("task"):
        task = make_task(config)
        splits = load_splits(
            task, config.data_dir, config.seed, config.n_train, config.n_dev, config.n_test
        )
    generative = is_generative(splits)
    if generative and config.loss_kind != "lm":
        raise TrainError(
            f"--loss {config.loss_kind} compares candidate answers; a generative task has one "
            "answer to learn, trained with the default --loss lm"
        )
    icl: dict[str, list[Example]] = {}
    if config.demonstrations:
        with user_errors("--demonstrations"):
            icl = {
                split: with_demonstrations(
                    getattr(splits, split), splits.train, config.demonstrations, config.seed
                )
                for split in ("dev", "test")
            }
    if len(splits.test) < FEW_TEST_EXAMPLES:
        splits.warnings.append(few_examples_warning(len(splits.test)))
    for note in splits.notes:
        say(f"note: {note}")
    for warning in splits.warnings:  # printed even when quiet: they qualify every result
        tqdm.write(f"agzo: warning: {warning}", sys.stderr)
    where = f"device map {config.device_map}" if config.device_map else str(device)
    say(f"loading model {config.model} ({config.dtype}, {where})")
    with user_errors(f"model {config.model!r}"), _progress_bars(enabled=not say.quiet):
        # A device map or offload places the model after loading it on the host.
        placed = config.device_map is not None or config.offload is not None
        model, tokenizer = load_model(config.model, config.dtype, "cpu" if placed else device)
    if config.device_map is not None:
        with user_errors("device map"):
            placement = place(model, parse_device_map(config.device_map))
        say(f"placed: {describe_placement(placement)}")
    if config.quantize is not None and not is_zo_act_dir(config.model):
        with user_errors("--quantize"):
            quantize_linear_weights(model, config.quantize)
    if config.lora_rank is not None and not is_adapter_dir(config.model):
        with user_errors("LoRA"):
            model = cast(
                PreTrainedModel,  # a peft model forwards every call to the model it wraps
                wrap_with_lora(
                    model,
                    config.lora_rank,
                    config.lora_alpha,
                    config.lora_targets,
                    config.model,
                    seed=config.seed,
                ),
            )
    if config.chat_template or _has_messages(splits):
        with user_errors(f"chat template of {config.model!r}"):
            splits = _rendered(splits, tokenizer)
            icl = {split: apply_chat_template(e, tokenizer) for split, e in icl.items()}
        say("prompts rendered with the tokenizer's chat template")
    loss_kind = cast(LossKind, config.loss_kind)  # validated by TrainConfig
    scorer = CandidateScorer(
        model, tokenizer, max_length=config.max_length, loss_kind=loss_kind, pack=config.pack
    )
    examples = [*splits.train, *splits.dev, *splits.test, *(e for x in icl.values() for e in x)]
    encoder = PromptEncoder(scorer, config.max_new_tokens) if generative else None
    with user_errors("tokenizing the examples"):
        # Encoding everything now catches candidates that encode to no tokens or prompts
        # that do not fit max_length before any step runs (and caches the encodings).
        encoded = scorer.encode(examples)
        if encoder is not None:
            encoder.encode([e for e in examples if isinstance(e, GenerativeExample)])
    if generative:
        say(f"loss: {GENERATIVE_LOSS}")
    else:
        if not all(e.single_token for e in encoded):
            say(f"note: {multi_token_note(examples, scorer)}")
        why = "chosen with --loss" if config.loss else f"the loss {config.task}'s papers use"
        if config.loss is None and config.loss_kind == "lm":
            why = "the default"
        say(f"loss: {loss_kind} ({why}): {LOSS_DESCRIPTIONS[loss_kind]}")
    prepare = config.method.prepare
    if prepare is not None:
        # Methods that add layers (ZO-Act) calibrate on the run's first training batch:
        # the same examples on resume and for eval, so the same layers.
        with user_errors(config.optimizer):
            # Padded: the calibration reads its token mask from the model call.
            calibration = scorer.batch(list(splits.train[: config.batch_size]), pack=False)
            prepared = prepare(model, config.method_options, calibration, scorer.loss, config.model)
        if config.quantize is not None:  # recorded with the adapter, so it loads the same base
            recorded = cast(Any, prepared)
            recorded.agzo_zo_act = {**recorded.agzo_zo_act, "quantize": config.quantize}
        model = cast(PreTrainedModel, prepared)
    with user_errors("--layers"):
        config = restrict_to_layers(config, model, scorer, splits.train, say)
    dev = splits.dev[: config.eval_examples] if config.eval_examples else list(splits.dev)
    return RunData(config, task, splits, dev, model, tokenizer, scorer, encoder, icl)


def _has_messages(splits: TaskSplits) -> bool:
    return any(isinstance(e, GenerativeExample) and e.messages for e in splits.train)


def _rendered(splits: TaskSplits, tokenizer: PreTrainedTokenizerBase) -> TaskSplits:
    """The splits with every prompt in the tokenizer's chat template."""
    return dataclasses.replace(
        splits,
        train=apply_chat_template(splits.train, tokenizer),
        dev=apply_chat_template(splits.dev, tokenizer),
        test=apply_chat_template(splits.test, tokenizer),
    )


GENERATIVE_LOSS = (
    "cross-entropy of the first gold answer's tokens and the stop marker after it, given "
    "the prompt; evaluation generates greedily and scores F1 / exact match"
)


def is_generative(splits: TaskSplits) -> bool:
    """Whether a task's examples are answered by generation (all of them, or none)."""
    kinds = {isinstance(e, GenerativeExample) for e in (*splits.train, *splits.dev, *splits.test)}
    return kinds == {True}


def describe_placement(mapping: dict[str, Any]) -> str:
    """How many top-level modules went to each device."""
    counts: dict[str, int] = {}
    for device in mapping.values():
        counts[str(device)] = counts.get(str(device), 0) + 1
    return ", ".join(f"{n} module(s) on {device}" for device, n in counts.items())


def multi_token_note(examples: Sequence[Example], scorer: CandidateScorer) -> str:
    """Which candidates span several tokens, and what that does to their scores."""
    lengths: dict[str, int] = {}
    for example, encoded in zip(examples, scorer.encode(examples)):
        for text, ids in zip(example.candidates, encoded.candidate_ids):
            if len(ids) > 1:
                lengths[text] = len(ids)
    shown = ", ".join(f"{text!r} ({n} tokens)" for text, n in list(lengths.items())[:5])
    more = f" and {len(lengths) - 5} more" if len(lengths) > 5 else ""
    return (
        f"label words {shown}{more} span several tokens. A candidate scores by its mean "
        "log-probability per token, and the tokens after the first are easy to predict once "
        "the first is given, so multi-token words can win or lose for reasons unrelated to "
        "the input; single-token label words (one short word each) score more reliably"
    )


@contextlib.contextmanager
def user_errors(what: str) -> Iterator[None]:
    """Turn a ValueError raised by bad input into a TrainError naming what failed."""
    try:
        yield
    except (TrainError, TaskDataError, CheckpointError):
        raise
    except (ValueError, PlacementError) as error:
        raise TrainError(f"{what}: {error}") from error


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Silence every tqdm bar started in the block when not `enabled`. Libraries start
    their own (transformers' GGUF conversion), which their logging switches do not reach,
    and tqdm reads its TQDM_DISABLE variable only once, when it is imported."""
    if enabled:
        yield
        return
    original = tqdm_std.tqdm.__init__

    def silent(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **(kwargs | {"disable": True}))

    tqdm_std.tqdm.__init__ = silent
    try:
        yield
    finally:
        tqdm_std.tqdm.__init__ = original
