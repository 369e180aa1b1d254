"""benchmarks/icl_shots.py: what the in-context answers follow, as demonstrations grow."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from agzo.tasks.base import Example
from agzo.tasks.demonstrations import SEPARATOR, demonstration_draws, with_demonstrations

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import icl_shots  # noqa: E402

WORDS = (" negative", " positive")


def labelled(label: int, text: str = "x") -> Example:
    return Example(f"Review: {text}\nSentiment:", WORDS, label)


def test_draws_are_the_demonstrations_shown_in_order() -> None:
    pool = [labelled(i % 2, f"p{i}") for i in range(10)]
    targets = [labelled(0, f"t{i}") for i in range(5)]
    shown = with_demonstrations(targets, pool, k=3, seed=4)
    draws = demonstration_draws(len(targets), len(pool), k=3, seed=4)
    for example, draw in zip(shown, draws):
        blocks = example.prompt.split(SEPARATOR)
        assert blocks[:-1] == [pool[i].prompt + WORDS[pool[i].label] for i in draw]
    # A prefix of the list gets the draws the whole list gets.
    assert demonstration_draws(2, len(pool), 3, 4) == draws[:2]


def test_summary_counts_answers_recency_majority_and_the_removed_shift() -> None:
    examples = [labelled(y) for y in (0, 1, 1, 1)]
    predicted = [0, 0, 0, 1]
    # The scores lean to "negative": three answers are "negative", one of them right.
    scores = [[-1.0, -3.0], [-1.0, -1.5], [-1.0, -1.2], [-2.0, -1.0]]
    shown = [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]]
    row = icl_shots.summary(examples, predicted, scores, shown)
    assert row["accuracy"] == 0.5
    assert row["answer_share"] == {"negative": 0.75, "positive": 0.25}
    # Last labels 0, 0, 0, 1: the answer is the last label every time; it is right twice.
    assert row["follows_last"] == 1.0 and row["last_is_right"] == 0.5
    # Majorities 0, 0, 1, 0: answers 0, 0, 0, 1 agree on the first two.
    assert row["follows_majority"] == 0.5
    assert row["shown_share"] == {"negative": 7 / 12, "positive": 5 / 12}
    # Mean scores (-1.25, -1.675) removed, negative minus positive: 1.575, 0.075, -0.225,
    # -1.425, so the answers become 0, 0, 1, 1: three right.
    assert row["shift_removed_accuracy"] == 0.75


def test_summary_without_demonstrations_and_with_tied_ones() -> None:
    examples = [labelled(0), labelled(1)]
    row = icl_shots.summary(examples, [0, 1], [[0.0, -1.0], [-1.0, 0.0]], [[], []])
    assert row["accuracy"] == 1.0 and "follows_last" not in row
    tied = icl_shots.summary(examples, [0, 1], [[0.0, -1.0], [-1.0, 0.0]], [[0, 1], [1, 0]])
    assert tied["follows_majority"] is None  # every draw ties


def test_script_scores_each_count_and_continues_from_its_journal(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "shots"
    argv = ["icl_shots.py", "--task", "synthetic-sentiment", "--model", str(model_dir),
            "--shots", "0,2", "--examples", "6", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    icl_shots.main()
    first = json.loads((out / "shots.json").read_text())
    assert list(first["by_shots"]) == ["0", "2"] and first["test_examples"] == 6
    assert first["by_shots"]["2"]["continued_from"] == 0
    assert len((out / "k2.jsonl").read_text().splitlines()) > 1  # identity, then batches
    icl_shots.main()  # again: every example comes from the journals
    again = json.loads((out / "shots.json").read_text())
    assert again["by_shots"]["2"]["continued_from"] == 6
    for k in ("0", "2"):
        assert again["by_shots"][k]["accuracy"] == first["by_shots"][k]["accuracy"]


def test_flipped_demonstrations_show_the_next_candidate() -> None:
    assert icl_shots.flipped(labelled(0)).label == 1
    assert icl_shots.flipped(labelled(1)).label == 0
    three = Example("Premise\nAnswer:", (" Yes", " No", " Maybe"), 2)
    assert icl_shots.flipped(three).label == 0
    assert icl_shots.flipped(three).prompt == three.prompt
