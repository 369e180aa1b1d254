"""An interrupted evaluation continues from its journal to the results of an
uninterrupted one, and never from a journal that belongs to something else."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from agzo.cli import main
from agzo.tasks.base import Example, GenerativeExample
from agzo.testing import tiny_causal_lm
from agzo.train import evaluate_generation
from agzo.train.eval_journal import EvalJournal, examples_digest, journal_path
from agzo.train.evaluate import predict
from agzo.train.evaluate_generation import PromptEncoder, generate_answers
from agzo.train.objective import CandidateScorer

EXAMPLES = [
    Example(
        f"Review {i}: {'a fine film' if i % 2 else 'a dull film'}. It was",
        (" great", " terrible"),
        i % 2,
    )
    for i in range(10)
]
IDENTITY = {"settings": {"task": "reviews"}, "examples": examples_digest(EXAMPLES)}


def interrupt_after(calls: int, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function`, counting its calls; the call after `calls` of them raises Ctrl-C."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if wrapped.calls == calls:  # type: ignore[attr-defined]
            raise KeyboardInterrupt
        wrapped.calls += 1  # type: ignore[attr-defined]
        return function(*args, **kwargs)

    wrapped.calls = 0  # type: ignore[attr-defined]
    return wrapped


def test_an_interrupted_prediction_continues_to_the_uninterrupted_result(
    tiny_tok: PreTrainedTokenizerBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_causal_lm("llama")
    scorer = CandidateScorer(model, tiny_tok)
    whole = predict(model, scorer, EXAMPLES, batch_size=3)  # 4 batches: 3, 3, 3, 1
    path = tmp_path / "eval.test.progress.jsonl"
    score = scorer.scores_and_losses

    monkeypatch.setattr(scorer, "scores_and_losses", interrupt_after(2, score))
    with EvalJournal(path, IDENTITY) as journal, pytest.raises(KeyboardInterrupt):
        predict(model, scorer, EXAMPLES, batch_size=3, journal=journal)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"identity": IDENTITY} and len(lines) == 3  # two batches

    counting = interrupt_after(99, score)
    monkeypatch.setattr(scorer, "scores_and_losses", counting)
    with EvalJournal(path, IDENTITY) as journal:
        assert len(journal.rows) == 6
        continued = predict(model, scorer, EXAMPLES, batch_size=3, journal=journal)
    assert counting.calls == 2  # type: ignore[attr-defined]  # only the batches it lacked
    assert continued == whole  # predictions, scores and losses to the last bit
    # Not vacuous: the examples' scores differ, so mixed-up rows would show.
    assert len({tuple(row) for row in whole.scores}) > 1


def test_an_interrupted_generation_continues_to_the_uninterrupted_result(
    tiny_tok: PreTrainedTokenizerBase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_causal_lm("llama")
    scorer = CandidateScorer(model, tiny_tok)
    examples = [
        GenerativeExample(f"Question: what is {i}?\nAnswer:", answers=(str(i),)) for i in range(5)
    ]

    def run(journal: EvalJournal | None = None) -> evaluate_generation.Generations:
        encoder = PromptEncoder(scorer, max_new_tokens=3)
        return generate_answers(model, scorer, encoder, examples, batch_size=2, journal=journal)

    whole = run()
    path = tmp_path / "qa.test.progress.jsonl"
    generate = evaluate_generation.greedy_generate
    monkeypatch.setattr(evaluate_generation, "greedy_generate", interrupt_after(1, generate))
    with EvalJournal(path, IDENTITY) as journal, pytest.raises(KeyboardInterrupt):
        run(journal)
    counting = interrupt_after(99, generate)
    monkeypatch.setattr(evaluate_generation, "greedy_generate", counting)
    with EvalJournal(path, IDENTITY) as journal:
        assert run(journal) == whole
    assert counting.calls == 2  # type: ignore[attr-defined]  # of the 3 batches


def test_a_journal_for_other_settings_starts_over_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "eval.test.progress.jsonl"
    with EvalJournal(path, IDENTITY) as journal:
        journal.record([0, 1], [[0, [-1.0, -2.0], 0.3], [1, [-2.0, -1.0], 0.4]])
    notes: list[str] = []
    other = {**IDENTITY, "settings": {"task": "reviews", "seed": 1}}
    with EvalJournal(path, other, note=notes.append) as journal:
        assert journal.rows == {}
    assert notes == [f"note: {path} was written for other settings; starting over"]
    assert path.read_text().splitlines() == [json.dumps({"identity": other})]


def test_a_line_cut_off_mid_write_is_dropped_and_appends_stay_whole(tmp_path: Path) -> None:
    path = tmp_path / "eval.test.progress.jsonl"
    with EvalJournal(path, IDENTITY) as journal:
        journal.record([4, 7], [[1, [-0.5, -0.25], 0.1], [0, [-0.75, -1.5], 0.2]])
    with path.open("a") as file:
        file.write('{"batch": [[2, [0, [-0.5')  # what a kill mid-write leaves
    with EvalJournal(path, IDENTITY) as journal:
        assert journal.rows == {4: [1, [-0.5, -0.25], 0.1], 7: [0, [-0.75, -1.5], 0.2]}
        assert journal.recorded([7, 4]) == [[0, [-0.75, -1.5], 0.2], [1, [-0.5, -0.25], 0.1]]
        assert journal.recorded([4, 2]) is None
        journal.record([2], [[1, [-3.0, -0.5], 0.9]])
    with EvalJournal(path, IDENTITY) as journal:
        assert set(journal.rows) == {2, 4, 7}


def test_agzo_eval_continues_after_an_interruption_and_removes_its_journal(
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    flags = ["--model", str(model_dir), "--task", "synthetic-compare", "--n-train", "8"]
    flags += ["--n-test", "6", "--demonstrations", "2", "--batch-size", "2"]
    reference, output = tmp_path / "whole.json", tmp_path / "icl.json"
    assert main(["eval", *flags, "--output", str(reference), "--quiet"]) == 0
    assert not journal_path(reference, "test").exists()

    score = CandidateScorer.scores_and_losses
    monkeypatch.setattr(CandidateScorer, "scores_and_losses", interrupt_after(1, score))
    assert main(["eval", *flags, "--output", str(output)]) == 130
    assert "run the same command again to continue" in capsys.readouterr().err
    assert journal_path(output, "test").is_file() and not output.exists()

    counting = interrupt_after(99, score)
    monkeypatch.setattr(CandidateScorer, "scores_and_losses", counting)
    assert main(["eval", *flags, "--output", str(output)]) == 0
    assert f"test: continuing, 2 of 6 examples scored in {journal_path(output, 'test')}" in (
        capsys.readouterr().out
    )
    assert counting.calls == 2  # type: ignore[attr-defined]  # batches 2 and 3 of 3
    assert json.loads(output.read_text())["results"] == json.loads(reference.read_text())["results"]
    assert not journal_path(output, "test").exists()


def test_the_journal_is_named_after_the_output_and_split() -> None:
    assert journal_path(Path("runs/icl32-seed0.json"), "test") == Path(
        "runs/icl32-seed0.test.progress.jsonl"
    )
