"""The `agzo` command: train, evaluate, list tasks.

    agzo train                                   # the embedded default run (SmolLM2 + AGZO)
    agzo train --optimizer mezo --lr 3e-6 --steps 500 --output-dir runs/mezo
    agzo train --config run.yaml --seed 1        # flags override the file
    agzo train --resume --output-dir runs/mezo --steps 1000
    agzo train --task custom --data-file reviews.jsonl \\
        --template "Review: {text}\\nSentiment:" --labels "0=negative,1=positive"
    agzo train --task squad --data-dir ../shared/data/squad   # generated answers, F1 / EM
    agzo train --task custom --data-file chats.jsonl          # {"messages": [...]} per line
    agzo eval --model runs/mezo                  # a run dir, its model/, a checkpoint, or a spec
    agzo eval --task squad --data-dir ../shared/data/squad --demonstrations 1   # ICL
    agzo tasks
    agzo methods                                 # every method, its settings and defaults

Every TrainConfig field is a `train` flag (`eval_every` -> `--eval-every`), and so is
every registered method's setting (`power_steps` -> `--power-steps`). Bad input
prints one `agzo: error: ...` line and exits with status 2; Ctrl-C during training saves a
checkpoint and exits with status 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from agzo.core.distributed import ProcessGroupError
from agzo.methods import all_option_names, methods
from agzo.models import ModelLoadError
from agzo.probes.commands import ProbeError, add_probe_parser, run_probe
from agzo.tasks import TaskDataError, available_tasks, get_task
from agzo.train.checkpoint import CheckpointError
from agzo.train.config import (
    CUSTOM_TASK,
    CUSTOM_TASK_FIELDS,
    DEFAULT_TASK,
    ConfigError,
    TrainConfig,
    load_config_file,
    suggest_setting,
)
from agzo.train.errors import TrainError
from agzo.train.eval_journal import journal_path
from agzo.train.evaluate_saved import evaluate_splits, saved_settings
from agzo.train.loop import TrainingInterrupted, train
from agzo.train.report import write_split_outputs
from agzo.train.rundir import RunFinished, check_writable_file

__all__ = ["build_parser", "main"]

USER_ERRORS = (ConfigError, TrainError, TaskDataError, ModelLoadError, CheckpointError, ProbeError)


class UsageError(Exception):
    """A command-line syntax error (unknown flag, missing value)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the usage block and exits; we want one line, printed by main.
        if message.startswith("unrecognized arguments:"):
            unknown = [word for word in message.split()[2:] if word.startswith("--")]
            guesses = [(word, suggest_setting(word.partition("=")[0])) for word in unknown]
            hints = [
                f"{word.partition('=')[0]}: did you mean {_flag(g)}?" for word, g in guesses if g
            ]
            if hints:
                message += f" ({'; '.join(hints)})"
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _flag(name: str) -> str:
    return _SHORT_FLAGS.get(name, ("--" + name.replace("_", "-"),))[0]


def _as_typed(message: str, given: Sequence[str]) -> str:
    """A config message with the settings the user gave as flags spelled as flags
    (`batch_size must be >= 1` -> `--batch-size must be >= 1`)."""
    for name in given:
        if "_" in name:  # one-word settings read the same either way
            message = re.sub(rf"(?<![\w-]){name}(?![\w])", _flag(name), message)
    return message


# --------------------------------------------------------------------------- parser

# Settings whose field name is not what a user would type.
_SHORT_FLAGS: dict[str, tuple[str, ...]] = {"save_mode": ("--save",)}


