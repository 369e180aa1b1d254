"""The settings of one training run, validated before any model is loaded.

`TrainConfig` is the single description of a run: the Python API takes it, the CLI builds
it from a YAML/TOML file plus flags (flags win), and every run writes its resolved form to
`output_dir/config.yaml`, which is also what `--resume` compares against. Like peft's
configs, it checks itself in `__post_init__`, so a bad value fails in milliseconds with a
message naming the setting, not minutes later inside the loop.

A method's own settings (eps, rank, power_steps, ...) are not fields here: they belong to
the method and its defaults to its registered options (`agzo.methods`, `agzo methods`).
`options` holds the ones given; files and flags name them flat (`rank: 4`, `--rank 4`).
Keeping them unset until resolved is what lets the config reject a setting the chosen
method would silently ignore (`--rank` with MeZO).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import time
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from agzo.methods import Method, all_option_names, get_method, method_names
from agzo.models import BUILTIN_MODELS, DEFAULT_MODEL
from agzo.placement import OFFLOAD_CHOICES, PlacementError, parse_device_map
from agzo.tasks import available_tasks, get_task
from agzo.tasks.custom import parse_columns, parse_label_spec, template_fields
from agzo.train.layers import DOMINANT, parse_layers
from agzo.train.schedule import SCHEDULES

__all__ = [
    "CUSTOM_TASK",
    "CUSTOM_TASK_FIELDS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CHECKPOINT_EVERY",
    "DEFAULT_EVAL_EVERY",
    "DEFAULT_EVAL_EXAMPLES",
    "DEFAULT_STEPS",
    "DEFAULT_TASK",
    "DTYPES",
    "RESUMABLE_CHANGES",
    "SAVE_CHOICES",
    "ConfigError",
    "TrainConfig",
    "default_output_dir",
    "load_config_file",
    "suggest_setting",
]


class ConfigError(ValueError):
    """A setting is invalid or inconsistent; the message names it and says what is allowed."""


# --------------------------------------------------------------------------- defaults

# The built-in generated task of the embedded default run (no data files, works offline).
# SmolLM2 holds a usable sentiment signal there under the wrong bias (zero-shot 0.505,
# its Yes-minus-No score thresholded at the median 0.71: docs/RESULTS.md), so a few
# hundred forward-only steps show a clear gain. The other generated tasks were not
# compared as defaults.
DEFAULT_TASK = "synthetic-sentiment"
CUSTOM_TASK = "custom"
# The fields that describe a custom task's data; a benchmark task takes none of them.
CUSTOM_TASK_FIELDS = ("data_file", "template", "labels", "label_field", "columns", "answer_field")

# The embedded default run (`agzo train` with no arguments) takes about 4 minutes on 2
# idle CPU cores (docs/RESULTS.md): 150 AGZO steps of 16 short prompts at about 1.1 s,
# a dev evaluation of 200 examples every 25 steps, loading, zero-shot and final tests.
DEFAULT_STEPS = 150
DEFAULT_BATCH_SIZE = 16
DEFAULT_EVAL_EVERY = 25
DEFAULT_EVAL_EXAMPLES = 200
DEFAULT_CHECKPOINT_EVERY = 50

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
LOSSES: tuple[str, ...] = ("lm", "candidates")
OBJECTIVES: tuple[str, ...] = ("loss", "metric")
# What a run's model/ directory holds (and what its final test evaluates).
SAVE_CHOICES: tuple[str, ...] = ("best", "final", "none")
# Which dev evaluation keeps its weights. dev-accuracy is the default: it is the metric a
# run reports, and under the language-model loss (COPA, custom tasks, or --loss lm) dev
# loss also falls when probability mass merely moves onto the label words, which changes
# no prediction. dev-loss is MeZO's protocol (the Trainer's default); with the candidates'
# softmax loss the two mostly agree.
SELECT_CHOICES: tuple[str, ...] = ("dev-accuracy", "dev-loss")

# Settings a resumed run may change: they decide how long to train and how often to
# look, not what is trained. Anything else differing from the saved config is an error.
RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "eval_every",
        "eval_examples",
        "eval_batch_size",
        "checkpoint_every",
        "keep_checkpoints",
        "tensorboard",
        "pack",
        "keep_noise",
        "save_mode",
        "output_dir",
        "device",
        "max_new_tokens",
        "demonstrations",
        "sync_check_every",
        "dist_timeout",
        "device_map",
        "offload",
        "stop_diverged",
    }
)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


# --------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class TrainConfig:
    """One fine-tuning run. Every field is also a CLI flag (`rank` -> `--rank`)."""

    # What to train, on what.
    model: str = field(
        default=DEFAULT_MODEL,
        metadata=_help("built-in name, saved model dir, .gguf file or hub id"),
    )
    task: str = field(
        default=DEFAULT_TASK, metadata=_help(f"task name (see `agzo tasks`) or {CUSTOM_TASK!r}")
    )
    data_dir: str | None = field(default=None, metadata=_help("folder of a benchmark's files"))
    data_file: str | None = field(
        default=None, metadata=_help("custom task: .jsonl/.csv/.tsv file or folder")
    )
    template: str | None = field(
        default=None, metadata=_help(r"custom task: prompt, e.g. 'Review: {text}\nSentiment:'")
    )
    labels: str | None = field(
        default=None, metadata=_help("custom task: label words, e.g. '0=negative,1=positive'")
    )
    label_field: str | None = field(
        default=None, metadata=_help("custom task: column holding the label (default: label)")
    )
    columns: str | None = field(
        default=None, metadata=_help("custom task: column names of a CSV/TSV without header")
    )
    answer_field: str | None = field(
        default=None,
        metadata=_help("custom generative task: field holding the answer (text or list)"),
    )
    chat_template: bool = field(
        default=False, metadata=_help("render prompts with the tokenizer's chat template")
    )
    # How to train.
    optimizer: str = field(
        default="agzo", metadata=_help("method (see `agzo methods`): " + " | ".join(method_names()))
    )
    lr: float | None = field(
        default=None,
        metadata=_help(
            "learning rate (default: the study's choice for the task, else the method's)"
        ),
    )
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help("the method's own settings, given flat: --rank 4 (see `agzo methods`)"),
    )
    weight_decay: float = field(default=0.0, metadata=_help("decoupled weight decay"))
    lr_schedule: str = field(
        default="constant",
        metadata=_help(
            "the rate over the run: " + " | ".join(SCHEDULES) + " (decay to zero at the last "
            "step); --lr is its peak"
        ),
    )
    warmup_steps: int = field(
        default=0, metadata=_help("steps of linear warmup from zero before the schedule")
    )
    quantize: int | None = field(
        default=None,
        metadata=_help("weight-only quantized base: 8 | 4 (needs zo-act or --lora-rank)"),
    )
    lora_rank: int | None = field(
        default=None, metadata=_help("train peft LoRA adapters of this rank, not the weights")
    )
    lora_alpha: float | None = field(
        default=None, metadata=_help("LoRA scale alpha (default: the rank, scale 1)")
    )
    lora_targets: tuple[str, ...] | None = field(
        default=None, metadata=_help("LoRA target modules, peft's names (default: peft's)")
    )
    layers: str | None = field(
        default=None,
        metadata=_help("train only these decoder layers: 3 | 2,3 | dominant (found by probe)"),
    )
    include: tuple[str, ...] | None = field(
        default=None, metadata=_help("train only parameters matching (glob/substring)")
    )
    exclude: tuple[str, ...] | None = field(
        default=None, metadata=_help("never train parameters matching (glob/substring)")
    )
    loss: str | None = field(
        default=None,
        metadata=_help(
            "lm | candidates (README: the two losses); default: the task's paper loss, "
            "candidates for SST-2, RTE, CB, BoolQ, WSC, WiC, MultiRC, lm for the others"
        ),
    )
    objective: str = field(
        default="loss",
        metadata=_help("loss | metric: minimize the loss, or minus the task metric (ZO only)"),
    )
    steps: int = field(default=DEFAULT_STEPS, metadata=_help("optimizer steps"))
    batch_size: int = field(
        default=DEFAULT_BATCH_SIZE,
        metadata=_help("examples per step (over all processes: each takes an equal share)"),
    )
    accumulate: int = field(
        default=1,
        metadata=_help("micro-batches per step: the step's loss over N passes (less memory)"),
    )
    seed: int = field(default=0, metadata=_help("data splits, data order, ZO noise and LoRA init"))
    # Data sizes and evaluation.
    # None: the task's own sizes (MeZO protocol 1000/500/1000, dev 100 for CB and COPA,
    # fewer where the files are smaller; 1000/200/200 for generated tasks).
    n_train: int | None = field(default=None, metadata=_help("training examples"))
    n_dev: int | None = field(default=None, metadata=_help("dev examples"))
    n_test: int | None = field(default=None, metadata=_help("test examples"))
    eval_every: int = field(default=DEFAULT_EVAL_EVERY, metadata=_help("dev eval every N steps"))
    eval_examples: int | None = field(
        default=DEFAULT_EVAL_EXAMPLES,
        metadata=_help("cap on dev examples evaluated during training (none: all)"),
    )
    eval_batch_size: int = field(default=32, metadata=_help("examples per eval forward"))
    max_length: int | None = field(default=None, metadata=_help("max tokens per sequence"))
    max_new_tokens: int = field(
        default=50, metadata=_help("generative tasks: longest generated answer, in tokens")
    )
    demonstrations: int = field(
        default=0,
        metadata=_help("in-context baseline: k training examples prepended to each prompt"),
    )
    # Where and how it runs.
    output_dir: str | None = field(
        default=None, metadata=_help("default: runs/<task>-<optimizer>-<timestamp>")
    )
    dtype: str = field(default="float32", metadata=_help(" | ".join(DTYPES)))
    device: str = field(default="auto", metadata=_help("auto | cpu | cuda | cuda:N | mps"))
    device_map: str | None = field(
        default=None,
        metadata=_help("split the model over devices: auto | balanced | sequential | JSON map"),
    )
    offload: str | None = field(
        default=None, metadata=_help("cpu: weights in host memory, computed on the GPU")
    )
    checkpoint_every: int = field(
        default=DEFAULT_CHECKPOINT_EVERY, metadata=_help("checkpoint every N steps (0: end only)")
    )
    keep_checkpoints: int = field(default=1, metadata=_help("how many checkpoints to keep"))
    sync_check_every: int = field(
        default=50,
        metadata=_help("several processes: compare their weights every N steps (0: at the end)"),
    )
    dist_timeout: float = field(
        default=600.0,
        metadata=_help("several processes: seconds one waits for the others before stopping"),
    )
    tensorboard: bool = field(default=True, metadata=_help("TensorBoard logs when installed"))
    pack: bool = field(
        default=True,
        metadata=_help(
            "sequences packed end to end into rows, without padding between them, in "
            "Llama, Qwen3 and GPT-2 models (same loss, fewer tokens computed)"
        ),
    )
    keep_noise: bool = field(
        default=False,
        metadata=_help(
            "zeroth-order: draw each step's Gaussian noise once and keep it for the flip "
            "and the update instead of drawing it again (the same weights; faster, for a "
            "float32 copy of the Gaussian-probed weights)"
        ),
    )
    stop_diverged: float = field(
        default=0.0,
        metadata=_help(
            "stop once a dev evaluation's loss is not finite, or is over this many times "
            "the zero-shot dev loss with the dev metric no better than zero-shot's "
            "(0: never; the best-on-dev weights so far are tested as usual)"
        ),
    )
    select: str = field(
        default="dev-accuracy",
        metadata=_help("which dev evaluation's weights are kept: " + " | ".join(SELECT_CHOICES)),
    )
    preset: str | None = field(
        default=None, metadata=_help("a method's named settings, e.g. agzo's paper (agzo methods)")
    )
    save_mode: str = field(  # the flag is --save
        default="best",
        metadata=_help("what model/ holds: best (on dev) | final (last step) | none"),
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name)))
        object.__setattr__(self, "optimizer", self.optimizer.strip().lower())
        object.__setattr__(self, "task", self.task.strip().lower())
        self._make_paths_absolute()
        self._check_method()
        self._check_task()
        self._check_ranges()

    def _make_paths_absolute(self) -> None:
        """Store paths as absolute ones, so that the saved config still finds the data
        and model when `agzo eval` or `--resume` runs from another directory."""
        for name in ("data_dir", "data_file", "output_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _absolute(value))
        if self.model not in BUILTIN_MODELS and Path(self.model).expanduser().exists():
            object.__setattr__(self, "model", _absolute(self.model))

    # -- validation -----------------------------------------------------------------------
    def _check_method(self) -> None:
        try:
            method = get_method(self.optimizer)
        except ValueError as error:
            raise ConfigError(str(error).replace("unknown method", "unknown optimizer")) from None
        object.__setattr__(self, "optimizer", method.name)
        for name in self.options:
            if name not in method.option_names() or name == "lr":
                users = [m for m in method_names() if name in get_method(m).option_names()]
                takes = [_flag(k) for k in method.option_names() if k != "lr"]
                raise ConfigError(
                    f"{_flag(name)} is not a setting of optimizer {method.name!r} "
                    f"(it applies to {', '.join(users) or 'no method'}); {method.name} takes: "
                    f"{', '.join(takes) or 'no method-specific settings'}"
                )
        options = {k: _coerce_option(method, k, v) for k, v in self.options.items()}
        object.__setattr__(self, "options", options)
        if self.preset is not None and self.preset not in method.presets:
            offered = ", ".join(method.presets) or "none"
            raise ConfigError(
                f"--preset {self.preset!r} is not a preset of {method.name} "
                f"(its presets: {offered})"
            )
        try:
            self.method_options  # noqa: B018 (validates the combined settings)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def _check_task(self) -> None:
        if self.task != CUSTOM_TASK:
            if self.task not in available_tasks():
                close = difflib.get_close_matches(self.task, available_tasks(), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(
                    f"unknown task {self.task!r}{hint}; choose one of "
                    f"{', '.join(available_tasks())}, or {CUSTOM_TASK!r} with --data-file, "
                    "--template and --labels"
                )
            given = [_flag(name) for name in CUSTOM_TASK_FIELDS if getattr(self, name) is not None]
            if given:
                raise ConfigError(
                    f"{', '.join(given)} only apply to --task {CUSTOM_TASK} "
                    f"(the task is {self.task!r})"
                )
            return
        if self.data_file is None:
            raise ConfigError(
                f"--task {CUSTOM_TASK} needs --data-file (e.g. --data-file reviews.jsonl "
                "--template 'Review: {text}\\nSentiment:' --labels '0=negative,1=positive')"
            )
        if self.data_dir is not None:
            raise ConfigError("--data-dir is for benchmark tasks; a custom task uses --data-file")
        if self.labels is not None and self.answer_field is not None:
            raise ConfigError(
                "--labels (classification) and --answer-field (generation) exclude each other"
            )
        if (self.labels is not None or self.answer_field is not None) and self.template is None:
            kind = "--labels" if self.labels is not None else "--answer-field"
            raise ConfigError(f"--task {CUSTOM_TASK} with {kind} needs --template")
        if self.labels is None and self.answer_field is None:
            if self.template is not None:
                raise ConfigError(
                    "--template needs --labels (classification) or --answer-field (generation); "
                    "chat data (a 'messages' list per record) needs neither"
                )
            if self.label_field is not None or self.columns is not None:
                raise ConfigError("--label-field and --columns do not apply to chat data")
        try:
            if self.template is not None:
                template_fields(self.template)
            if self.labels is not None:
                parse_label_spec(self.labels)
            if self.columns is not None:
                parse_columns(self.columns)
        except ValueError as error:
            raise ConfigError(str(error)) from error

    def _check_ranges(self) -> None:
        if self.layers is not None:
            try:
                parse_layers(self.layers)
            except ValueError as error:
                raise ConfigError(str(error)) from error
        if self.quantize is not None:
            if self.quantize not in (8, 4):
                raise ConfigError(f"--quantize must be 8 or 4 (bits), got {self.quantize}")
            if self.method.trains_base_weights and self.lora_rank is None:
                raise ConfigError(
                    f"--quantize {self.quantize} freezes the base weights in a quantized form, "
                    f"but {self.optimizer} trains them; use --optimizer zo-act or --lora-rank"
                )
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ConfigError(f"--lora-rank must be >= 1, got {self.lora_rank}")
        if self.lora_rank is None and (self.lora_alpha or self.lora_targets):
            raise ConfigError("--lora-alpha and --lora-targets need --lora-rank")
        positive = ("steps", "batch_size", "n_train", "n_dev", "n_test", "eval_every")
        for name in (*positive, "eval_batch_size", "keep_checkpoints", "accumulate"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_examples is not None and self.eval_examples < 1:
            raise ConfigError(
                f"eval_examples must be >= 1 (or null: all dev), got {self.eval_examples}"
            )
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"checkpoint_every must be >= 0 (0: only at the end), got {self.checkpoint_every}"
            )
        if self.sync_check_every < 0:
            raise ConfigError(
                f"sync_check_every must be >= 0 (0: only at the end), got {self.sync_check_every}"
            )
        if self.dist_timeout <= 0:
            raise ConfigError(f"dist_timeout must be > 0 seconds, got {self.dist_timeout}")
        if self.batch_size % self.accumulate:
            raise ConfigError(
                f"--accumulate {self.accumulate} does not divide --batch-size "
                f"{self.batch_size}: every micro-batch holds the same number of examples; "
                f"choose an --accumulate that divides {self.batch_size}"
            )
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {self.max_length}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown --lr-schedule {self.lr_schedule!r}; choose one of {', '.join(SCHEDULES)}"
            )
        if not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(
                f"--warmup-steps must be between 0 and --steps ({self.steps}), "
                f"got {self.warmup_steps}"
            )
        if self.stop_diverged and not self.stop_diverged > 1:
            raise ConfigError(
                "--stop-diverged is a factor over the zero-shot dev loss: give one above 1 "
                f"(or 0: never stop), got {self.stop_diverged}"
            )
        if self.select not in SELECT_CHOICES:
            raise ConfigError(
                f"unknown --select {self.select!r}; choose one of {', '.join(SELECT_CHOICES)}"
            )
        if self.save_mode not in SAVE_CHOICES:
            raise ConfigError(
                f"unknown save mode {self.save_mode!r}; choose one of {', '.join(SAVE_CHOICES)}"
            )
        if self.loss is not None and self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}"
            )
        if self.objective == "metric" and self.accumulate > 1:
            raise ConfigError(
                "--objective metric scores each process's whole share of the batch at once; "
                "it does not take --accumulate"
            )
        if self.objective == "metric" and not self.zeroth_order:
            raise ConfigError(
                f"--objective metric needs a zeroth-order optimizer: the metric has no "
                f"gradient for {self.optimizer!r} to follow"
            )
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.demonstrations < 0:
            raise ConfigError(f"demonstrations must be >= 0, got {self.demonstrations}")
        self._check_placement()
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError) as error:
                raise ConfigError(f"invalid device {self.device!r}: {error}") from error

    def _check_placement(self) -> None:
        if self.device_map is not None and self.offload is not None:
            raise ConfigError(
                "--device-map and --offload both place the model: pass one (a map may put "
                "modules on 'cpu' itself)"
            )
        if (self.device_map is not None or self.offload is not None) and self.device != "auto":
            raise ConfigError(
                f"--device {self.device} and --{'device-map' if self.device_map else 'offload'}"
                " both say where the model runs: leave --device at auto"
            )
        try:
            if self.device_map is not None:
                parse_device_map(self.device_map)
            if self.offload is not None and self.offload not in OFFLOAD_CHOICES:
                raise ConfigError(
                    f"unknown offload {self.offload!r}; choose {', '.join(OFFLOAD_CHOICES)}"
                )
        except PlacementError as error:
            raise ConfigError(str(error)) from error

    # -- resolved values ------------------------------------------------------------------
    @property
    def method(self) -> Method:
        """The registered method this run trains with."""
        return get_method(self.optimizer)

    @property
    def method_options(self) -> Any:
        """The method's options dataclass: the given settings, then the preset's, then (for
        the rate) the task's study-chosen one, then the method's defaults."""
        preset = self._preset_options()
        lr = self.lr if self.lr is not None else self.task_rate
        return self.method.make_options(**{**preset, "lr": lr, **self.options})

    def _preset_options(self) -> dict[str, Any]:
        return dict(self.method.presets[self.preset]) if self.preset else {}

    @property
    def task_rate(self) -> float | None:
        """The rate the study chose on this task for this run's setting (`study_setting`),
        else None."""
        setting = self.study_setting
        if setting is None:
            return None
        chosen_rate = getattr(get_task(self.task), "chosen_rate", None)
        rate: float | None = None if chosen_rate is None else chosen_rate(setting)
        return rate

    @property
    def study_setting(self) -> str | None:
        """This run as the study names its arms: the method, then a loss other than the
        task's own, a preset, `--layers dominant`, `--lora-rank R` and the method options
        given that differ from the arm's own values, in the method's order ("agzo --loss
        lm", "agzo --preset paper", "agzo --rank 4 --energy 0.9"), when the rest is as the
        study ran it: peft's default LoRA scale and targets. None for a custom task or
        named layers."""
        if self.task not in available_tasks():  # a custom task (or an unknown one)
            return None
        if self.lora_alpha is not None or self.lora_targets:
            return None
        flags = [self.optimizer]
        if self.loss not in (None, paper_loss(self.task)):
            flags.append(f"--loss {self.loss}")
        if self.preset is not None:
            flags.append(f"--preset {self.preset}")
        if self.layers is not None:
            chosen_by_rule, _ = parse_layers(self.layers)
            if not chosen_by_rule:  # named layers: not an arm of the study
                return None
            flags.append(f"--layers {DOMINANT}")  # `dominant` or, resolved, `dominant:N`
        if self.lora_rank is not None:
            flags.append(f"--lora-rank {self.lora_rank}")
        # An option set to what the arm uses anyway (`--rank 1`) leaves the arm unchanged.
        unchanged = {**dataclasses.asdict(self.method.defaults()), **self._preset_options()}
        for name in self.method.option_names():
            if name in self.options and self.options[name] != unchanged[name]:
                flags.append(_option_flag(name, self.options[name]))
        return " ".join(flags)

    @property
    def loss_kind(self) -> str:
        """The loss trained: --loss if given, else the one the task's paper trains with
        (MeZO's protocol), else the language-model loss."""
        return self.loss if self.loss is not None else paper_loss(self.task)

    @property
    def zeroth_order(self) -> bool:
        return self.method.zeroth_order

    @property
    def learning_rate(self) -> float:
        return float(self.method_options.lr)

    def setting(self, name: str) -> Any:
        """A method's setting: the given value, else the method's default."""
        if name not in self.method.option_names():
            raise KeyError(f"optimizer {self.optimizer!r} has no setting {name!r}")
        return getattr(self.method_options, name)

    def resolved(self) -> dict[str, Any]:
        """Every run setting, then the method's settings flat with their defaults filled
        in (lr included). This is what config.yaml holds."""
        values = self.to_dict()
        del values["options"]
        values["loss"] = self.loss_kind
        values |= dataclasses.asdict(self.method_options)
        return values

    def to_dict(self) -> dict[str, Any]:
        """Fields as plain YAML/JSON values (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    def differences(
        self, other: TrainConfig, ignore: frozenset[str] = RESUMABLE_CHANGES
    ) -> dict[str, tuple[Any, Any]]:
        """{name: (self's value, other's value)} for resolved settings that differ."""
        mine, theirs = self.resolved(), other.resolved()
        return {
            k: (mine[k], theirs[k])
            for k in mine
            if k not in ignore and mine[k] != theirs[k] and not _same_layers(mine[k], theirs[k], k)
        }

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # -- files ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping; keys may use dashes (`power-steps`). Unknown keys are errors."""
        known = [f.name for f in dataclasses.fields(cls) if f.name != "options"]
        method_settings = [n for n in all_option_names() if n != "lr"]
        clean: dict[str, Any] = {}
        options: dict[str, Any] = dict(values.get("options") or {})
        for key, value in values.items():
            name = str(key).strip().replace("-", "_")
            if name == "options":
                continue
            if name in method_settings:
                if value is not None:  # a saved config lists other methods' settings as null
                    options[name] = value
                continue
            if name not in known:
                close = suggest_setting(name)
                hint = f" (did you mean {close!r}?)" if close else ""
                raise ConfigError(f"{source}: unknown setting {key!r}{hint}")
            clean[name] = value
        return cls(**clean, options=options)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
        """Load a YAML or TOML file; `overrides` (e.g. from command-line flags) win."""
        values = load_config_file(path)
        values.update({k.replace("-", "_"): v for k, v in overrides.items()})
        return cls.from_dict(values, source=str(path))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the resolved config as YAML (atomically: a crash never leaves half a file)."""
        target = Path(path)
        staging = target.with_name(f".{target.name}.tmp")
        staging.write_text(yaml.safe_dump(self.resolved(), sort_keys=False), encoding="utf-8")
        os.replace(staging, target)


# Names other tools use for a setting (Hugging Face's TrainingArguments, common scripts),
# which spelling-distance alone would not lead back to ours.
_SETTING_ALIASES: dict[str, str] = {
    "learning_rate": "lr",
    "epsilon": "eps",
    "mu": "eps",
    "max_steps": "steps",
    "num_steps": "steps",
    "train_steps": "steps",
    "per_device_train_batch_size": "batch_size",
    "train_batch_size": "batch_size",
    "bs": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "model_name": "model",
    "model_name_or_path": "model",
    "method": "optimizer",
    "optim": "optimizer",
    "dataset": "task",
    "train_file": "data_file",
    "data": "data_file",
    "output": "output_dir",
    "out_dir": "output_dir",
    "max_seq_length": "max_length",
    "torch_dtype": "dtype",
    "precision": "dtype",
    "label_column": "label_field",
    "eval_steps": "eval_every",
    "save_steps": "checkpoint_every",
    "save_total_limit": "keep_checkpoints",
    "save": "save_mode",
}


def paper_loss(task: str) -> str:
    """The loss a task trains with when --loss is not given: the one its paper trains with
    (MeZO's protocol), else (a custom or built-in task) the language-model loss."""
    if task == CUSTOM_TASK:
        return "lm"
    return str(getattr(get_task(task), "paper_loss", "lm"))


def suggest_setting(name: str) -> str | None:
    """The setting a mistyped or foreign name most likely means (None: no good guess)."""
    name = name.strip().lstrip("-").replace("-", "_").lower()
    if name in _SETTING_ALIASES:
        return _SETTING_ALIASES[name]
    known = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "options"]
    known += [n for n in all_option_names() if n not in known]
    close = difflib.get_close_matches(name, [*known, *_SETTING_ALIASES], n=1)
    return _SETTING_ALIASES.get(close[0], close[0]) if close else None


def _same_layers(a: Any, b: Any, name: str) -> bool:
    """`dominant` asks for the layer that `dominant:N` records: the same run."""
    values = {str(a), str(b)}
    return (
        name == "layers" and "dominant" in values and any(v.startswith("dominant:") for v in values)
    )


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The top-level mapping of a .yaml/.yml or .toml file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {str(file)!r} does not exist")
    suffix = file.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        elif suffix == ".toml":
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        else:
            raise ConfigError(f"config file {str(file)!r}: use a .yaml, .yml or .toml file")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as error:
        detail = " ".join(str(error).split())
        raise ConfigError(
            f"config file {str(file)!r} is not valid {suffix[1:]}: {detail}"
        ) from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(file)!r} must hold a mapping of setting: value")
    return data


def default_output_dir(config: TrainConfig, root: str | os.PathLike[str] = "runs") -> str:
    """runs/<task>-<optimizer>-<YYYYmmdd-HHMMSS>, never an existing directory."""
    stem = Path(root) / f"{config.task}-{config.optimizer}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = stem, 1
    while candidate.exists():
        n += 1
        candidate = stem.with_name(f"{stem.name}-{n}")
    return str(candidate)


# --------------------------------------------------------------------------- coercion


def _absolute(path: str) -> str:
    """`path` made absolute against the working directory (`~` expanded, `..` removed);
    symbolic links are kept, since they may be how the user names the place."""
    return os.path.abspath(os.path.expanduser(path))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option_flag(name: str, value: Any) -> str:
    """An option as its command-line flag: `--rank 4`, `--no-two-sided`."""
    if isinstance(value, bool):
        return _flag(name) if value else _flag(f"no_{name}")
    return f"{_flag(name)} {value:g}" if isinstance(value, float) else f"{_flag(name)} {value}"


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, whether None is allowed)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return hint, False


