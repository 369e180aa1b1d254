"""The training loss and the candidate scorer, computed with logits only where needed.

Every task yields `Example(prompt, candidates, label)`. A candidate's score is the mean
log-probability per token of its tokens given the prompt (for a single-token candidate this
is simply its log-probability; MeZO also averages over multi-token candidates, so long
candidates are not penalized for their length). The prediction is the argmax over
candidates. The default training loss ("lm") is the mean over examples of the correct
candidate's per-token mean cross-entropy over the full vocabulary, i.e. minus its score; the
alternative "candidates" loss is the cross-entropy of a softmax over the candidates' scores.

Why two paths. The output head (vocab x hidden; 49,152 x 576 for SmolLM2) dominates a
small model's forward if applied at every position, and we only need a few positions:

- Fast path, when every candidate of every example in a batch is one token: forward the
  left-padded prompts alone with `logits_to_keep=1`, so the head runs once per example,
  then gather the candidate tokens' log-probabilities from one log-softmax.
- General path (multi-token candidates, e.g. COPA): one row per (example, candidate) holding
  prompt + candidate, left-padded so every candidate ends at the last position; the head
  runs only on the last (longest candidate + 1) positions.
- Packed (`pack=True`, in the architectures that allow it; agzo.train.packing): the same
  sequences end to end in rows, without padding between them, the head only at the
  positions scored.

Token boundaries are exact: the prompt is tokenized alone, and a candidate's ids are the
tokens that tokenizing prompt + candidate adds after them. When a merge crosses the boundary
(the joint tokenization does not start with the prompt's ids) the candidate is tokenized on
its own and concatenated. Long prompts are truncated from the left (keeping the question at
their end) so that prompt + longest candidate fits `max_length`; candidates never are.

Usage::

    scorer = CandidateScorer(model, tokenizer, max_length=512)
    batch = scorer.batch(examples)      # encode once (cached), reuse across steps
    loss = scorer.loss(batch)           # scalar; under no_grad for ZO, autograd for backprop
    scored = scorer.scores_and_losses(batch)  # every candidate's score, per-example losses

(`agzo.train.evaluate.predict` scores whole lists of examples in length-sorted batches.)
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agzo.tasks.base import Example
from agzo.train.packing import (
    PackedPromptBatch,
    PackedSequenceBatch,
    candidate_targets,
    head_at,
    pack_sequences,
    packable,
)

__all__ = [
    "CandidateScorer",
    "EncodedBatch",
    "EncodedExample",
    "LOSS_DESCRIPTIONS",
    "LossKind",
    "PackedPromptBatch",
    "PackedSequenceBatch",
    "PromptBatch",
    "ScoredBatch",
    "SequenceBatch",
]

LossKind = Literal["lm", "candidates"]

# What each training loss measures, in the words a run prints (README: "The two losses").
LOSS_DESCRIPTIONS: dict[str, str] = {
    "lm": (
        "cross-entropy of the correct label word over the whole vocabulary. It also "
        "falls when every label word becomes likelier than the rest of the vocabulary, "
        "which does not change the prediction: judge a run by dev accuracy, or train with "
        "--loss candidates"
    ),
    "candidates": (
        "cross-entropy of a softmax over the label words only: it moves just the gap "
        "between the correct word and the other label words, which decides the prediction"
    ),
}


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example: the (truncated) prompt, shared by all its candidates."""

    prompt_ids: tuple[int, ...]
    candidate_ids: tuple[tuple[int, ...], ...]
    label: int

    @property
    def single_token(self) -> bool:
        return all(len(ids) == 1 for ids in self.candidate_ids)

    @property
    def length(self) -> int:
        """Longest prompt + candidate sequence, in tokens."""
        return len(self.prompt_ids) + max(len(ids) for ids in self.candidate_ids)