def _add_config_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One flag per TrainConfig field (or the given subset), absent unless passed."""
    for f in dataclasses.fields(TrainConfig):
        if f.name == "options" or (names is not None and f.name not in names):
            continue
        flags = ["--" + f.name.replace("_", "-"), *_SHORT_FLAGS.get(f.name, ())]
        kind = str(f.type)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        kwargs["help"] = f.metadata.get("help", "")
        if f.default is not None and f.default is not dataclasses.MISSING:
            kwargs["help"] += f" [{f.default}]"
        if kind.startswith("bool"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("tuple"):
            kwargs["action"] = "append"
            kwargs["metavar"] = "PATTERN"
            kwargs["help"] += " (repeatable)"
        else:
            kwargs["metavar"] = f.name.upper()
        parser.add_argument(*flags, **kwargs)


def _add_method_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of any registered method (`--rank`), absent unless passed.
    The help says which methods take it and their defaults; TrainConfig rejects a
    setting the chosen method does not take."""
    for name in all_option_names():
        if name == "lr":
            continue  # a TrainConfig field, shared by every method
        users = [m for m in methods() if name in m.option_names()]
        kind = typing.get_type_hints(users[0].options)[name]
        by_help: dict[str, list[str]] = {}
        for m in users:  # methods sharing a setting's meaning are listed together
            by_help.setdefault(m.option_help(name), []).append(
                f"{m.name} [{getattr(m.defaults(), name)}]"
            )
        described = "; ".join(f"{', '.join(who)}: {text}" for text, who in by_help.items())
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": described}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = name.upper()
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agzo", description="Forward-only fine-tuning of language models.")
    commands = parser.add_subparsers(dest="command", metavar="{train,eval,tasks,methods,probe}")

    train_parser = commands.add_parser(
        "train",
        help="fine-tune a model (no flags: the embedded default run)",
        description="Fine-tune a model. Without flags: SmolLM2-135M + AGZO on the default "
        "generated task, about 4 minutes on 2 idle CPU cores.",
    )
    train_parser.add_argument("--config", metavar="FILE", help="YAML or TOML file of settings")
    train_parser.add_argument(
        "--resume", action="store_true", help="continue the run in --output-dir"
    )
    train_parser.add_argument(
        "--overwrite", action="store_true", help="replace a previous run in --output-dir"
    )
    train_parser.add_argument("--quiet", action="store_true", help="no progress output")
    _add_config_flags(train_parser)
    _add_method_flags(train_parser)
    train_parser.set_defaults(handler=_train)

    eval_parser = commands.add_parser(
        "eval",
        help="evaluate a model zero-shot, or a trained run / model dir / checkpoint",
        description="Evaluate a model on a task's dev/test split (drawn as in training).",
    )
    eval_parser.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        help="run dir (its model/, or best/ when saved with --save none), saved model dir, "
        "checkpoint dir, built-in name, .gguf or hub id",
    )
    eval_parser.add_argument("--split", choices=("dev", "test", "both"), default="test")
    eval_parser.add_argument(
        "--batch-size", dest="eval_batch_size", default=argparse.SUPPRESS, metavar="N"
    )
    eval_parser.add_argument(
        "--output",
        metavar="FILE",
        help="also write the metrics as JSON; finished batches are journaled beside FILE "
        "until then, so the same command run again after an interruption continues",
    )
    eval_parser.add_argument(
        "--predictions",
        metavar="FILE",
        help="write every prediction as JSON lines (with --split both: FILE-dev, FILE-test)",
    )
    eval_parser.add_argument("--quiet", action="store_true", help="no progress output")
    _add_config_flags(
        eval_parser,
        (
            "task",
            "data_dir",
            *CUSTOM_TASK_FIELDS,
            "chat_template",
            "demonstrations",
            "max_new_tokens",
            "n_train",
            "n_dev",
            "n_test",
            "seed",
            "dtype",
            "device",
            "max_length",
            "loss",
            "pack",
        ),
    )
    eval_parser.set_defaults(handler=_eval)

    tasks_parser = commands.add_parser("tasks", help="list the available tasks")
    tasks_parser.set_defaults(handler=_tasks)

    methods_parser = commands.add_parser(
        "methods", help="list the methods, their settings and defaults"
    )
    methods_parser.set_defaults(handler=_methods)

    add_probe_parser(commands).set_defaults(handler=run_probe)
    return parser


def _config_values(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(TrainConfig)} | set(all_option_names())
    return {k: v for k, v in vars(args).items() if k in names}


# --------------------------------------------------------------------------- commands


