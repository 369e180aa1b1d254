"""Real-size model shapes with random weights, for speed and memory measurements.

Cost does not depend on the weights' values, so a config is enough: no download, and
the same shape on every machine.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    # A toy shape for tests of the instruments themselves.
    "tiny": (
        "llama",
        dict(
            vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        ),
    ),
    "smollm2-135m": (
        "llama",
        dict(
            vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
        ),
    ),
    "qwen3-0.6b": (
        "qwen3",
        dict(
            vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128,
            tie_word_embeddings=True,
        ),
    ),
    "qwen3-4b": (
        "qwen3",
        dict(
            vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
            num_attention_heads=32, num_key_value_heads=8, head_dim=128,
            tie_word_embeddings=True,
        ),
    ),
}  # fmt: skip


def build_shape(name: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """A causal LM of the named shape with random weights, in eval mode."""
    import transformers as tf

    if name not in SHAPES:
        raise ValueError(f"unknown model shape {name!r}; choose one of {sorted(SHAPES)}")
    family, kwargs = SHAPES[name]
    with torch.device(device):
        if family == "llama":
            model: nn.Module = tf.LlamaForCausalLM(
                tf.LlamaConfig(**kwargs, max_position_embeddings=4096)
            )
        else:
            model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**kwargs, max_position_embeddings=4096))
    return model.to(dtype).eval()


def random_batch(
    model: nn.Module, batch: int, seq: int, device: str = "cpu", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, one target token per row)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = int(getattr(model, "config").vocab_size)  # noqa: B009 (nn.Module has no typed config)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    targets = torch.randint(0, vocab, (batch,), generator=gen)
    return ids.to(device), torch.ones_like(ids).to(device), targets.to(device)


def last_token_loss(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor):
    """Cross-entropy of one target per row at the last position (the head runs once per row)."""

    def closure() -> torch.Tensor:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
        return nn.functional.cross_entropy(logits.float(), targets)

    return closure
