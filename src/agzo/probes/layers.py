"""Activation outliers per decoder layer, and the dominant layer they point to.

Zeroth-order fine-tuning's gain has been reported to concentrate in a single decoder layer,
found before training by one inference pass as the first layer with activation outliers
(LLaMA2-7B: layer 1). The exact outlier statistic is not public, so this probe reports the
common ones for every layer, from the residual stream each layer outputs (its hidden
states, padding positions excluded):

- max/median ratio: the largest |activation| over the median |activation| of all the
  layer's (token, channel) entries. "Massive activations" are commonly described as
  thousands of times the median; an ordinary heavy-tailed stream stays near ten.
- top-1% channel share: the share of the layer's total absolute activation mass,
  Σ_tokens |x|, held by the top 1% of channels (channels = hidden dimensions). A uniform
  stream gives about 1%. The same share of the squared mass, Σ x², is reported too: it
  weighs outliers more heavily.

Selection: the first layer whose max/median ratio exceeds `threshold` times the *lowest*
ratio of any layer. The baseline is the model's own quietest layer, not a fixed number,
because ratios grow with the number of entries (more samples, larger extremes) and differ
between models; and it is the minimum rather than the median across layers because an
outlier that appears in layer k is carried by the residual stream into most later layers,
so the median layer is usually an outlier layer itself. The default, 10, asks for a
maximum ten times beyond what the quietest layer's heavy tail reaches.

Statistics are accumulated batch by batch, so any number of batches fits in memory; the
median comes from a log-spaced histogram (64 bins per octave: within 0.6% of the exact
median), every other figure is exact.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

DEFAULT_THRESHOLD = 10.0
TOP_FRACTION = 0.01

# Median histogram over log2|x|: 2^-40 .. 2^24 covers float32 activations of every model we
# load; values outside are clamped into the end bins (they cannot be the median of a
# hidden state). 64 bins per octave: a bin spans a factor 2^(1/64) ≈ 1.011.
_LOG2_LOW, _LOG2_HIGH, _BINS_PER_OCTAVE = -40.0, 24.0, 64
_BINS = int((_LOG2_HIGH - _LOG2_LOW) * _BINS_PER_OCTAVE)


class LayerProbeError(ValueError):
    """The model has no decoder layers this probe can find, or the index is out of range."""


# --------------------------------------------------------------------------- decoder layers


def _layer_count(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _decoder_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(qualified name, ModuleList) of the model's decoder blocks.

    Found generically rather than from a table of architectures: the one ModuleList whose
    length is the config's layer count (model.layers for Llama/Qwen3, transformer.h for
    GPT-2, model.decoder.layers for OPT, gpt_neox.layers, ...).
    """
    count = _layer_count(model)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and count is not None and len(module) == count
    ]
    if len(candidates) == 1:
        return candidates[0]
    kind = type(model).__name__
    if count is None:
        raise LayerProbeError(
            f"cannot find the decoder layers of {kind}: its config gives no layer count "
            "(num_hidden_layers, n_layer or num_layers); expected a transformers causal LM"
        )
    found = ", ".join(name for name, _ in candidates) or "none"
    raise LayerProbeError(
        f"cannot find the decoder layers of {kind}: expected exactly one ModuleList of "
        f"{count} blocks (the config's layer count), found {found}"
    )


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder blocks, in order (e.g. model.model.layers, model.transformer.h)."""
    return list(_decoder_layer_list(model)[1])


def layer_parameter_prefix(model: nn.Module, index: int) -> str:
    """Parameter-name prefix of decoder layer `index`, e.g. "model.layers.3.".

    The trailing dot is part of the prefix, so that layer 1's prefix does not also match
    layer 10's parameters ("model.layers.10.…" does not start with "model.layers.1.").
    """
    name, layers = _decoder_layer_list(model)
    if not 0 <= index < len(layers):
        raise LayerProbeError(f"layer index {index} is out of range: the model has {len(layers)}")
    return f"{name}.{index}." if name else f"{index}."


# --------------------------------------------------------------------------- statistics


@dataclass
class LayerStats:
    """Outlier statistics of one decoder layer's output hidden states (real tokens only)."""

    index: int
    prefix: str  # parameter-name prefix of the layer
    tokens: int  # real (non-padding) token positions seen
    max_abs: float  # largest |activation|
    median_abs: float  # median |activation| over all (token, channel) entries
    max_median_ratio: float
    max_channel: int  # hidden dimension holding max_abs
    top_channel_share: float  # share of Σ|x| held by the top 1% of channels
    top_channel_energy_share: float  # share of Σx² held by the top 1% of channels


