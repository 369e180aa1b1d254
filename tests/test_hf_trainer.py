"""ZOTrainer: agzo's zeroth-order optimizers inside transformers.Trainer's own loop.

Tiny random models, a dozen examples, CPU, no reporting: each `train()` takes well under a
second. The central check replays the batches the Trainer fed to training_step through the
same optimizer by hand, and finds bit-identical weights: the Trainer adds nothing to a step.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import (
    DataCollatorForLanguageModeling,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

import agzo
from agzo.integrations import ZOTrainer
from agzo.integrations.hf_trainer import TrainerDrivenStep, trainer_driven
from agzo.testing import tiny_causal_lm, tiny_tokenizer

LR, EPS = 1e-2, 1e-3
WORDS = ("good", "bad", "great", "terrible", "yes", "no", "maybe", "true", "false")


def _dataset(tok: PreTrainedTokenizerBase, n: int = 12) -> list[dict[str, Any]]:
    """Short sentences of different lengths, so batches carry left padding."""
    texts = [
        " the" + "".join(f" {WORDS[(i + k) % len(WORDS)]}" for k in range(1 + i % 4))
        for i in range(n)
    ]
    return [dict(tok(text)) for text in texts]


def _args(tmp_path: Path, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "max_steps": 3,
        "learning_rate": LR,
        "lr_scheduler_type": "linear",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "remove_unused_columns": False,
        "seed": 7,
    }
    return TrainingArguments(**(settings | overrides))


class RecordingTrainer(ZOTrainer):
    """Records, per call of training_step, what the step was given and the lr it ran at."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, dict[str, Any], Any, float]] = []

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        lr = self.zeroth_order_optimizer.param_groups[0]["lr"]
        batch = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        self.calls.append((self.state.global_step, batch, num_items_in_batch, lr))
        return super().training_step(model, inputs, num_items_in_batch)


def _trainer(
    tmp_path: Path,
    model: PreTrainedModel | None = None,
    cls: type[ZOTrainer] = RecordingTrainer,
    zo_optimizer: Any = None,
    **overrides: Any,
) -> Any:
    """A trainer on a dozen examples; AGZO with eps=EPS unless `zo_optimizer` is given."""
    tok = tiny_tokenizer()
    return cls(
        model=model if model is not None else tiny_causal_lm("llama"),
        args=_args(tmp_path, **overrides),
        train_dataset=_dataset(tok),
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        zo_optimizer=zo_optimizer,
        zo_kwargs={"eps": EPS} if zo_optimizer is None else None,
    )


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _train_losses(trainer: Trainer) -> list[float]:
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


# --------------------------------------------------------------------------- the step


@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_steps_equal_the_same_optimizer_driven_by_hand(
    tmp_path: Path, accumulation: int
) -> None:
    trainer = _trainer(tmp_path, gradient_accumulation_steps=accumulation)
    before = _weights(trainer.model)
    trainer.train()
    after = _weights(trainer.model)

    optimizer = trainer.zeroth_order_optimizer
    assert isinstance(optimizer, agzo.AGZO)
    assert optimizer.step_count == trainer.state.global_step == 3
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert all(p.grad is None for p in trainer.model.parameters())
    losses = _train_losses(trainer)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert all("grad_norm" not in row for row in trainer.state.log_history)

    # Replay: the batches of each Trainer step, through AGZO built by hand, in a plain loop.
    model = tiny_causal_lm("llama")
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    by_hand = agzo.AGZO(model, lr=LR, eps=EPS, seed=7)
    windows: dict[int, list[tuple[dict[str, Any], Any, float]]] = defaultdict(list)
    for global_step, batch, num_items, lr in trainer.calls:
        windows[global_step].append((batch, num_items, lr))
    assert [len(w) for w in windows.values()] == ([1, 1, 1] if accumulation == 1 else [2, 1, 2])
    hand_losses = []
    for window in windows.values():
        # The model accepts num_items_in_batch, so its loss is already over the whole window.
        def closure(window: list[tuple[dict[str, Any], Any, float]] = window) -> torch.Tensor:
            return sum(
                (model(**batch, num_items_in_batch=n).loss for batch, n, _ in window),
                torch.zeros(()),
            )

        for group in by_hand.param_groups:
            group["lr"] = window[-1][2]
        mask = window[0][0]["attention_mask"] if len(window) == 1 else None
        loss = by_hand.step(closure, attention_mask=mask)
        assert loss is not None
        hand_losses.append(float(loss))
    for name, p in model.named_parameters():
        assert torch.equal(p, after[name]), name
    assert losses == pytest.approx(hand_losses, rel=1e-6)


