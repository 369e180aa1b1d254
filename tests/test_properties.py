"""Properties every zeroth-order step must have, whatever the model."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import agzo
import agzo.testing
from agzo.core.transforms import Transform
from agzo.directions import ProbeContext
from agzo.observe import ActivationCapture, power_iteration
from agzo.probes.dispatch import OperatorCounter
from agzo.seeding import derive_seed
from tests.tiny import batch, loss_fn, tiny_model

OPTIMIZERS = {
    "agzo": lambda m, **kw: agzo.AGZO(m, lr=1e-2, eps=1e-3, rank=2, **kw),
    "mezo": lambda m, **kw: agzo.MeZO(m, lr=1e-3, eps=1e-3, **kw),
    "lozo": lambda m, **kw: agzo.LOZO(m, lr=1e-3, eps=1e-3, refresh_every=2, **kw),
    "lozo-m": lambda m, **kw: agzo.LOZO(m, lr=1e-3, eps=1e-3, refresh_every=2, momentum=0.9, **kw),
}


def _setup(arch: str = "llama", dtype: torch.dtype = torch.float32, pad: int = 2):
    model = tiny_model(arch).to(dtype)
    ids, mask, labels = batch(arch, pad=pad)
    return model, loss_fn(model, arch, ids, mask, labels)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_zero_learning_rate_step_restores_the_weights(name: str, arch: str) -> None:
    model, closure = _setup(arch)
    before = _weights(model)
    opt = OPTIMIZERS[name](model)
    for group in opt.param_groups:
        group["lr"] = 0.0
    for _ in range(3):
        opt.step(closure)
    for p, w in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_update_uses_exactly_the_measured_perturbation(name: str) -> None:
    """W₁ − W₀ must equal −ηg·Δ with Δ read off the weights the closure saw and η the
    group's rate at that step (changed before every step, as a schedule does).

    LOZO's public code draws a fresh U for the update on refresh steps; with
    refresh_every=2 over six steps such a mismatch fails here.
    """
    if name == "lozo-m":
        pytest.skip("momentum updates along the accumulated buffer, not the current probe")
    model, loss = _setup("llama", torch.float64)
    opt = OPTIMIZERS[name](model)
    seen: list[tuple[float, list[torch.Tensor]]] = []

    def closure():
        value = loss()
        seen.append((float(value), _weights(model)))
        return value

    peak = opt.param_groups[0]["lr"]
    for step in range(6):
        # A schedule's rate (a warmup here): each step must use the group's rate of now.
        for group in opt.param_groups:
            group["lr"] = peak * (step + 1) / 6
        seen.clear()
        start = _weights(model)
        opt.step(closure)
        lr, eps = opt.param_groups[0]["lr"], opt.eps
        if opt.two_sided:
            (f_plus, w_plus), (f_minus, w_minus) = seen
            deltas = [(a - b) / (2 * eps) for a, b in zip(w_plus, w_minus)]
            g = (f_plus - f_minus) / (2 * eps)
        else:
            (f0, w0), (f_plus, w_plus) = seen
            deltas = [(a - b) / eps for a, b in zip(w_plus, w0)]
            g = (f_plus - f0) / eps
        assert g != 0
        for p, w, d in zip(model.parameters(), start, deltas):
            torch.testing.assert_close(p.detach(), w - lr * g * d, rtol=1e-6, atol=1e-9)


def _captured(model, closure, tensors, rank=2, steps=3, mask=None):
    capture = ActivationCapture(tensors, rank, steps, seed=11, root=model, attention_mask=mask)
    with torch.no_grad(), capture:
        closure()
    return capture.result


def test_agzo_probe_lies_in_the_captured_subspace() -> None:
    model, closure = _setup("qwen3")
    opt = agzo.AGZO(model, lr=1e-2, eps=1e-3, rank=2)
    captured = _captured(model, closure, opt.tensors)
    probe = opt.probe(ProbeContext(0, derive_seed(0, 0), 0, observed=captured))
    checked = 0
    for tensor, direction in zip(probe.tensors, probe.directions):
        if not tensor.is_linear_weight or tensor.is_embedding:
            continue
        basis = captured.bases[tensor.index]
        delta = direction.dense()
        rows = delta.T if tensor.transposed else delta
        outside = rows - rows @ basis @ basis.T
        assert outside.norm() <= 1e-5 * rows.norm()
        assert torch.linalg.matrix_rank(rows) == 2
        checked += 1
    assert checked == 2 * 7 + 1  # q,k,v,o,gate,up,down per layer, plus lm_head


def test_embedding_probe_touches_only_rows_of_batch_tokens() -> None:
    model, closure = _setup("qwen3", pad=0)
    ids, _, _ = batch("qwen3", pad=0)
    opt = agzo.AGZO(model, lr=1e-2, eps=1e-3)
    captured = _captured(model, closure, opt.tensors)
    probe = opt.probe(ProbeContext(0, 1, 0, observed=captured))
    table = next(i for i, t in enumerate(probe.tensors) if t.is_embedding)
    delta = probe.directions[table].dense()
    touched = set((delta.abs().sum(1) > 0).nonzero().flatten().tolist())
    assert touched == set(ids.unique().tolist())


def _spectrum_with_gap(top, n=200, d=24, rest=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, d, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=gen))
    s = torch.full((d,), rest)
    s[: len(top)] = torch.tensor(top)
    return u @ torch.diag(s) @ v.T


@pytest.mark.parametrize(
    "rank, steps, scale",
    [(1, 3, 1.0), (2, 3, 1.0), (1, 20, 1.0), (1, 3, 1e6), (1, 3, 1e-2)],
)
def test_power_iteration_matches_svd_when_the_spectrum_has_a_gap(
    rank: int, steps: int, scale: float
) -> None:
    """Also for long iterations (renormalized on the way) and for activations large and
    small enough that an unnormalized rank-1 iteration would overflow or underflow
    without its scaled start."""
    h = _spectrum_with_gap(top=(10.0, 9.0)[:rank]) * scale  # gap after the r-th value
    basis, norms = power_iteration(h, rank, steps, torch.Generator().manual_seed(3))
    _, s, vh = torch.linalg.svd(h)
    top = vh[:rank].T
    # principal angles: singular values of topᵀ basis are cosines
    cosines = torch.linalg.svdvals(top.T @ basis)
    assert cosines.min() > 0.999
    torch.testing.assert_close(basis.T @ basis, torch.eye(rank), atol=1e-5, rtol=0)
    torch.testing.assert_close(norms.sort(descending=True).values, s[:rank], rtol=1e-3, atol=0)
    assert torch.isfinite(basis).all() and basis.abs().sum() > 0


def test_padding_rows_do_not_change_the_basis() -> None:
    layer = nn.Linear(16, 8)
    tensors = agzo.params.describe_tensors([("weight", layer.weight)], layer)
    real = torch.randn(2, 5, 16)
    padded = torch.cat([torch.randn(2, 3, 16) * 100, real], dim=1)  # left padding, garbage
    mask = torch.cat([torch.zeros(2, 3), torch.ones(2, 5)], dim=1)

    def basis_of(x, m):
        capture = ActivationCapture(tensors, 2, 3, seed=5, attention_mask=m)
        with torch.no_grad(), capture:
            layer(x)
        return capture.result.bases[0]

    torch.testing.assert_close(basis_of(padded, mask), basis_of(real, None))
    assert not torch.allclose(basis_of(padded, None), basis_of(real, None), atol=1e-3)


def test_token_rows_are_the_real_tokens_ids_only() -> None:
    """Padding positions' ids (here 0 and 7, used by no real token) get no embedding probe."""
    table = nn.Embedding(10, 4)
    tensors = agzo.params.describe_tensors([("weight", table.weight)], table)
    ids = torch.tensor([[0, 7, 3, 5, 3], [7, 2, 2, 9, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    capture = ActivationCapture(tensors, 1, 3, seed=0, attention_mask=mask)
    with torch.no_grad(), capture:
        table(ids)
    rows = capture.result.token_rows[0]
    assert rows.distinct().tolist() == [2, 3, 5, 9]
    int32 = ActivationCapture(tensors, 1, 3, seed=0, attention_mask=mask)
    with torch.no_grad(), int32:
        table(ids.to(torch.int32))
    assert torch.equal(int32.result.token_rows[0].ids, rows.ids)  # padding still sorts last
    # One position per lookup, padding included (a size the host knows), repeats unmarked.
    assert rows.positions == ids.numel()
    assert rows.ids.tolist() == [2, 2, 3, 3, 5, 5, 9] + [9] * 3
    assert rows.first.tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 0, 0]


def test_mask_is_read_from_the_model_call() -> None:
    model, closure = _setup("llama", pad=3)
    ids, mask, _ = batch("llama", pad=3)
    opt = agzo.AGZO(model, lr=1e-2, eps=1e-3)
    auto = _captured(model, closure, opt.tensors)
    explicit = _captured(model, closure, opt.tensors, mask=mask)
    for index, basis in explicit.bases.items():
        torch.testing.assert_close(auto.bases[index], basis)


def _expected_cosine(model, closure, make_opt, draws: int) -> float:
    loss = closure()
    grads = torch.autograd.grad(loss, [p for p in model.parameters()])
    true = torch.cat([g.reshape(-1) for g in grads])
    cosines = []
    for seed in range(draws):
        opt = make_opt(model, seed)
        captured = None
        if opt.sampler.observes_model:
            captured = _captured(model, closure, opt.tensors, rank=1, steps=3)
        probe = opt.probe(ProbeContext(0, derive_seed(seed, 0), seed, observed=captured))
        delta = torch.cat([d.dense().reshape(-1) for d in probe.directions])
        estimate = (true @ delta) * delta  # the μ→0 limit of g·Δ
        cosines.append(float(torch.nn.functional.cosine_similarity(estimate, true, dim=0)))
    return sum(cosines) / len(cosines)


def test_agzo_aligns_better_with_the_gradient_than_mezo() -> None:
    model, closure = _setup("qwen3")
    agzo_cos = _expected_cosine(model, closure, lambda m, s: agzo.AGZO(m, seed=s), 30)
    mezo_cos = _expected_cosine(model, closure, lambda m, s: agzo.MeZO(m, seed=s), 30)
    assert agzo_cos > 2 * mezo_cos > 0


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("update", ["sgd", "adam"])
def test_state_dict_round_trip_gives_the_identical_next_step(name: str, update: str) -> None:
    if name == "lozo-m" and update == "adam":
        pytest.skip("LOZO-M has its own momentum update")
    model, closure = _setup("llama")
    opt = OPTIMIZERS[name](model, update=update, seed=4)
    for _ in range(3):
        opt.step(closure)
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    opt.step(closure)
    expected = _weights(model)

    twin, twin_closure = _setup("llama")
    twin.load_state_dict(saved_model)
    twin_opt = OPTIMIZERS[name](twin, update=update, seed=999)  # seed comes from the state
    twin_opt.load_state_dict(saved_state)
    twin_opt.step(twin_closure)
    for p, w in zip(twin.parameters(), expected):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=0)


def test_load_state_dict_rejects_another_method() -> None:
    model, _ = _setup("llama")
    state = agzo.MeZO(model).state_dict()
    with pytest.raises(ValueError, match="saved by MeZO"):
        agzo.AGZO(model).load_state_dict(state)


@pytest.mark.parametrize("bad_at", [0, 1])
def test_non_finite_loss_skips_the_step_and_restores(bad_at: int) -> None:
    model, loss = _setup("llama")
    opt = agzo.AGZO(model, lr=1e-2, eps=1e-3)
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        value = loss()
        return value * float("nan") if calls["n"] == bad_at + 1 else value

    before = _weights(model)
    with pytest.warns(agzo.SkippedStepWarning, match="non-finite"):
        assert opt.step(closure) is None
    assert opt.skipped_steps == 1 and opt.step_count == 1
    for p, w in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["agzo", "mezo"])
