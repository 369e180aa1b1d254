"""Custom generative tasks from a person's own files: question/answer records and chat
conversations, trained and evaluated with one command; bad records fail with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agzo.cli import main
from agzo.models import save_model
from agzo.tasks import load_splits
from agzo.tasks.base import Example, GenerativeExample
from agzo.tasks.chat import render_example
from agzo.tasks.custom_generative import custom_generative_task, protected_tail
from agzo.testing import tiny_causal_lm, tiny_tokenizer

# A minimal chat template in the style of ChatML (SmolLM2-Instruct's format).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def chat_tokenizer():  # type: ignore[no-untyped-def]
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-chat"
    save_model(tiny_causal_lm("llama", seed=0), chat_tokenizer(), path)
    return path


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def qa_rows(n: int) -> list[dict[str, object]]:
    return [
        {"question": f"what is {i} plus one", "answer": [str(i + 1), f"n{i}"]} for i in range(n)
    ]


def chat_rows(n: int) -> list[dict[str, object]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Say {i}"},
                {"role": "assistant", "content": f"{i}"},
            ]
        }
        for i in range(n)
    ]


def flags(model_dir: Path, out: Path) -> list[str]:
    return [
        "--model", str(model_dir), "--steps", "2", "--batch-size", "4", "--n-train", "12",
        "--n-dev", "4", "--n-test", "4", "--eval-every", "1", "--max-new-tokens", "4",
        "--no-tensorboard", "--output-dir", str(out), "--quiet",
    ]  # fmt: skip


# --------------------------------------------------------------------------- reading


def test_answer_field_holds_one_answer_or_a_list(tmp_path: Path) -> None:
    rows = [{"q": "one", "a": "x"}, {"q": "two", "a": ["y", "z"]}, {"q": "three", "a": 4}]
    task = custom_generative_task(write_jsonl(tmp_path / "qa.jsonl", rows), "Q: {q}\\nA:", "a")
    splits = load_splits(task, seed=0, n_train=1, n_dev=1, n_test=1)
    answers = {e.prompt: e.answers for e in (*splits.train, *splits.dev, *splits.test)}
    assert answers == {"Q: one\nA:": ("x",), "Q: two\nA:": ("y", "z"), "Q: three\nA:": ("4",)}
    assert task.metric == "f1"


def test_truncation_keeps_the_line_of_the_last_placeholder() -> None:
    assert protected_tail("Context: {c}\nQuestion: {q}\nAnswer:") == "Question: {q}\nAnswer:"


def test_chat_rendering_puts_the_loss_on_the_assistant_turn_only(tmp_path: Path) -> None:
    task = custom_generative_task(write_jsonl(tmp_path / "chats.jsonl", chat_rows(3)))
    example = load_splits(task, seed=0, n_train=1, n_dev=1, n_test=1).test[0]
    assert isinstance(example, GenerativeExample) and example.messages is not None
    rendered = render_example(example, chat_tokenizer())
    assert isinstance(rendered, GenerativeExample)
    assert rendered.prompt.startswith("<|system|>Be brief.</s>\n<|user|>Say")
    assert rendered.prompt.endswith("<|assistant|>")
    # The target is the answer and the end of its turn: nothing of the user's turns.
    assert rendered.target == f"{example.answers[0]}</s>\n"
    assert rendered.stop_marker == "</s>"


def test_chat_template_on_a_classification_prompt() -> None:
    example = Example("Review: good\nSentiment:", (" negative", " positive"), 1)
    rendered = render_example(example, chat_tokenizer())
    assert rendered.prompt == "<|user|>Review: good\nSentiment:</s>\n<|assistant|>"
    assert rendered.candidates == ("negative", "positive") and rendered.label == 1


# --------------------------------------------------------------------------- end to end


def test_question_answer_jsonl_trains_and_reports_f1(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(30))
    out = tmp_path / "run"
    custom = ["--task", "custom", "--data-file", str(data), "--template",
              "Question: {question}\\nAnswer:", "--answer-field", "answer"]  # fmt: skip
    assert main(["train", *flags(model_dir, out), *custom]) == 0
    assert "test f1: zero-shot" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "f1" and {"f1", "em"} <= set(summary["final"]["test"])
    lines = (out / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 4 and {"gold", "generated", "f1", "em"} <= set(json.loads(lines[0]))
    assert (out / "generations-zero-shot.jsonl").is_file()


def test_chat_jsonl_trains_and_evaluates(
    chat_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", chat_rows(30))
    out = tmp_path / "run"
    assert main(["train", *flags(chat_model_dir, out), "--task", "custom", "--data-file",
                 str(data)]) == 0  # fmt: skip
    record = json.loads((out / "generations.jsonl").read_text().splitlines()[0])
    assert record["prompt"].endswith("<|assistant|>")
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--quiet"]) == 0
    assert "f1" in capsys.readouterr().out


def test_chat_data_needs_a_chat_template(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_jsonl(tmp_path / "chats.jsonl", chat_rows(30))
    out = tmp_path / "run"
    assert (
        main(["train", *flags(model_dir, out), "--task", "custom", "--data-file", str(data)]) == 2
    )
    assert "has no chat template" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- bad input

BAD_RECORDS = [
    ({"question": "q"}, ["--template", "{question}", "--answer-field", "answer"],
     "missing field 'answer'"),
    ({"question": "q", "answer": []}, ["--template", "{question}", "--answer-field", "answer"],
     "empty answer"),
    ({"question": "q", "answer": ""}, ["--template", "{question}", "--answer-field", "answer"],
     "empty answer"),
    ({"messages": [{"role": "user", "content": "hi"}]}, [], "has no assistant turn"),
    ({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     [], "unknown role 'robot'"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "task_flags", "expected"), BAD_RECORDS)
def test_bad_records_exit_2_with_one_line_and_touch_nothing(
    bad: dict[str, object],
    task_flags: list[str],
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [bad, *(qa_rows(20) if task_flags else chat_rows(20))]
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier run")
    argv = ["train", "--task", "custom", "--data-file", str(data), *task_flags,
            "--model", "nowhere-to-be-loaded", "--output-dir", str(out / "new")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "data.jsonl, line 1" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_prompt_too_long_even_after_truncation_exits_2(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"context": "word " * 50, "question": "which word " * 20, "answer": "w"}] * 1
    rows += [{"context": f"c{i}", "question": f"q{i}", "answer": "a"} for i in range(20)]
    data = write_jsonl(tmp_path / "qa.jsonl", rows)
    argv = ["train", *flags(model_dir, tmp_path / "run"), "--task", "custom", "--data-file",
            str(data), "--template", "Context: {context}\\nQuestion: {question}\\nAnswer:",
            "--answer-field", "answer", "--max-length", "120", "--n-train", "19",
            "--n-dev", "1", "--n-test", "1"]  # fmt: skip
    assert main(argv) == 2
    assert "does not fit even after truncation" in capsys.readouterr().err