@dataclass(frozen=True)
class PromptBatch:
    """Fast-path batch: one left-padded row per example holding only its prompt."""

    input_ids: Tensor  # [n_examples, seq]
    attention_mask: Tensor  # [n_examples, seq], 0 on left padding
    candidate_ids: Tensor  # [n_examples, n_candidates], the single token of each candidate
    candidate_mask: Tensor  # [n_examples, n_candidates], False where an example has fewer
    labels: Tensor  # [n_examples]

    @property
    def n_examples(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class SequenceBatch:
    """General-path batch: one left-padded row per (example, candidate), prompt + candidate.

    Left padding aligns every candidate's end with the last column, so the candidate tokens
    of row r are the last `target_mask[r].sum()` entries of `targets[r]`, which holds the
    last `width` tokens of the row (width = the longest candidate).
    """

    input_ids: Tensor  # [rows, seq]
    attention_mask: Tensor  # [rows, seq]
    targets: Tensor  # [rows, width], input_ids[:, -width:]
    target_mask: Tensor  # [rows, width], True on candidate tokens
    score_index: Tensor  # [n_examples, n_candidates], row of each candidate, -1 where absent
    label_rows: Tensor  # [n_examples], row of each example's correct candidate
    labels: Tensor  # [n_examples]

    @property
    def n_examples(self) -> int:
        return int(self.labels.shape[0])

    def label_rows_only(self) -> SequenceBatch:
        """The rows of the correct candidates, with columns that became all padding dropped.

        Training with the "lm" loss needs only these rows: forwarding them alone costs
        1/n_candidates of scoring every candidate.
        """
        rows = self.label_rows
        attention_mask = self.attention_mask[rows]
        target_mask = self.target_mask[rows]
        seq = int(attention_mask.sum(dim=1).max())
        width = int(target_mask.sum(dim=1).max())
        return SequenceBatch(
            input_ids=self.input_ids[rows][:, -seq:],
            attention_mask=attention_mask[:, -seq:],
            targets=self.targets[rows][:, -width:],
            target_mask=target_mask[:, -width:],
            score_index=torch.arange(len(rows), device=rows.device).unsqueeze(1),
            label_rows=torch.arange(len(rows), device=rows.device),
            labels=torch.zeros_like(self.labels),
        )


EncodedBatch = PromptBatch | PackedPromptBatch | SequenceBatch | PackedSequenceBatch


@dataclass(frozen=True)
class ScoredBatch:
    """Scores of every candidate and the per-example losses, from one forward."""

    scores: Tensor  # [n_examples, n_candidates], -inf where an example has fewer
    losses: Tensor  # [n_examples]


class CandidateScorer:
    """Scores candidates and computes the training loss for a causal LM.

    Encodings are cached per Example (examples are frozen dataclasses), since the same
    examples are scored at every step; the cache grows with the distinct examples seen
    (`clear_cache` frees it). `loss` and `scores` follow the caller's autograd
    mode: under `torch.no_grad()` for zeroth-order steps, with autograd for backprop. They
    also run in whatever train/eval mode the model is in; zeroth-order estimators want
    eval mode, so that dropout does not differ between the two passes of a difference.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int | None = None,
        loss_kind: LossKind = "lm",
        add_special_tokens: bool = True,
        pack: bool = False,
    ) -> None:
        if loss_kind not in ("lm", "candidates"):
            raise ValueError(f"loss_kind must be 'lm' or 'candidates', got {loss_kind!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length or _model_max_length(model)
        self.loss_kind: LossKind = loss_kind
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # BOS-like tokens the tokenizer puts before a text; suffixes (EOS, SEP) are dropped,
        # since the candidate has to follow the prompt directly.
        self.prefix_ids = _special_prefix(tokenizer) if add_special_tokens else ()
        self._cache: dict[Example, EncodedExample] = {}
        self._forward_kwargs = _forward_parameters(model)
        # Packed rows asked for; each batch packs where the model allows it then (an
        # offloaded model gets accelerate's hooks after the scorer is made).
        self.pack = pack

    # ------------------------------------------------------------------ encoding

    def encode(self, examples: Sequence[Example]) -> list[EncodedExample]:
        """Token ids of each example, from the cache or tokenized now (in one batch call)."""
        missing = list(dict.fromkeys(e for e in examples if e not in self._cache))
        if missing:
            for example, encoded in zip(missing, self._tokenize(missing)):
                self._cache[example] = encoded
        return [self._cache[e] for e in examples]

    def clear_cache(self) -> None:
        self._cache.clear()

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _tokenize(self, examples: list[Example]) -> list[EncodedExample]:
        prompts = self._token_ids([e.prompt for e in examples])
        joints = self._token_ids([e.prompt + c for e in examples for c in e.candidates])
        encoded: list[EncodedExample] = []
        position = 0
        for example, prompt in zip(examples, prompts):
            candidates = []
            for candidate in example.candidates:
                joint = joints[position]
                position += 1
                if joint[: len(prompt)] == prompt:
                    ids = joint[len(prompt) :]
                else:  # a merge crosses the boundary: tokenize the candidate on its own
                    ids = self._token_ids([candidate])[0]
                if not ids:
                    raise ValueError(f"candidate {candidate!r} encodes to no tokens")
                candidates.append(tuple(ids))
            encoded.append(self._truncate(example, prompt, candidates))
        return encoded

    def _truncate(
        self, example: Example, prompt: list[int], candidates: list[tuple[int, ...]]
    ) -> EncodedExample:
        longest = max(len(ids) for ids in candidates)
        budget = self.max_length - longest - len(self.prefix_ids)
        if budget < 1 and prompt:
            raise ValueError(
                f"max_length={self.max_length} leaves no room for the prompt next to a "
                f"{longest}-token candidate of {example.candidates!r}"
            )
        kept = tuple(self.prefix_ids) + tuple(prompt[-budget:] if budget > 0 else ())
        if not kept:
            raise ValueError(f"empty prompt and no BOS token: nothing to condition on ({example})")
        return EncodedExample(kept, tuple(candidates), example.label)

    # ------------------------------------------------------------------ batching

    @property
    def device(self) -> torch.device:
        param = next(self.model.parameters())
        # Offloaded weights wait on "meta" between forwards: inputs then start on the
        # host, and accelerate's hooks move them to the device that computes.
        return torch.device("cpu") if param.is_meta else param.device

    def batch(
        self,
        examples: Sequence[Example],
        *,
        fast: bool = True,
        pack: bool | None = None,
        labels_only: bool = False,
    ) -> EncodedBatch:
        """Tensors for `examples` on the model's device.

        fast: use the prompt-only layout when every candidate is a single token (set False
        to force the general layout, e.g. to test one against the other).
        pack: lay the sequences end to end in rows without padding between them
        (agzo.train.packing); None: as the scorer was made. Whoever reads the activations
        of the model call itself, not through an explicit token mask, needs pack=False.
        labels_only: in the general layout, only each example's correct candidate (all
        the "lm" loss needs: 1/n_candidates of the work); its scores then have one column.
        """
        if not examples:
            raise ValueError("cannot build a batch from no examples")
        encoded = self.encode(examples)
        packed = (self.pack if pack is None else pack) and packable(self.model)
        if fast and all(e.single_token for e in encoded):
            return self._packed_prompt_batch(encoded) if packed else self._prompt_batch(encoded)
        if packed:
            return self._packed_sequence_batch(encoded, labels_only)
        batch = self._sequence_batch(encoded)
        return batch.label_rows_only() if labels_only else batch

    def _left_pad(self, rows: list[tuple[int, ...]]) -> tuple[Tensor, Tensor]:
        seq = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), seq), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), seq), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, seq - len(row) :] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, seq - len(row) :] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def _prompt_batch(self, encoded: list[EncodedExample]) -> PromptBatch:
        input_ids, attention_mask = self._left_pad([e.prompt_ids for e in encoded])
        return PromptBatch(
            input_ids=input_ids, attention_mask=attention_mask, **self._candidates(encoded)
        )

    def _packed_prompt_batch(self, encoded: list[EncodedExample]) -> PackedPromptBatch:
        rows = pack_sequences([e.prompt_ids for e in encoded], self.pad_id)
        return PackedPromptBatch(
            **{name: tensor.to(self.device) for name, tensor in rows.items()},
            **self._candidates(encoded),
        )

    def _packed_sequence_batch(
        self, encoded: list[EncodedExample], labels_only: bool
    ) -> PackedSequenceBatch:
        sequences: list[tuple[int, ...]] = []
        counts: list[int] = []
        width = 1 if labels_only else max(len(e.candidate_ids) for e in encoded)
        score_index = torch.full((len(encoded), width), -1, dtype=torch.long)
        for i, example in enumerate(encoded):
            kept = [example.label] if labels_only else range(len(example.candidate_ids))
            for column, k in enumerate(kept):
                score_index[i, column] = len(sequences)
                sequences.append(example.prompt_ids + example.candidate_ids[k])
                counts.append(len(example.candidate_ids[k]))
        rows = pack_sequences(sequences, self.pad_id)
        tensors = {
            **{name: rows[name] for name in ("input_ids", "position_ids", "attention_mask")},
            **candidate_targets(rows, counts),
            "target_counts": torch.tensor(counts),
            "score_index": score_index,
        }
        labels = [0 if labels_only else e.label for e in encoded]
        return PackedSequenceBatch(
            **{name: tensor.to(self.device) for name, tensor in tensors.items()},
            labels=torch.tensor(labels, device=self.device),
        )

    def _candidates(self, encoded: list[EncodedExample]) -> dict[str, Tensor]:
        """Single-token candidates: candidate_ids, candidate_mask and labels."""
        n_candidates = max(len(e.candidate_ids) for e in encoded)
        candidate_ids = torch.zeros((len(encoded), n_candidates), dtype=torch.long)
        candidate_mask = torch.zeros((len(encoded), n_candidates), dtype=torch.bool)
        for i, example in enumerate(encoded):
            k = len(example.candidate_ids)
            candidate_ids[i, :k] = torch.tensor([ids[0] for ids in example.candidate_ids])
            candidate_mask[i, :k] = True
        return {
            "candidate_ids": candidate_ids.to(self.device),
            "candidate_mask": candidate_mask.to(self.device),
            "labels": torch.tensor([e.label for e in encoded], device=self.device),
        }

    def _sequence_batch(self, encoded: list[EncodedExample]) -> SequenceBatch:
        rows: list[tuple[int, ...]] = []
        lengths: list[int] = []
        n_candidates = max(len(e.candidate_ids) for e in encoded)
        score_index = torch.full((len(encoded), n_candidates), -1, dtype=torch.long)
        for i, example in enumerate(encoded):
            for k, ids in enumerate(example.candidate_ids):
                score_index[i, k] = len(rows)
                rows.append(example.prompt_ids + ids)
                lengths.append(len(ids))
        input_ids, attention_mask = self._left_pad(rows)
        width = max(lengths)
        target_mask = torch.arange(width).unsqueeze(0) >= width - torch.tensor(lengths)[:, None]
        score_index = score_index.to(self.device)
        labels = torch.tensor([e.label for e in encoded], device=self.device)
        return SequenceBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            targets=input_ids[:, -width:],
            target_mask=target_mask.to(self.device),
            score_index=score_index,
            label_rows=score_index.gather(1, labels[:, None]).squeeze(1),
            labels=labels,
        )

    # ------------------------------------------------------------------ forward

    def _last_logits(self, input_ids: Tensor, attention_mask: Tensor, n_last: int) -> Tensor:
        """Logits [rows, n_last, vocab] at the last `n_last` positions only."""
        kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": False}
        if "position_ids" in self._forward_kwargs:
            # Positions count real tokens only, so left padding does not shift them: models
            # with absolute position embeddings (GPT-2) would otherwise score differently.
            kwargs["position_ids"] = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        keep = self._forward_kwargs & {"logits_to_keep", "num_logits_to_keep"}
        if keep:
            kwargs[keep.pop()] = n_last
            logits: Tensor = self.model(input_ids=input_ids, **kwargs).logits
            return logits[:, -n_last:]  # a model ignoring the argument still gets sliced
        # No logits_to_keep: run the decoder, then apply the head to the kept positions.
        # (Models that post-process logits, e.g. soft-capping, all support logits_to_keep.)
        base: Any = self.model.base_model
        kwargs = {k: v for k, v in kwargs.items() if k in _forward_parameters(base)}
        hidden = base(input_ids=input_ids, **kwargs).last_hidden_state[:, -n_last:]
        head: Any = self.model.get_output_embeddings()
        return head(hidden)

    def _candidate_scores(self, batch: EncodedBatch) -> Tensor:
        """Mean log-probability per candidate token: [n_examples, n_candidates], -inf pads."""
        if isinstance(batch, PackedSequenceBatch):
            return self._packed_sequence_scores(batch)
        if isinstance(batch, PromptBatch | PackedPromptBatch):
            logits = (
                head_at(self.model, batch)
                if isinstance(batch, PackedPromptBatch)
                else self._last_logits(batch.input_ids, batch.attention_mask, 1)[:, -1]
            )
            log_probs = logits.float().log_softmax(dim=-1)
            scores = log_probs.gather(1, batch.candidate_ids)
            return scores.masked_fill(~batch.candidate_mask, float("-inf"))
        width = batch.targets.shape[1]
        # Position t predicts token t + 1: the last width + 1 positions cover every
        # candidate token, and the very last position predicts nothing we need.
        logits = self._last_logits(batch.input_ids, batch.attention_mask, width + 1)[:, :-1]
        log_probs = logits.float().log_softmax(dim=-1)
        token_scores = log_probs.gather(2, batch.targets.unsqueeze(-1)).squeeze(-1)
        # masked_fill, not multiply: a non-finite value at a padding position must not leak.
        token_scores = token_scores.masked_fill(~batch.target_mask, 0.0)
        row_scores = token_scores.sum(dim=1) / batch.target_mask.sum(dim=1)
        return _per_candidate(row_scores, batch.score_index)

    def _packed_sequence_scores(self, batch: PackedSequenceBatch) -> Tensor:
        log_probs = head_at(self.model, batch).float().log_softmax(dim=-1)
        token_scores = log_probs.gather(1, batch.target_ids.unsqueeze(1)).squeeze(1)
        sums = token_scores.new_zeros(batch.target_counts.shape[0])
        sums = sums.index_add(0, batch.target_sequence, token_scores)
        return _per_candidate(sums / batch.target_counts, batch.score_index)

    # ------------------------------------------------------------------ public scoring

    def scores(self, batch: EncodedBatch) -> Tensor:
        """Mean log-probability per token of every candidate: [n_examples, n_candidates]."""
        return self._candidate_scores(batch)

    def _losses(self, scores: Tensor, labels: Tensor) -> Tensor:
        if self.loss_kind == "lm":
            return -scores.gather(1, labels.unsqueeze(1)).squeeze(1)
        return F.cross_entropy(scores, labels, reduction="none")

    def scores_and_losses(self, batch: EncodedBatch) -> ScoredBatch:
        """All candidate scores and per-example losses from a single forward."""
        scores = self._candidate_scores(batch)
        return ScoredBatch(scores=scores, losses=self._losses(scores, batch.labels))

    def loss(self, batch: EncodedBatch) -> Tensor:
        """Scalar training loss: the mean over the batch's examples (see module doc)."""
        if self.loss_kind == "lm" and isinstance(batch, SequenceBatch):
            # Only the correct candidates matter: skip the other rows' forward entirely.
            label_batch = batch.label_rows_only()
            scores = self._candidate_scores(label_batch)
            return -scores.mean()
        return self.scores_and_losses(batch).losses.mean()

    def length_sorted_chunks(self, examples: Sequence[Example], batch_size: int) -> list[list[int]]:
        """Example indices grouped into batches of similar length, to waste little padding."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        encoded = self.encode(examples)
        order = sorted(range(len(examples)), key=lambda i: encoded[i].length)
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _per_candidate(sequence_scores: Tensor, score_index: Tensor) -> Tensor:
    """Scores [n_examples, n_candidates] from one score per scored sequence; -inf where an
    example has fewer candidates (index -1)."""
    gathered = sequence_scores[score_index.clamp(min=0)]
    return gathered.masked_fill(score_index < 0, float("-inf"))


def _model_max_length(model: PreTrainedModel) -> int:
    config = model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _special_prefix(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    probe = "a"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    special = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(special) - len(plain) + 1):
        if special[start : start + len(plain)] == plain:
            return tuple(special[:start])
    return ()


def _forward_parameters(module: Any) -> set[str]:
    # A peft model's forward takes **kwargs and passes them to the model it wraps.
    inner = module.get_base_model() if hasattr(module, "get_base_model") else module
    return set(inspect.signature(inner.forward).parameters)
