"""ZO-Act's layers: a fixed activation basis per linear layer and trainable coefficients.

For each linear layer (embeddings and the output head excepted) a calibration pass over
training examples gives A (d_in x r), the top-r right singular vectors of the layer's
inputs, padding excluded. The layer then computes y = base(x) + (x A) Cᵀ, that is
W = W₀ + C Aᵀ, with C (d_out x r) float32 and zero at the start. Only C is trained; the
base keeps its own dtype, quantized ones included, and is never written.

Saved as an adapter directory: `zo_act_config.json` (rank, base model spec, calibration
settings, a fingerprint of the base) and `zo_act_adapter.safetensors` (every A and C), or
merged into dense weights (`merged_state_dict`) for a float base.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

ADAPTER_CONFIG = "zo_act_config.json"
ADAPTER_WEIGHTS = "zo_act_adapter.safetensors"
FINGERPRINT_ROWS = 4


class ActivationCoefficients(nn.Module):
    """A linear layer plus the trainable term (x A) Cᵀ."""

    basis: torch.Tensor

    def __init__(self, base: nn.Linear, basis: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("basis", basis.detach().float().contiguous())
        out_features = base.out_features
        self.coefficients = nn.Parameter(
            torch.zeros(out_features, basis.shape[1], device=basis.device)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        dtype = torch.promote_types(x.dtype, torch.float32)  # the term in float32 at least
        term = (x.to(dtype) @ self.basis.to(dtype)) @ self.coefficients.to(dtype).T
        return out + term.to(out.dtype)

    def delta(self) -> torch.Tensor:
        """The effective change of the weight, C Aᵀ (d_out x d_in)."""
        return self.coefficients.detach() @ self.basis.T


def target_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linear layers ZO-Act adapts: all but the output head."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head
    ]


def _real_rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    if mask is not None and mask.numel() == rows.shape[0]:
        rows = rows[mask.reshape(-1).to(rows.device).bool()]
    return rows


# Above this many rows and columns, the top singular vectors come from a randomized SVD
# (torch.svd_lowrank, 10 extra columns, 6 power iterations) instead of an exact one.
EXACT_SVD_LIMIT = 4096


def top_right_singular_vectors(h: torch.Tensor, rank: int) -> torch.Tensor:
    """The top-`rank` right singular vectors of `h` (n x d) as columns (d x r), float32."""
    h = h.float()
    r = min(rank, *h.shape)
    if min(h.shape) <= EXACT_SVD_LIMIT:
        _, _, vh = torch.linalg.svd(h, full_matrices=False)
        vectors = vh[:r].T
    else:
        _, _, v = torch.svd_lowrank(h, q=min(r + 10, *h.shape), niter=6)
        vectors = v[:, :r]
    # A sign convention (largest entry positive), so that a basis is reproducible.
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(0, keepdim=True)))
    return (vectors * torch.where(signs == 0, 1.0, signs)).contiguous()


@torch.no_grad()
def calibrate(model: nn.Module, batch: Any, rank: int, run: Any) -> dict[str, torch.Tensor]:
    """Each target layer's basis A from one forward pass of `batch` (`run(batch)`).

    The batch's `attention_mask`, when it has one, drops padding rows. Each layer's basis
    is computed in its hook, so no activation outlives the pass.
    """
    bases: dict[str, torch.Tensor] = {}
    mask = getattr(batch, "attention_mask", None)

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if name not in bases:  # a layer run twice keeps its first call's basis
                bases[name] = top_right_singular_vectors(_real_rows(args[0].detach(), mask), rank)

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in target_linears(model)]
    try:
        run(batch)
    finally:
        for handle in handles:
            handle.remove()
    return bases


def attach(model: nn.Module, bases: dict[str, torch.Tensor]) -> list[nn.Parameter]:
    """Wrap each calibrated layer; freeze every other parameter. Returns the C's."""
    for param in model.parameters():
        param.requires_grad_(False)
    coefficients = []
    for name, basis in bases.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        wrapped = ActivationCoefficients(base, basis.to(base.weight.device))
        setattr(parent, child, wrapped)
        coefficients.append(wrapped.coefficients)
    return coefficients


