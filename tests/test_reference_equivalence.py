"""Each optimizer, step by step, against the dense reference in tests/reference."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import agzo
from tests.reference import dense
from tests.tiny import batch, loss_fn, tiny_model

ARCHS = ["llama", "qwen3", "gpt2", "bert"]
STEPS = 3


def _pair(arch: str, pad: int = 0):
    # float64: a forward difference divides the loss's rounding error by eps, which in
    # float32 would blur a step-by-step comparison.
    model = tiny_model(arch).double()
    twin = copy.deepcopy(model)
    ids, mask, labels = batch(arch, pad=pad)
    return (
        model,
        twin,
        loss_fn(model, arch, ids, mask, labels),
        loss_fn(twin, arch, ids, mask, labels),
        mask,
    )


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    # A wrong seed, sign or factor moves weights by lr*g*|Δ| >= 1e-4 here; summation-order
    # rounding between the two implementations stays below 1e-7.
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"{name} differs")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("embedding_mode", ["activation", "gaussian"])
def test_agzo_matches_dense_reference(arch: str, embedding_mode: str) -> None:
    model, twin, closure, ref_closure, mask = _pair(arch, pad=3)
    opt = agzo.AGZO(model, lr=1e-2, eps=1e-3, rank=2, embedding_mode=embedding_mode, seed=7)
    named = list(twin.named_parameters())
    before = copy.deepcopy(model)
    for step in range(STEPS):
        loss = opt.step(closure)
        ref = dense.agzo_step(
            twin,
            named,
            ref_closure,
            lr=1e-2,
            eps=1e-3,
            seed=7,
            step=step,
            rank=2,
            embedding_mode=embedding_mode,
            row_mask=mask,
        )
        assert loss is not None and float(loss) == pytest.approx(ref, rel=1e-6)
        _assert_same_weights(model, twin)
    # The comparison is not vacuous: the weights moved.
    moved = sum((p - q).abs().sum() for p, q in zip(model.parameters(), before.parameters()))
    assert moved > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_mezo_matches_dense_reference(arch: str) -> None:
    model, twin, closure, ref_closure, _ = _pair(arch)
    opt = agzo.MeZO(model, lr=1e-3, eps=1e-3, seed=3)
    named = list(twin.named_parameters())
    for step in range(STEPS):
        loss = opt.step(closure)
        ref = dense.mezo_step(named, ref_closure, lr=1e-3, eps=1e-3, seed=3, step=step)
        assert loss is not None and float(loss) == pytest.approx(ref, rel=1e-6)
        _assert_same_weights(model, twin)


@pytest.mark.parametrize("arch", ARCHS)
def test_lozo_matches_dense_reference_across_refreshes(arch: str) -> None:
    model, twin, closure, ref_closure, _ = _pair(arch)
    opt = agzo.LOZO(model, lr=1e-3, eps=1e-3, rank=2, refresh_every=2, seed=5)
    named = list(twin.named_parameters())
    for step in range(5):  # crosses two V refreshes
        opt.step(closure)
        dense.lozo_step(
            twin,
            named,
            ref_closure,
            lr=1e-3,
            eps=1e-3,
            seed=5,
            step=step,
            rank=2,
            refresh_every=2,
        )
        _assert_same_weights(model, twin)


def test_sequential_model_all_three() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    x, y = torch.randn(20, 6, dtype=torch.float64), torch.randint(0, 3, (20,))
    for make, ref_step in [
        (lambda m: agzo.AGZO(m, lr=0.1, eps=1e-3, seed=1), "agzo"),
        (lambda m: agzo.MeZO(m, lr=0.01, eps=1e-3, seed=1), "mezo"),
        (lambda m: agzo.LOZO(m, lr=0.01, eps=1e-3, seed=1, refresh_every=3), "lozo"),
    ]:
        model, twin = copy.deepcopy(net), copy.deepcopy(net)
        opt = make(model)
        named = list(twin.named_parameters())

        def closure(m=model):
            return nn.functional.cross_entropy(m(x), y)

        def ref_closure(m=twin):
            return nn.functional.cross_entropy(m(x), y)

        for step in range(4):
            opt.step(closure)
            if ref_step == "agzo":
                dense.agzo_step(twin, named, ref_closure, lr=0.1, eps=1e-3, seed=1, step=step)
            elif ref_step == "mezo":
                dense.mezo_step(named, ref_closure, lr=0.01, eps=1e-3, seed=1, step=step)
            else:
                dense.lozo_step(
                    twin,
                    named,
                    ref_closure,
                    lr=0.01,
                    eps=1e-3,
                    seed=1,
                    step=step,
                    rank=2,
                    refresh_every=3,
                )
            _assert_same_weights(model, twin)


ESTIMATOR_SETTINGS = [
    {"basis": "svd"},
    {"two_sided": True},
    {"queries": 3},
    {"two_sided": True, "queries": 2},
    {"weight_decay": 0.5},
]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("settings", ESTIMATOR_SETTINGS, ids=str)
def test_agzo_estimator_variants_match_dense_reference(arch: str, settings: dict) -> None:
    model, twin, closure, ref_closure, mask = _pair(arch, pad=3)
    opt = agzo.AGZO(model, lr=1e-2, eps=1e-3, rank=2, seed=7, **settings)
    named = list(twin.named_parameters())
    for step in range(STEPS):
        loss = opt.step(closure)
        ref = dense.agzo_step(
            twin, named, ref_closure, lr=1e-2, eps=1e-3, seed=7, step=step, rank=2,
            row_mask=mask, **settings,
        )  # fmt: skip
        assert loss is not None and float(loss) == pytest.approx(ref, rel=1e-6)
        _assert_same_weights(model, twin)


@pytest.mark.parametrize(
    "settings", [{"two_sided": False}, {"queries": 3}, {"weight_decay": 0.5}], ids=str
)
def test_mezo_estimator_variants_match_dense_reference(settings: dict) -> None:
    model, twin, closure, ref_closure, _ = _pair("llama")
    opt = agzo.MeZO(model, lr=1e-3, eps=1e-3, seed=3, **settings)
    named = list(twin.named_parameters())
    for step in range(STEPS):
        loss = opt.step(closure)
        ref = dense.mezo_step(named, ref_closure, lr=1e-3, eps=1e-3, seed=3, step=step, **settings)
        assert loss is not None and float(loss) == pytest.approx(ref, rel=1e-6)
        _assert_same_weights(model, twin)


def test_lozo_with_several_probes_matches_dense_reference() -> None:
    model, twin, closure, ref_closure, _ = _pair("llama")
    opt = agzo.LOZO(model, lr=1e-3, eps=1e-3, rank=2, refresh_every=2, seed=5, queries=2)
    named = list(twin.named_parameters())
    for step in range(4):
        opt.step(closure)
        dense.lozo_step(
            twin, named, ref_closure, lr=1e-3, eps=1e-3, seed=5, step=step, rank=2,
            refresh_every=2, queries=2,
        )  # fmt: skip
        _assert_same_weights(model, twin)
