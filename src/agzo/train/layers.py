"""`--layers`: train only some decoder layers (Dominant-Layer ZO, arXiv 2606.05516).

`--layers 3` or `--layers 2,3` names the layers; `--layers dominant` finds the layer by
one inference pass over training examples (`agzo.probes.layers`: the first decoder layer
with activation outliers) and records it in the resolved config as `dominant:N`, so that
a resumed or evaluated run uses the same layer without probing again. Every parameter
outside the chosen layers is frozen (requires_grad=False), so any method, zeroth- or
first-order, trains the chosen layers only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from torch import nn

from agzo.probes.layers import (
    LayerProbeError,
    decoder_layers,
    layer_parameter_prefix,
    select_dominant_layer,
)
from agzo.tasks import Example
from agzo.train.errors import TrainError
from agzo.train.objective import CandidateScorer

if TYPE_CHECKING:  # the config validates --layers with parse_layers below
    from agzo.train.config import TrainConfig

DOMINANT = "dominant"
# Training examples in the pass that finds the dominant layer, and per forward.
PROBE_EXAMPLES = 64
PROBE_BATCH = 16


def parse_layers(spec: str) -> tuple[bool, list[int] | None]:
    """(chosen by the dominant rule, the layer indices or None if not yet chosen)."""
    text = spec.strip().lower()
    dominant = text.startswith(DOMINANT)
    if dominant:
        rest = text[len(DOMINANT) :]
        if not rest:
            return True, None
        if not rest.startswith(":"):
            raise ValueError(f"--layers {spec!r}: expected 'dominant', 'dominant:N' or N,M,...")
        text = rest[1:]
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"--layers {spec!r}: expected 'dominant' or layer indices such as 3 or 2,3"
        ) from None
    if not indices or any(i < 0 for i in indices) or (dominant and len(indices) != 1):
        raise ValueError(f"--layers {spec!r}: expected 'dominant' or indices >= 0 such as 2,3")
    return dominant, sorted(set(indices))


def restrict_to_layers(
    config: TrainConfig,
    model: nn.Module,
    scorer: CandidateScorer,
    train_examples: Sequence[Example],
    say: Callable[[str], None],
) -> TrainConfig:
    """Freeze every parameter outside the layers `config.layers` names; returns the config
    with the layers resolved (`dominant` becomes `dominant:N`)."""
    if config.layers is None:
        return config
    dominant, indices = parse_layers(config.layers)
    try:
        count = len(decoder_layers(model))
        if indices is None:
            examples = list(train_examples[:PROBE_EXAMPLES])
            batches = [
                scorer.batch(examples[i : i + PROBE_BATCH], pack=False)
                for i in range(0, len(examples), PROBE_BATCH)
            ]
            indices = [select_dominant_layer(model, batches)]
            say(f"dominant layer: {indices[0]} (first with activation outliers, of {count})")
    except LayerProbeError as error:
        raise TrainError(f"--layers: {error}") from error
    outside = [i for i in indices if i >= count]
    if outside:
        raise TrainError(
            f"--layers {config.layers}: layer {outside[0]} is out of range; the model has "
            f"{count} decoder layers (0-{count - 1})"
        )
    prefixes = tuple(layer_parameter_prefix(model, i) for i in indices)
    for name, param in model.named_parameters():
        if not name.startswith(prefixes):
            param.requires_grad_(False)
    resolved = (f"{DOMINANT}:" if dominant else "") + ",".join(map(str, indices))
    return config.replace(layers=resolved)