def adapted_layers(model: nn.Module) -> Iterator[tuple[str, ActivationCoefficients]]:
    for name, module in model.named_modules():
        if isinstance(module, ActivationCoefficients):
            yield name, module


def fingerprint(model: nn.Module) -> dict[str, float]:
    """A few numbers that tell one base model from another: the sum of the first rows of
    each adapted layer's base weight (float32, or the dequantized value when available)."""
    prints = {}
    for name, layer in adapted_layers(model):
        weight = layer.base.weight
        rows = weight[:FINGERPRINT_ROWS]
        try:
            value = float(rows.float().sum())
        except (RuntimeError, TypeError):  # packed quantized storage: its shape only
            value = float(weight.numel())
        prints[name] = value
    return prints


def save_adapter(
    model: nn.Module, out_dir: str | os.PathLike[str], settings: dict[str, Any]
) -> Path:
    """Write every A and C and the settings (base spec, rank, calibration) to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, layer in adapted_layers(model):
        tensors[f"{name}.basis"] = layer.basis.detach().cpu().contiguous()
        tensors[f"{name}.coefficients"] = layer.coefficients.detach().cpu().contiguous()
    save_file(tensors, str(out / ADAPTER_WEIGHTS))
    config = {**settings, "fingerprint": fingerprint(model)}
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


def is_zo_act_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_settings(path: str | os.PathLike[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(path) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return data


def load_adapter(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Attach the saved A and C to `model`, which must be the base they were trained on."""
    settings = adapter_settings(path)
    tensors = load_file(str(Path(path) / ADAPTER_WEIGHTS))
    names = sorted({key.rsplit(".", 1)[0] for key in tensors})
    available = dict(target_linears(model))
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(
            f"the ZO-Act adapter at {path} was made for another model: it adapts "
            f"{missing[0]}, which this model does not have"
        )
    for name in names:
        d_out, d_in = available[name].weight.shape[0], available[name].in_features
        c, a = tensors[f"{name}.coefficients"], tensors[f"{name}.basis"]
        if a.shape[0] != d_in or c.shape[0] != d_out:
            raise ValueError(
                f"the ZO-Act adapter at {path} was made for another model: {name} is "
                f"{d_out}x{d_in} here, {c.shape[0]}x{a.shape[0]} in the adapter"
            )
    attach(model, {n: tensors[f"{n}.basis"] for n in names})
    for name, layer in adapted_layers(model):
        layer.coefficients.data.copy_(tensors[f"{name}.coefficients"])
    saved_print = settings.get("fingerprint", {})
    here = fingerprint(model)
    differing = [n for n in saved_print if n in here and abs(saved_print[n] - here[n]) > 1e-3 * (
        1 + abs(saved_print[n]))]  # fmt: skip
    if differing:
        raise ValueError(
            f"the ZO-Act adapter at {path} was trained on another base model: the weights of "
            f"{differing[0]} differ (base {settings.get('base_model')!r})"
        )
    return model


def merge_into_base(model: nn.Module) -> nn.Module:
    """A copy of `model` whose adapted layers are plain linear layers with W₀ + C Aᵀ as
    their weights: an ordinary model, saved and loaded like any other (float base only)."""
    import copy

    merged = copy.deepcopy(model)
    for name, layer in list(adapted_layers(merged)):
        base = layer.base
        if base.weight.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise ValueError(f"{name}: a quantized base cannot be merged into dense weights")
        with torch.no_grad():
            base.weight.copy_((base.weight.float() + layer.delta()).to(base.weight.dtype))
        parent_name, _, child = name.rpartition(".")
        parent = merged.get_submodule(parent_name) if parent_name else merged
        setattr(parent, child, base)
    if hasattr(merged, "agzo_zo_act"):
        delattr(merged, "agzo_zo_act")
    return merged
