"""Weight-only int8 / 4-bit quantization of linear layers (bitsandbytes, the `quant` extra)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch
from torch import nn

from agzo.params import select_named_parameters
from agzo.quantize import QuantizationUnavailable, is_quantized, quantize_linear_weights
from agzo.testing import tiny_causal_lm


@pytest.fixture
def bnb() -> Any:
    return pytest.importorskip("bitsandbytes")


def _ids() -> torch.Tensor:
    return torch.randint(5, 200, (2, 10), generator=torch.Generator().manual_seed(0))


def test_only_eight_and_four_bits() -> None:
    for bits in (2, 3, 16, "8"):
        with pytest.raises(ValueError, match="bits must be 8 or 4"):
            quantize_linear_weights(tiny_causal_lm("llama"), bits)  # type: ignore[arg-type]


def test_missing_library_names_the_pip_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(QuantizationUnavailable, match=r"pip install 'agzo\[quant\]'"):
        quantize_linear_weights(tiny_causal_lm("llama"), 8)
    assert not is_quantized(nn.Linear(4, 4))


@pytest.mark.parametrize(("bits", "min_cosine"), [(8, 0.999), (4, 0.95)])
def test_decoder_linears_are_quantized_and_the_logits_stay_close(
    bnb: Any, bits: int, min_cosine: float
) -> None:
    reference = tiny_causal_lm("llama")
    model = quantize_linear_weights(tiny_causal_lm("llama"), bits)
    linear_names = [n for n, m in reference.named_modules() if isinstance(m, nn.Linear)]
    assert "lm_head" in linear_names and len(linear_names) == 15
    for name in linear_names:
        quantized = model.get_submodule(name)
        assert is_quantized(quantized) == (name != "lm_head"), name
    # The head stays float and tied to the embeddings.
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.model.embed_tokens.weight.dtype == torch.float32

    q_proj = model.model.layers[0].self_attn.q_proj
    assert q_proj.weight.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert q_proj.weight.numel() * q_proj.weight.element_size() == 32 * 32 * bits // 8

    with torch.no_grad():
        expected = reference(_ids()).logits
        logits = model(_ids()).logits
    assert logits.dtype == torch.float32
    cosine = nn.functional.cosine_similarity(logits, expected, dim=-1)
    assert float(cosine.min()) > min_cosine
    assert not torch.equal(logits, expected)  # the weights really are rounded


def test_quantized_weights_are_never_selected_for_training(bnb: Any) -> None:
    model = quantize_linear_weights(tiny_causal_lm("llama"), 4)
    selected = {name for name, _ in select_named_parameters(model)}
    assert selected  # embeddings and norms stay trainable
    assert not any("proj" in name for name in selected)


def test_a_hook_sees_each_quantized_layers_input(bnb: Any) -> None:
    reference = tiny_causal_lm("llama")
    model = quantize_linear_weights(tiny_causal_lm("llama"), 8)
    inputs: dict[str, torch.Tensor] = {}
    for name, module in [("float", reference), ("int8", model)]:
        module.model.layers[0].self_attn.q_proj.register_forward_hook(
            lambda _m, args, _out, key=name: inputs.setdefault(key, args[0])
        )
        with torch.no_grad():
            module(_ids())
    # The first projection's input precedes every quantized weight: identical in both models.
    assert torch.equal(inputs["int8"], inputs["float"])


def test_a_model_without_linear_layers_is_refused(bnb: Any) -> None:
    with pytest.raises(ValueError, match="no nn.Linear layers to quantize"):
        quantize_linear_weights(tiny_causal_lm("gpt2"), 8)  # Conv1D, not nn.Linear


def test_memory_probe_measures_zo_act_on_a_quantized_base(bnb: Any) -> None:
    """Both workers quantize their base: the ratio compares like with like."""
    from agzo.probes.memory import measure_memory, run_worker

    rows = measure_memory("tiny", [2], [8], ("inference", "zo-act"), quantize=4)
    assert [r.config for r in rows] == ["inference", "zo-act"]
    assert all(r.peak_bytes and r.error is None for r in rows), rows
    _, state = run_worker("zo-act", "tiny", 2, 8, "float32", "cpu", quantize=4)
    assert state > 0  # Adam's moments on C