def test_accumulated_loss_of_a_model_without_loss_kwargs_is_the_micro_batch_mean(
    tmp_path: Path,
) -> None:
    # Without num_items_in_batch each micro-batch loss is a mean, and the step's loss is
    # their average over the window, as Trainer scales accumulated losses.
    trainer = _trainer(tmp_path, max_steps=1, gradient_accumulation_steps=2)
    trainer.model_accepts_loss_kwargs = False
    trainer.train()
    model = tiny_causal_lm("llama")
    assert [call[2] for call in trainer.calls] == [None, None]
    with torch.no_grad():
        expected = sum(model(**batch).loss.item() for _, batch, _, _ in trainer.calls) / 2
    assert _train_losses(trainer) == pytest.approx([expected], rel=1e-6)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("mezo", agzo.MeZO), (agzo.LOZO, agzo.LOZO)],
    ids=["mezo-by-name", "lozo-by-class"],
)
def test_other_methods_by_name_or_class(
    tmp_path: Path, spec: Any, expected: type[agzo.ZerothOrderOptimizer]
) -> None:
    tok = tiny_tokenizer()
    model = tiny_causal_lm("qwen3")
    before = _weights(model)
    trainer = ZOTrainer(
        model=model,
        args=_args(tmp_path, max_steps=2, lr_scheduler_type="constant", learning_rate=1e-3),
        train_dataset=_dataset(tok),
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        zo_optimizer=spec,
        zo_kwargs={"eps": EPS},
    )
    trainer.train()
    optimizer = trainer.zeroth_order_optimizer
    assert isinstance(optimizer, expected) and optimizer.step_count == 2
    assert optimizer.param_groups[0]["lr"] == 1e-3 and optimizer.seed == 7
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(math.isfinite(x) for x in _train_losses(trainer))


