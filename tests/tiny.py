"""Tiny random models from real transformers configs, built in memory (no hub)."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 64


def tiny_model(arch: str, seed: int = 0) -> nn.Module:
    """agzo.models' tiny builders over a 64-token vocabulary; Qwen3 untied, so that the
    head and the embedding are probed as separate tensors."""
    from agzo.testing import tiny_causal_lm, tiny_encoder

    if arch == "bert":
        return tiny_encoder("bert", seed=seed, vocab_size=VOCAB, num_labels=2)
    overrides = {"tie_word_embeddings": False} if arch == "qwen3" else {}
    return tiny_causal_lm(arch, seed=seed, vocab_size=VOCAB, **overrides)


def batch(arch: str, seed: int = 1, n: int = 4, length: int = 10, pad: int = 0):
    """Random token ids; the first `pad` positions of odd rows are left padding."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=gen)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[1::2, :pad] = 0
    labels = torch.randint(0, 2, (n,), generator=gen) if arch == "bert" else ids
    return ids, mask, labels


def loss_fn(model: nn.Module, arch: str, ids, mask, labels):
    """Cross-entropy in float64 for float64 models (transformers' built-in loss upcasts to
    float32, whose rounding a forward difference would amplify by 1/eps), float32 else."""

    def closure():
        logits = model(input_ids=ids, attention_mask=mask).logits
        if logits.dtype in (torch.bfloat16, torch.float16):
            logits = logits.float()  # a bf16 loss resolves only ~1% changes
        if arch == "bert":
            return nn.functional.cross_entropy(logits, labels)
        targets = labels.masked_fill(mask == 0, -100)[:, 1:]
        return nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
        )

    return closure