@dataclass
class LayerProbe:
    """Statistics of every decoder layer and the layer the selection rule picks."""

    layers: list[LayerStats]
    threshold: float  # multiple of the baseline ratio a layer must exceed
    baseline_ratio: float  # the lowest max/median ratio of any layer
    selected: int
    rule: str  # how `selected` was chosen, in words

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "baseline_ratio": self.baseline_ratio,
            "selected": self.selected,
            "rule": self.rule,
            "top_fraction": TOP_FRACTION,
            "layers": [asdict(s) for s in self.layers],
        }


class _Accumulator:
    """Running per-layer sums, so that batches never have to be held together."""

    def __init__(self) -> None:
        self.tokens = 0
        self.max_abs = 0.0
        self.max_channel = 0
        self.histogram: Tensor | None = None
        self.channel_abs: Tensor | None = None
        self.channel_square: Tensor | None = None

    def add(self, hidden: Tensor) -> None:
        """hidden: [tokens, channels] of real positions."""
        if hidden.shape[0] == 0:
            return
        magnitude = hidden.detach().float().abs()
        flat_max, flat_index = magnitude.reshape(-1).max(dim=0)
        if float(flat_max) > self.max_abs or self.tokens == 0:
            self.max_abs = float(flat_max)
            self.max_channel = int(flat_index) % magnitude.shape[1]
        log2 = magnitude.clamp_min(2.0**_LOG2_LOW).log2()
        counts = torch.histc(log2, bins=_BINS, min=_LOG2_LOW, max=_LOG2_HIGH)
        channel_abs = magnitude.sum(dim=0, dtype=torch.float64)
        channel_square = magnitude.square().sum(dim=0, dtype=torch.float64)
        if self.histogram is None or self.channel_abs is None or self.channel_square is None:
            self.histogram, self.channel_abs, self.channel_square = (
                counts, channel_abs, channel_square
            )  # fmt: skip
        else:
            self.histogram += counts
            self.channel_abs += channel_abs
            self.channel_square += channel_square
        self.tokens += hidden.shape[0]

    def median(self) -> float:
        assert self.histogram is not None
        cumulative = self.histogram.double().cumsum(0)
        half = float(cumulative[-1]) / 2
        bin_index = int(torch.searchsorted(cumulative, torch.tensor(half, dtype=torch.float64)))
        # Geometric centre of the bin: at most half a bin (a factor 2^(1/128)) off.
        log2 = _LOG2_LOW + (bin_index + 0.5) / _BINS_PER_OCTAVE
        return 2.0**log2

    def stats(self, index: int, prefix: str) -> LayerStats:
        if self.channel_abs is None or self.channel_square is None:
            raise LayerProbeError("no real (non-padding) tokens reached the decoder layers")
        median = self.median()
        top = max(1, math.ceil(TOP_FRACTION * self.channel_abs.numel()))
        return LayerStats(
            index=index,
            prefix=prefix,
            tokens=self.tokens,
            max_abs=self.max_abs,
            median_abs=median,
            max_median_ratio=self.max_abs / median,
            max_channel=self.max_channel,
            top_channel_share=_top_share(self.channel_abs, top),
            top_channel_energy_share=_top_share(self.channel_square, top),
        )


def _top_share(mass: Tensor, top: int) -> float:
    total = float(mass.sum())
    return float(mass.topk(top).values.sum()) / total if total > 0 else 0.0


