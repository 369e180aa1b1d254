"""--objective metric: zeroth-order steps on minus the task's own metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agzo.cli import main

# A metric is a step function of the weights: many probes leave it unchanged, which the
# optimizer reports as a vanished perturbation. That is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:the perturbed loss equals")


def write_qa(tmp_path: Path, n: int = 30) -> Path:
    rows = [{"question": f"what is {i}", "answer": str(i)} for i in range(n)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def common(model_dir: Path, out: Path) -> list[str]:
    return ["--model", str(model_dir), "--steps", "2", "--batch-size", "4", "--n-train", "12",
            "--n-dev", "4", "--n-test", "4", "--eval-every", "2", "--no-tensorboard",
            "--output-dir", str(out), "--quiet", "--objective", "metric"]  # fmt: skip


def train_losses(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r.get("split") == "train"]


def test_generative_metric_objective_logs_minus_f1(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    task = ["--task", "custom", "--data-file", str(write_qa(tmp_path)), "--template",
            "Question: {question}\\nAnswer:", "--answer-field", "answer",
            "--max-new-tokens", "3", "--optimizer", "mezo"]  # fmt: skip
    assert main(["train", *common(model_dir, out), *task]) == 0
    losses = train_losses(out)
    assert len(losses) == 2 and all(-1.0 <= loss <= 0.0 for loss in losses)


def test_classification_metric_objective_logs_minus_accuracy(
    model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    task = ["--task", "synthetic-sentiment", "--optimizer", "agzo"]
    assert main(["train", *common(model_dir, out), *task]) == 0
    # Minus the accuracy of 4 examples: a multiple of 1/4 in [-1, 0].
    assert all(loss * 4 == round(loss * 4) and -1 <= loss <= 0 for loss in train_losses(out))


def test_metric_objective_needs_a_zeroth_order_method(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--objective", "metric", "--optimizer", "fo-adamw"]
    assert main(argv) == 2
    assert "--objective metric needs a zeroth-order optimizer" in capsys.readouterr().err
