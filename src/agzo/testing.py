"""Tiny random models for tests and examples, built in memory from real configs.

`tiny_causal_lm` (Llama, Qwen3, GPT-2) and `tiny_encoder` (BERT) build small random models
over `tiny_tokenizer`, a byte-level tokenizer constructed in code, so tests exercise the
real transformers architectures without any download.
"""

from __future__ import annotations

import functools
from typing import Any

from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from agzo.seeding import seeded_global_rng

__all__ = [
    "TINY_CAUSAL_ARCHS",
    "TINY_WORDS",
    "tiny_causal_lm",
    "tiny_encoder",
    "tiny_tokenizer",
    "tiny_vocab_size",
]


# Whole words (with their leading space, "Ġ" in byte-level BPE) that the tiny tokenizer
# encodes as one token, so tests can exercise the single-token scoring path. Everything
# else falls back to one token per byte, so arbitrary text still tokenizes losslessly.
TINY_WORDS: tuple[str, ...] = (
    "positive",
    "negative",
    "great",
    "terrible",
    "good",
    "bad",
    "yes",
    "no",
    "maybe",
    "true",
    "false",
    "neither",
    "because",
    "so",
    "the",
    "was",
    "It",
)
_TINY_SPECIALS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2
TINY_CAUSAL_ARCHS: tuple[str, ...] = ("llama", "qwen3", "gpt2")


@functools.lru_cache(maxsize=1)
def _tiny_bpe_tables() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    from tokenizers import pre_tokenizers

    vocab: dict[str, int] = {token: index for index, token in enumerate(_TINY_SPECIALS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        # A chain of merges that grows the word from its space prefix one letter at a time:
        # every merge extends a word prefix, so merges of different words never conflict.
        piece = "Ġ"
        for letter in word:
            if piece + letter not in vocab:
                vocab[piece + letter] = len(vocab)
                merges.append((piece, letter))
            piece += letter
    return vocab, tuple(merges)


def tiny_vocab_size() -> int:
    """Vocabulary size of `tiny_tokenizer()`, the default for the tiny models."""
    return len(_tiny_bpe_tables()[0])


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer built in code (no download): `<s>` prefix, left padding.

    Each word of TINY_WORDS preceded by a space is a single token; any other text falls back
    to byte tokens. Adds a BOS token like Llama tokenizers do, so scoring code is tested on
    special-token prefixes too.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab, merges = _tiny_bpe_tables()
    backend = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    bos_id = vocab["<s>"]
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
        truncation_side="left",
        model_max_length=256,
    )
    return tokenizer


def _tiny_special_ids() -> dict[str, int]:
    vocab = _tiny_bpe_tables()[0]
    return {
        "pad_token_id": vocab["<pad>"],
        "bos_token_id": vocab["<s>"],
        "eos_token_id": vocab["</s>"],
    }


def _tiny_config(arch: str, vocab_size: int, overrides: dict[str, Any]) -> PretrainedConfig:
    common: dict[str, Any] = {"vocab_size": vocab_size, **_tiny_special_ids()}
    if arch == "llama":
        settings: dict[str, Any] = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
            "tie_word_embeddings": True,  # like SmolLM2
        }
        return LlamaConfig(**(common | settings | overrides))
    if arch == "qwen3":
        settings = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "max_position_embeddings": 256,
            "tie_word_embeddings": True,  # like Qwen3-0.6B
        }
        return Qwen3Config(**(common | settings | overrides))
    if arch == "gpt2":
        settings = {
            "n_embd": 32,
            "n_inner": 64,
            "n_layer": 2,
            "n_head": 4,
            "n_positions": 256,
            # No dropout: the same weights must give the same loss in train mode too.
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
        }
        return GPT2Config(**(common | settings | overrides))
    if arch == "bert":
        settings = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 256,
            "num_labels": 2,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        }
        return BertConfig(**(common | settings | overrides))
    raise ValueError(f"unknown tiny architecture {arch!r}; choose from {TINY_CAUSAL_ARCHS} or bert")


_CAUSAL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "llama": LlamaForCausalLM,
    "qwen3": Qwen3ForCausalLM,
    "gpt2": GPT2LMHeadModel,  # attention and MLP use transformers' Conv1D (weight transposed)
}


def _build_seeded(model_class: type[PreTrainedModel], config: PretrainedConfig, seed: int) -> Any:
    # The seed fixes the weights without disturbing the caller's global RNG.
    with seeded_global_rng(seed):
        model = model_class(config)
    return model.eval()


def tiny_causal_lm(
    arch: str = "llama",
    seed: int = 0,
    vocab_size: int | None = None,
    **overrides: Any,
) -> PreTrainedModel:
    """A tiny random causal LM (2 layers, hidden 32) of a real transformers architecture.

    arch: "llama", "qwen3" or "gpt2". vocab_size defaults to the tiny tokenizer's.
    overrides: config fields to change (e.g. num_hidden_layers=1, attn_implementation="eager").
    Returned in eval mode, like `from_pretrained` models.
    """
    if arch not in _CAUSAL_CLASSES:
        raise ValueError(f"unknown causal architecture {arch!r}; choose from {TINY_CAUSAL_ARCHS}")
    config = _tiny_config(arch, vocab_size or tiny_vocab_size(), overrides)
    model: PreTrainedModel = _build_seeded(_CAUSAL_CLASSES[arch], config, seed)
    return model


def tiny_encoder(
    arch: str = "bert",
    seed: int = 0,
    vocab_size: int | None = None,
    **overrides: Any,
) -> PreTrainedModel:
    """A tiny random BERT encoder with a sequence-classification head (num_labels=2)."""
    if arch != "bert":
        raise ValueError(f"unknown encoder architecture {arch!r}; only 'bert' is available")
    config = _tiny_config(arch, vocab_size or tiny_vocab_size(), overrides)
    model: PreTrainedModel = _build_seeded(BertForSequenceClassification, config, seed)
    return model