def test_exception_in_closure_restores_and_propagates(name: str) -> None:
    model, loss = _setup("llama")
    opt = OPTIMIZERS[name](model)
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory (simulated)")
        return loss()

    before = _weights(model)
    with pytest.raises(RuntimeError, match="simulated") as info:
        opt.step(closure)
    assert any("restored" in note for note in getattr(info.value, "__notes__", []))
    for p, w in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-6)


def test_interrupted_perturbation_is_rolled_back() -> None:
    model, _ = _setup("llama")
    opt = agzo.MeZO(model)
    probe = opt.probe(ProbeContext(0, 1, 0))

    class Boom(Exception):
        pass

    original = probe.directions[3].add_to

    def failing(param, alpha):
        raise Boom

    probe.directions[3].add_to = failing  # type: ignore[method-assign]
    before = _weights(model)
    with pytest.raises(Boom):
        probe.shift(1e-2)
    probe.directions[3].add_to = original  # type: ignore[method-assign]
    for p, w in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_no_gradient_is_allocated(name: str) -> None:
    model, closure = _setup("gpt2")
    opt = OPTIMIZERS[name](model)
    opt.step(closure)
    assert all(p.grad is None for p in model.parameters())


def test_tied_weights_are_perturbed_once_and_frozen_ones_never() -> None:
    model, closure = _setup("llama")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    frozen = model.model.layers[0].mlp.down_proj.weight
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    opt = agzo.AGZO(model, lr=1e-2, eps=1e-3)
    names = [t.name for t in opt.tensors]
    assert names.count("model.embed_tokens.weight") == 1 and "lm_head.weight" not in names
    assert "model.layers.0.mlp.down_proj.weight" not in names
    tied = next(t for t in opt.tensors if t.name == "model.embed_tokens.weight")
    assert tied.is_embedding and tied.is_linear_weight
    for _ in range(2):
        opt.step(closure)
    assert torch.equal(frozen, before)


