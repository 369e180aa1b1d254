"""Batched greedy decoding with a KV cache, for generative tasks.

The prompts of a batch are left-padded so that every row's next token is predicted at the
last column; each step feeds one new token per row and reuses the cached keys and values,
so a step costs one token's forward, not the whole sequence's. A row stops at EOS or once
its text contains its stop marker ("\\n" for MeZO's SQuAD/DROP format, a chat template's
end-of-turn); the batch stops when every row has stopped or after `max_new_tokens`.

Prompts are truncated from the left to leave room for the new tokens, keeping the end of
the prompt (the question) and any BOS-like prefix the tokenizer adds.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "cut_at_stop", "fit_prompt", "greedy_generate"]

# MeZO's setting for SQuAD and DROP.
DEFAULT_MAX_NEW_TOKENS = 50


def fit_prompt(
    prompt_ids: Sequence[int],
    prefix_ids: Sequence[int],
    budget: int,
    keep_ids: int = 0,
) -> tuple[int, ...]:
    """`prefix_ids` + the last tokens of `prompt_ids`, `budget` tokens at most.

    keep_ids: how many tokens at the end of the prompt must survive truncation (the
    question); a ValueError when they do not fit, since an answer to a cut question
    means nothing.
    """
    room = budget - len(prefix_ids)
    if room < max(1, keep_ids):
        raise ValueError(
            f"the prompt does not fit even after truncation: {max(1, keep_ids)} tokens must be "
            f"kept (the question), but only {max(room, 0)} remain of the length budget "
            f"{budget}; raise --max-length"
        )
    return tuple(prefix_ids) + tuple(prompt_ids[-room:])


def cut_at_stop(text: str, stop: str) -> tuple[str, bool]:
    """The text before the first `stop` (whitespace-trimmed), and whether it occurred."""
    index = text.find(stop) if stop else -1
    if index < 0:
        return text.strip(), False
    return text[:index].strip(), True


def greedy_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    stops: Sequence[str],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    pad_id: int = 0,
) -> list[str]:
    """The greedy continuation of every prompt (token ids), cut at its stop marker.

    Runs under `torch.no_grad()` in the model's current mode; callers put it in eval mode.
    Rows are independent of each other: padding is masked and positions count only the
    real tokens, so a prompt's answer does not depend on what it is batched with.
    """
    if len(prompts) != len(stops):
        raise ValueError(f"{len(prompts)} prompts but {len(stops)} stop markers")
    if not prompts:
        return []
    device = next(model.parameters()).device
    accepts = set(inspect.signature(model.forward).parameters)
    eos = _eos_ids(tokenizer, model)
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)

    generated: list[list[int]] = [[] for _ in prompts]
    texts = [""] * len(prompts)
    done = [False] * len(prompts)
    past: Any = None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": True}
            if "position_ids" in accepts:
                kwargs["position_ids"] = positions
            if past is not None:
                kwargs["past_key_values"] = past
            elif "logits_to_keep" in accepts:
                kwargs["logits_to_keep"] = 1  # the head only where the next token comes from
            output = model(input_ids=input_ids, **kwargs)
            past = output.past_key_values
            next_ids = output.logits[:, -1].argmax(dim=-1)
            for row, token in enumerate(next_ids.tolist()):
                if done[row]:
                    continue
                if token in eos:
                    done[row] = True
                    continue
                generated[row].append(token)
                texts[row] = str(tokenizer.decode(generated[row], skip_special_tokens=False))
                done[row] = cut_at_stop(texts[row], stops[row])[1]
            if all(done):
                break
            input_ids = next_ids.unsqueeze(1)
            attention_mask = torch.cat(
                [attention_mask, attention_mask.new_ones((len(prompts), 1))], 1
            )
            positions = positions[:, -1:] + 1
    return [cut_at_stop(text, stop)[0] for text, stop in zip(texts, stops)]


def _eos_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> set[int]:
    """Every id that ends a generation: the tokenizer's EOS and the model's."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids
