"""The `agzo` command: end to end on a tiny model, and one clear line for every bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from agzo.cli import main
from agzo.tasks import available_tasks
from agzo.train import DEFAULT_TASK, TrainConfig
from agzo.train.objective import CandidateScorer


def tiny_flags(model_dir: Path, output_dir: Path, steps: int = 4) -> list[str]:
    return [
        "--model",
        str(model_dir),
        "--steps",
        str(steps),
        "--batch-size",
        "4",
        "--n-train",
        "24",
        "--n-dev",
        "8",
        "--n-test",
        "8",
        "--eval-every",
        "2",
        "--checkpoint-every",
        "2",
        "--no-tensorboard",
        "--output-dir",
        str(output_dir),
        "--quiet",
    ]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def reviews(n: int, text_field: str = "text") -> list[dict[str, object]]:
    words = ("bad", "good")
    return [{text_field: f"review {i}: it was {words[i % 2]}", "label": i % 2} for i in range(n)]


# --------------------------------------------------------------------------- success


def test_console_script_trains_end_to_end(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "agzo.cli", "train", *tiny_flags(model_dir, out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "test accuracy: zero-shot" in done.stdout
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "plot.png", "summary.json"):
        assert (out / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.hidden_size == 32
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["optimizer"] == "agzo"


def test_config_file_with_flag_overrides(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    config_file = tmp_path / "run.toml"
    config_file.write_text('optimizer = "mezo"\nlr = 1e-4\nseed = 3\nsteps = 8\n')
    flags = [*tiny_flags(model_dir, out, steps=2), "--config", str(config_file), "--seed", "5"]
    assert main(["train", *flags]) == 0
    saved = TrainConfig.from_file(out / "config.yaml")
    assert (saved.optimizer, saved.lr, saved.seed, saved.steps) == ("mezo", 1e-4, 5, 2)
    assert saved.options["two_sided"] is True  # resolved: MeZO's default written out


def test_custom_task_and_eval_of_run_checkpoint_and_model(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "reviews.jsonl", reviews(40))
    out = tmp_path / "run"
    custom = ["--task", "custom", "--data-file", str(data), "--template", "{text}\\nSo:"]
    custom += ["--labels", "0=bad,1=good"]
    assert main(["train", *tiny_flags(model_dir, out), *custom]) == 0
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()

    # A run directory: its task, split seed and sizes come from its config.yaml.
    assert main(["eval", "--model", str(out), "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("custom test (8 examples): accuracy")
    assert f"accuracy {summary['final']['test']['accuracy']:.4f}" in line

    # A checkpoint: base model + trained weights; both splits; JSON report.
    report = tmp_path / "eval.json"
    checkpoint = out / "checkpoints" / "step-000004"
    args = ["eval", "--model", str(checkpoint), "--split", "both", "--output", str(report)]
    assert main([*args, "--quiet"]) == 0
    results = json.loads(report.read_text())["results"]
    assert set(results) == {"dev", "test"} and results["test"]["n_examples"] == 8

    # A plain model spec, zero-shot, on a built-in task.
    flags = ["--task", "synthetic-compare", "--n-test", "6", "--quiet"]
    assert main(["eval", "--model", str(model_dir), *flags]) == 0
    assert "synthetic-compare test (6 examples)" in capsys.readouterr().out


def test_tasks_lists_every_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [*available_tasks(), "custom", "custom"]
    assert "--answer-field" in lines[-1]  # the generative custom task is listed too
    assert any(line.startswith(DEFAULT_TASK) and "(default)" in line for line in lines)
    sst2 = next(line for line in lines if line.startswith("sst2 "))
    chosen = (
        "agzo 3e-05, mezo 3e-05, lozo 3e-05, agzo --preset paper 3e-05, zo-act 0.001, "
        "agzo --layers dominant 0.0003, agzo --lora-rank 8 0.003, "
        "agzo --rank 4 --energy 0.9 3e-05, fo-adamw 3e-05, agzo --loss lm 3e-05, "
        "mezo --loss lm 1e-05"
    )
    assert sst2.endswith(f"[the study's lr: {chosen}]")  # used without --lr
    rte = next(line for line in lines if line.startswith("rte "))
    assert rte.endswith("[the study's lr: agzo 0.0001]")


def test_ctrl_c_then_resume_from_the_command_line(
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "run"
    original = CandidateScorer.loss
    calls = {"n": 0}

    def loss(self: CandidateScorer, batch: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 5:  # step 3's unperturbed pass
            raise KeyboardInterrupt
        return original(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(CandidateScorer, "loss", loss)
    assert main(["train", *tiny_flags(model_dir, out, steps=6)]) == 130
    err = capsys.readouterr().err
    assert "interrupted after step 2" in err
    assert f"agzo train --resume --output-dir {out}" in err
    monkeypatch.undo()
    # Only the directory is needed: the saved config is the base of a resumed run.
    assert main(["train", "--resume", "--output-dir", str(out), "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 6


def test_sigterm_saves_a_checkpoint_and_resume_finishes_the_run(
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`kill` (or a scheduler's time limit) mid-step: the step completes, a checkpoint is
    saved, and --resume reaches the weights of an uninterrupted run."""
    out, uninterrupted = tmp_path / "run", tmp_path / "whole"
    assert main(["train", *tiny_flags(model_dir, uninterrupted, steps=6), "--quiet"]) == 0
    original = CandidateScorer.loss
    calls = {"n": 0}

    def loss(self: CandidateScorer, batch: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 5:  # inside step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(CandidateScorer, "loss", loss)
    assert main(["train", *tiny_flags(model_dir, out, steps=6)]) == 130
    err = capsys.readouterr().err
    assert "SIGTERM: finishing" in err and "interrupted after step 3" in err
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    assert main(["train", "--resume", "--output-dir", str(out), "--quiet"]) == 0
    summaries = [json.loads((d / "summary.json").read_text()) for d in (out, uninterrupted)]
    assert summaries[0]["final"] == summaries[1]["final"]


# --------------------------------------------------------------------------- errors


def run_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("agzo: error: ") or lines[0].startswith("agzo")
    assert "Traceback" not in captured.err
    return lines[0]


CUSTOM = ["--task", "custom", "--template", "{text}", "--labels", "0=bad,1=good"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--task", "sst-9"], "unknown task 'sst-9'"),
        (
            ["--optimizer", "adam"],
            "unknown optimizer 'adam' (did you mean 'fo-adamw'?); choose one of agzo, mezo",
        ),
        (["--optimizer", "mezo", "--rank", "4"], "--rank is not a setting of optimizer 'mezo'"),
        (["--optimizer", "fo-sgd", "--power-steps", "2"], "--power-steps is not a setting"),
        (["--lr", "0"], "lr must be > 0"),
        (["--lr", "fast"], "lr must be a number, got 'fast'"),
        (["--steps", "0"], "steps must be >= 1"),
        (["--lr-schedule", "step"], "unknown --lr-schedule 'step'; choose one of constant, linear"),
        (["--steps", "10", "--warmup-steps", "11"], "--warmup-steps must be between 0 and --steps"),
        (["--rnak", "2"], "unrecognized arguments: --rnak 2"),
        (["--task", "custom"], "--task custom needs --data-file"),
        (["--data-file", "x.jsonl"], "--data-file only apply to --task custom"),
        (
            [
                "--task",
                "custom",
                "--data-file",
                "x.jsonl",
                "--template",
                "{text}",
                "--labels",
                "0=",
            ],
            "bad label spec item '0='",
        ),
        (["--resume"], "--resume needs --output-dir"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert expected in run_error(["train", *args], capsys)


def test_bad_data_and_paths_exit_2(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    base = ["train", "--model", str(model_dir), "--output-dir", out, "--quiet"]

    missing = str(tmp_path / "missing.jsonl")
    message = run_error([*base, *CUSTOM, "--data-file", missing], capsys)
    assert "missing.jsonl does not exist" in message

    wrong_column = write_jsonl(tmp_path / "sentences.jsonl", reviews(30, text_field="sentence"))
    message = run_error([*base, *CUSTOM, "--data-file", str(wrong_column)], capsys)
    assert "missing field 'text'" in message and "sentence" in message

    tiny = write_jsonl(tmp_path / "two.jsonl", reviews(2))
    message = run_error([*base, *CUSTOM, "--data-file", str(tiny)], capsys)
    assert "split is empty" in message

    labels = write_jsonl(tmp_path / "labels.jsonl", reviews(30))
    flags = ["--task", "custom", "--template", "{text}", "--labels", "0=bad,2=good"]
    message = run_error([*base, *flags, "--data-file", str(labels)], capsys)
    assert "label 1" in message and "not one of the --labels values" in message

    message = run_error(
        ["train", "--model", str(tmp_path / "no-model"), "--output-dir", out], capsys
    )
    assert "no-model" in message and "does not exist" in message

    assert not Path(out).exists()  # failed starts leave nothing behind

    message = run_error(["eval", "--model", "./nowhere/model", "--n-test", "4"], capsys)
    assert "does not exist" in message

    message = run_error(["train", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert "config file" in message and "does not exist" in message
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("learning_rate: 0.1\n")
    message = run_error(["train", "--config", str(bad_key)], capsys)
    assert "unknown setting 'learning_rate'" in message


def test_output_dir_and_resume_errors_exit_2(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["train", *tiny_flags(model_dir, out, steps=2)]) == 0
    message = run_error(["train", *tiny_flags(model_dir, out, steps=2)], capsys)
    assert "is not empty; pass --resume" in message
    message = run_error(["train", "--resume", "--output-dir", str(out), "--lr", "0.5"], capsys)
    assert "cannot resume" in message and "differs from the saved one in lr" in message
    empty = tmp_path / "empty"
    message = run_error(["train", "--resume", "--output-dir", str(empty)], capsys)
    assert "nothing to resume" in message
    assert not empty.exists()  # a failed start creates nothing
