"""benchmarks/gradient_signal.py: the task's share of a batch gradient, by pairs of batches."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import torch

from agzo.probes.alignment import true_gradient
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
    texts = ["the movie was fine", "a good film", "bad acting", "the plot", "good good", "bad"]
    return scorer, [Example(f"Review: {t}\nSentiment:", words, i % 2) for i, t in enumerate(texts)]


def flat(gradient: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.double().flatten() for g in gradient])


def test_both_gradients_from_one_forward_are_each_losss_own() -> None:
    scorer, examples = scorer_and_examples()
    labels = torch.tensor([e.label for e in examples])
    shifts = [torch.zeros(2, dtype=torch.float64), torch.tensor([0.0, 0.7], dtype=torch.float64)]
    together = gradient_signal.batch_gradients(scorer, examples, shifts)
    params = [p for p in scorer.model.parameters() if p.requires_grad]
    for shift, gradient in zip(shifts, together):

        def loss(shift: torch.Tensor = shift) -> torch.Tensor:
            scores = scorer.scores_and_losses(scorer.batch(examples)).scores.double()
            return prior_floor.candidates_loss(scores, labels, shift)

        alone = true_gradient(scorer.model, loss)
        for p, g in zip(params, gradient):
            torch.testing.assert_close(g, alone[id(p)])
    assert not torch.allclose(flat(together[0]), flat(together[1]))


def test_pair_sums_give_the_mean_over_distinct_pairs() -> None:
    vectors = [torch.randn(5, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    sums = gradient_signal.PairSums()
    for v in vectors:
        sums.add([v[:2].clone(), v[2:].clone()])  # a gradient of two tensors
    pairs = [float(a @ b) for a, b in itertools.permutations(vectors, 2)]
    squares = [float(v @ v) for v in vectors]
    figures = sums.figures()
    assert figures["signal"] == pytest.approx(sum(pairs) / len(pairs), rel=1e-5, abs=1e-6)
    assert figures["mean_squared_norm"] == pytest.approx(sum(squares) / 4, rel=1e-6)
    assert figures["noise"] == pytest.approx(figures["mean_squared_norm"] - figures["signal"])
    # Merged halves give what one sum over all four gives.
    first, second = gradient_signal.PairSums(), gradient_signal.PairSums()
    for v in vectors[:2]:
        first.add([v[:2].clone(), v[2:].clone()])
    for v in vectors[2:]:
        second.add([v[:2].clone(), v[2:].clone()])
    first.merge(second)
    assert first.figures() == pytest.approx(figures)
    with pytest.raises(ValueError, match="two batches"):
        gradient_signal.PairSums().figures()


def test_measure_over_groups_and_all_pairs() -> None:
    scorer, examples = scorer_and_examples()
    batches = [examples[i : i + 2] for i in (0, 2, 4, 1)]
    shifts = {"as_is": torch.zeros(2, dtype=torch.float64)}
    result = gradient_signal.measure(scorer, batches, shifts, groups=2, say=lambda _: None)
    gradients = [flat(gradient_signal.batch_gradients(scorer, b, [shifts["as_is"]])[0])
                 for b in batches]  # fmt: skip
    every = [float(a @ b) for a, b in itertools.permutations(gradients, 2)]
    assert result["as_is"]["signal"] == pytest.approx(sum(every) / len(every), rel=1e-4)
    first_group = float(gradients[0] @ gradients[1])
    assert result["as_is"]["groups"][0]["signal"] == pytest.approx(first_group, rel=1e-4)
    assert result["as_is"]["batches"] == 4


def test_script_runs_on_a_floor_and_refuses_another_tasks(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    floor = tmp_path / "floor"
    common = ["--task", "synthetic-sentiment", "--model", str(model_dir)]
    monkeypatch.setattr(sys, "argv", ["prior_floor.py", *common, "--out", str(floor)])
    prior_floor.main()
    out = tmp_path / "signal.json"
    argv = ["gradient_signal.py", *common, "--floor", str(floor / "floor.json"),
            "--batches", "4", "--batch-size", "3", "--groups", "2", "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    gradient_signal.main()
    report = json.loads(out.read_text())
    for name in gradient_signal.LOSSES:
        assert report[name]["batches"] == 4 and len(report[name]["groups"]) == 2
        assert report[name]["mean_squared_norm"] > 0
    other = json.loads((floor / "floor.json").read_text()) | {"task": "sst2"}
    (floor / "floor.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="is of"):
        gradient_signal.main()