def _tokens(batch: Any) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask) of a mapping or of an object with those attributes."""
    if isinstance(batch, Mapping):
        input_ids, mask = batch["input_ids"], batch.get("attention_mask")
    else:
        input_ids, mask = batch.input_ids, getattr(batch, "attention_mask", None)
    if mask is None:
        mask = torch.ones_like(input_ids)
    return input_ids, mask


def _hidden(output: Any) -> Tensor:
    # Decoder blocks return the hidden states alone or first in a tuple, by architecture
    # and transformers version.
    hidden = output[0] if isinstance(output, tuple | list) else output
    if not isinstance(hidden, Tensor):
        raise LayerProbeError(f"a decoder layer returned {type(hidden).__name__}, not a tensor")
    return hidden


@torch.no_grad()
def measure_layers(model: nn.Module, batches: Iterable[Any]) -> list[LayerStats]:
    """Outlier statistics of every decoder layer over one inference pass of `batches`.

    batches: token batches, each a mapping or an object with `input_ids` and (optionally)
        `attention_mask` [batch, seq]; positions where the mask is 0 are excluded.
    """
    name, layers = _decoder_layer_list(model)
    accumulators = [_Accumulator() for _ in layers]
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    device = next(model.parameters()).device
    current: dict[str, Tensor] = {}

    def hook_for(accumulator: _Accumulator) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            accumulator.add(_hidden(output)[current["real"]])

        return hook

    handles = [layer.register_forward_hook(hook_for(a)) for layer, a in zip(layers, accumulators)]
    try:
        for batch in batches:
            input_ids, mask = (t.to(device) for t in _tokens(batch))
            current["real"] = mask.bool()
            kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": False}
            if takes_positions:
                # Positions count real tokens only, so left padding does not shift them
                # (GPT-2's absolute positions would otherwise differ from an unpadded pass).
                kwargs["position_ids"] = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
            model(input_ids=input_ids, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    prefix = f"{name}." if name else ""
    return [a.stats(i, f"{prefix}{i}.") for i, a in enumerate(accumulators)]


def select_layer(stats: Sequence[LayerStats], threshold: float = DEFAULT_THRESHOLD) -> LayerProbe:
    """Apply the selection rule (see the module doc) to measured statistics.

    When no layer clears the threshold, the layer with the largest ratio is chosen and
    `rule` says so.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    if not stats:
        raise LayerProbeError("no layer statistics to select from")
    baseline = min(s.max_median_ratio for s in stats)
    above = [s.index for s in stats if s.max_median_ratio > threshold * baseline]
    if above:
        selected = above[0]
        rule = f"first layer with max/median ratio > {threshold:g} x the lowest layer's"
    else:
        selected = max(stats, key=lambda s: s.max_median_ratio).index
        rule = f"no layer above {threshold:g} x the lowest ratio: the layer with the largest"
    return LayerProbe(list(stats), threshold, baseline, selected, rule)


def probe_layers(
    model: nn.Module, batches: Iterable[Any], threshold: float = DEFAULT_THRESHOLD
) -> LayerProbe:
    """Measure every decoder layer and select the dominant one."""
    return select_layer(measure_layers(model, batches), threshold)


def select_dominant_layer(
    model: nn.Module, batches: Iterable[Any], threshold: float = DEFAULT_THRESHOLD
) -> int:
    """Index of the dominant decoder layer: the first with activation outliers.

    Restrict training to it with the parameters whose names start with
    `layer_parameter_prefix(model, index)`.
    """
    return probe_layers(model, batches, threshold).selected


# --------------------------------------------------------------------------- reporting


def format_layers(probe: LayerProbe) -> str:
    """A plain-text table, one row per layer, the selected layer marked with '<'."""
    lines = [
        f"{'layer':>5}{'max |x|':>11}{'median |x|':>12}{'max/median':>12}"
        f"{'channel':>9}{'top1% |x|':>11}{'top1% x²':>10}"
    ]
    for s in probe.layers:
        mark = "  <" if s.index == probe.selected else ""
        lines.append(
            f"{s.index:>5}{s.max_abs:>11.3g}{s.median_abs:>12.3g}{s.max_median_ratio:>12.1f}"
            f"{s.max_channel:>9}{s.top_channel_share:>11.3f}{s.top_channel_energy_share:>10.3f}"
            f"{mark}"
        )
    lines.append(
        f"selected layer {probe.selected} ({probe.rule}; lowest ratio "
        f"{probe.baseline_ratio:.1f}, threshold {probe.threshold * probe.baseline_ratio:.1f})"
    )
    return "\n".join(lines)


def plot_layers(probe: LayerProbe, path: str) -> None:
    """Max/median ratio (log scale) and top-1% channel shares per layer, selection marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = [s.index for s in probe.layers]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(max(5.0, 0.25 * len(index)), 5))
    top.plot(index, [s.max_median_ratio for s in probe.layers], "o-", color="tab:blue")
    top.axhline(
        probe.threshold * probe.baseline_ratio, color="gray", linestyle="--", label="threshold"
    )
    top.set_yscale("log")
    top.set_ylabel("max |x| / median |x|")
    top.legend(loc="best", fontsize=8)
    bottom.plot(index, [s.top_channel_share for s in probe.layers], "o-", label="Σ|x|")
    bottom.plot(index, [s.top_channel_energy_share for s in probe.layers], "s--", label="Σx²")
    bottom.set_ylabel("top-1% channel share")
    bottom.set_xlabel("decoder layer")
    bottom.set_ylim(0, 1)
    bottom.legend(loc="best", fontsize=8)
    for ax in (top, bottom):
        ax.axvline(probe.selected, color="tab:red", alpha=0.5)
        ax.grid(alpha=0.3)
    top.set_title(f"selected layer {probe.selected}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