def _train(args: argparse.Namespace) -> int:
    flags = _config_values(args)
    values: dict[str, Any] = {}
    output_dir = flags.get("output_dir")
    saved = Path(output_dir) / "config.yaml" if output_dir else None
    if args.resume and saved is not None and saved.is_file():
        values.update(load_config_file(saved))  # resume: the saved run is the base
    if args.config:
        values.update(load_config_file(args.config))
    values.update(flags)
    config = TrainConfig.from_dict(values, source=args.config or "flags")
    try:
        train(config, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    except RunFinished as finished:
        print(f"agzo: {finished}")
    return 0


_TASK_DATA_FIELDS = ("data_dir", *CUSTOM_TASK_FIELDS)


def _eval(args: argparse.Namespace) -> int:
    flags = _config_values(args)
    values, weights = saved_settings(flags.pop("model", TrainConfig.model))
    if "task" in flags and flags["task"] != values.get("task"):
        for name in _TASK_DATA_FIELDS:  # the run's own task data does not carry over
            values.pop(name, None)
    values.update(flags)
    config = TrainConfig.from_dict(values, source="flags")
    for option, path in (("--output", args.output), ("--predictions", args.predictions)):
        if path:
            check_writable_file(Path(path), option)
    splits = ("dev", "test") if args.split == "both" else (args.split,)
    output = Path(args.output) if args.output else None
    try:
        results = evaluate_splits(
            config, weights=weights, splits=splits, quiet=args.quiet, journal_beside=output
        )
    except KeyboardInterrupt:
        if output is not None:
            print(
                f"agzo: the batches scored so far are kept beside {output}; "
                "run the same command again to continue",
                file=sys.stderr,
            )
        raise
    for split, result in results.items():
        metrics = result.metrics
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "n_examples")
        print(f"{config.task} {split} ({int(metrics['n_examples'])} examples): {shown}")
        print(f"  {result.report.baseline_line()}")
        if not args.quiet:
            print(result.report.table())
    if args.predictions:
        path = Path(args.predictions)
        for split, result in results.items():
            target = (
                path if len(results) == 1 else path.with_name(f"{path.stem}-{split}{path.suffix}")
            )
            write_split_outputs(
                target.parent,
                result.examples,
                result.predictions,
                result.report,
                split,
                predictions_file=target.name,
                generations_file=target.name,
                confusion_plot=None,
            )
    if output is not None:
        report: dict[str, Any] = {
            "model": config.model,
            "weights": str(weights) if weights else None,
        }
        report |= {
            "task": config.task,
            "seed": config.seed,
            "results": {split: result.metrics for split, result in results.items()},
            "reports": {split: result.report.to_json() for split, result in results.items()},
        }
        output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        for split in splits:  # the output holds it all now
            journal_path(output, split).unlink(missing_ok=True)
    return 0


def _tasks(args: argparse.Namespace) -> int:
    names = available_tasks()
    width = max(len(n) for n in [*names, CUSTOM_TASK])
    for name in names:
        task = get_task(name)
        default = " (default)" if name == DEFAULT_TASK else ""
        rates = getattr(task, "chosen_rates", ())
        chosen = (
            " [the study's lr: " + ", ".join(f"{m} {r:g}" for m, r in rates) + "]" if rates else ""
        )
        print(f"{name:<{width}}  {task.metric:<8}  {task.description}{default}{chosen}")
    print(
        f"{CUSTOM_TASK:<{width}}  {'accuracy':<8}  your data: --task custom --data-file FILE "
        "--template TEXT --labels '0=negative,1=positive'"
    )
    print(
        f"{CUSTOM_TASK:<{width}}  {'f1':<8}  your answers: --task custom --data-file FILE "
        "--template TEXT --answer-field NAME, or chats (a 'messages' list) with --data-file alone"
    )
    return 0


def _methods(args: argparse.Namespace) -> int:
    for method in methods():
        kind = "zeroth-order" if method.zeroth_order else "first-order"
        print(f"{method.name}  ({kind}) {method.summary}")
        defaults = method.defaults()
        for name in method.option_names():
            flag = "--" + name.replace("_", "-")
            value = getattr(defaults, name)
            print(f"    {flag:<20} {value!s:<12} {method.option_help(name)}")
        for preset, values in method.presets.items():
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            print(f"    --preset {preset:<11} {shown}")
    return 0


# --------------------------------------------------------------------------- entry point


def _quiet_transformers() -> None:
    """Silence transformers' own load/save progress bars: agzo reports loading itself.
    Also bitsandbytes' start-up warning on CPUs with bfloat16 instructions: it looks for
    an optional kernel download (the `kernels` package) and falls back to its own code,
    which is what agzo's 4-bit bases were measured with."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `agzo` command; returns the exit status (2 for bad input)."""
    parser = build_parser()
    args = argparse.Namespace()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "handler", None) is None:
            parser.print_help(sys.stderr)
            return 2
        _quiet_transformers()
        status: int = args.handler(args)
        return status
    except TrainingInterrupted as stop:
        print(f"agzo: {stop}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("agzo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`agzo tasks | head`): nothing more to say
        # Python would report the pipe again while flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ProcessGroupError as error:  # another process of a multi-process run failed
        print(f"agzo: error: {_one_line(error)}", file=sys.stderr)
        return 1
    except (UsageError, *USER_ERRORS) as error:
        message = _one_line(error)
        if isinstance(error, ConfigError):
            message = _as_typed(message, list(_config_values(args)))
        print(f"agzo: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
