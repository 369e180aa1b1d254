"""Every command that README.md and docs/*.md show is one the code accepts.

The commands in their ```bash blocks are parsed, never run: an `agzo` command by agzo's
own parser (a `train` command's flags also build its TrainConfig, which checks their
values and how they combine), `python benchmarks/X.py` and `python -m agzo.X` by that
script's own parser, and each arm of a `method_sweep.py` study as the `agzo train` it
starts. A renamed flag, a removed choice or a setting that no longer combines fails here
with the file and line of the command.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import runpy
import shlex
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from agzo import cli
from tests.tiny import batch as tiny_batch
from tests.tiny import tiny_model

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

_FENCE = re.compile(r"^```(\w*)\s*$")
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")
_SEPARATORS = frozenset({"|", "||", "&&", ";", "&"})
_LAUNCHERS = ("torchrun", "accelerate")  # `... -m agzo ARGS`: agzo's arguments follow -m


@dataclass(frozen=True)
class Command:
    where: str  # file:line of the command's first line
    program: str  # "agzo", "benchmarks/X.py" or "-m agzo.X"
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {self.program} {shlex.join(self.args)}"


def _shell_lines(path: Path) -> Iterator[tuple[int, str, dict[str, str]]]:
    """(line number, logical line, the block's variables so far) of every ```bash block,
    continuation lines joined."""
    lines = path.read_text(encoding="utf-8").splitlines()
    in_block = False
    variables: dict[str, str] = {}
    pending: list[str] = []
    start = 0
    for number, line in enumerate(lines, 1):
        fence = _FENCE.match(line.strip())
        if fence:
            in_block = not in_block and fence.group(1) in ("bash", "sh", "shell")
            variables = {}
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        pending.append(line)
        yield start, " ".join(pending), variables
        pending = []


def _segments(line: str, variables: dict[str, str]) -> Iterator[list[str]]:
    """The simple commands of one line, variables expanded, leading `NAME=value` dropped;
    a segment of assignments alone defines the block's variables instead."""
    expanded = _VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), line)
    segment: list[str] = []
    for token in [*shlex.split(expanded, comments=True), ";"]:
        if token not in _SEPARATORS:
            segment.append(token)
            continue
        words = list(segment)
        segment = []
        assignments: dict[str, str] = {}
        while words and (assignment := _ASSIGNMENT.match(words[0])):
            assignments[assignment.group(1)] = assignment.group(2)
            words.pop(0)
        if not words:
            variables.update(assignments)
        else:
            yield [word for word in words if word != "..."]  # "..." marks flags left out


def _command(words: list[str]) -> tuple[str, list[str]] | None:
    program, args = Path(words[0]).name, words[1:]
    if program == "agzo":
        return "agzo", args
    if program in _LAUNCHERS or program.startswith("python"):
        if "-m" in args:
            module = args[args.index("-m") + 1]
            rest = args[args.index("-m") + 2 :]
            if module == "agzo":
                return "agzo", rest
            if module.startswith("agzo."):
                return f"-m {module}", rest
            return None
        if args and args[0].startswith("benchmarks/"):
            return args[0], args[1:]
    return None


def documented_commands() -> list[Command]:
    found = []
    for path in DOCUMENTS:
        for number, line, variables in _shell_lines(path):
            for words in _segments(line, variables):
                command = _command(words)
                if command is not None:
                    where = f"{path.relative_to(ROOT)}:{number}"
                    found.append(Command(where, command[0], tuple(command[1])))
    return found


COMMANDS = documented_commands()


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__()
        self.namespace = namespace


def _parse_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A script's parse_args parses, then stops the script before it does anything."""
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Parsed(parse_args(self, *args, **kwargs))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)


def _run_as_python_would(program: str) -> None:
    if program.startswith("-m "):
        with warnings.catch_warnings():
            # This process imported the module already (agzo's CLI does); a fresh
            # `python -m` has not, and would not warn.
            warnings.filterwarnings("ignore", "'agzo.*found in sys.modules", RuntimeWarning)
            runpy.run_module(program[3:], run_name="__main__", alter_sys=True)
        return
    path = ROOT / program
    assert path.is_file(), f"{program} does not exist"
    runpy.run_path(str(path), run_name="__main__")


def _benchmark(name: str) -> ModuleType:
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"documented_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def _script_namespace(
    command: Command, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> argparse.Namespace:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    try:
        with monkeypatch.context() as patch:
            patch.setattr(sys, "argv", [command.program, *command.args])
            _parse_only(patch)
            _run_as_python_would(command.program)
    except _Parsed as parsed:
        return parsed.namespace
    except SystemExit as exit:
        pytest.fail(f"{command}\n  rejected ({exit.code}): {capsys.readouterr().err.strip()}")
    pytest.fail(f"{command}\n  ran to its end without parsing arguments")


