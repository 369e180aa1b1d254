"""Learning-rate schedules (--lr-schedule, --warmup-steps): each step uses the scheduled
rate, and an interrupted run resumes onto the same schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from agzo.train import TrainingInterrupted, train
from tests.test_train import checkpoint_weights, tiny_config, train_losses


def logged_rates(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["lr"] for r in map(json.loads, lines) if r["split"] == "train"]


def test_each_step_uses_the_scheduled_rate(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tiny_config(
        model_dir,
        out,
        optimizer="fo-sgd",
        lr=0.1,
        lr_schedule="linear",
        warmup_steps=2,
        steps=6,
        checkpoint_every=1,
        keep_checkpoints=10,
    )
    train(config, quiet=True)
    # Warmup from zero over 2 steps, then a straight line to zero at step 6.
    expected = [0.0, 0.05, 0.1, 0.075, 0.05, 0.025]
    assert logged_rates(out) == pytest.approx(expected, abs=1e-12)
    # The first step's rate is zero: it leaves the weights exactly as they were.
    start = dict(AutoModelForCausalLM.from_pretrained(model_dir).named_parameters())
    first, second = checkpoint_weights(out, 1), checkpoint_weights(out, 2)
    assert all(torch.equal(first[n], start[n]) for n in first)
    assert any(not torch.equal(second[n], start[n]) for n in second)


def test_the_cosine_schedule_ends_at_zero(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(
        tiny_config(model_dir, out, lr=1e-3, lr_schedule="cosine", warmup_steps=0, steps=4),
        quiet=True,
    )
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)]
    assert logged_rates(out) == pytest.approx(expected, rel=1e-9)


def test_a_run_extended_on_resume_stretches_its_schedule(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = {"lr": 1e-3, "lr_schedule": "linear", "warmup_steps": 1}
    train(tiny_config(model_dir, out, steps=4, **settings), quiet=True)
    train(tiny_config(model_dir, out, steps=8, **settings), resume=True, quiet=True)
    # Steps 1-4 on the 4-step line, steps 5-8 on the 8-step one: 1e-3 · (8 - s) / 7.
    expected = [0.0, 1e-3, 1e-3 * 2 / 3, 1e-3 / 3] + [1e-3 * (8 - s) / 7 for s in range(4, 8)]
    assert logged_rates(out) == pytest.approx(expected, abs=1e-15)


def test_an_interrupted_run_resumes_onto_the_same_schedule(model_dir: Path, tmp_path: Path) -> None:
    settings = {"lr_schedule": "cosine", "warmup_steps": 2, "steps": 6}
    reference = tmp_path / "reference"
    train(tiny_config(model_dir, reference, **settings), quiet=True)

    out = tmp_path / "run"

    def interrupt_at_3(step: int, loss: float | None) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(tiny_config(model_dir, out, **settings), quiet=True, on_step=interrupt_at_3)
    assert (out / "checkpoints" / "step-000003" / "scheduler.pt").is_file()
    train(tiny_config(model_dir, out, **settings), resume=True, quiet=True)
    assert logged_rates(out) == logged_rates(reference)
    assert train_losses(out) == train_losses(reference)
    final, expected = checkpoint_weights(out, 6), checkpoint_weights(reference, 6)
    assert all(torch.equal(final[n], expected[n]) for n in expected)
