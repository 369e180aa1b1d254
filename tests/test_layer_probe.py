"""Layer probe: decoder layers found generically, outlier statistics, dominant-layer choice."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from agzo.probes.layers import (
    LayerProbeError,
    LayerStats,
    decoder_layers,
    layer_parameter_prefix,
    measure_layers,
    plot_layers,
    probe_layers,
    select_dominant_layer,
    select_layer,
)
from agzo.testing import tiny_causal_lm


def _four_layers(arch: str) -> nn.Module:
    layers = {"n_layer": 4} if arch == "gpt2" else {"num_hidden_layers": 4}
    return tiny_causal_lm(arch, **layers)


def _tokens(seed: int = 0, rows: int = 4, seq: int = 12) -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 200, (rows, seq), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _add_outlier_channel(model: nn.Module, layer: int, channel: int, scale: float) -> None:
    """Scale the row of the layer's MLP output projection that writes `channel`."""
    block = decoder_layers(model)[layer]
    with torch.no_grad():
        if hasattr(block.mlp, "down_proj"):
            block.mlp.down_proj.weight[channel] *= scale
        else:  # GPT-2's Conv1D stores the weight transposed: [in, out]
            block.mlp.c_proj.weight[:, channel] *= scale


@pytest.mark.parametrize(
    ("arch", "path"),
    [("llama", "model.layers"), ("qwen3", "model.layers"), ("gpt2", "transformer.h")],
)
def test_decoder_layers_and_their_parameter_prefixes(arch: str, path: str) -> None:
    model = _four_layers(arch)
    layers = decoder_layers(model)
    assert len(layers) == 4
    for index, layer in enumerate(layers):
        prefix = layer_parameter_prefix(model, index)
        assert prefix == f"{path}.{index}."
        selected = {n for n, _ in model.named_parameters() if n.startswith(prefix)}
        own = {prefix + n for n, _ in layer.named_parameters()}
        assert selected == own and own
    with pytest.raises(LayerProbeError, match="out of range"):
        layer_parameter_prefix(model, 4)


def test_layer_one_prefix_does_not_match_layer_ten() -> None:
    model = tiny_causal_lm("llama", num_hidden_layers=11)
    prefix = layer_parameter_prefix(model, 1)
    matched = {n.split(".")[2] for n, _ in model.named_parameters() if n.startswith(prefix)}
    assert matched == {"1"}
    assert any(n.startswith("model.layers.10.") for n, _ in model.named_parameters())


def test_unknown_architecture_is_a_clear_error() -> None:
    plain = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4))
    with pytest.raises(LayerProbeError, match="cannot find the decoder layers of Sequential"):
        decoder_layers(plain)
    with pytest.raises(LayerProbeError, match="cannot find the decoder layers"):
        select_dominant_layer(plain, [_tokens()])


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
@pytest.mark.parametrize("outlier_layer", [1, 2])
def test_the_layer_given_an_outlier_channel_is_selected(arch: str, outlier_layer: int) -> None:
    model = _four_layers(arch)
    _add_outlier_channel(model, outlier_layer, channel=5, scale=1000.0)
    batches = [_tokens(0), _tokens(1)]
    probe = probe_layers(model, batches)
    assert probe.selected == outlier_layer
    assert select_dominant_layer(model, batches) == outlier_layer
    chosen = probe.layers[outlier_layer]
    assert chosen.max_channel == 5
    # The residual stream carries the outlier on; the layers before it are quiet.
    before = probe.layers[outlier_layer - 1]
    assert chosen.max_median_ratio > 10 * before.max_median_ratio
    assert chosen.top_channel_share > 5 * before.top_channel_share
    assert chosen.top_channel_energy_share > chosen.top_channel_share


