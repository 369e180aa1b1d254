"""ZO-Act: the calibrated basis, the coefficient parametrization, its estimator against a
dense reference, its properties, saving, loading and a quantized base."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from agzo.adapters.zo_act import (
    adapted_layers,
    calibrate,
    merge_into_base,
    target_linears,
)
from agzo.methods import get_method
from agzo.methods.zo_act import ZOAct, prepare
from agzo.seeding import STREAM_PERTURBATION, derive_seed, generator_for
from agzo.testing import tiny_causal_lm
from tests.tiny import batch, loss_fn


class _Batch:
    def __init__(self, mask: torch.Tensor) -> None:
        self.attention_mask = mask


def _prepared(rank: int = 2, pad: int = 3, dtype: torch.dtype = torch.float32):
    model = tiny_causal_lm("llama").to(dtype).eval()
    ids, mask, labels = batch("llama", pad=pad)
    closure = loss_fn(model, "llama", ids, mask, labels)
    options = get_method("zo-act").make_options(rank=rank, lr=1e-2)
    base = copy.deepcopy(model)
    prepare(model, options, _Batch(mask), lambda _: closure())
    return model, base, closure, (ids, mask, labels), options


def test_the_basis_is_the_top_right_singular_vectors_of_the_real_rows() -> None:
    model = tiny_causal_lm("llama").eval()
    ids, mask, labels = batch("llama", pad=3)
    inputs: dict[str, torch.Tensor] = {}
    for name, module in target_linears(model):
        module.register_forward_pre_hook(
            lambda m, a, name=name: inputs.setdefault(name, a[0].detach())
        )
    bases = calibrate(
        model, _Batch(mask), 2, lambda _: loss_fn(model, "llama", ids, mask, labels)()
    )
    assert set(bases) == set(inputs) and "lm_head" not in bases
    for name, basis in bases.items():
        rows = inputs[name].reshape(-1, inputs[name].shape[-1])[mask.reshape(-1).bool()]
        _, _, vh = torch.linalg.svd(rows, full_matrices=False)
        cosines = torch.linalg.svdvals(vh[:2] @ basis)  # principal angles with the SVD
        assert cosines.min() > 0.999, name


def test_a_step_matches_the_dense_reference() -> None:
    """Two-sided Gaussian probes on every C, Adam on C, against W = W₀ + C Aᵀ written out.

    float64 weights (C is float32, as always): Adam divides by |g|, so float32 losses would
    blur the comparison of entries whose estimate is near zero."""
    model, base, closure, (ids, mask, labels), _ = _prepared(dtype=torch.float64)
    twin = copy.deepcopy(base).double()
    layers = {name: (layer.basis.double(), torch.zeros_like(layer.coefficients).double())
              for name, layer in adapted_layers(model)}  # fmt: skip
    opt = ZOAct(model, lr=1e-2, eps=1e-3, seed=4)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.endswith(".coefficients") for n in names)
    moments = {n: (0.0, 0.0) for n in layers}
    w0 = {n: twin.get_submodule(n).weight.detach().clone() for n in layers}

    def reference_loss(cs):
        with torch.no_grad():
            for n, c in cs.items():
                twin.get_submodule(n).weight.copy_(w0[n] + c @ layers[n][0].T)
            return float(loss_fn(twin, "llama", ids, mask, labels)())

    cs = {n: c for n, (_, c) in layers.items()}
    for step in range(3):
        loss = opt.step(closure)
        step_seed = derive_seed(4, step)
        z = {n: torch.randn(cs[n].shape, generator=generator_for("cpu", step_seed, 0, i,
             STREAM_PERTURBATION)).double() for i, n in enumerate(layers)}  # fmt: skip
        f_plus = reference_loss({n: cs[n] + 1e-3 * z[n] for n in cs})
        f_minus = reference_loss({n: cs[n] - 1e-3 * z[n] for n in cs})
        g = (f_plus - f_minus) / 2e-3
        for n in cs:
            grad = g * z[n]
            m, v = moments[n]
            m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad**2
            moments[n] = (m, v)
            t = step + 1
            cs[n] = cs[n] - 1e-2 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        assert float(loss) == pytest.approx(0.5 * (f_plus + f_minus), rel=1e-4)
        for n, layer in adapted_layers(model):
            # A wrong seed, sign or moment is off by ~lr = 1e-2; rounding is below 1e-5.
            torch.testing.assert_close(layer.coefficients.double(), cs[n], rtol=0, atol=1e-5)


def test_base_weights_never_change_and_the_change_lies_in_the_calibration_span() -> None:
    model, base, closure, _, _ = _prepared(rank=2)
    opt = ZOAct(model, lr=1e-2, seed=1)
    for _ in range(4):
        opt.step(closure)
    base_state = base.state_dict()
    for name, layer in adapted_layers(model):
        assert torch.equal(layer.base.weight, base_state[f"{name}.weight"]), name
        delta = layer.delta()
        assert delta.abs().sum() > 0
        a = layer.basis
        torch.testing.assert_close(delta - delta @ a @ a.T, torch.zeros_like(delta), atol=1e-6,
                                   rtol=0)  # fmt: skip
        # Trainable state: C and Adam's two moments, 3·d_out·r floats.
        state = opt.state[layer.coefficients]
        floats = layer.coefficients.numel() + state["exp_avg"].numel() + state["exp_avg_sq"].numel()
        assert floats == 3 * delta.shape[0] * a.shape[1]


def test_state_round_trip_gives_the_identical_next_step() -> None:
    model, _, closure, _, _ = _prepared()
    opt = ZOAct(model, lr=1e-2, seed=2)
    for _ in range(2):
        opt.step(closure)
    saved_model, saved_opt = copy.deepcopy(model), copy.deepcopy(opt.state_dict())
    opt.step(closure)
    twin_closure = loss_fn(saved_model, "llama", *batch("llama", pad=3))
    twin_opt = ZOAct(saved_model, lr=1e-2, seed=9)
    twin_opt.load_state_dict(saved_opt)
    twin_opt.step(twin_closure)
    for (_, a), (_, b) in zip(adapted_layers(model), adapted_layers(saved_model)):
        assert torch.equal(a.coefficients, b.coefficients)


def test_an_unprepared_model_is_refused() -> None:
    with pytest.raises(ValueError, match="prepared model"):
        ZOAct(tiny_causal_lm("llama"))


def test_merged_weights_give_the_same_outputs() -> None:
    model, _, closure, (ids, mask, _), _ = _prepared()
    ZOAct(model, lr=1e-1, seed=3).step(closure)
    merged = merge_into_base(model)
    assert not any(True for _ in adapted_layers(merged))
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids, attention_mask=mask).logits,
            model(input_ids=ids, attention_mask=mask).logits,
            rtol=1e-4, atol=1e-5,
        )  # fmt: skip


def _run(model_dir, out, **changes):
    from agzo.train import TrainConfig

    settings = {
        "model": str(model_dir), "steps": 3, "batch_size": 4, "n_train": 24, "n_dev": 8,
        "n_test": 8, "eval_every": 3, "checkpoint_every": 3, "output_dir": str(out),
        "tensorboard": False, "optimizer": "zo-act", "lr": 1e-2,
    }  # fmt: skip
    return TrainConfig.from_dict(settings | changes)


def test_training_saves_an_adapter_that_eval_and_load_model_accept(model_dir, tmp_path) -> None:
    from agzo.models import load_model
    from agzo.train import evaluate_model, train

    config = _run(model_dir, tmp_path / "run")
    result = train(config)
    saved = tmp_path / "run" / "model"
    assert (saved / "zo_act_config.json").is_file()
    reloaded, _ = load_model(saved)
    trained = dict(adapted_layers(result.model))
    for name, layer in adapted_layers(reloaded):
        assert torch.equal(layer.coefficients, trained[name].coefficients)
    again = evaluate_model(config.replace(model=str(saved)))
    assert again["test"]["accuracy"] == result.final["test"]["accuracy"]


def test_an_adapter_on_another_base_is_refused(model_dir, tmp_path) -> None:
    from agzo.models import ModelLoadError, load_model, save_model
    from agzo.testing import tiny_tokenizer
    from agzo.train import train

    train(_run(model_dir, tmp_path / "run", steps=1))
    saved = tmp_path / "run" / "model"
    other = tmp_path / "other"
    save_model(tiny_causal_lm("llama", seed=5), tiny_tokenizer(), other)
    config = saved / "zo_act_config.json"
    config.write_text(config.read_text().replace(str(model_dir), str(other)))
    with pytest.raises(ModelLoadError, match="trained on another base model"):
        load_model(saved)


def test_a_quantized_base_trains_and_stays_frozen(model_dir, tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    from agzo.train import train

    result = train(_run(model_dir, tmp_path / "q", quantize=8, steps=2))
    layers = dict(adapted_layers(result.model))
    assert layers and all(type(layer.base) is not nn.Linear for layer in layers.values())
    assert any(layer.coefficients.abs().sum() > 0 for layer in layers.values())


def test_a_quantized_base_with_a_method_that_writes_the_base_is_refused(tmp_path, capsys) -> None:
    from agzo.cli import main

    assert main(["train", "--optimizer", "agzo", "--quantize", "8",
                 "--output-dir", str(tmp_path / "r")]) == 2  # fmt: skip
    assert "use --optimizer zo-act or --lora-rank" in capsys.readouterr().err
