"""benchmarks/gradient_signal.py: a batch gradient's first-order descent of the dev loss."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from agzo.tasks.base import Example
from agzo.testing import tiny_causal_lm, tiny_tokenizer
from agzo.train.objective import CandidateScorer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gradient_signal  # noqa: E402
import prior_floor  # noqa: E402


def scorer_and_examples() -> tuple[CandidateScorer, list[Example]]:
    model = tiny_causal_lm("llama", seed=0).eval()
    scorer = CandidateScorer(model, tiny_tokenizer(), loss_kind="candidates")
    words = (" bad", " good")
    texts = ["the movie was fine", "a good film", "bad acting", "the plot", "good good"]
    return scorer, [Example(f"Review: {t}\nSentiment:", words, i % 2) for i, t in enumerate(texts)]


def test_the_mean_gradient_over_chunks_is_the_gradient_of_the_mean_loss() -> None:
    scorer, examples = scorer_and_examples()
    shift = torch.tensor([0.0, 0.7], dtype=torch.float64)
    whole = gradient_signal.loss_gradient(scorer.model, scorer, examples, shift)
    chunked = gradient_signal.mean_gradient(scorer.model, scorer, examples, shift, batch_size=2)
    assert whole.keys() == chunked.keys()
    for key in whole:
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-4, atol=1e-7)
    # The shift is part of the loss differentiated: without it, another gradient.
    unshifted = gradient_signal.loss_gradient(scorer.model, scorer, examples, torch.zeros(2))
    assert any(not torch.allclose(unshifted[key], whole[key]) for key in whole)


def test_a_batch_row_is_the_dot_product_norm_and_cosine() -> None:
    dev = {1: torch.tensor([3.0, 0.0]), 2: torch.tensor([[0.0, 4.0]])}  # norm 5
    batch = {1: torch.tensor([1.0, 1.0]), 2: torch.tensor([[1.0, 1.0]])}  # norm 2
    row = gradient_signal.batch_row(batch, dev, dev_norm=5.0)
    assert row == pytest.approx({"dot": 7.0, "norm": 2.0, "cosine": 0.7})


def test_summarize_gives_means_and_standard_errors() -> None:
    rows = [{"dot": 1.0}, {"dot": 3.0}]
    assert gradient_signal.summarize(rows) == pytest.approx({"dot": 2.0, "dot_stderr": 1.0})


def test_script_runs_on_a_floor_and_refuses_another_tasks(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    floor = tmp_path / "floor"
    common = ["--task", "synthetic-sentiment", "--model", str(model_dir), "--seeds", "0"]
    monkeypatch.setattr(sys, "argv", ["prior_floor.py", *common, "--out", str(floor)])
    prior_floor.main()
    out = tmp_path / "signal.json"
    sizes = ["--dev-examples", "6", "--batches", "2", "--batch-size", "3"]
    argv = ["gradient_signal.py", *common, "--floor", str(floor / "floor.json"), *sizes,
            "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    gradient_signal.main()
    report = json.loads(out.read_text())
    for name in ("as_is", "prior_removed"):
        row = report["by_seed"]["0"][name]
        assert len(row["batches"]) == 2 and row["dev_norm"] > 0
        assert all(-1 <= b["cosine"] <= 1 for b in row["batches"])
        assert row["dot"] == pytest.approx(sum(b["dot"] for b in row["batches"]) / 2)
    other = json.loads((floor / "floor.json").read_text()) | {"task": "sst2"}
    (floor / "floor.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="is of"):
        gradient_signal.main()
