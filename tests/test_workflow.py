"""The workflow as a new user meets it: output paths, relative paths, mistyped model
paths, Ctrl-C, quiet runs and resuming finished ones, all through the `agzo` command."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from tqdm.auto import tqdm

import agzo.models
import agzo.train.setup
from agzo.cli import main
from agzo.models import ModelLoadError, load_model
from agzo.tasks import Example, TaskDataError, custom_task_from_spec, load_splits
from agzo.testing import tiny_causal_lm, tiny_tokenizer
from agzo.train import ConfigError, TrainConfig, TrainingInterrupted, train
from agzo.train.evaluate import Predictions
from agzo.train.report import class_report
from agzo.train.setup import Printer, load_run
from tests.test_cli import reviews, run_error, tiny_flags, write_jsonl
from tests.test_train import interrupting_loss, tiny_config, train_losses


def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any model load fail the test: the errors below must come before it."""

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(agzo.train.setup, "load_model", forbidden)


# --------------------------------------------------------------------------- output paths


@pytest.mark.parametrize("where", ["under-a-file", "/proc", "/sys"])
def test_unwritable_output_dir_fails_in_one_line_before_the_model_loads(
    where: str,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if where == "under-a-file":
        (tmp_path / "notes.txt").write_text("a file")
        out = tmp_path / "notes.txt" / "run"
    else:
        if not Path(where).is_dir():
            pytest.skip(f"no {where} here")
        out = Path(where) / "agzo-run"
    no_model_loading(monkeypatch)
    message = run_error(["train", *tiny_flags(model_dir, out)], capsys)
    assert "output directory" in message and str(out) in message
    assert not out.exists()


def test_eval_output_file_is_checked_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "notes.txt").write_text("a file")
    no_model_loading(monkeypatch)
    report = tmp_path / "notes.txt" / "eval.json"
    message = run_error(["eval", "--n-test", "4", "--output", str(report)], capsys)
    assert "--output" in message and "is a file" in message


# --------------------------------------------------------------------------- relative paths


def test_relative_paths_are_saved_absolute_for_eval_and_resume(
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "data").mkdir(parents=True)
    elsewhere.mkdir()
    write_jsonl(project / "data" / "reviews.jsonl", reviews(40))
    monkeypatch.chdir(project)
    custom = ["--task", "custom", "--data-file", "data/reviews.jsonl", "--template", "{text}"]
    custom += ["--labels", "0=bad,1=good"]
    assert main(["train", *tiny_flags(model_dir, Path("run"), steps=2), *custom]) == 0
    saved = TrainConfig.from_file(project / "run" / "config.yaml")
    assert saved.data_file == str(project / "data" / "reviews.jsonl")
    assert saved.output_dir == str(project / "run")

    monkeypatch.chdir(elsewhere)
    run_dir = str(project / "run")
    assert main(["eval", "--model", run_dir, "--quiet"]) == 0
    assert "custom test (8 examples)" in capsys.readouterr().out
    # The same file named by another path is the same run.
    data = os.path.relpath(project / "data" / "reviews.jsonl")
    resume = ["train", "--resume", "--output-dir", run_dir, "--data-file", data]
    assert main([*resume, "--steps", "3", "--quiet"]) == 0
    assert json.loads((project / "run" / "summary.json").read_text())["steps"] == 3


# --------------------------------------------------------------------------- model specs