def test_an_adaptive_rank_logs_the_ranks_its_last_step_kept(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    trainer = ZOTrainer(
        model=tiny_causal_lm("llama"),
        args=_args(tmp_path, max_steps=2),
        train_dataset=_dataset(tok),
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        zo_kwargs={"eps": EPS, "rank": 4, "energy": 0.6},
    )
    trainer.train()
    rows = [row for row in trainer.state.log_history if "loss" in row]
    assert len(rows) == 2
    for row in rows:
        assert 1 <= row["rank_min"] <= row["rank_mean"] <= row["rank_max"] <= 4, row
    last = list(trainer.zeroth_order_optimizer.ranks().values())
    assert rows[-1]["rank_mean"] == pytest.approx(sum(last) / len(last))


def test_factory_and_prebuilt_optimizer(tmp_path: Path) -> None:
    built: list[nn.Module] = []

    def factory(model: nn.Module) -> agzo.ZerothOrderOptimizer:
        built.append(model)
        return agzo.AGZO(model, lr=2e-3, eps=EPS, power_steps=1)

    trainer = _trainer(tmp_path, zo_optimizer=factory, lr_scheduler_type="constant")
    trainer.train()
    assert built == [trainer.model]
    assert trainer.zeroth_order_optimizer.power_steps == 1
    assert trainer.zeroth_order_optimizer.param_groups[0]["lr"] == 2e-3  # the factory's lr

    model = tiny_causal_lm("llama")
    optimizer = agzo.MeZO(model, lr=1e-4, eps=EPS)
    tok = tiny_tokenizer()
    trainer = ZOTrainer(
        model=model,
        args=_args(tmp_path, max_steps=2),
        train_dataset=_dataset(tok),
        data_collator=DataCollatorForLanguageModeling(tok, mlm=False),
        optimizers=(optimizer, None),
    )
    trainer.train()
    assert trainer.zeroth_order_optimizer is optimizer and optimizer.step_count == 2


def test_lr_scheduler_drives_the_param_groups(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, max_steps=4, warmup_steps=1)
    trainer.train()
    seen = [lr for *_, lr in trainer.calls]
    # Linear warmup over one step, then linear decay to 0 at step 4.
    assert seen == pytest.approx([0.0, LR, LR * 2 / 3, LR / 3])
    assert trainer.zeroth_order_optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
    logged = [row["learning_rate"] for row in trainer.state.log_history if "loss" in row]
    assert logged == pytest.approx(seen)


def test_weight_decay_spares_biases_and_norms(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, max_steps=1, weight_decay=0.1)
    trainer.train()
    optimizer = trainer.zeroth_order_optimizer
    decays = {
        name: group["weight_decay"]
        for name, p in trainer.model.named_parameters()
        for group in optimizer.param_groups
        if any(q is p for q in group["params"])
    }
    assert decays["model.norm.weight"] == 0.0
    assert decays["model.layers.0.self_attn.q_proj.weight"] == 0.1


# --------------------------------------------------------------------------- checkpoints


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    steps: dict[str, Any] = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2}
    full = _trainer(tmp_path / "a", **steps)
    full.train()
    checkpoint = tmp_path / "a" / "out" / "checkpoint-2"
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert saved["zeroth_order"]["method"] == "AGZO" and saved["zeroth_order"]["step"] == 2

    resumed = _trainer(tmp_path / "b", **steps)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.zeroth_order_optimizer.step_count == 4
    assert [call[0] for call in resumed.calls] == [2, 3]
    for name, p in resumed.model.named_parameters():
        assert torch.equal(p, dict(full.model.named_parameters())[name]), name

    # The adapted optimizer's state is the plain optimizer's: it loads into AGZO and back.
    plain = agzo.AGZO(tiny_causal_lm("llama"), lr=LR, eps=EPS)
    plain.load_state_dict(saved)
    assert plain.step_count == 2


# --------------------------------------------------------------------------- the adapter


def test_closure_free_step_is_accepted_only_once_after_a_trainer_step() -> None:
    model = tiny_causal_lm("llama")
    optimizer = trainer_driven(agzo.AGZO(model, lr=LR, eps=EPS))
    assert isinstance(optimizer, TrainerDrivenStep) and isinstance(optimizer, agzo.AGZO)
    assert trainer_driven(optimizer) is optimizer
    assert type(optimizer).__name__ == "AGZO"
    with pytest.raises(ValueError, match="needs a closure"):
        optimizer.step()
    batch = {"input_ids": torch.tensor([[1, 5, 9, 4]])}
    loss = optimizer.step(lambda: model(**batch, labels=batch["input_ids"]).loss)
    assert loss is not None and optimizer.step_count == 1
    optimizer.expect_trainer_step()
    assert optimizer.step() is None
    with pytest.raises(ValueError, match="needs a closure"):
        optimizer.step()
    assert optimizer.step_count == 1


def test_step_uses_the_param_groups_held_after_load_state_dict() -> None:
    # accelerate's prepare and a resume replace the group dicts through load_state_dict;
    # the adapted step must read lr from the new dicts, which the LR scheduler writes to.
    model = tiny_causal_lm("llama")
    optimizer = trainer_driven(agzo.AGZO(model, lr=LR, eps=EPS))
    optimizer.load_state_dict(optimizer.state_dict())
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    before = _weights(model)
    batch = torch.tensor([[1, 5, 9, 4]])
    assert optimizer.step(lambda: model(input_ids=batch, labels=batch).loss) is not None
    # Back at W0 up to the rounding of W0 + eps*D - eps*D; a step at lr=1e-2 moves ~1e-2.
    moved = max((p - before[name]).abs().max().item() for name, p in model.named_parameters())
    assert moved < 1e-6


