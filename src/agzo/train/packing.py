"""Packed rows: several prompts end to end in one row, instead of one padded row each.

A batch of left-padded rows computes every padding position in every layer: at batch 16,
about half of the tokens of an SST-2, RTE, CB or BoolQ batch are padding
(docs/RESULTS.md). Packing puts the prompts into rows as wide as the longest one, longest
first, each into the first row with room; each prompt's positions restart at 0, so it
sees the positions it would see alone. Only the rows' tails are padding.

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

# Decoders whose attention transformers masks by packed position ids, and whose logits
# are the output head applied to the last hidden state (no soft-capping or scaling), so
# that scoring a packed prompt needs the head at its last position only.
PACKABLE_ARCHITECTURES = frozenset({"llama", "qwen3", "gpt2"})


def packable(model: Any) -> bool:
    """Whether `model` (a transformers causal LM, or a peft model around one) packs."""
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


def pack_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> dict[str, Tensor]:
    """input_ids, position_ids, attention_mask, last_row and last_column of `prompts`
    packed into rows (on the CPU)."""
    lengths = [len(p) for p in prompts]
    if not lengths or min(lengths) < 1:
        raise ValueError("every prompt needs at least one token to be packed")
    rows = first_fit_rows(lengths)
    width = max(lengths)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    last_row = torch.zeros(len(prompts), dtype=torch.long)
    last_column = torch.zeros(len(prompts), dtype=torch.long)
    for row, members in enumerate(rows):
        column = 0
        for index in members:
            end = column + lengths[index]
            input_ids[row, column:end] = torch.tensor(prompts[index], dtype=torch.long)
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


def last_token_logits(model: Any, batch: PackedPromptBatch) -> Tensor:
    """Logits [n_examples, vocab] at each packed prompt's last token: the decoder over the
    rows, then the output head at those positions only."""
    hidden = model.get_decoder()(
        input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False
    ).last_hidden_state
    head = model.get_output_embeddings()
    logits: Tensor = head(hidden[batch.last_row, batch.last_column])
    return logits
