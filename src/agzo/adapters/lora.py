"""Zeroth-order LoRA through peft: the base frozen, only the adapters trained.

`wrap_with_lora` puts peft's LoRA layers on the named target modules (peft's own names,
`q_proj`, `v_proj`, ...; by default peft's choice for the architecture). Any zeroth-order
method then trains the adapters alone, because peft freezes everything else. lora_A and
lora_B are plain linear layers, so AGZO observes them like any other: lora_B's input is
lora_A's output, and its probes lie in the span of those r-dimensional activations.
Dropout inside the adapters is off: both evaluations of a difference must see one network.

Adapters are saved in peft's format, with the agzo model spec of the base in
`base_model_name_or_path`, so that `load_adapter` (and `agzo eval`, `load_model`) can
rebuild base and adapters from the directory alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from agzo.seeding import seeded_global_rng

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a directory of saved peft adapters."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def wrap_with_lora(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    targets: Sequence[str] | None = None,
    base_spec: str | None = None,
    seed: int = 0,
) -> nn.Module:
    """`model` with peft LoRA adapters (rank `rank`, scale alpha / rank) on `targets`.

    `seed` fixes lora_A's random initialization (lora_B starts at zero), so a run's seed
    reproduces its adapters. A target that matches no module is a ValueError naming the
    model's linear layers.
    """
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ValueError(f"--lora-rank must be >= 1, got {rank}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,  # type: ignore[arg-type]
        target_modules=list(targets) if targets else None,
        lora_dropout=0.0,
        bias="none",
    )
    # peft draws lora_A from the global RNG of the device it builds the adapter on.
    cuda_devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    try:
        with seeded_global_rng(seed, cuda_devices):
            wrapped = get_peft_model(model, config)
    except ValueError as error:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                        if isinstance(m, nn.Linear)})  # fmt: skip
        raise ValueError(
            f"--lora-targets {list(targets or [])} match no module of this model "
            f"({' '.join(str(error).split())[:120]}); its linear layers are named: "
            f"{', '.join(names)}"
        ) from error
    if base_spec is not None:
        wrapped.peft_config["default"].base_model_name_or_path = base_spec
    return wrapped


def base_spec_of(path: str | os.PathLike[str]) -> str:
    """The model spec of the base that saved adapters belong to."""
    data: dict[str, Any] = json.loads((Path(path) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    spec = data.get("base_model_name_or_path")
    if not spec:
        raise ValueError(f"{path}: {ADAPTER_CONFIG} names no base model")
    return str(spec)


def attach_adapters(base: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """The base model with the adapters saved at `path` loaded onto it."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(path))
