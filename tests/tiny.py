"""Tiny random models from real transformers configs, built in memory (no hub)."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 64


def tiny_model(arch: str, seed: int = 0) -> nn.Module:
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_hidden_layers=2)
    if arch == "llama":
        cfg = tf.LlamaConfig(
            **common, intermediate_size=48, num_key_value_heads=2, tie_word_embeddings=True
        )
        model = tf.LlamaForCausalLM(cfg)
    elif arch == "qwen3":
        cfg = tf.Qwen3Config(
            **common,
            intermediate_size=48,
            num_key_value_heads=2,
            head_dim=8,
            tie_word_embeddings=False,
        )
        model = tf.Qwen3ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_head=4,
            n_layer=2,
            n_positions=64,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        model = tf.GPT2LMHeadModel(cfg)
    elif arch == "bert":
        cfg = tf.BertConfig(
            **common,
            intermediate_size=48,
            num_labels=2,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        model = tf.BertForSequenceClassification(cfg)
    else:
        raise ValueError(arch)
    model.eval()
    return model


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
