"""Packed rows: several sequences end to end in one row, instead of one padded row each.

A batch of left-padded rows computes every padding position in every layer: at batch 16,
about half of the tokens of an SST-2, RTE, CB or BoolQ batch are padding
(docs/RESULTS.md). Packing puts the prompts into rows as wide as the longest one, longest
first, each into the first row with room; each prompt's positions restart at 0, so it
sees the positions it would see alone. Only the rows' tails are padding. Multi-token
candidates pack the same way, each (prompt + candidate) a sequence of its own, and the
output head runs only at the positions that predict a candidate token.

Transformers keeps packed prompts apart by their position ids when the call carries no
attention mask: a new sequence starts wherever the positions do not rise by one. The
padding at a row's tail restarts its positions too, so it is a sequence of its own that
no prompt attends to. This holds in the architectures of PACKABLE_ARCHITECTURES, each
checked against the padded layout in the tests; any other model keeps padded rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from agzo.observe.forward_mask import token_mask_of_call

# Decoders whose attention transformers masks by packed position ids, and whose logits
# are the output head applied to the last hidden state (no soft-capping or scaling), so
# that scoring a packed prompt needs the head at its last position only.
PACKABLE_ARCHITECTURES = frozenset({"llama", "qwen3", "gpt2"})


def packable(model: Any) -> bool:
    """Whether `model` (a transformers causal LM, or a peft model around one) packs.

    Not when accelerate placed it (`--device-map`, `--offload`): the hook on the whole
    model that brings outputs back to the inputs' device is passed by, since packed rows
    call the decoder and the head themselves.
    """
    if getattr(model, "_hf_hook", None) is not None:
        return False
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in PACKABLE_ARCHITECTURES


@dataclass(frozen=True)
class PackedPromptBatch:
    """Single-token candidates' batch, prompts packed end to end into rows."""

    input_ids: Tensor  # [rows, width]
    position_ids: Tensor  # [rows, width], from 0 at every prompt and at a row's padding
    # 1 on the prompts' tokens, 0 on a row's padding. The model is called without it (a
    # mask would hide the packing); AGZO's capture takes it to leave padding out.
    attention_mask: Tensor  # [rows, width]
    last_row: Tensor  # [n_examples], the row of each prompt
    last_column: Tensor  # [n_examples], the column of each prompt's last token
    candidate_ids: Tensor  # [n_examples, n_candidates]
    candidate_mask: Tensor  # [n_examples, n_candidates]
    labels: Tensor  # [n_examples]

    @property
    def n_examples(self) -> int:
        return int(self.labels.shape[0])


def first_fit_rows(lengths: Sequence[int]) -> list[list[int]]:
    """Indices of the sequences in each row: longest first, each into the first row with
    room (first-fit decreasing); a row is as wide as the longest sequence."""
    if not lengths:
        return []
    width = max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for row, free in enumerate(room):
            if lengths[index] <= free:
                rows[row].append(index)
                room[row] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(width - lengths[index])
    return rows


def pack_sequences(sequences: Sequence[Sequence[int]], pad_id: int) -> dict[str, Tensor]:
    """input_ids, position_ids, attention_mask, last_row and last_column of `sequences`
    packed into rows (on the CPU)."""
    lengths = [len(sequence) for sequence in sequences]
    if not lengths or min(lengths) < 1:
        raise ValueError("every sequence needs at least one token to be packed")
    rows = first_fit_rows(lengths)
    width = max(lengths)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    last_row = torch.zeros(len(sequences), dtype=torch.long)
    last_column = torch.zeros(len(sequences), dtype=torch.long)
    for row, members in enumerate(rows):
        column = 0
        for index in members:
            end = column + lengths[index]
            input_ids[row, column:end] = torch.tensor(sequences[index], dtype=torch.long)
            position_ids[row, column:end] = torch.arange(lengths[index])
            attention_mask[row, column:end] = 1
            last_row[index], last_column[index] = row, end - 1
            column = end
        position_ids[row, column:] = torch.arange(width - column)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": attention_mask,
        "last_row": last_row,
        "last_column": last_column,
    }


@dataclass(frozen=True)
class PackedSequenceBatch:
    """Multi-token candidates' batch: each candidate's prompt + candidate a sequence,
    packed into rows. Each candidate token is listed with the position that predicts it
    (the one before it)."""

    input_ids: Tensor  # [rows, width]
    position_ids: Tensor  # [rows, width]
    attention_mask: Tensor  # [rows, width], 1 on the sequences' tokens
    predict_row: Tensor  # [n_tokens]
    predict_column: Tensor  # [n_tokens]
    target_ids: Tensor  # [n_tokens], the candidate tokens
    target_sequence: Tensor  # [n_tokens], the sequence each token belongs to
    target_counts: Tensor  # [n_sequences], tokens per candidate
    score_index: Tensor  # [n_examples, n_candidates], sequence of each, -1 where absent
    labels: Tensor  # [n_examples]

    @property
    def n_examples(self) -> int:
        return int(self.labels.shape[0])


def candidate_targets(packed: dict[str, Tensor], counts: Sequence[int]) -> dict[str, Tensor]:
    """predict_row, predict_column, target_ids and target_sequence of packed sequences
    whose last `counts[s]` tokens are sequence s's candidate."""
    rows: list[int] = []
    columns: list[int] = []
    owners: list[int] = []
    for sequence, count in enumerate(counts):
        row, end = int(packed["last_row"][sequence]), int(packed["last_column"][sequence])
        rows += [row] * count
        columns += range(end - count, end)  # position t predicts the token at t + 1
        owners += [sequence] * count
    predict_row, predict_column = torch.tensor(rows), torch.tensor(columns)
    return {
        "predict_row": predict_row,
        "predict_column": predict_column,
        "target_ids": packed["input_ids"][predict_row, predict_column + 1],
        "target_sequence": torch.tensor(owners),
    }


def head_at(model: Any, batch: PackedPromptBatch | PackedSequenceBatch) -> Tensor:
    """Logits at the positions the batch scores: the decoder over the packed rows, then
    the output head at those positions only. [n_examples, vocab] for prompts (their last
    token), [n_tokens, vocab] for sequences (the positions predicting candidate tokens)."""
    # The call carries no attention mask, so its token mask is published for observers
    # (AGZO's capture), which leave the rows' padding out with it.
    with token_mask_of_call(batch.attention_mask):
        hidden = model.get_decoder()(
            input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
        ).last_hidden_state
    if isinstance(batch, PackedPromptBatch):
        kept = hidden[batch.last_row, batch.last_column]
    else:
        kept = hidden[batch.predict_row, batch.predict_column]
    logits: Tensor = model.get_output_embeddings()(kept)
    return logits
