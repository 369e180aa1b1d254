"""`keep_noise`: each step's Gaussian noise drawn once and kept for the step, giving the
very weights and losses of drawing it again for every use, and held no longer."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import agzo
from agzo.directions import base
from agzo.directions.base import GaussianDirection
from tests.test_trajectories import CASES, run_case

# Every trajectory case whose probes include Gaussian directions.
GAUSSIAN_CASES = sorted(
    name for name in CASES if name.startswith("mezo") or name == "agzo-gaussian-embedding"
)


@pytest.mark.parametrize("name", GAUSSIAN_CASES)
def test_kept_noise_gives_the_same_weights_and_losses_to_the_bit(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = run_case(name)
    arch, dtype, make, kwargs = CASES[name]
    monkeypatch.setitem(CASES, name, (arch, dtype, make, {**kwargs, "keep_noise": True}))
    assert run_case(name) == drawn


def _draws_per_step(keep_noise: bool, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> int:
    from tests.tiny import batch, loss_fn, tiny_model

    model = tiny_model("llama")
    ids, mask, labels = batch("llama")
    closure = loss_fn(model, "llama", ids, mask, labels)
    opt = agzo.MeZO(model, lr=1e-3, seed=3, keep_noise=keep_noise, **kwargs)
    calls = []
    generator_for = base.generator_for

    def counting(*args: Any) -> torch.Generator:
        calls.append(args)
        return generator_for(*args)

    monkeypatch.setattr(base, "generator_for", counting)
    opt.step(closure)
    return len(calls) // len(opt.tensors)


def test_a_two_sided_sgd_step_draws_each_tensor_once_instead_of_three_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Drawn again: perturb, flip, then restore and update fused; kept: the first draw.
    assert _draws_per_step(False, monkeypatch) == 3
    assert _draws_per_step(True, monkeypatch) == 1
    # Two probes, each shifted out, flipped and back (three draws), then both drawn for
    # the update: eight draws per tensor, or one per probe.
    assert _draws_per_step(False, monkeypatch, queries=2) == 8
    assert _draws_per_step(True, monkeypatch, queries=2) == 2


def test_kept_noise_is_let_go_when_the_step_ends() -> None:
    from tests.tiny import batch, loss_fn, tiny_model

    model = tiny_model("llama")
    closure = loss_fn(model, "llama", *batch("llama"))
    opt = agzo.MeZO(model, lr=1e-3, keep_noise=True)
    opt.step(closure)
    gc.collect()
    kept = [o for o in gc.get_objects() if isinstance(o, GaussianDirection) and o._kept is not None]
    assert kept == []


def test_a_kept_direction_hands_out_copies_that_callers_may_write_into() -> None:
    direction = GaussianDirection(torch.Size((3, 4)), torch.device("cpu"), (1, 2, 3), keep=True)
    first = direction.dense()
    first.mul_(0.0)  # as scaled_rows and SumDirection write into what dense() returns
    fresh = GaussianDirection(torch.Size((3, 4)), torch.device("cpu"), (1, 2, 3)).dense()
    assert torch.equal(direction.dense(), fresh) and fresh.abs().sum() > 0
    weights = torch.zeros(3, 4)
    direction.add_to(weights, 2.0)
    assert torch.equal(weights, 2.0 * fresh)


def test_agzo_train_takes_keep_noise_as_a_run_setting_that_a_resume_may_change() -> None:
    from agzo.train.config import RESUMABLE_CHANGES, TrainConfig

    config = TrainConfig.from_dict({"optimizer": "mezo", "task": "sst2", "keep_noise": True})
    assert config.keep_noise and "keep_noise" in RESUMABLE_CHANGES
    # How the noise is kept is no part of what the run is: the study's rate still applies.
    assert config.study_setting == "mezo"


def test_the_probes_measure_mezo_keeping_its_noise_beside_mezo(tmp_path: Path) -> None:
    from agzo.cli import main
    from agzo.probes.memory import measure_memory
    from agzo.probes.shapes import build_shape, last_token_loss, random_batch
    from agzo.probes.speed import probe_optimizer

    model = build_shape("tiny", torch.float32, "cpu")
    closure = last_token_loss(model, *random_batch(model, 2, 8))
    kept, drawn = (probe_optimizer(m, model, closure) for m in ("mezo-kept-noise", "mezo"))
    assert isinstance(kept, agzo.MeZO) and kept.keep_noise and not drawn.keep_noise

    out = tmp_path / "speed"
    argv = ["probe", "speed", "--shape", "tiny", "--batch", "2", "--seq", "8", "--rounds", "1"]
    assert main([*argv, "--methods", "mezo,mezo-kept-noise", "--output", str(out)]) == 0
    report = json.loads((out / "speed.json").read_text())
    assert set(report["step_s"]) == {"mezo", "mezo-kept-noise"}
    rows = measure_memory("tiny", [2], [16], ("inference", "mezo", "mezo-kept-noise"))
    assert [r.config for r in rows] == ["inference", "mezo", "mezo-kept-noise"]
    assert all(r.peak_bytes is not None for r in rows)
