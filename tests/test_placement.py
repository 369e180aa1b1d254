"""Models over several devices (accelerate's placement) and weights offloaded to the host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agzo.methods import AGZO, MeZO
from agzo.placement import HostOffload, place
from agzo.train import TrainConfig, train
from agzo.train.config import ConfigError
from agzo.train.errors import TrainError
from tests.test_distributed import tiny_settings, trained
from tests.tiny import batch, loss_fn, tiny_model

# Every top-level block of the tiny Llama on its own entry, as a map splitting a model
# across devices names them.
SPLIT = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "cpu",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


def test_a_run_placed_by_a_module_map_trains_like_an_unplaced_one(
    model_dir: Path, tmp_path: Path
) -> None:
    # A placed model keeps padded rows (agzo.train.packing.packable); so does the plain run
    # here, for a bit-for-bit comparison.
    plain_settings = tiny_settings(model_dir, tmp_path / "plain", pack=False)
    plain = train(TrainConfig.from_dict(plain_settings), quiet=True)
    settings = tiny_settings(model_dir, tmp_path / "placed", device_map=json.dumps(SPLIT))
    placed = train(TrainConfig.from_dict(settings), quiet=True)
    assert hasattr(placed.model.model.layers[0], "_hf_hook")  # accelerate's hooks ran it
    mine = trained(placed.model)
    for key, value in trained(plain.model).items():
        assert torch.equal(mine[key], value), key
    assert (tmp_path / "placed" / "model" / "config.json").is_file()


@pytest.mark.parametrize("method", [AGZO, MeZO])
def test_offloaded_weights_are_perturbed_and_updated_in_host_memory(method: type) -> None:
    """accelerate's cpu_offload, computing on the CPU here: the optimizer holds the host
    tensors and the steps are those of the model left in place, bit for bit."""
    reference, offloaded = tiny_model("llama"), tiny_model("llama")
    ids, mask, labels = batch("llama", pad=2)
    optimizers = [method(m, lr=1e-2, eps=1e-3) for m in (reference, offloaded)]
    host = HostOffload(offloaded, torch.device("cpu"))
    assert offloaded.model.layers[0].mlp.up_proj.weight.is_meta  # only the host copy is real
    for _ in range(3):
        for model, optimizer in zip((reference, offloaded), optimizers):
            optimizer.step(loss_fn(model, "llama", ids, mask, labels), attention_mask=mask)
    host.close()
    for (name, a), b in zip(reference.named_parameters(), offloaded.parameters()):
        assert torch.equal(a, b), name
    assert not any(p.is_meta for p in offloaded.parameters())


def test_a_module_map_must_cover_the_model() -> None:
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="does not have: model.layers.9"):
        place(model, {**SPLIT, "model.layers.9": "cpu"})
    partial = {k: v for k, v in SPLIT.items() if k != "model.layers.1"}
    with pytest.raises(ValueError, match="leaves parameters unplaced: model.layers.1"):
        place(model, partial)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"device_map": '{"lm_head": "disk"}'}, "on 'disk' cannot be trained"),
        ({"device_map": "{not json"}, "device map is not valid JSON"),
        ({"device_map": "everywhere"}, "neither one of auto, balanced"),
        ({"device_map": "auto", "offload": "cpu"}, "pass one"),
        ({"offload": "disk"}, "unknown offload 'disk'"),
        ({"offload": "cpu", "device": "cpu"}, "leave --device at auto"),
    ],
)
def test_bad_placement_settings(
    changes: dict[str, str], message: str, model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(tiny_settings(model_dir, tmp_path / "run", **changes))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_offload_without_a_gpu_is_a_clear_error_before_anything_is_written(
    model_dir: Path, tmp_path: Path
) -> None:
    config = TrainConfig.from_dict(tiny_settings(model_dir, tmp_path / "run", offload="cpu"))
    with pytest.raises(TrainError, match="no GPU is available here"):
        train(config, quiet=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_map_splitting_the_model_between_cpu_and_gpu(model_dir: Path, tmp_path: Path) -> None:
    split = {**SPLIT, "model.layers.1": 0, "model.norm": 0}  # the tied head stays with its table
    settings = tiny_settings(model_dir, tmp_path / "placed", device_map=json.dumps(split))
    placed = train(TrainConfig.from_dict(settings), quiet=True)
    devices = {p.device.type for p in placed.model.parameters()}
    assert devices == {"cpu", "cuda"}
