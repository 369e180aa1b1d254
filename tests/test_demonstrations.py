"""The in-context baseline: k solved training examples before each prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agzo.cli import main
from agzo.tasks.base import Example, GenerativeExample
from agzo.tasks.demonstrations import with_demonstrations

POOL = [GenerativeExample(f"Question: q{i}?\nAnswer:", answers=(f"a{i}",)) for i in range(6)]


def test_demonstrations_are_solved_training_examples_drawn_with_the_seed() -> None:
    target = GenerativeExample("Question: who?\nAnswer:", answers=("me",), keep="Question: who?")
    (shown,) = with_demonstrations([target], POOL, k=2, seed=0)
    assert isinstance(shown, GenerativeExample)
    blocks = shown.prompt.split("\n\n")
    assert len(blocks) == 3 and blocks[-1] == target.prompt
    for block in blocks[:2]:
        i = block.removeprefix("Question: q")[0]
        assert block == f"Question: q{i}?\nAnswer: a{i}"  # template + its answer
    assert shown.answers == ("me",) and shown.keep == "Question: who?"
    assert with_demonstrations([target], POOL, k=2, seed=0) == [shown]
    others = {with_demonstrations([target], POOL, k=2, seed=s)[0].prompt for s in range(8)}
    assert len(others) > 1  # the seed changes the draw


def test_classification_demonstrations_show_the_correct_label_word() -> None:
    pool = [Example("Review: fine\nSentiment:", (" negative", " positive"), 1)]
    target = Example("Review: awful\nSentiment:", (" negative", " positive"), 0)
    (shown,) = with_demonstrations([target], pool, k=1, seed=3)
    assert shown.prompt == "Review: fine\nSentiment: positive\n\nReview: awful\nSentiment:"
    assert shown.candidates == target.candidates and shown.label == 0


def test_chat_demonstrations_become_earlier_turns() -> None:
    shot = GenerativeExample("x", answers=("4",), messages=(("system", "S"), ("user", "2+2?")))
    target = GenerativeExample("y", answers=("6",), messages=(("system", "S"), ("user", "3+3?")))
    (shown,) = with_demonstrations([target], [shot], k=1, seed=0)
    assert isinstance(shown, GenerativeExample)
    assert shown.messages == (("system", "S"), ("user", "2+2?"), ("assistant", "4"),
                              ("user", "3+3?"))  # fmt: skip


def qa_file(tmp_path: Path, n: int = 30) -> Path:
    rows = [{"question": f"what is {i}", "answer": str(i)} for i in range(n)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def qa_flags(tmp_path: Path) -> list[str]:
    return ["--task", "custom", "--data-file", str(qa_file(tmp_path)), "--template",
            "Question: {question}\\nAnswer:", "--answer-field", "answer", "--n-train", "10",
            "--n-dev", "4", "--n-test", "4", "--max-new-tokens", "3", "--quiet"]  # fmt: skip


def test_eval_with_demonstrations_reports_and_writes_them(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "icl.jsonl"
    argv = ["eval", "--model", str(model_dir), *qa_flags(tmp_path), "--demonstrations", "2",
            "--predictions", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert "f1" in capsys.readouterr().out
    prompts = [json.loads(line)["prompt"] for line in out.read_text().splitlines()]
    assert len(prompts) == 4 and all(p.count("\nAnswer:") == 3 for p in prompts)


def test_demonstrations_beyond_the_training_pool_exit_2(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "--model", "not-loaded", *qa_flags(tmp_path), "--demonstrations", "11"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--demonstrations 11 is larger than the training pool (10 examples)" in err


def test_a_training_run_reports_the_in_context_baseline_beside_zero_shot(
    model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--model", str(model_dir), *qa_flags(tmp_path), "--demonstrations", "1",
            "--steps", "1", "--batch-size", "2", "--no-tensorboard",
            "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    zero_shot = json.loads((out / "summary.json").read_text())["zero_shot"]
    assert set(zero_shot) == {"dev", "test", "icl_test"} and "f1" in zero_shot["icl_test"]