def _coerce_option(method: Method, name: str, value: Any) -> Any:
    """A method setting converted to its declared type, as `_coerce` does for fields."""
    kind = typing.get_type_hints(method.options)[name]
    return _convert(name, value, kind, optional=False)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(name: str, value: Any) -> Any:
    """`value` converted to the field's type where unambiguous (YAML reads `1e-3` as a
    string, TOML may give 100.0 for a step count); otherwise a ConfigError."""
    kind, optional = _unwrap_optional(_field_types()[name])
    return _convert(name, value, kind, optional)


def _convert(name: str, value: Any, kind: Any, optional: bool) -> Any:
    if optional and isinstance(value, str) and value.strip().lower() in ("none", "null"):
        value = None  # how a command line says "unset" (e.g. --eval-examples none)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must not be empty (null)")
    wanted = getattr(kind, "__name__", str(kind))
    if kind is bool:
        wanted = "true or false"
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if number.is_integer():
                    return int(number)
        wanted = "an integer"
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        wanted = "a number"
    elif kind is str:
        if isinstance(value, str):
            return value
        wanted = "a string"
    elif typing.get_origin(kind) is dict:
        if isinstance(value, Mapping):
            return {str(k).replace("-", "_"): v for k, v in value.items()}
        wanted = "a mapping of setting: value"
    elif typing.get_origin(kind) is tuple:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, (list, tuple)) and all(isinstance(v, str) for v in items):
            return tuple(items)
        wanted = "a list of strings"
    raise ConfigError(f"{name} must be {wanted}, got {value!r}")
