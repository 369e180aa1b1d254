"""The scorer's fast and general paths against a plain full-logits reference."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agzo.tasks.base import Example
from agzo.testing import tiny_causal_lm
from agzo.train.evaluate import evaluate, predict
from agzo.train.objective import CandidateScorer, PromptBatch, SequenceBatch

# With the tiny tokenizer, " great", " terrible", " good", ... are single tokens.
SINGLE_TOKEN = [
    Example("Review: a fine, warm film. It was", (" great", " terrible"), 0),
    Example("Is the sky green? Answer:", (" yes", " no", " maybe"), 1),
    Example("ok", (" good", " bad"), 1),
    Example(
        "Premise: rain. Hypothesis: wet streets. True, false or neither?",
        (" true", " false", " neither"),
        2,
    ),
]
MULTI_TOKEN = [
    Example("The man fell down", (" because he slipped", " so he laughed"), 0),
    Example("Q: colour of snow? A:", (" white", " dark blue", " no idea at all"), 2),
    Example("It was", (" great", " terrible"), 1),
]
ATOL = 1e-5


def reference_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]
) -> torch.Tensor:
    """Obviously correct: one unpadded full forward per candidate, all logits, log_softmax."""
    width = max(len(e.candidates) for e in examples)
    scores = torch.full((len(examples), width), float("-inf"))
    with torch.no_grad():
        for i, example in enumerate(examples):
            prompt = tokenizer(example.prompt)["input_ids"]  # with the BOS prefix
            for k, candidate in enumerate(example.candidates):
                target = tokenizer(candidate, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([prompt + target])
                log_probs = model(input_ids=ids).logits[0].log_softmax(dim=-1)
                positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(target))
                scores[i, k] = log_probs[positions, torch.tensor(target)].mean()
    return scores


def test_fast_path_matches_general_path_and_reference(
    tiny_lm: PreTrainedModel, tiny_tok: PreTrainedTokenizerBase
) -> None:
    scorer = CandidateScorer(tiny_lm, tiny_tok)
    fast, general = scorer.batch(SINGLE_TOKEN), scorer.batch(SINGLE_TOKEN, fast=False)
    assert isinstance(fast, PromptBatch) and isinstance(general, SequenceBatch)
    with torch.no_grad():
        fast_scores, general_scores = scorer.scores(fast), scorer.scores(general)
    expected = reference_scores(tiny_lm, tiny_tok, SINGLE_TOKEN)
    torch.testing.assert_close(fast_scores, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(general_scores, expected, atol=ATOL, rtol=0)
    # Not vacuous: candidates' scores differ by far more than the tolerance.
    finite = expected[expected.isfinite()]
    assert float(finite.max() - finite.min()) > 1e-2


def test_multi_token_candidates_match_reference(
    tiny_lm: PreTrainedModel, tiny_tok: PreTrainedTokenizerBase
) -> None:
    scorer = CandidateScorer(tiny_lm, tiny_tok)
    batch = scorer.batch(MULTI_TOKEN)
    assert isinstance(batch, SequenceBatch)
    with torch.no_grad():
        scores = scorer.scores(batch)
    expected = reference_scores(tiny_lm, tiny_tok, MULTI_TOKEN)
    assert scores.shape == (3, 3)
    assert torch.isneginf(scores[0, 2]) and torch.isneginf(scores[2, 2])
    torch.testing.assert_close(scores, expected, atol=ATOL, rtol=0)


def test_single_token_path_is_verified_not_assumed(tiny_tok: PreTrainedTokenizerBase) -> None:
    scorer = CandidateScorer(tiny_causal_lm("llama"), tiny_tok)
    # " positive" is one token, " positively" is not: the batch must fall back.
    mixed = [Example("It was", (" positive", " positively"), 0)]
    assert isinstance(scorer.batch(mixed), SequenceBatch)
    assert isinstance(scorer.batch(mixed[:0] + [SINGLE_TOKEN[0]]), PromptBatch)


@pytest.mark.parametrize("fast", [True, False])
def test_left_padding_does_not_change_scores(
    tiny_lm: PreTrainedModel, tiny_tok: PreTrainedTokenizerBase, fast: bool
) -> None:
    scorer = CandidateScorer(tiny_lm, tiny_tok)
    examples = SINGLE_TOKEN + MULTI_TOKEN if not fast else SINGLE_TOKEN
    with torch.no_grad():
        together = scorer.scores(scorer.batch(examples, fast=fast))
        for i, example in enumerate(examples):
            alone = scorer.scores(scorer.batch([example], fast=fast))[0]
            k = len(example.candidates)
            torch.testing.assert_close(together[i, :k], alone[:k], atol=ATOL, rtol=0)


@pytest.mark.parametrize("examples", [SINGLE_TOKEN, MULTI_TOKEN], ids=["single", "multi"])
def test_loss_has_gradients_and_matches_scores(
    tiny_lm: PreTrainedModel, tiny_tok: PreTrainedTokenizerBase, examples: list[Example]
) -> None:
    scorer = CandidateScorer(tiny_lm, tiny_tok)
    batch = scorer.batch(examples)
    loss = scorer.loss(batch)
    assert loss.ndim == 0 and loss.requires_grad
    loss.backward()
    grads = [p.grad for p in tiny_lm.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    with torch.no_grad():
        no_grad_loss = scorer.loss(batch)
        scored = scorer.scores_and_losses(batch)
    assert torch.isfinite(no_grad_loss) and not no_grad_loss.requires_grad
    # "lm" loss: minus the correct candidate's mean token log-prob, averaged over examples
    # (the label-rows-only forward of the general path agrees with scoring every row).
    labels = torch.tensor([e.label for e in examples])
    expected = -reference_scores(tiny_lm, tiny_tok, examples).gather(1, labels[:, None]).mean()
    torch.testing.assert_close(no_grad_loss, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(scored.losses.mean(), expected, atol=ATOL, rtol=0)


def test_candidates_loss_is_cross_entropy_over_scores(
    tiny_tok: PreTrainedTokenizerBase,
) -> None:
    scorer = CandidateScorer(tiny_causal_lm("qwen3"), tiny_tok, loss_kind="candidates")
    for examples in (SINGLE_TOKEN, MULTI_TOKEN):
        batch = scorer.batch(examples)
        with torch.no_grad():
            scores, loss = scorer.scores(batch), scorer.loss(batch)
        torch.testing.assert_close(loss, F.cross_entropy(scores, batch.labels))
    with pytest.raises(ValueError, match="loss_kind"):
        CandidateScorer(tiny_causal_lm("qwen3"), tiny_tok, loss_kind="mse")  # type: ignore[arg-type]


def test_truncation_keeps_candidate_and_end_of_prompt(tiny_tok: PreTrainedTokenizerBase) -> None:
    model = tiny_causal_lm("gpt2")
    passage = "a long passage that will not fit " * 20
    example = Example(passage + "Question: is it long? Answer:", (" yes", " no idea"), 0)
    scorer = CandidateScorer(model, tiny_tok, max_length=24)
    (encoded,) = scorer.encode([example])
    assert encoded.length == 24  # prompt + longest candidate fill max_length exactly
    bos = tiny_tok.bos_token_id
    full_prompt = tiny_tok(example.prompt, add_special_tokens=False)["input_ids"]
    kept = 24 - 1 - len(encoded.candidate_ids[1])
    assert encoded.prompt_ids == (bos, *full_prompt[-kept:])
    for candidate, ids in zip(example.candidates, encoded.candidate_ids):
        assert list(ids) == tiny_tok(candidate, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        scores = scorer.scores(scorer.batch([example]))
        for k, ids in enumerate(encoded.candidate_ids):
            full = torch.tensor([encoded.prompt_ids + ids])
            log_probs = model(input_ids=full).logits[0].log_softmax(-1)
            n = len(encoded.prompt_ids)
            expected = log_probs[torch.arange(n - 1, n - 1 + len(ids)), torch.tensor(ids)].mean()
            torch.testing.assert_close(scores[0, k], expected, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="max_length"):
        CandidateScorer(model, tiny_tok, max_length=3).encode([example])


def test_candidate_boundary_is_exact_when_tokens_merge_across_it(
    tiny_tok: PreTrainedTokenizerBase,
) -> None:
    # "It was goo" + "d": jointly " good" is one token, which would swallow the boundary.
    scorer = CandidateScorer(tiny_causal_lm("llama"), tiny_tok)
    (encoded,) = scorer.encode([Example("It was goo", ("d", "se"), 0)])
    prompt = tiny_tok("It was goo", add_special_tokens=False)["input_ids"]
    assert encoded.prompt_ids == (tiny_tok.bos_token_id, *prompt)
    assert encoded.candidate_ids == (
        tuple(tiny_tok("d", add_special_tokens=False)["input_ids"]),
        tuple(tiny_tok("se", add_special_tokens=False)["input_ids"]),
    )


def test_fallback_without_logits_to_keep_gives_same_scores(
    tiny_lm: PreTrainedModel, tiny_tok: PreTrainedTokenizerBase
) -> None:
    scorer = CandidateScorer(tiny_lm, tiny_tok)
    with torch.no_grad():
        expected = scorer.scores(scorer.batch(MULTI_TOKEN))
        # Pretend the model predates logits_to_keep: the head is applied by the scorer.
        scorer._forward_kwargs -= {"logits_to_keep", "num_logits_to_keep"}
        torch.testing.assert_close(
            scorer.scores(scorer.batch(MULTI_TOKEN)), expected, atol=ATOL, rtol=0
        )


def test_predictions_are_argmax_of_scores_and_encoding_is_cached(
    tiny_tok: PreTrainedTokenizerBase,
) -> None:
    scorer = CandidateScorer(tiny_causal_lm("qwen3"), tiny_tok)
    examples = SINGLE_TOKEN + MULTI_TOKEN
    with torch.no_grad():
        expected = [int(scorer.scores(scorer.batch([e]))[0].argmax()) for e in examples]
    assert predict(scorer.model, scorer, examples, batch_size=3).predicted == expected
    first = scorer.encode(examples)
    assert all(a is b for a, b in zip(first, scorer.encode(examples)))


def test_evaluate_reports_accuracy_loss_and_task_metrics(
    tiny_tok: PreTrainedTokenizerBase,
) -> None:
    model = tiny_causal_lm("gpt2").train()
    scorer = CandidateScorer(model, tiny_tok)
    examples = SINGLE_TOKEN + MULTI_TOKEN
    seen: list[list[int]] = []

    def metric_fn(exs: Sequence[Example], predictions: Sequence[int]) -> dict[str, float]:
        seen.append(list(predictions))
        return {"n_seen": float(len(exs))}

    results = evaluate(model, scorer, examples, batch_size=2, metric_fn=metric_fn)
    assert model.training  # the caller's mode is restored
    predictions = predict(model, scorer, examples).predicted
    assert seen == [predictions]
    accuracy = sum(p == e.label for p, e in zip(predictions, examples)) / len(examples)
    assert results["accuracy"] == pytest.approx(accuracy)
    with torch.no_grad():
        losses = torch.cat([scorer.scores_and_losses(scorer.batch([e])).losses for e in examples])
    assert results["loss"] == pytest.approx(float(losses.mean()), abs=ATOL)
    assert results["n_seen"] == len(examples)
    with pytest.raises(ValueError, match="different model"):
        evaluate(tiny_causal_lm("gpt2"), scorer, examples)