def test_include_and_exclude_patterns() -> None:
    model, closure = _setup("llama")
    opt = agzo.AGZO(model, include=["*proj.weight"], exclude=["o_proj"])
    names = {t.name for t in opt.tensors}
    assert names and all(n.endswith("proj.weight") and "o_proj" not in n for n in names)
    embed = model.model.embed_tokens.weight.detach().clone()
    opt.step(closure)
    assert torch.equal(model.model.embed_tokens.weight, embed)
    with pytest.raises(ValueError, match="no trainable parameter"):
        agzo.AGZO(model, include=["does-not-exist"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights_train_and_warn_when_eps_vanishes(dtype: torch.dtype) -> None:
    model, closure = _setup("llama", dtype)
    before = _weights(model)
    opt = agzo.AGZO(model, lr=1e-2, eps=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", agzo.PrecisionWarning)
        opt.step(closure)
    assert any(not torch.equal(p, w) for p, w in zip(model.parameters(), before))
    assert all(p.dtype == dtype for p in model.parameters())

    tiny_eps = agzo.AGZO(model, lr=1e-2, eps=1e-7)
    with pytest.warns(agzo.PrecisionWarning, match="eps"):
        tiny_eps.step(closure)


def test_bad_arguments_are_rejected() -> None:
    model, _ = _setup("llama")
    with pytest.raises(ValueError, match="eps"):
        agzo.AGZO(model, eps=0)
    with pytest.raises(ValueError, match="rank"):
        agzo.AGZO(model, rank=0)
    with pytest.raises(ValueError, match="embedding_mode"):
        agzo.AGZO(model, embedding_mode="sparse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass the model"):
        agzo.AGZO(list(model.parameters()))
    with pytest.raises(ValueError, match="closure"):
        agzo.MeZO(model).step()
    with pytest.raises(ValueError, match="scalar"):
        agzo.MeZO(model).step(lambda: torch.ones(3))


def test_dropout_in_training_mode_warns() -> None:
    model, closure = _setup("gpt2")
    model.config.resid_pdrop = 0.1
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.1
    model.train()
    with pytest.warns(UserWarning, match="dropout"):
        agzo.MeZO(model).step(closure)


def test_lr_changes_after_load_state_dict_take_effect() -> None:
    model, closure = _setup("llama")
    opt = agzo.AGZO(model, lr=1e-2, eps=1e-3)
    opt.load_state_dict(opt.state_dict())  # replaces the param group dicts
    for group in opt.param_groups:
        group["lr"] = 0.0
    before = _weights(model)
    opt.step(closure)
    for p, w in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-6)


def test_layers_reading_the_same_input_share_one_basis() -> None:
    model, closure = _setup("llama")
    opt = agzo.AGZO(model, rank=2)
    captured = _captured(model, closure, opt.tensors)
    index = {t.name: t.index for t in opt.tensors}
    layer = "model.layers.0."
    q, k, v, o = (
        captured.bases[index[f"{layer}self_attn.{p}_proj.weight"]] for p in ("q", "k", "v", "o")
    )
    gate, up = (captured.bases[index[f"{layer}mlp.{p}_proj.weight"]] for p in ("gate", "up"))
    assert torch.equal(q, k) and torch.equal(q, v) and torch.equal(gate, up)
    assert q.shape == o.shape and not torch.allclose(q, o)


class _InterruptingTransform(Transform):
    """Delegates to `inner`, but raises KeyboardInterrupt at the `at`-th tensor."""

    def __init__(self, inner: Transform, at: int) -> None:
        self.inner, self.at, self.calls = inner, at, 0

    def __call__(self, update, param, state, group):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner(update, param, state, group)

    @property
    def stateless(self) -> bool:
        return self.inner.stateless

    def reads_group_weight_decay(self) -> bool:
        return self.inner.reads_group_weight_decay()


@pytest.mark.parametrize("update", ["sgd", "adam"])
def test_interrupted_update_leaves_no_tensor_perturbed(update: str) -> None:
    model, closure = _setup("llama")
    opt = agzo.AGZO(model, lr=0.0, eps=1e-2, update=update)  # lr 0: all must end at W₀
    before = _weights(model)
    opt.transform = _InterruptingTransform(opt.transform, at=4)
    with pytest.raises(KeyboardInterrupt):
        opt.step(closure)
    for p, w in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-6)


def _rows(ids: list[int], padding: int = 0):
    from agzo.core.reduce import NO_ROW
    from agzo.observe.token_rows import TokenRows

    return TokenRows.from_lookups(torch.tensor(ids + [NO_ROW] * padding))


def test_row_noise_is_the_same_however_much_padding_the_batch_had() -> None:
    """Each distinct row takes the noise at its first position among the sorted real ids,
    so padding (and a batch split across processes, whose gathered lists are longer) does
    not change the probe; repeats add nothing more."""
    from agzo.directions.base import RowDirection

    shape = torch.Size((12, 5))
    cpu = torch.device("cpu")
    probes = [
        RowDirection(shape, _rows(ids, padding), cpu, (7, 1)).dense()
        for ids, padding in (([4, 9, 4, 1], 0), ([9, 1, 4, 4], 13), ([1, 4, 9, 4], 3))
    ]
    for probe in probes[1:]:
        assert torch.equal(probe, probes[0])
    touched = probes[0].abs().sum(dim=1) > 0
    assert touched.nonzero().flatten().tolist() == [1, 4, 9]
    # The row of id 4 is the noise at its first sorted position (1), not the sum of two.
    draw = torch.randn(32, generator=agzo.seeding.generator_for(cpu, 7, 1))[:20].view(4, 5)
    assert torch.equal(probes[0][4], draw[1])


def test_no_lookup_and_only_padding_give_a_harmless_row_probe() -> None:
    from agzo.directions.base import RowDirection

    table = torch.randn(12, 5)
    # Nothing looked up: no probe. Only padding: one probe row, row 0 (no real row to miss).
    for rows, expected in ((_rows([]), []), (_rows([], padding=4), [0])):
        before = table.clone()
        RowDirection(table.shape, rows, torch.device("cpu"), (5,)).add_to(table, 0.1)
        assert (table != before).any(dim=1).nonzero().flatten().tolist() == expected


def test_row_probe_in_bfloat16_is_the_float32_update_rounded() -> None:
    from agzo.directions.base import RowDirection

    gen = torch.Generator().manual_seed(2)
    table = torch.randn(12, 5, generator=gen)
    direction = RowDirection(table.shape, _rows([4, 9, 4, 1, 9], 2), torch.device("cpu"), (3,))
    low = table.to(torch.bfloat16)
    direction.add_to(low, 0.5)
    expected = (table.to(torch.bfloat16).float() + 0.5 * direction.dense()).to(torch.bfloat16)
    assert torch.equal(low, expected)


def _step_counts(make, layers: int) -> OperatorCounter:
    """Operators of one step (after a first step, which also checks precision)."""
    model = agzo.testing.tiny_causal_lm("llama", num_hidden_layers=layers)
    ids, mask, labels = batch("llama", pad=0)
    opt = make(model)
    closure = loss_fn(model, "llama", ids, mask, labels)
    opt.step(closure)
    with OperatorCounter() as counter:
        opt.step(closure)
    return counter


@pytest.mark.parametrize("name", ["agzo", "mezo", "lozo"])
def test_host_syncs_per_step_do_not_grow_with_depth(name: str) -> None:
    """A step may read its losses, but no layer may add a host sync (on a GPU each one
    stalls the launch queue; per-layer checks once made AGZO's capture slower than
    its forward passes)."""
    counts = [_step_counts(OPTIMIZERS[name], layers).syncs for layers in (1, 4)]
    assert counts[0] == counts[1], f"host syncs per step at 1 and 4 layers: {counts}"
    assert counts[1] <= 12, counts  # losses, the mask, the batch's token rows


def test_agzo_adds_no_host_sync_to_mezos() -> None:
    """MeZO's syncs are the model's own and the losses'. AGZO's capture, its token rows
    (kept at the batch's own size, padding included) and its probes add none."""
    syncs = {n: _step_counts(OPTIMIZERS[n], 2).syncs for n in ("agzo", "mezo")}
    assert syncs["agzo"] == syncs["mezo"], syncs


def test_agzo_launches_grow_with_depth_no_faster_than_mezo() -> None:
    """On a GPU a small model's step costs launches: each layer AGZO adds (its capture,
    its probes) must cost no more kernels than the same layer costs MeZO."""
    growth = {}
    for name, make in (("agzo", agzo.AGZO), ("mezo", agzo.MeZO)):  # defaults: rank 1
        shallow, deep = (_step_counts(make, layers).launches for layers in (1, 4))
        growth[name] = deep - shallow
    assert 0 < growth["agzo"] <= growth["mezo"], growth


@pytest.mark.parametrize("update", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("name", ["agzo", "mezo"])
def test_low_precision_steps_in_row_chunks_match_whole_tensor_steps(
    name: str, update: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 weights are updated through float32 copies of a few rows at a time (so a big
    embedding never gets a whole float32 copy); the chunking must not change a bit."""
    import agzo.directions.base as base

    results = []
    for chunk in (base.CHUNK_ENTRIES, 48):
        monkeypatch.setattr(base, "CHUNK_ENTRIES", chunk)
        model, closure = _setup("llama", torch.bfloat16)
        opt = OPTIMIZERS[name](model, update=update)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bf16 precision warnings are not the point here
            for _ in range(2):
                opt.step(closure)
        results.append(_weights(model))
    assert any(p.numel() > 48 * 2 for p in results[0])  # the small chunks did split tensors
    for chunked, whole in zip(results[1], results[0]):
        assert torch.equal(chunked, whole)


def test_precision_check_in_row_chunks_matches_the_whole_tensor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import agzo.directions.base as base
    from agzo.core.estimator import vanishing_fraction
    from agzo.directions.base import (
        GaussianDirection,
        LowRankDirection,
        RowDirection,
        SumDirection,
    )

    gen = torch.Generator().manual_seed(0)
    param = (torch.randn(40, 6, generator=gen) * 10).to(torch.bfloat16)
    shape = param.shape
    directions = [
        GaussianDirection(shape, torch.device("cpu"), (1, 2)),
        LowRankDirection(torch.randn(40, 1, generator=gen), torch.randn(6, 1, generator=gen)),
        RowDirection(shape, _rows([3, 17, 39, 17]), torch.device("cpu"), (3,)),
        SumDirection(
            [
                RowDirection(shape, _rows([21, 0, 21]), torch.device("cpu"), (4,)),
                LowRankDirection(torch.randn(40, 1, generator=gen), torch.randn(6, 1)),
            ]
        ),
    ]
    for direction in directions:
        whole = vanishing_fraction(param, direction, 1e-2)
        monkeypatch.setattr(base, "CHUNK_ENTRIES", 12)  # two rows per chunk
        chunked = vanishing_fraction(param, direction, 1e-2)
        monkeypatch.setattr(base, "CHUNK_ENTRIES", 1 << 22)
        assert 0.0 < whole < 1.0
        assert chunked == whole
        torch.testing.assert_close(
            torch.cat([direction.dense_rows(slice(i, i + 7)) for i in range(0, 40, 7)]),
            direction.dense(),
            rtol=0,
            atol=0,
        )


@pytest.mark.parametrize("rank", [1, 3])
def test_power_iteration_gives_no_probe_for_zero_or_overflowing_input(rank: int) -> None:
    """A layer whose input is all zero has a zero gradient; one that overflowed cannot be
    trusted: either way its basis is zero (no probe), never NaN."""
    for bad in (torch.zeros(4, 6), torch.full((4, 6), torch.inf)):
        basis, norms = power_iteration(bad, rank, 3, torch.Generator().manual_seed(5))
        assert basis.shape == (6, rank) and basis.dtype == norms.dtype == torch.float32
        assert torch.equal(basis, torch.zeros_like(basis))
        assert torch.equal(norms, torch.zeros_like(norms))  # merges with another call cleanly


def test_bases_normalized_together_are_the_bits_of_each_normalized_alone() -> None:
    """A capture normalizes all of a pass's rank-one iterates in a few stacked kernels;
    each basis must still be exactly what normalizing its iterate alone gives, the zero
    and the overflowing input included."""
    from agzo.observe.subspaces import normalize_together, power_steps, run_to_end

    gen = torch.Generator().manual_seed(11)
    inputs = [torch.randn(9, 12, generator=gen) * scale for scale in (1e-3, 1.0, 1e3)]
    inputs += [torch.zeros(9, 12), torch.full((9, 12), torch.inf), torch.randn(9, 20)]

    def iterates() -> list:
        return [
            run_to_end(power_steps(h, 1, 3, torch.Generator().manual_seed(i)))
            for i, h in enumerate(inputs)
        ]

    alone = [s.basis for s in iterates()]  # each normalized on first use
    together = iterates()
    normalize_together(together + together[:2])  # repeats (shared inputs) count once
    for i, (a, t) in enumerate(zip(alone, together)):
        assert torch.equal(a, t.basis), i
        assert a.shape == (inputs[i].shape[1], 1)
    assert float(alone[1].norm()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(alone[3], torch.zeros_like(alone[3]))
    assert torch.equal(alone[4], torch.zeros_like(alone[4]))


def test_exact_svd_basis_is_named_in_settings_only_when_chosen() -> None:
    """States saved before the option existed (power iteration) keep loading."""
    model, _ = _setup("llama")
    assert "basis" not in agzo.AGZO(model).settings()
    assert agzo.AGZO(model, basis="svd").settings()["basis"] == "svd"
    with pytest.raises(ValueError, match="basis must be one of"):
        agzo.AGZO(model, basis="qr")


def test_exact_svd_basis_refuses_a_batch_split_across_processes() -> None:
    from agzo.core.reduce import Reducer

    class Collective(Reducer):
        collective = True

    layer = nn.Linear(16, 8)
    tensors = agzo.params.describe_tensors([("weight", layer.weight)], layer)
    with pytest.raises(ValueError, match="whole input in one process"):
        ActivationCapture(tensors, 1, 3, seed=0, reducer=Collective(), exact=True)


@pytest.mark.parametrize("rows, cols", [(40, 12), (12, 40)], ids=["tall", "wide"])
def test_exact_basis_is_the_svds_top_right_singular_vectors(rows: int, cols: int) -> None:
    """Whichever Gram matrix it decomposes (the smaller one), the exact basis is the SVD's:
    the same top vectors and singular values, sign fixed, and zero for a zero input."""
    from agzo.observe.subspaces import exact_subspace

    generator = torch.Generator().manual_seed(5)
    u, _, v = torch.linalg.svd(torch.randn(rows, cols, generator=generator), full_matrices=False)
    values = torch.tensor([8.0, 5.0, 3.0] + [0.5] * (min(rows, cols) - 3))
    h = (u * values) @ v
    exact = exact_subspace(h, 3)
    _, s, vh = torch.linalg.svd(h.double(), full_matrices=False)
    for j in range(3):
        assert abs(float(exact.basis[:, j].double() @ vh[j])) == pytest.approx(1.0, abs=1e-5)
        column = exact.basis[:, j]
        assert float(column[column.abs().argmax()]) > 0  # the sign convention
    torch.testing.assert_close(exact.norms.double(), s[:3], rtol=1e-5, atol=0)
    zero = exact_subspace(torch.zeros(rows, cols), 2)
    assert torch.equal(zero.basis, torch.zeros(cols, 2)) and not zero.norms.any()


def test_power_iteration_approaches_the_exact_basis_of_real_rows() -> None:
    """With a spectral gap, K = 3 power steps and the exact SVD agree; padding rows
    change neither."""
    layer = nn.Linear(16, 8)
    tensors = agzo.params.describe_tensors([("weight", layer.weight)], layer)
    u, _, v = torch.linalg.svd(torch.randn(10, 16), full_matrices=False)
    real = (u * torch.tensor([9.0, 3.0] + [0.1] * 8)) @ v  # top direction v[0]
    x = torch.cat([torch.randn(1, 3, 16) * 50, real.reshape(1, 10, 16)], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 10)], dim=1)
    bases = {}
    for exact in (False, True):
        capture = ActivationCapture(tensors, 1, 3, seed=0, attention_mask=mask, exact=exact)
        with torch.no_grad(), capture:
            layer(x)
        bases[exact] = capture.result.bases[0][:, 0]
    assert abs(float(bases[True] @ v[0])) == pytest.approx(1.0, abs=1e-5)
    assert abs(float(bases[False] @ bases[True])) > 0.999
