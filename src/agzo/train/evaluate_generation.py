"""Evaluation of generative tasks: greedy answers scored by F1 / exact match, and the loss.

Each example is evaluated twice over, in the same batches: its answer is generated (see
`generate.py`) and scored against every gold answer, and the training loss on its first
gold answer is computed with the candidate scorer, so that dev evaluation can break ties
by loss as it does for classification.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from agzo.tasks.answer_metrics import answer_metrics
from agzo.tasks.base import GenerativeExample
from agzo.train.eval_journal import EvalJournal
from agzo.train.generate import DEFAULT_MAX_NEW_TOKENS, fit_prompt, greedy_generate
from agzo.train.objective import CandidateScorer

__all__ = ["Generations", "PromptEncoder", "generate_answers", "generation_metrics"]


@dataclass(frozen=True)
class Generations:
    """What generating answers for a list of examples gives, in the examples' order."""

    texts: list[str]
    losses: list[float]


class PromptEncoder:
    """Prompt token ids for decoding, truncated from the left to leave room for
    `max_new_tokens`, cached per example (the same dev examples recur at every evaluation)."""

    def __init__(self, scorer: CandidateScorer, max_new_tokens: int) -> None:
        self.scorer = scorer
        self.max_new_tokens = max_new_tokens
        self._cache: dict[GenerativeExample, tuple[int, ...]] = {}

    def encode(self, examples: Sequence[GenerativeExample]) -> list[tuple[int, ...]]:
        missing = list(dict.fromkeys(e for e in examples if e not in self._cache))
        if missing:
            tokenizer = self.scorer.tokenizer
            prompts = tokenizer([e.prompt for e in missing], add_special_tokens=False)["input_ids"]
            keeps = tokenizer([e.keep for e in missing], add_special_tokens=False)["input_ids"]
            budget = self.scorer.max_length - self.max_new_tokens
            for example, ids, keep in zip(missing, prompts, keeps):
                try:
                    fitted = fit_prompt(ids, self.scorer.prefix_ids, budget, len(keep))
                except ValueError as error:
                    raise ValueError(f"{error} (prompt: {_preview(example.prompt)})") from None
                self._cache[example] = fitted
        return [self._cache[e] for e in examples]


def generate_answers(
    model: PreTrainedModel,
    scorer: CandidateScorer,
    encoder: PromptEncoder,
    examples: Sequence[GenerativeExample],
    batch_size: int = 16,
    *,
    with_losses: bool = True,
    progress: bool = False,
    desc: str = "eval",
    journal: EvalJournal | None = None,
) -> Generations:
    """Greedy answers (and per-example losses) in eval mode, no autograd; the model's
    previous mode is restored. Examples are batched by prompt length. With a `journal`,
    batches it holds are taken from it and each new batch is kept in it."""
    if not examples:
        raise ValueError("cannot evaluate on no examples")
    prompts = encoder.encode(examples)
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    texts = [""] * len(examples)
    losses = [float("nan")] * len(examples)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(total=len(examples), desc=desc, disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                rows = journal.recorded(chunk) if journal is not None else None
                if rows is None:
                    answers = greedy_generate(
                        model,
                        scorer.tokenizer,
                        [prompts[i] for i in chunk],
                        [examples[i].stop_marker for i in chunk],
                        encoder.max_new_tokens,
                        pad_id=scorer.pad_id,
                    )
                    chunk_losses = [float("nan")] * len(chunk)
                    if with_losses:
                        batch = scorer.batch([examples[i] for i in chunk])
                        chunk_losses = scorer.scores_and_losses(batch).losses.tolist()
                    rows = [[text, loss] for text, loss in zip(answers, chunk_losses)]
                    if journal is not None:
                        journal.record(chunk, rows)
                for i, (text, loss) in zip(chunk, rows):
                    texts[i], losses[i] = text, loss
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    return Generations(texts, losses)


def generation_metrics(
    examples: Sequence[GenerativeExample], generations: Generations
) -> dict[str, float]:
    """F1, exact match, mean loss and the number of examples."""
    return answer_metrics(generations.texts, [e.answers for e in examples]) | {
        "loss": sum(generations.losses) / len(examples),
        "n_examples": float(len(examples)),
    }


def _preview(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


__all__ += ["DEFAULT_MAX_NEW_TOKENS"]
