"""Fixed-seed trajectories: the exact weights each method and update rule reaches.

Every case below runs a few steps on a tiny model and compares a SHA-256 digest of all
weights (and the reported losses) with the one recorded in `trajectories.json`. A
refactor must leave every digest unchanged: bit-identical, not merely close. A change
that alters a random stream or the arithmetic on purpose re-records the file in a commit
of its own that says why:

    AGZO_RECORD_TRAJECTORIES=1 pytest tests/test_trajectories.py
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

import agzo
from tests.tiny import batch, loss_fn, tiny_model

RECORD = Path(__file__).with_name("trajectories.json")
STEPS = 4

# name: (architecture, dtype, constructor, keyword arguments)
CASES: dict[str, tuple[str, torch.dtype, Any, dict[str, Any]]] = {
    "agzo-sgd": ("llama", torch.float32, agzo.AGZO, {"lr": 1e-3}),
    "agzo-sgd-rank2-wd": (
        "llama",
        torch.float32,
        agzo.AGZO,
        {"lr": 1e-3, "rank": 2, "weight_decay": 0.1},
    ),
    "agzo-two-sided": ("llama", torch.float32, agzo.AGZO, {"lr": 1e-3, "two_sided": True}),
    "agzo-gaussian-embedding": (
        "llama",
        torch.float32,
        agzo.AGZO,
        {"lr": 1e-3, "embedding_mode": "gaussian"},
    ),
    "agzo-momentum": ("llama", torch.float32, agzo.AGZO, {"lr": 1e-3, "update": "momentum"}),
    "agzo-momentum-wd": (
        "llama",
        torch.float32,
        agzo.AGZO,
        {"lr": 1e-3, "update": "momentum", "weight_decay": 0.1},
    ),
    "agzo-adam": ("llama", torch.float32, agzo.AGZO, {"lr": 1e-3, "update": "adam"}),
    "agzo-adam-wd": (
        "llama",
        torch.float32,
        agzo.AGZO,
        {"lr": 1e-3, "update": "adam", "weight_decay": 0.1},
    ),
    "agzo-qwen3": ("qwen3", torch.float32, agzo.AGZO, {"lr": 1e-3}),
    "agzo-gpt2": ("gpt2", torch.float32, agzo.AGZO, {"lr": 1e-3}),
    "agzo-bert": ("bert", torch.float32, agzo.AGZO, {"lr": 1e-3}),
    "mezo-sgd": ("llama", torch.float32, agzo.MeZO, {"lr": 1e-3}),
    "mezo-sgd-wd": ("llama", torch.float32, agzo.MeZO, {"lr": 1e-3, "weight_decay": 0.1}),
    "mezo-one-sided": ("llama", torch.float32, agzo.MeZO, {"lr": 1e-3, "two_sided": False}),
    "mezo-momentum": ("llama", torch.float32, agzo.MeZO, {"lr": 1e-3, "update": "momentum"}),
    "mezo-adam": ("llama", torch.float32, agzo.MeZO, {"lr": 1e-3, "update": "adam"}),
    "mezo-gpt2": ("gpt2", torch.float32, agzo.MeZO, {"lr": 1e-3}),
    "lozo-sgd": ("llama", torch.float32, agzo.LOZO, {"lr": 1e-3, "refresh_every": 2}),
    "lozo-m": (
        "llama",
        torch.float32,
        agzo.LOZO,
        {"lr": 1e-3, "refresh_every": 2, "momentum": 0.9},
    ),
    "lozo-m-wd": (
        "llama",
        torch.float32,
        agzo.LOZO,
        {"lr": 1e-3, "refresh_every": 2, "momentum": 0.9, "weight_decay": 0.1},
    ),
    "lozo-adam": (
        "llama",
        torch.float32,
        agzo.LOZO,
        {"lr": 1e-3, "refresh_every": 2, "update": "adam"},
    ),
    "lozo-gpt2": ("gpt2", torch.float32, agzo.LOZO, {"lr": 1e-3, "refresh_every": 2}),
    "agzo-sgd-bf16": ("llama", torch.bfloat16, agzo.AGZO, {"lr": 1e-2, "eps": 1e-2}),
    "agzo-momentum-bf16": (
        "llama",
        torch.bfloat16,
        agzo.AGZO,
        {"lr": 1e-2, "eps": 1e-2, "update": "momentum"},
    ),
    "agzo-adam-bf16": (
        "llama",
        torch.bfloat16,
        agzo.AGZO,
        {"lr": 1e-2, "eps": 1e-2, "update": "adam"},
    ),
    "mezo-sgd-bf16": ("llama", torch.bfloat16, agzo.MeZO, {"lr": 1e-2, "eps": 1e-2}),
    "mezo-adam-bf16": (
        "llama",
        torch.bfloat16,
        agzo.MeZO,
        {"lr": 1e-2, "eps": 1e-2, "update": "adam"},
    ),
    "lozo-m-bf16": (
        "llama",
        torch.bfloat16,
        agzo.LOZO,
        {"lr": 1e-2, "eps": 1e-2, "refresh_every": 2, "momentum": 0.9},
    ),
}


def _digest(model: torch.nn.Module) -> str:
    sha = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        sha.update(name.encode())
        sha.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def run_case(name: str) -> dict[str, Any]:
    arch, dtype, make, kwargs = CASES[name]
    model = tiny_model(arch).to(dtype)
    ids, mask, labels = batch(arch, pad=3)
    closure = loss_fn(model, arch, ids, mask, labels)
    opt = make(model, seed=11, **kwargs)
    losses = []
    for _ in range(STEPS):
        loss = opt.step(closure)
        losses.append(None if loss is None else float(loss).hex())
    return {"weights": _digest(model), "losses": losses}


def _recorded() -> dict[str, Any]:
    return json.loads(RECORD.read_text()) if RECORD.is_file() else {}


@pytest.fixture(scope="module", autouse=True)
def _record_if_asked():
    if os.environ.get("AGZO_RECORD_TRAJECTORIES"):
        torch.set_num_threads(1)
        RECORD.write_text(json.dumps({n: run_case(n) for n in CASES}, indent=1) + "\n")
    yield


@pytest.mark.parametrize("name", sorted(CASES))
def test_trajectory_is_bit_identical_to_the_recorded_one(name: str) -> None:
    recorded = _recorded()
    assert name in recorded, f"no recorded trajectory for {name}: re-record (see module doc)"
    got = run_case(name)
    assert got["losses"] == recorded[name]["losses"], f"{name}: losses differ"
    assert got["weights"] == recorded[name]["weights"], f"{name}: weights differ"
    # A digest of weights that never moved would pass any refactor.
    arch, dtype, _, _ = CASES[name]
    assert got["weights"] != _digest(tiny_model(arch).to(dtype)), f"{name}: nothing moved"
