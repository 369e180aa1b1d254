"""benchmarks/prior_floor.py: the dev loss a shift of the label prior alone reaches."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest
import torch

from agzo.tasks.base import Example

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import prior_floor  # noqa: E402

WORDS = (" Yes", " No", " Maybe")


def drawn_scores(n: int, seed: int, prior: list[float]) -> tuple[list[list[float]], list[int]]:
    """Scores that rank the label first more often than not, moved by `prior`."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(prior), (n,), generator=generator)
    scores = torch.randn(n, len(prior), generator=generator, dtype=torch.float64)
    scores[torch.arange(n), labels] += 1.0
    return (scores + torch.tensor(prior, dtype=torch.float64)).tolist(), labels.tolist()


def test_the_fitted_shift_matches_predicted_shares_to_label_shares() -> None:
    scores, labels = drawn_scores(300, seed=1, prior=[0.0, 1.5, -0.7])
    shift = prior_floor.fit_shift(scores, labels)
    assert shift[0] == 0.0
    # The loss's gradient in the shift is the mean predicted probability minus the label
    # share: zero at the optimum, candidate by candidate.
    shifted = torch.tensor(scores, dtype=torch.float64) + torch.tensor(shift, dtype=torch.float64)
    probabilities = torch.softmax(shifted, dim=1).mean(0)
    shares = torch.bincount(torch.tensor(labels), minlength=3).double() / len(labels)
    assert torch.allclose(probabilities, shares, atol=1e-7)


def test_the_shift_undoes_a_planted_prior_and_lowers_the_loss() -> None:
    fair, labels = drawn_scores(4000, seed=2, prior=[0.0, 0.0, 0.0])
    tilted = [[s + p for s, p in zip(row, [0.0, 2.0, -1.0])] for row in fair]
    fitted_fair = prior_floor.fit_shift(fair, labels)
    fitted_tilted = prior_floor.fit_shift(tilted, labels)
    # Whatever the fair scores' own best shift, the tilt comes off on top of it exactly.
    assert fitted_tilted == pytest.approx(
        [f + t for f, t in zip(fitted_fair, [0.0, -2.0, 1.0])], abs=1e-6
    )
    table, target = torch.tensor(tilted, dtype=torch.float64), torch.tensor(labels)
    untouched = prior_floor.candidates_loss(table, target, torch.zeros(3, dtype=torch.float64))
    shifted = prior_floor.candidates_loss(
        table, target, torch.tensor(fitted_tilted, dtype=torch.float64)
    )
    assert shifted < untouched - 0.5


def test_a_candidate_never_the_label_has_no_best_shift() -> None:
    with pytest.raises(ValueError, match=r"candidates \[2\] are never the label"):
        prior_floor.fit_shift([[0.0, 1.0, 2.0], [1.0, 0.0, 2.0]], [0, 1])


def test_split_figures_before_and_after_the_shift() -> None:
    examples = [Example("p", WORDS[:2], y) for y in (0, 0, 1, 1)]
    # Every example leans to " No" by 1; ranked among themselves the labels are right.
    scores = [[0.0, 0.5], [0.0, 0.8], [0.0, 1.5], [0.0, 2.0]]
    figures = prior_floor.split_figures(examples, scores, [0.0, -1.2])
    assert figures["zero_shot"]["accuracy"] == 0.5
    assert figures["zero_shot"]["answer_share"] == {"Yes": 0.0, "No": 1.0}
    assert figures["shifted"]["accuracy"] == 1.0
    assert figures["label_share"] == {"Yes": 0.5, "No": 0.5}
    expected = torch.nn.functional.cross_entropy(torch.tensor(scores), torch.tensor([0, 0, 1, 1]))
    assert figures["zero_shot"]["loss"] == pytest.approx(expected.item())


def write_run(record: Path, name: str, loss: str, dev: list[tuple[float, float]]) -> None:
    folder = record / "runs" / name
    folder.mkdir(parents=True)
    summary = {"config": {"loss": loss}, "final": {"test": {"accuracy": 0.6}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    rows = [{"split": "dev", "step": 10 * i, "loss": loss, "accuracy": a}
            for i, (loss, a) in enumerate(dev)]  # fmt: skip
    with gzip.open(folder / "metrics.jsonl.gz", "wt") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)


def test_study_runs_reads_each_seeds_candidates_runs(tmp_path: Path) -> None:
    write_run(tmp_path, "agzo-lr1e-05-seed0", "candidates", [(0.8, 0.5), (0.6, 0.7), (0.7, 0.6)])
    write_run(tmp_path, "agzo-lr1e-05-seed1", "candidates", [(0.8, 0.5)])
    write_run(tmp_path, "agzo-lm-lr1e-05-seed0", "lm", [(2.0, 0.5)])
    runs = prior_floor.study_runs(tmp_path, seed=0, floor=0.75)
    expected = {"lowest_dev_loss": 0.6, "step_at_floor": 10, "best_dev_accuracy": 0.7,
                "test_accuracy": 0.6}  # fmt: skip
    assert runs == {"agzo-lr1e-05-seed0": expected}
    never = prior_floor.study_runs(tmp_path, seed=0, floor=0.5)
    assert never["agzo-lr1e-05-seed0"]["step_at_floor"] is None


def test_script_scores_fits_and_continues_from_its_journals(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "floor"
    argv = ["prior_floor.py", "--task", "synthetic-sentiment", "--model", str(model_dir),
            "--seeds", "0,1", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    prior_floor.main()
    first = json.loads((out / "floor.json").read_text())
    assert list(first["by_seed"]) == ["0", "1"]
    for row in first["by_seed"].values():
        assert row["dev"]["shifted"]["loss"] <= row["dev"]["zero_shot"]["loss"]
    journals = {p.name: p.read_text() for p in out.glob("*.jsonl")}
    assert sorted(journals) == ["seed0-dev.jsonl", "seed0-test.jsonl", "seed1-dev.jsonl",
                                "seed1-test.jsonl"]  # fmt: skip
    prior_floor.main()  # again: every score comes from the journals, none is added
    assert json.loads((out / "floor.json").read_text()) == first
    assert {p.name: p.read_text() for p in out.glob("*.jsonl")} == journals
