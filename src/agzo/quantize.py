"""Weight-only int8 / 4-bit quantization of a model's linear layers, for a frozen base.

Methods that train only small float32 terms beside the base weights (ZO-Act's C Vᵣ) can keep
those weights quantized. This module replaces every nn.Linear except the output head with its
bitsandbytes counterpart: int8 with one scale per output row (Linear8bitLt, no outlier
decomposition), or 4-bit NF4 in blocks of 64 (Linear4bit), computing in the weight's original
dtype. Embeddings and the output head (tied to the embeddings in SmolLM2 and Qwen3) stay as
they are, as ZO-Act leaves them. docs/results/quantization-libraries.md says why bitsandbytes.

Needs the `quant` extra: pip install 'agzo[quant]'.
"""

from __future__ import annotations

from typing import Any

from torch import nn

SUPPORTED_BITS = (8, 4)


class QuantizationUnavailable(ImportError):
    """bitsandbytes, which quantization needs, is not installed."""


def _bitsandbytes() -> Any:
    try:
        import bitsandbytes
    except ImportError as error:
        raise QuantizationUnavailable(
            "quantized weights need bitsandbytes: pip install 'agzo[quant]'"
        ) from error
    return bitsandbytes


def _quantized_linear(bnb: Any, linear: nn.Linear, bits: int) -> nn.Module:
    weight = linear.weight.detach()
    has_bias = linear.bias is not None
    quantized: nn.Module
    if bits == 8:
        quantized = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=has_bias,
            has_fp16_weights=False, threshold=0.0,
        )  # fmt: skip
        quantized.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False)
    else:
        quantized = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=has_bias,
            compute_dtype=weight.dtype, quant_type="nf4",
        )  # fmt: skip
        quantized.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type="nf4")
    if linear.bias is not None:
        quantized.bias = linear.bias
    # bitsandbytes quantizes when the parameter is moved to its device, CPU included.
    moved: nn.Module = quantized.to(weight.device)
    return moved


def quantize_linear_weights(model: nn.Module, bits: int) -> nn.Module:
    """Replace the model's nn.Linear layers (output head excepted) by weight-only quantized
    ones, in place; returns the model.

    bits: 8 (int8, per-row scales) or 4 (NF4, blocks of 64).
    Raises ValueError for other widths or a model with no nn.Linear to quantize (GPT-2's
    Conv1D layers are not nn.Linear), QuantizationUnavailable without bitsandbytes.
    """
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")
    bnb = _bitsandbytes()
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and module is not head  # subclasses may be quantized ones
    ]
    if not targets:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear layers to quantize besides its output head"
        )
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _quantized_linear(bnb, linear, bits))
    return model


def is_quantized(module: nn.Module) -> bool:
    """Whether `module` is a layer `quantize_linear_weights` made (False without bitsandbytes)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    return isinstance(module, bnb.nn.Linear8bitLt | bnb.nn.Linear4bit)