def test_model_runs_in_eval_mode_without_dropout_noise(tmp_path: Path) -> None:
    model = tiny_causal_lm("gpt2", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    model.train()
    trainer = _trainer(tmp_path, model=model, max_steps=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*dropout.*")
        trainer.train()
    assert not model.training


class _SmoothedLossTrainer(Trainer):
    """A user's own Trainer subclass; ZOTrainer composes with it through the MRO."""

    compute_loss_calls = 0

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], *args: Any, **kwargs: Any
    ) -> Any:
        type(self).compute_loss_calls += 1
        return super().compute_loss(model, inputs, *args, **kwargs)


def test_composes_with_another_trainer_subclass_and_label_smoothing(tmp_path: Path) -> None:
    class ZOSmoothed(ZOTrainer, _SmoothedLossTrainer):
        pass

    # Label smoothing makes compute_loss pop "labels": each evaluation needs its own copy.
    trainer = _trainer(tmp_path, cls=ZOSmoothed, max_steps=2, label_smoothing_factor=0.1)
    trainer.train()
    assert ZOSmoothed.compute_loss_calls == 4  # AGZO: f(W0) and f(W0 + eps*D) per step
    assert all(math.isfinite(x) for x in _train_losses(trainer))


# --------------------------------------------------------------------------- misuse


def test_settings_that_make_no_sense_are_refused(tmp_path: Path) -> None:
    model = tiny_causal_lm("llama")
    with pytest.raises(ValueError, match="fp16=True"):
        ZOTrainer(model=model, args=_args(tmp_path, fp16=True))
    with pytest.raises(ValueError, match="unknown zeroth-order method"):
        ZOTrainer(model=model, args=_args(tmp_path), zo_optimizer="adamw")
    with pytest.raises(TypeError, match="not a zeroth-order optimizer"):
        ZOTrainer(model=model, args=_args(tmp_path), zo_optimizer=torch.optim.AdamW)
    with pytest.raises(ValueError, match="learning_rate"):
        ZOTrainer(model=model, args=_args(tmp_path), zo_kwargs={"lr": 1e-3})
    with pytest.raises(ValueError, match="factory passes its own"):
        ZOTrainer(
            model=model,
            args=_args(tmp_path),
            zo_optimizer=lambda m: agzo.AGZO(m),
            zo_kwargs={"eps": 1e-3},
        )
    with pytest.raises(ValueError, match="optimizer_cls_and_kwargs"):
        ZOTrainer(
            model=model,
            args=_args(tmp_path),
            optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1}),
        )
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="needs a zeroth-order optimizer"):
        ZOTrainer(model=model, args=_args(tmp_path), optimizers=(sgd, None))
    with pytest.raises(ValueError, match="not both"):
        ZOTrainer(
            model=model,
            args=_args(tmp_path),
            optimizers=(agzo.MeZO(model), None),
            zo_optimizer="mezo",
        )
    trainer = _trainer(tmp_path, zo_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="factory must return"):
        trainer.train()


def test_ignored_settings_warn_and_clipping_is_switched_off(tmp_path: Path) -> None:
    model = tiny_causal_lm("llama")
    with pytest.warns(UserWarning, match="max_grad_norm=0.5 is ignored"):
        trainer = ZOTrainer(model=model, args=_args(tmp_path, max_grad_norm=0.5))
    assert trainer.args.max_grad_norm == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        trainer = ZOTrainer(model=model, args=_args(tmp_path))  # the default 1.0: silent
    assert trainer.args.max_grad_norm == 0.0
    with pytest.warns(UserWarning, match="NEFTune"):
        ZOTrainer(model=model, args=_args(tmp_path, neftune_noise_alpha=5.0))
