"""Loading, saving and the tiny model builders; SmolLM2 end to end behind `-m slow`."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from agzo import models
from agzo.models import (
    GGUF_INSTALL,
    BuiltinModel,
    ModelLoadError,
    load_model,
    resolve_dtype,
    save_model,
)
from agzo.tasks.base import Example
from agzo.testing import tiny_causal_lm, tiny_encoder, tiny_vocab_size
from agzo.train.evaluate import predict
from agzo.train.objective import CandidateScorer, PromptBatch
from tests.conftest import LoadedModel

PROMPT = "Review: a fine film. It was"


def _logits(model: Any, tokenizer: PreTrainedTokenizerBase, text: str = PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_save_load_round_trip(arch: str, tiny_tok: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    model = tiny_causal_lm(arch)
    out = save_model(model, tiny_tok, tmp_path / "saved")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    reloaded_tok = AutoTokenizer.from_pretrained(out)
    torch.testing.assert_close(_logits(reloaded, reloaded_tok), _logits(model, tiny_tok))
    # load_model accepts the directory too, and prepares the tokenizer for scoring.
    loaded, tokenizer = load_model(out)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert not loaded.training
    torch.testing.assert_close(_logits(loaded, tokenizer), _logits(model, tiny_tok))
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no staging leftovers


def test_save_replaces_a_model_dir_but_not_other_dirs(
    tiny_tok: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    out = tmp_path / "ckpt"
    save_model(tiny_causal_lm("llama", seed=0), tiny_tok, out)
    second = tiny_causal_lm("llama", seed=1)
    save_model(second, tiny_tok, out)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(reloaded, tiny_tok), _logits(second, tiny_tok))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]

    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(FileExistsError, match="does not look like a saved model"):
        save_model(second, tiny_tok, precious)
    assert (precious / "thesis.txt").read_text() == "do not delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "notes"]


def test_save_handles_a_model_carrying_a_gguf_quantizer(
    tiny_tok: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    # What from_pretrained(gguf_file=...) leaves on a dequantized model: a quantizer that
    # says it is not serializable, and a quantization_config in the config.
    model = tiny_causal_lm("llama")
    model.hf_quantizer = SimpleNamespace(  # type: ignore[assignment]
        is_serializable=lambda *args, **kwargs: False,
        quantization_config=SimpleNamespace(quant_method="gguf"),
    )
    model.config.quantization_config = {"quant_method": "gguf"}
    with pytest.raises(ValueError):
        model.save_pretrained(tmp_path / "plain")
    out = save_model(model, tiny_tok, tmp_path / "saved")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(reloaded, tiny_tok), _logits(model, tiny_tok))
    assert model.hf_quantizer is not None  # the caller's model is left as it was


def test_missing_paths_give_clear_errors(tmp_path: Path) -> None:
    for spec in (str(tmp_path / "no_such_dir"), "./missing/model", "weights.gguf"):
        with pytest.raises(ModelLoadError, match="does not exist") as info:
            load_model(spec)
        assert "accepted forms" in str(info.value) and "smollm2-135m" in str(info.value)
    with pytest.raises(ModelLoadError, match="without config.json"):
        load_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        load_model(tmp_path / "weights.bin")


def test_unreachable_hub_id_gives_clear_error() -> None:
    # local_files_only: fail at once instead of waiting for network retries.
    with pytest.raises(ModelLoadError, match="hub is not reachable") as info:
        load_model("agzo-test-org/no-such-model", local_files_only=True)
    assert "accepted forms" in str(info.value)


def test_missing_builtin_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = BuiltinModel(package="agzo_no_such_package", filename="m.gguf", install="pip install x")
    monkeypatch.setitem(models.BUILTIN_MODELS, "fake-model", fake)
    with pytest.raises(ModelLoadError, match="pip install x"):
        load_model("fake-model")


def test_missing_gguf_reader_names_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "gguf" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)
    (tmp_path / "model.gguf").write_bytes(b"")
    with pytest.raises(ModelLoadError) as info:
        load_model(tmp_path / "model.gguf")
    assert GGUF_INSTALL in str(info.value)


def test_resolve_dtype() -> None:
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("torch.float16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32
    for bad in ("int8", "float128", "nonsense"):
        with pytest.raises(ValueError):
            resolve_dtype(bad)


def test_tiny_models_match_the_tokenizer_and_are_seeded(tiny_tok: PreTrainedTokenizerBase) -> None:
    assert len(tiny_tok) == tiny_vocab_size()
    assert tiny_tok.decode(tiny_tok("héllo ✓ wörld")["input_ids"], skip_special_tokens=True) == (
        "héllo ✓ wörld"
    )
    state = torch.random.get_rng_state()
    for arch in ("llama", "qwen3", "gpt2"):
        model = tiny_causal_lm(arch)
        embeddings: Any = model.get_input_embeddings()
        assert embeddings.weight.shape[0] == len(tiny_tok)
        assert _logits(model, tiny_tok).shape[-1] == len(tiny_tok)
        same = tiny_causal_lm(arch)
        torch.testing.assert_close(_logits(same, tiny_tok), _logits(model, tiny_tok))
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert any(isinstance(m, Conv1D) for m in tiny_causal_lm("gpt2").modules())
    assert tiny_causal_lm("llama", num_hidden_layers=1).config.num_hidden_layers == 1
    bert = tiny_encoder("bert")
    with torch.no_grad():
        assert bert(**tiny_tok(["a b", "c"], return_tensors="pt", padding=True)).logits.shape == (
            2,
            2,
        )
    with pytest.raises(ValueError, match="unknown"):
        tiny_causal_lm("mamba")


@pytest.mark.slow
def test_smollm2_loads_scores_saves_and_reloads(smollm2: LoadedModel, tmp_path: Path) -> None:
    model, tokenizer, load_seconds = smollm2
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    examples = [
        Example(
            "Review: a wonderful, moving film.\nSentiment (positive or negative):",
            (" positive", " negative"),
            0,
        ),
        Example(
            "Review: dull and far too long.\nSentiment (positive or negative):",
            (" positive", " negative"),
            1,
        ),
    ]
    scorer = CandidateScorer(model, tokenizer)
    batch = scorer.batch(examples)
    assert isinstance(batch, PromptBatch)  # " positive" / " negative" are single tokens
    with torch.no_grad():
        fast = scorer.scores(batch)
        general = scorer.scores(scorer.batch(examples, fast=False))
    torch.testing.assert_close(fast, general, atol=1e-4, rtol=0)
    assert predict(model, scorer, examples).predicted == [0, 1]

    prompts = [f"Review: film number {i} was quite something.\nSentiment:" for i in range(16)]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        start = time.perf_counter()
        model(**inputs, logits_to_keep=1, use_cache=False)
        forward_seconds = time.perf_counter() - start
    print(
        f"\nSmolLM2 load {load_seconds:.1f} s; forward of 16 prompts "
        f"({inputs['input_ids'].shape[1]} tokens, logits_to_keep=1) {forward_seconds:.2f} s"
    )

    start = time.perf_counter()
    out = save_model(model, tokenizer, tmp_path / "smollm2")
    save_seconds = time.perf_counter() - start
    start = time.perf_counter()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    reloaded_tok = AutoTokenizer.from_pretrained(out)
    print(f"save {save_seconds:.1f} s; reload {time.perf_counter() - start:.1f} s")
    torch.testing.assert_close(
        _logits(reloaded, reloaded_tok, examples[0].prompt),
        _logits(model, tokenizer, examples[0].prompt),
        atol=0,
        rtol=0,
    )