def test_statistics_match_a_direct_computation() -> None:
    model = _four_layers("llama")
    batch = _tokens(3)
    stats = measure_layers(model, [batch])
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is layer i's output, except the last, which is after the final norm.
    for index in range(3):
        x = hidden[index + 1].reshape(-1, 32).abs()
        s = stats[index]
        assert s.tokens == 4 * 12
        assert s.max_abs == pytest.approx(float(x.max()), rel=1e-6)
        assert s.median_abs == pytest.approx(float(x.reshape(-1).median()), rel=0.01)
        per_channel = x.sum(dim=0)
        assert s.top_channel_share == pytest.approx(
            float(per_channel.max() / per_channel.sum()), rel=1e-5
        )  # 1% of 32 channels rounds up to one channel


def test_padding_positions_do_not_change_the_statistics() -> None:
    model = _four_layers("llama")
    short, long = torch.arange(10, 16), torch.arange(30, 39)
    apart = measure_layers(model, [{"input_ids": short[None]}, {"input_ids": long[None]}])

    # The same two sequences in one left-padded batch; the pad id is a token whose
    # embedding is made enormous, so counting a padding position would show at once.
    with torch.no_grad():
        model.get_input_embeddings().weight[3] *= 1e4
    ids = torch.full((2, 9), 3)
    ids[0, 3:], ids[1] = short, long
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    padded = measure_layers(model, [{"input_ids": ids, "attention_mask": mask}])
    for a, b in zip(apart, padded):
        assert b.tokens == a.tokens == 15
        assert b.max_abs == pytest.approx(a.max_abs, rel=1e-4)
        assert b.median_abs == pytest.approx(a.median_abs, rel=0.02)
        assert b.top_channel_share == pytest.approx(a.top_channel_share, rel=1e-4)

    unmasked = measure_layers(model, [{"input_ids": ids}])
    assert unmasked[0].max_abs > 100 * padded[0].max_abs


def _stats(ratios: list[float]) -> list[LayerStats]:
    return [
        LayerStats(i, f"model.layers.{i}.", 10, r, 1.0, r, 0, 0.01, 0.01)
        for i, r in enumerate(ratios)
    ]


def test_selection_rule_is_relative_to_the_quietest_layer() -> None:
    # Later layers keep the outlier: the median ratio is an outlier layer's, the minimum is not.
    probe = select_layer(_stats([8.0, 12.0, 900.0, 1000.0, 950.0, 20.0]))
    assert probe.baseline_ratio == 8.0
    assert probe.selected == 2
    assert select_layer(_stats([8.0, 12.0, 900.0]), threshold=1.2).selected == 1
    quiet = select_layer(_stats([8.0, 12.0, 30.0, 10.0]))
    assert quiet.selected == 2 and "no layer above" in quiet.rule
    with pytest.raises(ValueError, match="positive"):
        select_layer(_stats([8.0]), threshold=0)


def test_probe_writes_json_and_plot_from_the_cli(tmp_path, capsys, monkeypatch) -> None:
    from agzo.cli import main
    from agzo.testing import tiny_tokenizer

    def tiny_model(*_args: object, **_kwargs: object) -> tuple[nn.Module, object]:
        model = _four_layers("llama")
        _add_outlier_channel(model, 1, channel=7, scale=1000.0)
        return model, tiny_tokenizer()

    monkeypatch.setattr("agzo.models.load_model", tiny_model)
    out = tmp_path / "layers"
    code = main(["probe", "layers", "--task", "synthetic-sentiment", "--examples", "8",
                 "--batch-size", "3", "--output", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads((out / "layers.json").read_text())
    assert report["selected"] == 1 and report["examples"] == 8
    assert [layer["index"] for layer in report["layers"]] == [0, 1, 2, 3]
    assert report["layers"][1]["prefix"] == "model.layers.1."
    assert (out / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "selected layer 1" in printed and "max/median" in printed


def test_plot_layers_writes_a_png(tmp_path) -> None:
    path = tmp_path / "plot.png"
    plot_layers(select_layer(_stats([8.0, 900.0])), str(path))
    assert path.stat().st_size > 1000
