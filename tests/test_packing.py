"""Packed rows (agzo.train.packing): the layout, and the same scores, losses, gradients and
AGZO steps as one padded row per example."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate.hooks import AlignDevicesHook, add_hook_to_module
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

import agzo
from agzo.cli import main
from agzo.methods.stepping import zeroth_order_step
from agzo.placement import HostOffload
from agzo.tasks.base import Example, GenerativeExample
from agzo.testing import tiny_causal_lm
from agzo.train import train
from agzo.train.objective import CandidateScorer, PromptBatch, SequenceBatch
from agzo.train.packing import (
    PackedPromptBatch,
    PackedSequenceBatch,
    first_fit_rows,
    pack_sequences,
)
from tests.test_objective import ATOL, MULTI_TOKEN, SINGLE_TOKEN, reference_scores
from tests.test_train import tiny_config, write_reviews

# Prompts of very different lengths, so that rows hold several and end in padding.
MIXED = [
    *SINGLE_TOKEN,
    Example("ok ok ok ok ok ok ok ok ok ok ok ok. It was", (" great", " terrible"), 1),
    Example("no", (" yes", " no"), 0),
    Example("Is it? Answer:", (" yes", " no", " maybe"), 2),
]


# Multi-token candidates and generated answers (one candidate: the answer's tokens).
SEQUENCES = [
    *MULTI_TOKEN,
    Example("ok ok ok ok ok ok ok ok ok ok ok ok ok. So", (" it was good", " bad"), 1),
    GenerativeExample("Q: where is it? A:", answers=("in the red house",)),
]


def reviews_task(tmp_path: Path) -> dict[str, str]:
    """A custom sentiment task over a small reviews file, as TrainConfig settings."""
    data = write_reviews(tmp_path / "reviews.jsonl")
    return {"task": "custom", "data_file": str(data), "template": "{text}. Sentiment:",
            "labels": "0=bad,1=good"}  # fmt: skip


def test_first_fit_rows_places_each_sequence_once_within_the_widest() -> None:
    lengths = [random.Random(seed).randint(1, 30) for seed in range(40)]
    rows = first_fit_rows(lengths)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= max(lengths) for row in rows)
    assert rows[0][0] == lengths.index(max(lengths))  # longest first
    assert len(rows) < len(lengths)  # it packs
    assert first_fit_rows([5, 3, 2, 4]) == [[0], [3], [1, 2]]  # width 5: 5 | 4 | 3+2


def test_packed_prompts_restart_their_positions_and_mark_their_last_token() -> None:
    prompts = [[11, 12, 13, 14], [21, 22], [31], [41, 42, 43]]
    packed = pack_sequences(prompts, pad_id=0)
    width = packed["input_ids"].shape[1]
    assert width == 4 and packed["input_ids"].shape[0] < len(prompts)
    for index, prompt in enumerate(prompts):
        row, column = int(packed["last_row"][index]), int(packed["last_column"][index])
        start = column - len(prompt) + 1
        assert packed["input_ids"][row, start : column + 1].tolist() == prompt
        assert packed["position_ids"][row, start : column + 1].tolist() == list(range(len(prompt)))
        assert packed["attention_mask"][row, start : column + 1].all()
    assert int(packed["attention_mask"].sum()) == sum(map(len, prompts))
    # A row's padding starts its positions afresh: a sequence of its own, seen by no prompt.
    for row in range(packed["input_ids"].shape[0]):
        used = int(packed["attention_mask"][row].sum())
        assert packed["position_ids"][row, used:].tolist() == list(range(width - used))
    with pytest.raises(ValueError, match="at least one token"):
        pack_sequences([[1], []], pad_id=0)


@pytest.mark.parametrize(
    ("examples", "layout"),
    [(MIXED, PackedPromptBatch), (SEQUENCES, PackedSequenceBatch)],
    ids=["one-token", "multi-token"],
)
def test_packed_scores_match_the_unpadded_reference(
    tiny_lm: PreTrainedModel,
    tiny_tok: PreTrainedTokenizerBase,
    examples: list[Example],
    layout: type,
) -> None:
    scorer = CandidateScorer(tiny_lm, tiny_tok, pack=True)
    batch = scorer.batch(examples)
    assert isinstance(batch, layout)
    # Prompts alone, or one prompt + candidate per candidate: several share a row.
    one_token = layout is PackedPromptBatch
    sequences = len(examples) if one_token else sum(len(e.candidates) for e in examples)
    assert batch.input_ids.shape[0] < sequences
    with torch.no_grad():
        packed = scorer.scores(batch)
    reference = reference_scores(tiny_lm, tiny_tok, examples)
    torch.testing.assert_close(packed, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("examples", [MIXED, SEQUENCES], ids=["one-token", "multi-token"])
def test_an_agzo_step_on_packed_rows_takes_the_padded_step(
    tiny_tok: PreTrainedTokenizerBase, examples: list[Example]
) -> None:
    # The capture must leave a row's padding out, as it leaves left padding out: the
    # token mask the step is given marks the real tokens of the packed rows. (An untied
    # head is left out of the step: with multi-token candidates the padded layout runs it
    # on each row's last positions, scored or not, the packed one on the scored ones
    # alone, so its captured input differs by design.)
    weights = {}
    for pack in (True, False):
        model = tiny_causal_lm("qwen3", tie_word_embeddings=False)
        scorer = CandidateScorer(model, tiny_tok, loss_kind="candidates")
        batch = scorer.batch(examples, pack=pack)
        assert isinstance(batch, PackedPromptBatch | PackedSequenceBatch) == pack
        optimizer = agzo.AGZO(model, lr=1e-2, eps=1e-3, seed=3, exclude=["lm_head"])
        loss = functools.partial(scorer.loss, batch)
        for _ in range(2):
            optimizer.step(loss, attention_mask=batch.attention_mask)
        weights[pack] = [p.detach().clone() for p in model.parameters()]
    start = list(tiny_causal_lm("qwen3", tie_word_embeddings=False).parameters())
    moved = max(float((a - s).abs().max()) for a, s in zip(weights[False], start))
    gap = max(float((a - b).abs().max()) for a, b in zip(weights[True], weights[False]))
    assert moved > 1e-4 and gap < moved * 1e-2, (moved, gap)


@pytest.mark.parametrize("power_steps", [1, 3], ids=["accumulated-basis", "merged-bases"])
def test_an_accumulated_agzo_step_on_packed_micro_batches_takes_the_padded_step(
    tiny_tok: PreTrainedTokenizerBase, power_steps: int
) -> None:
    # Gradient accumulation gives the step no token mask: each micro-batch's comes with its
    # model call, which for packed rows is the one they publish. (K = 1 sums one power step
    # over the micro-batches; K = 3 merges each micro-batch's bases.)
    halves = [MIXED[: len(MIXED) // 2], MIXED[len(MIXED) // 2 :]]
    weights = {}
    for pack in (True, False):
        model = tiny_causal_lm("qwen3")
        scorer = CandidateScorer(model, tiny_tok, loss_kind="candidates")
        batches = [scorer.batch(half, pack=pack) for half in halves]
        assert all(isinstance(b, PackedPromptBatch) == pack for b in batches)
        optimizer = agzo.AGZO(model, lr=1e-2, eps=1e-3, seed=3, power_steps=power_steps)
        parts = [functools.partial(scorer.loss, batch) for batch in batches]
        for _ in range(2):
            assert zeroth_order_step(optimizer, model, parts, None) is not None
        weights[pack] = [p.detach().clone() for p in model.parameters()]
    start = [p.detach() for p in tiny_causal_lm("qwen3").parameters()]
    moved = max(float((a - s).abs().max()) for a, s in zip(weights[False], start))
    gap = max(float((a - b).abs().max()) for a, b in zip(weights[True], weights[False]))
    assert moved > 1e-4 and gap < moved * 1e-2, (moved, gap)


def test_a_run_with_accumulation_trains_on_packed_rows(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layouts = []
    original = CandidateScorer.batch

    def batch(self: CandidateScorer, *args: Any, **kwargs: Any) -> Any:
        made = original(self, *args, **kwargs)
        layouts.append(type(made))
        return made

    monkeypatch.setattr(CandidateScorer, "batch", batch)
    config = tiny_config(
        model_dir, tmp_path / "run", **reviews_task(tmp_path), batch_size=4, accumulate=2, steps=2
    )
    layouts.clear()
    assert train(config, quiet=True).steps == 2
    assert PackedPromptBatch in layouts and PromptBatch not in layouts, layouts


def test_a_peft_model_packs_and_scores_as_padded(tiny_tok: PreTrainedTokenizerBase) -> None:
    model = get_peft_model(tiny_causal_lm("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    scorer = CandidateScorer(model, tiny_tok, pack=True)
    batch = scorer.batch(MIXED)
    assert isinstance(batch, PackedPromptBatch)
    with torch.no_grad():
        packed, padded = scorer.scores(batch), scorer.scores(scorer.batch(MIXED, pack=False))
    torch.testing.assert_close(packed, padded, atol=ATOL, rtol=0)


def test_other_architectures_and_placed_models_keep_padded_rows(
    tiny_tok: PreTrainedTokenizerBase,
) -> None:
    model = tiny_causal_lm("llama")
    model.config.model_type = "an-architecture-not-checked"
    placed = tiny_causal_lm("llama")  # as --device-map and --offload leave it
    add_hook_to_module(placed, AlignDevicesHook(io_same_device=True))
    for unpackable in (model, placed):
        scorer = CandidateScorer(unpackable, tiny_tok, pack=True)
        assert isinstance(scorer.batch(MIXED), PromptBatch)
        assert isinstance(scorer.batch(MULTI_TOKEN), SequenceBatch)
        assert isinstance(scorer.batch(MIXED, pack=True), PromptBatch)


def test_a_model_offloaded_after_its_scorer_was_made_keeps_padded_rows(
    tiny_tok: PreTrainedTokenizerBase,
) -> None:
    # `agzo train --offload cpu` offloads the model after the scorer is made.
    model = tiny_causal_lm("llama")
    scorer = CandidateScorer(model, tiny_tok, pack=True)
    assert isinstance(scorer.batch(MIXED), PackedPromptBatch)
    host = HostOffload(model, torch.device("cpu"))
    try:
        assert isinstance(scorer.batch(MIXED), PromptBatch)
    finally:
        host.close()
    assert isinstance(scorer.batch(MIXED), PackedPromptBatch)


@pytest.mark.parametrize("loss_kind", ["lm", "candidates"])
@pytest.mark.parametrize("examples", [MIXED, SEQUENCES], ids=["one-token", "multi-token"])
def test_packed_losses_and_gradients_match_the_padded_ones(
    tiny_tok: PreTrainedTokenizerBase, loss_kind: str, examples: list[Example]
) -> None:
    # labels_only, as training builds it for the "lm" loss (multi-token candidates: the
    # correct ones alone).
    model = tiny_causal_lm("qwen3")
    scorer = CandidateScorer(model, tiny_tok, loss_kind=loss_kind)  # type: ignore[arg-type]
    found = {}
    for pack in (True, False):
        model.zero_grad()
        loss = scorer.loss(scorer.batch(examples, pack=pack, labels_only=loss_kind == "lm"))
        loss.backward()
        found[pack] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(found[True][0], found[False][0], atol=ATOL, rtol=0)
    for packed, padded in zip(found[True][1], found[False][1]):
        torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)


def test_the_correct_candidates_alone_give_every_candidates_language_model_loss(
    tiny_tok: PreTrainedTokenizerBase,
) -> None:
    scorer = CandidateScorer(tiny_causal_lm("llama"), tiny_tok, loss_kind="lm", pack=True)
    batch = scorer.batch(SEQUENCES, labels_only=True)
    assert isinstance(batch, PackedSequenceBatch)
    assert batch.score_index.shape == (len(SEQUENCES), 1)  # one sequence per example
    with torch.no_grad():
        every = scorer.loss(scorer.batch(SEQUENCES))
        torch.testing.assert_close(scorer.loss(batch), every, atol=ATOL, rtol=0)


def test_a_run_resumed_with_packing_changed_finishes_and_evaluates_alike(
    model_dir: Path, tmp_path: Path
) -> None:
    custom = reviews_task(tmp_path)
    run = tmp_path / "run"
    padded = tiny_config(model_dir, run, **custom, pack=False, steps=2)
    train(padded, quiet=True)
    result = train(tiny_config(model_dir, run, **custom, steps=4), resume=True, quiet=True)
    assert result.steps == 4
    assert (run / "config.yaml").read_text().count("pack: true") == 1
    # `agzo eval` of that run scores alike in either layout.
    reports = {}
    for flag in ("--pack", "--no-pack"):
        out = tmp_path / f"eval{flag}.json"
        assert main(["eval", "--model", str(run), flag, "--output", str(out), "--quiet"]) == 0
        reports[flag] = json.loads(out.read_text())["results"]["test"]
    assert reports["--pack"]["accuracy"] == reports["--no-pack"]["accuracy"]
    assert abs(reports["--pack"]["loss"] - reports["--no-pack"]["loss"]) < 1e-5
