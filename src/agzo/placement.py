"""Models larger than one device: accelerate's big-model placement and host offload.

`--device-map` places the model's modules on several devices with accelerate's
`dispatch_model` ("auto" and the other strategies infer a map from free memory; a JSON
object names a device per module). Modules mapped to "cpu" also compute there, so every
trained tensor lives, and is perturbed, on one real device: each tensor's probe is drawn
on the device that holds it (`agzo.directions`). Hooks move activations between devices.

`--offload cpu` keeps every weight in host memory and computes on the GPU: accelerate's
`cpu_offload` streams each module's weights to the GPU for its forward. The optimizer is
built before offloading and holds the host tensors, which are the very tensors the
offload hooks copy from, so perturbing and updating them in place is what the next
forward sees. AGZO's probe of a host weight is R Aᵀ (d_out·r + d_in·r draws); MeZO's is
d_out·d_in draws on the host.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "DEVICE_MAP_STRATEGIES",
    "HostOffload",
    "PlacementError",
    "check_offload",
    "parse_device_map",
    "place",
]

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
OFFLOAD_CHOICES = ("cpu",)

DeviceMap = str | dict[str, Any]


class PlacementError(ValueError):
    """A device map or offload setting that cannot be honoured here."""


def parse_device_map(spec: str) -> DeviceMap:
    """A strategy name, a JSON object {module: device}, or the path of a .json file."""
    text = spec.strip()
    if text in DEVICE_MAP_STRATEGIES:
        return text
    if not text.startswith("{"):
        path = Path(text).expanduser()
        if path.suffix.lower() != ".json" or not path.is_file():
            raise PlacementError(
                f"device map {spec!r} is neither one of {', '.join(DEVICE_MAP_STRATEGIES)}, "
                'nor a JSON object like \'{"model.layers.0": 0, "lm_head": "cpu"}\', '
                "nor an existing .json file"
            )
        text = path.read_text(encoding="utf-8")
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as error:
        raise PlacementError(f"device map is not valid JSON: {error}") from error
    if not isinstance(mapping, dict) or not mapping:
        raise PlacementError("a device map must be a non-empty JSON object {module: device}")
    for module, device in mapping.items():
        if device == "disk":
            raise PlacementError(
                f"device map: {module} on 'disk' cannot be trained (its weights would be "
                "read from files, never updated); use a GPU or 'cpu'"
            )
        if not isinstance(device, (int, str)):
            raise PlacementError(f"device map: {module} -> {device!r} is not a device")
        if isinstance(device, str):
            try:
                torch.device(device)
            except (RuntimeError, ValueError) as error:
                raise PlacementError(f"device map: {module} -> {device!r}: {error}") from error
    return mapping


def check_offload(offload: str | None) -> torch.device | None:
    """The GPU that computes for an offloaded model (None: no offload); a clear error
    when there is no GPU to compute on."""
    if offload is None:
        return None
    if offload not in OFFLOAD_CHOICES:
        raise PlacementError(f"unknown offload {offload!r}; choose {', '.join(OFFLOAD_CHOICES)}")
    if not torch.cuda.is_available():
        raise PlacementError(
            "--offload cpu keeps the weights in host memory and computes on a GPU, and no "
            "GPU is available here (torch.cuda.is_available() is False): drop --offload, "
            "the model then trains on the CPU"
        )
    return torch.device("cuda", torch.cuda.current_device())


def place(model: nn.Module, device_map: DeviceMap) -> dict[str, Any]:
    """Dispatch `model`'s modules onto the devices of `device_map`; the map used."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if isinstance(device_map, str):
        max_memory = None
        if device_map != "sequential":
            max_memory = get_balanced_memory(
                model,
                no_split_module_classes=no_split,
                low_zero=device_map == "balanced_low_0",
            )
        mapping = infer_auto_device_map(
            model, max_memory=max_memory, no_split_module_classes=no_split
        )
        if "disk" in mapping.values():
            raise PlacementError(
                "the model does not fit in GPU and host memory together: some modules "
                "would go to disk, where they cannot be trained"
            )
    else:
        mapping = dict(device_map)
        _check_covers(model, mapping)
    # main_device "cpu": modules mapped to the CPU compute there (accelerate would
    # otherwise offload them to the first GPU, leaving their parameters on "meta").
    main = "cpu" if "cpu" in mapping.values() else None
    dispatch_model(model, device_map=mapping, main_device=main, force_hooks=True)
    return mapping


def _check_covers(model: nn.Module, mapping: dict[str, Any]) -> None:
    """Every parameter's module is mapped, and every mapped name is a module."""
    modules = {name for name, _ in model.named_modules()}
    unknown = sorted(name for name in mapping if name and name not in modules)
    if unknown:
        raise PlacementError(
            f"device map names modules the model does not have: {', '.join(unknown[:5])}"
        )

    def mapped(name: str) -> bool:
        return "" in mapping or any(name == m or name.startswith(m + ".") for m in mapping)

    missing = sorted(n for n, _ in model.named_parameters() if not mapped(n))
    if missing:
        raise PlacementError(
            f"device map leaves parameters unplaced: {', '.join(missing[:5])}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )


class HostOffload:
    """Weights in host memory, computed on `execution_device` (accelerate's cpu_offload).

    Build the optimizer before creating this: it must hold the host tensors, since the
    module's own parameters become placeholders on "meta". `close` puts the host
    tensors back into the modules (to save the model, or use it without hooks).
    """

    def __init__(self, model: nn.Module, execution_device: torch.device) -> None:
        from accelerate import cpu_offload

        self.model = model
        # state_dict() aliases the parameters: the offload hooks copy from these tensors.
        self.host = {name: tensor for name, tensor in model.state_dict().items()}
        cpu_offload(model, execution_device=execution_device, state_dict=self.host)

    def close(self) -> None:
        from accelerate.hooks import remove_hook_from_submodules
        from accelerate.utils import set_module_tensor_to_device

        remove_hook_from_submodules(self.model)
        for name, tensor in self.host.items():
            set_module_tensor_to_device(self.model, name, "cpu", value=tensor)