def test_a_mistyped_local_model_path_fails_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)

    def hub(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a path was looked up on the hub")

    monkeypatch.setattr(agzo.models.AutoTokenizer, "from_pretrained", hub)
    monkeypatch.setattr(agzo.models, "hub_reachable", hub)
    started = time.perf_counter()
    message = run_error(["eval", "--model", "runs/does-not-exist", "--n-test", "4"], capsys)
    assert "'runs/does-not-exist' does not exist" in message
    assert time.perf_counter() - started < 5


def test_hub_ids_fail_fast_when_the_hub_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[dict[str, Any]] = []

    def from_pretrained(location: str, **kwargs: Any) -> None:
        asked.append(kwargs)
        raise OSError("not in the cache")

    monkeypatch.setattr(agzo.models, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(agzo.models.AutoTokenizer, "from_pretrained", from_pretrained)
    with pytest.raises(ModelLoadError, match="hub is not reachable from here"):
        load_model("someone/some-model")
    assert asked == [{"local_files_only": True}]  # the local cache only: no retries


# --------------------------------------------------------------------------- Ctrl-C


def test_the_step_finished_after_ctrl_c_is_in_every_metrics_file(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    interrupting_loss(monkeypatch, 6, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingInterrupted) as caught:
        train(tiny_config(model_dir, out, steps=6), quiet=True)
    assert caught.value.step == 3
    assert [step for step, _ in train_losses(out)] == [1, 2, 3]
    with (out / "metrics.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "train"]
    assert [row["step"] for row in rows] == ["1", "2", "3"]
    saved = (out / "checkpoints" / "step-000003" / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["split"] == "train" for line in saved) == 3


# --------------------------------------------------------------------------- quiet, resume


def test_quiet_silences_the_bars_of_the_model_loader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def loader_with_a_bar(*args: Any, **kwargs: Any) -> Any:
        for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        return tiny_causal_lm("llama"), tiny_tokenizer()

    monkeypatch.setattr(agzo.train.setup, "load_model", loader_with_a_bar)
    config = TrainConfig(task="synthetic-compare", n_train=8, n_dev=4, n_test=4)
    load_run(config, Printer(quiet=True))
    captured = capsys.readouterr()
    assert "Converting" not in captured.err + captured.out
    load_run(config, Printer(quiet=False))
    assert "Converting" in capsys.readouterr().err


def test_resuming_a_finished_run_changes_nothing_unless_steps_extend_it(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["train", *tiny_flags(model_dir, out, steps=2)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", "--output-dir", str(out), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "is finished (2 steps" in said and "--steps" in said
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main(["train", "--resume", "--output-dir", str(out), "--steps", "3", "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


# --------------------------------------------------------------------------- disk


def inode(path: Path) -> int:
    return path.stat().st_ino


def distinct_weight_files(run_dir: Path) -> int:
    return len({inode(p) for p in run_dir.rglob("*.safetensors")})


def test_identical_weights_are_stored_once(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # Dev every step with a high rate: the last step is very likely the best one, but the
    # test holds whichever step wins.
    result = train(tiny_config(model_dir, out, steps=2, eval_every=1), quiet=True)
    model_file, best = out / "model" / "model.safetensors", out / "best" / "weights.safetensors"
    assert inode(model_file) == inode(best)
    checkpoint = out / "checkpoints" / "step-000002"
    assert inode(checkpoint / "best.safetensors") == inode(best)
    if result.best_step == 2:
        assert inode(checkpoint / "weights.safetensors") == inode(best)
        assert distinct_weight_files(out) == 1
    else:
        assert distinct_weight_files(out) == 2


def test_save_final_keeps_the_last_weights_and_none_keeps_no_model(
    model_dir: Path, tmp_path: Path
) -> None:
    final = train(tiny_config(model_dir, tmp_path / "final", save_mode="final"), quiet=True)
    last = tmp_path / "final" / "checkpoints" / "step-000004" / "weights.safetensors"
    assert inode(tmp_path / "final" / "model" / "model.safetensors") == inode(last)
    assert final.summary["tested_step"] == 4

    none = tmp_path / "none"
    assert main(["train", *tiny_flags(model_dir, none), "--save", "none"]) == 0
    assert not (none / "model").exists()
    summary = json.loads((none / "summary.json").read_text())
    assert summary["model_dir"] is None
    # Without model/, `agzo eval` of the run evaluates the weights it tested (best/).
    report = tmp_path / "eval.json"
    assert main(["eval", "--model", str(none), "--output", str(report), "--quiet"]) == 0
    evaluated = json.loads(report.read_text())["results"]["test"]
    assert evaluated["accuracy"] == summary["final"]["test"]["accuracy"]
    assert abs(evaluated["loss"] - summary["final"]["test"]["loss"]) < 1e-5
    with pytest.raises(ValueError, match="unknown save mode 'all'"):
        TrainConfig(save_mode="all")


# --------------------------------------------------------------------------- split sizes


def test_an_explicit_size_is_kept_and_one_that_cannot_be_met_is_a_warning(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "sixty.jsonl", reviews(60))
    task = custom_task_from_spec(data, "{text}", "0=bad,1=good")
    splits = load_splits(task, None, seed=0, n_test=20)
    assert len(splits.test) == 20  # the default train/dev sizes shrink, not the asked one
    assert len(splits.train) + len(splits.dev) == 40 and not splits.warnings

    short = load_splits(task, None, seed=0, n_train=50, n_dev=10, n_test=20)
    assert short.warnings and "train size 50 was asked for" in short.warnings[0]

    out = tmp_path / "run"
    custom = ["--task", "custom", "--data-file", str(data), "--template", "{text}"]
    assert (
        main(["train", *tiny_flags(model_dir, out, steps=1), *custom, "--labels", "0=bad,1=good"])
        == 0
    )
    captured = capsys.readouterr()
    assert "agzo: warning: only 8 test examples" in captured.err  # even with --quiet
    assert "Only 8 test examples: one example is 12.5 points" in captured.out


# --------------------------------------------------------------------------- data files


def test_a_headerless_csv_gets_a_hint_and_columns_read_it(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text("".join(f"review {i} was fine,{i % 2}\n" for i in range(40)))
    task = custom_task_from_spec(path, "{text}", "0=bad,1=good")
    with pytest.raises(TaskDataError, match=r"missing field 'text'.*no header\? .*--columns"):
        load_splits(task, None, seed=0)
    named = custom_task_from_spec(path, "{text}", "0=bad,1=good", columns="text,label")
    splits = load_splits(named, None, seed=0, n_train=20, n_dev=5, n_test=15)
    assert sum(map(len, (splits.train, splits.dev, splits.test))) == 40  # row 1 is data too
    with pytest.raises(ConfigError, match="distinct column names separated by commas"):
        TrainConfig(task="custom", data_file="x.csv", template="{a}", labels="a,b", columns="a")


def test_a_folder_says_which_files_it_read_and_which_not(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", reviews(30))
    write_jsonl(tmp_path / "train_full.jsonl", reviews(60))
    write_jsonl(tmp_path / "test.jsonl", reviews(10))
    task = custom_task_from_spec(tmp_path, "{text}", "0=bad,1=good")
    notes = " ".join(load_splits(task, None, seed=0).notes)
    assert "read train.jsonl, test.jsonl" in notes
    assert "not read: train_full.jsonl" in notes


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_bytes(b"text,label\nfine,1\ncaf\xe9 was bad,0\n")
    task = custom_task_from_spec(path, "{text}", "0=bad,1=good")
    with pytest.raises(TaskDataError, match=r"reviews\.csv, line 3: not UTF-8 .*iconv"):
        load_splits(task, None, seed=0)


# --------------------------------------------------------------------------- messages

CUSTOM_FLAGS = ["--task", "custom", "--data-file", "x.csv", "--template", "{text}"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--n-test", "0"], "--n-test must be >= 1"),
        (["--learning-rate", "0.1"], "--learning-rate: did you mean --lr?"),
        (CUSTOM_FLAGS + ["--labels", "0:neg;1:pos"], "value=word pairs separated by commas"),
    ],
)
def test_messages_use_the_flags_a_user_typed(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert expected in run_error(["train", *args], capsys)


def test_an_unknown_setting_suggests_the_nearest_name(tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'learning_rate' \(did you mean 'lr'"):
        TrainConfig.from_file(tmp_path / "run.yaml")


# --------------------------------------------------------------------------- evaluation


def test_a_run_reports_classes_baseline_and_predictions(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(
        tmp_path / "three.jsonl", [{"text": f"review {i}", "label": i % 3} for i in range(60)]
    )
    out = tmp_path / "run"
    custom = ["--task", "custom", "--data-file", str(data), "--template", "{text} was"]
    custom += ["--labels", "0=bad,1=good,2=so so"]
    assert main(["train", *tiny_flags(model_dir, out, steps=2), *custom]) == 0
    said = capsys.readouterr().out
    assert "majority-class baseline" in said
    summary = json.loads((out / "summary.json").read_text())
    report = summary["test_report"]
    assert report["classes"] == ["bad", "good", "so so"]
    assert sum(map(sum, report["confusion"])) == 8 == sum(report["support"])
    assert report["majority_baseline"] == max(report["support"]) / 8
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    lines = (out / "predictions.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 8 and {"prompt", "label_word", "predicted_word", "scores"} <= set(first)
    accuracy = sum(json.loads(line)["correct"] for line in lines) / 8
    assert accuracy == summary["final"]["test"]["accuracy"]

    predictions = tmp_path / "eval.jsonl"
    assert main(["eval", "--model", str(out), "--predictions", str(predictions)]) == 0
    said = capsys.readouterr().out
    assert "confusion (rows: true class, columns: predicted)" in said
    assert "precision  recall" in said and "majority-class baseline" in said
    assert len(predictions.read_text().splitlines()) == 8


def test_below_the_majority_baseline_is_said(tmp_path: Path) -> None:
    examples = [Example(f"p{i}", (" a", " b"), 0 if i < 3 else 1) for i in range(4)]
    predictions = Predictions([0, 0, 0, 0], [[0.0, -1.0]] * 4, [0.1] * 4)
    report = class_report(examples, predictions)
    assert report.confusion == [[3, 0], [1, 0]]
    assert (report.precision, report.recall) == ([0.75, 0.0], [1.0, 0.0])
    assert report.majority_baseline == 0.75 and report.majority_class == "a"
    assert "NOT above the baseline" in report.baseline_line()


def test_multi_token_label_words_and_the_loss_are_announced(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "reviews.jsonl", reviews(40))
    config = tiny_config(
        model_dir,
        tmp_path / "run",
        steps=1,
        task="custom",
        data_file=str(data),
        template="{text}",
        labels="0=World News,1=good",
    )
    load_run(config, Printer(quiet=False))
    said = capsys.readouterr().out
    assert "' World News' (" in said and "span several tokens" in said
    assert "' good'" not in said.split("span several")[0]  # a single token is not listed
    assert "loss: lm (the default): cross-entropy of the correct label word" in said
    load_run(config.replace(loss="candidates"), Printer(quiet=False))
    assert "loss: candidates (chosen with --loss)" in capsys.readouterr().out