def _check_agzo(command: Command, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    try:
        parsed = cli.build_parser().parse_args(list(command.args))
    except cli.UsageError as error:
        pytest.fail(f"{command}\n  rejected: {error}")
    if parsed.command == "train" and not parsed.config:  # --config: a file the reader writes
        _check_train_settings(list(command.args), str(command), monkeypatch, capsys)


def _check_train_settings(args: list[str], what: str, monkeypatch: Any, capsys: Any) -> None:
    """`agzo train ARGS` builds its TrainConfig (which checks values and combinations)."""
    built: list[Any] = []
    with monkeypatch.context() as patch:
        patch.setattr(cli, "train", lambda config, **_: built.append(config))
        status = cli.main(args)
    assert status == 0 and built, f"{what}\n  {capsys.readouterr().err.strip()}"


def _check_study_arms(
    command: Command, namespace: argparse.Namespace, monkeypatch: Any, capsys: Any
) -> None:
    """Each arm of a study is an `agzo train` with the arm's flags and the shared ones."""
    sweep = _benchmark("method_sweep")
    try:
        arms = sweep.parse_arms(namespace.arm)
        sweep.parse_grid(namespace.grid, arms)
    except SystemExit as exit:
        pytest.fail(f"{command}\n  {exit.code}")
    shared = ["--task", namespace.task, "--model", namespace.model, *namespace.train_args]
    if namespace.data_dir:
        shared += ["--data-dir", namespace.data_dir]
    for arm in arms.values():
        args = ["train", "--optimizer", arm.method, *arm.flags, *shared]
        _check_train_settings(args, f"{command}\n  arm {arm.label}", monkeypatch, capsys)


def test_the_documents_show_commands_of_every_kind() -> None:
    # The collection itself can break silently (a changed fence, a new launcher); these
    # are commands the documents have shown for long.
    programs = {command.program for command in COMMANDS}
    assert {"agzo", "benchmarks/method_sweep.py", "benchmarks/step_cost.py"} <= programs
    trains = [c for c in COMMANDS if c.program == "agzo" and c.args[:1] == ("train",)]
    assert any("torch" not in c.where and "--task" in c.args for c in trains)
    assert len(COMMANDS) >= 40, [str(c) for c in COMMANDS]


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_every_documented_command_is_accepted(
    command: Command, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if command.program == "agzo":
        _check_agzo(command, monkeypatch, capsys)
        return
    if command.program == "benchmarks/method_sweep.py" and command.args[:1] == ("--continue",):
        # It repeats the command a study folder recorded, which only a started study has.
        try:
            _benchmark("method_sweep").parse_continue(list(command.args[1:]))
        except SystemExit as exit:
            pytest.fail(f"{command}\n  {exit.code}")
        return
    namespace = _script_namespace(command, monkeypatch, capsys)
    if command.program == "benchmarks/method_sweep.py":
        _check_study_arms(command, namespace, monkeypatch, capsys)


def test_a_wrong_flag_in_a_document_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\n"
        'COMMON="--task sst2 --steps 10"\n'
        "agzo train $COMMON --optimizer agzo \\\n"
        "    --learning-rate 1e-4   # a flag agzo does not have\n"
        "```\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(sys.modules[__name__], "DOCUMENTS", (page,))
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (command,) = documented_commands()
    assert command.where == "page.md:3"
    assert command.args == (
        "train", "--task", "sst2", "--steps", "10", "--optimizer", "agzo",
        "--learning-rate", "1e-4",
    )  # fmt: skip
    with pytest.raises(pytest.fail.Exception, match="page.md:3"):
        _check_agzo(command, monkeypatch, capsys)


def _python_blocks(path: Path) -> list[str]:
    blocks, block, language = [], [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        fence = _FENCE.match(line.strip())
        if fence and language is None:
            language = fence.group(1)
        elif fence:
            if language == "python":
                blocks.append("\n".join(block))
            block, language = [], None
        elif language is not None:
            block.append(line)
    return blocks


def test_the_readmes_own_loop_examples_train_a_model_as_shown() -> None:
    # The quick start's code, run as printed against a tiny model: `model`, `loader` and
    # `loss_fn` are the reader's; everything else is the README's.
    loops = [b for b in _python_blocks(ROOT / "README.md") if "opt =" in b and "model" in b]
    assert len(loops) == 2, loops
    ids, mask, _ = tiny_batch("llama", n=4, length=8)
    loader = [{"input_ids": ids, "attention_mask": mask}] * 3

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch, labels=batch["input_ids"]).loss

    for code in loops:
        model = tiny_model("llama")
        before = [p.detach().clone() for p in model.parameters()]
        names: dict[str, Any] = {"model": model, "loader": loader, "loss_fn": loss_fn}
        exec(compile(code, "README.md", "exec"), names)  # noqa: S102 - the README's code
        optimizer = names["opt"]
        if "opt.step(" not in code:  # the composition example builds optimizers only
            for batch in loader:
                optimizer.step(lambda batch=batch, model=model: loss_fn(model, batch))
        changed = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
        assert any(changed), f"the README's example left every weight unchanged:\n{code}"
