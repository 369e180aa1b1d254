"""The method layer's contracts: several probes, chained transforms, coordinate state,
the registry, and states that refuse other hyperparameters."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import agzo
from agzo.core.optimizer import ZerothOrderOptimizer
from agzo.core.transforms import adam, chain, momentum, weight_decay
from agzo.directions import ActivationSampler, GaussianSampler, LowRankSampler
from agzo.methods import get_method, method_names, methods
from agzo.seeding import (
    STREAM_LOW_RANK_V,
    STREAM_PERTURBATION,
    derive_seed,
    generator_for,
    seeded_global_rng,
)
from agzo.testing import tiny_causal_lm
from tests.tiny import batch, loss_fn, tiny_model


def _setup(arch: str = "llama", dtype: torch.dtype = torch.float32):
    model = tiny_model(arch).to(dtype)
    ids, mask, labels = batch(arch, pad=2)
    return model, loss_fn(model, arch, ids, mask, labels)


def _counting(loss):
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        return loss()

    return calls, closure


@pytest.mark.parametrize(
    "make, passes",
    [
        (lambda m: agzo.AGZO(m, queries=3), 1 + 3),  # f0 (observed) + one per probe
        (lambda m: agzo.AGZO(m, queries=3, two_sided=True), 1 + 2 * 3),
        (lambda m: agzo.MeZO(m, queries=3), 2 * 3),  # SPSA never needs f0
        (lambda m: agzo.MeZO(m, queries=3, two_sided=False), 1 + 3),
    ],
)
def test_one_sided_probes_share_the_unperturbed_loss(make, passes: int) -> None:
    model, loss = _setup()
    calls, closure = _counting(loss)
    make(model).step(closure)
    assert calls["n"] == passes


@pytest.mark.parametrize("two_sided", [False, True])
def test_weights_are_back_at_w0_before_every_probe(two_sided: bool) -> None:
    """Each probe is measured from W₀: the weights the closure sees, minus W₀, are ±μΔₖ."""
    model, loss = _setup()
    start = [p.detach().clone() for p in model.parameters()]
    seen: list[list[torch.Tensor]] = []

    def closure():
        seen.append([p.detach().clone() for p in model.parameters()])
        return loss()

    opt = agzo.MeZO(model, lr=0.0, eps=1e-3, queries=3, two_sided=two_sided, seed=2)
    opt.step(closure)
    step_seed = derive_seed(2, 0)
    plus = seen[0::2] if two_sided else seen[1:]
    assert len(plus) == 3
    for k, weights in enumerate(plus):
        for i, (w, w0) in enumerate(zip(weights, start)):
            z = torch.randn(w0.shape, generator=generator_for("cpu", step_seed, k, i, 0))
            torch.testing.assert_close(w - w0, 1e-3 * z, rtol=1e-3, atol=1e-6)
    for p, w0 in zip(model.parameters(), start):  # lr 0: restored after the last probe
        torch.testing.assert_close(p.detach(), w0, rtol=0, atol=1e-6)


def test_a_chain_of_transforms_equals_the_named_rule() -> None:
    model, loss = _setup()
    twin = copy.deepcopy(model)
    named = agzo.AGZO(model, update="adam", weight_decay=0.1, seed=1)
    composed = ZerothOrderOptimizer(
        twin,
        ActivationSampler(rank=1, power_steps=3),
        chain(adam(), weight_decay()),
        lr=1e-4,
        eps=1e-3,
        weight_decay=0.1,
        seed=1,
    )
    twin_loss = loss_fn(twin, "llama", *batch("llama", pad=2))
    for _ in range(3):
        named.step(loss)
        composed.step(twin_loss)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_weight_decay_needs_a_stage_that_applies_it_and_comes_last() -> None:
    model, _ = _setup()
    with pytest.raises(ValueError, match="no weight_decay"):
        ZerothOrderOptimizer(model, GaussianSampler(), adam(), lr=1e-3, eps=1e-3, weight_decay=0.1)
    with pytest.raises(ValueError, match="put it last"):
        chain(weight_decay(), momentum())


def test_adam_on_the_probe_factor_matches_a_dense_reference() -> None:
    """LOZO's probes U Vᵀ with V fixed for a period: Adam's moments live on U's
    coordinates (d_out x r) and restart when V is redrawn."""
    rank, nu, lr, eps, seed = 2, 3, 1e-2, 1e-4, 4
    model, loss = _setup()
    model = model.double()
    ids, mask, labels = batch("llama", pad=2)
    seen: list[tuple[float, list[torch.Tensor]]] = []
    base = loss_fn(model, "llama", ids, mask, labels)

    def closure():
        value = base()
        seen.append((float(value), [p.detach().clone() for p in model.parameters()]))
        return value

    opt = ZerothOrderOptimizer(
        model,
        LowRankSampler(rank, nu),
        chain(adam(coordinates="probe")),
        lr=lr,
        eps=eps,
        two_sided=True,
        seed=seed,
    )
    weights = [p.detach().clone() for p in model.parameters()]
    moments: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
    matrices = 0
    for step in range(5):  # crosses one refresh of V
        seen.clear()
        opt.step(closure)
        (f_plus, _), (f_minus, _) = seen
        g = (f_plus - f_minus) / (2 * eps)
        step_seed = derive_seed(seed, step)
        for i, p in enumerate(model.parameters()):
            gen = generator_for("cpu", step_seed, 0, i, STREAM_PERTURBATION)
            if p.dim() != 2:
                grad = g * torch.randn(p.shape, generator=gen).double()
                m, v, t = moments.get(i, (torch.zeros_like(grad), torch.zeros_like(grad), 0))
                direction = None
            else:
                u = torch.randn(p.shape[0], rank, generator=gen).double()
                vgen = generator_for("cpu", seed, step // nu, i, STREAM_LOW_RANK_V)
                direction = torch.randn(p.shape[1], rank, generator=vgen).double()
                grad = g * u
                if i not in moments or step % nu == 0:
                    moments[i] = (torch.zeros_like(grad), torch.zeros_like(grad), 0)
                m, v, t = moments[i]
                matrices += 1
            m, v, t = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad**2, t + 1
            moments[i] = (m, v, t)
            update = (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
            weights[i] = weights[i] - lr * (update if direction is None else update @ direction.T)
        # The factors are float32 (as in a float32 model): Adam's ±lr-sized steps agree to
        # float32 rounding, 1e-6 of a step, while a wrong moment or restart is off by ~lr.
        for p, w in zip(model.parameters(), weights):
            torch.testing.assert_close(p.detach(), w, rtol=1e-6, atol=1e-8)
    assert matrices > 0
    state = opt.state[next(p for p in model.parameters() if p.dim() == 2)]
    assert state["factor_exp_avg"].shape[1] == rank  # kept on the factor, not dense


@pytest.mark.parametrize(
    "saved, loaded, what",
    [
        (lambda m: agzo.AGZO(m, rank=2), lambda m: agzo.AGZO(m, rank=1), "rank"),
        (lambda m: agzo.AGZO(m, queries=2), lambda m: agzo.AGZO(m), "queries"),
        (
            lambda m: agzo.LOZO(m, refresh_every=10),
            lambda m: agzo.LOZO(m, refresh_every=50),
            "refresh_every",
        ),
        (lambda m: agzo.MeZO(m, update="adam"), lambda m: agzo.MeZO(m), "transform"),
    ],
)
def test_load_state_dict_refuses_other_hyperparameters(saved, loaded, what: str) -> None:
    model, loss = _setup()
    opt = saved(model)
    opt.step(loss)
    with pytest.raises(ValueError, match=f"other hyperparameters.*{what}: saved"):
        loaded(model).load_state_dict(opt.state_dict())


def test_every_method_is_registered_once_with_self_validating_options() -> None:
    assert method_names() == ("agzo", "mezo", "lozo", "zo-act", "fo-adamw", "fo-sgd")
    assert method_names(zeroth_order=True) == ("agzo", "mezo", "lozo", "zo-act")
    for method in methods():
        defaults = method.defaults()
        assert defaults.lr > 0
        with pytest.raises(ValueError, match="lr must be > 0"):
            method.make_options(lr=-1.0)
    with pytest.raises(ValueError, match="did you mean 'mezo'"):
        get_method("meso")
    with pytest.raises(ValueError, match="not an option of mezo .*applies to agzo"):
        get_method("mezo").make_options(power_steps=2)


def test_named_constructors_take_their_defaults_from_the_registry() -> None:
    model, _ = _setup()
    for name, cls in (("agzo", agzo.AGZO), ("mezo", agzo.MeZO), ("lozo", agzo.LOZO)):
        options = get_method(name).defaults()
        opt = cls(model)
        assert opt.param_groups[0]["lr"] == options.lr
        assert opt.two_sided == options.two_sided
        built = get_method(name).build(model, options)
        assert type(built) is cls
        assert built.settings() == opt.settings()


def test_lozo_m_and_fo_sgd_momentum_are_different_options() -> None:
    assert "factor_momentum" in get_method("lozo").option_names()
    assert "momentum" not in get_method("lozo").option_names()
    assert "momentum" in get_method("fo-sgd").option_names()


def test_exact_and_regex_patterns_tell_layer_1_from_layers_10_to_19() -> None:
    from agzo.params import select_named_parameters
    from agzo.testing import tiny_causal_lm

    model = tiny_causal_lm("llama", num_hidden_layers=12)

    def layers(patterns):
        names = [n for n, _ in select_named_parameters(model, include=patterns)]
        return {int(n.split(".")[2]) for n in names if n.startswith("model.layers.")}

    assert layers(["layers.1"]) == {1, 10, 11}  # a substring: the loose form
    assert layers(["layers.1."]) == {1}
    assert layers([r"re:layers\.1\."]) == {1}
    assert layers(["re:layers\\.(1|11)\\."]) == {1, 11}
    exact = select_named_parameters(model, include=["=model.layers.1.mlp.up_proj.weight"])
    assert [n for n, _ in exact] == ["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match="no trainable parameter"):
        select_named_parameters(model, include=["=model.layers.1"])  # exact: not a prefix
    with pytest.raises(ValueError, match="invalid regular expression"):
        select_named_parameters(model, include=["re:layers.("])


# --------------------------------------------------------------------------- --layers


def _layer_run(model_dir, out, **changes):
    from agzo.train import TrainConfig

    settings = {
        "model": str(model_dir), "steps": 2, "batch_size": 4, "n_train": 24, "n_dev": 8,
        "n_test": 8, "eval_every": 2, "checkpoint_every": 2, "output_dir": str(out),
        "tensorboard": False, "lr": 1e-2,
    }  # fmt: skip
    return TrainConfig.from_dict(settings | changes)


@pytest.mark.parametrize("optimizer", ["agzo", "mezo", "fo-adamw"])
def test_layers_restricts_training_to_the_named_layer(model_dir, tmp_path, optimizer) -> None:
    from safetensors.torch import load_file

    from agzo.train import train

    result = train(_layer_run(model_dir, tmp_path / "run", layers="1", optimizer=optimizer))
    before = load_file(str(model_dir / "model.safetensors"))
    after = load_file(str(result.output_dir / "model" / "model.safetensors"))
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed, "nothing trained"
    assert all(n.startswith("model.layers.1.") for n in changed), sorted(changed)


def test_layers_dominant_is_recorded_and_reused(model_dir, tmp_path) -> None:
    from agzo.train import TrainConfig, train

    out = tmp_path / "run"
    train(_layer_run(model_dir, out, layers="dominant", steps=1))
    saved = TrainConfig.from_file(out / "config.yaml")
    assert saved.layers is not None and saved.layers.startswith("dominant:")
    # Resuming with the same request finds the recorded layer, not a difference.
    train(_layer_run(model_dir, out, layers="dominant", steps=2), resume=True)
    assert TrainConfig.from_file(out / "config.yaml").layers == saved.layers


def test_layers_bad_input_is_one_clear_line(model_dir, tmp_path, capsys) -> None:
    from agzo.cli import main

    flags = ["--model", str(model_dir), "--output-dir", str(tmp_path / "r"), "--steps", "1"]
    assert main(["train", *flags, "--layers", "7"]) == 2
    assert (
        "layer 7 is out of range; the model has 2 decoder layers (0-1)" in capsys.readouterr().err
    )
    assert main(["train", *flags, "--layers", "two"]) == 2
    assert "expected 'dominant' or layer indices" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("optimizer", ["agzo", "mezo"])
def test_lora_trains_only_the_adapters_and_saves_them_in_peft_format(
    model_dir, tmp_path, optimizer
) -> None:
    from safetensors.torch import load_file

    from agzo.models import load_model
    from agzo.train import evaluate_model, train

    # The final weights are saved and tested: best-on-dev could keep the zero-shot ones.
    config = _layer_run(
        model_dir, tmp_path / "run", lora_rank=2, optimizer=optimizer, steps=3, save_mode="final"
    )
    result = train(config)
    named = dict(result.model.named_parameters())
    trained = {n for n, p in named.items() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    base = load_file(str(model_dir / "model.safetensors"))
    for name, param in named.items():  # the base weights are bit-unchanged
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        if "lora_" not in name and key in base:
            assert torch.equal(param.detach(), base[key]), name
    lora_b = [p for n, p in named.items() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it moved
    saved = tmp_path / "run" / "model"
    assert (saved / "adapter_config.json").is_file()
    reloaded, _ = load_model(saved)
    for name, param in reloaded.named_parameters():
        if "lora_" in name:
            assert torch.equal(param, named[name]), name
    again = evaluate_model(config.replace(model=str(saved), lora_rank=None))
    assert again["test"]["accuracy"] == result.final["test"]["accuracy"]


def test_lora_initialization_follows_the_seed_and_leaves_the_global_rng_alone() -> None:
    from agzo.adapters.lora import wrap_with_lora

    def lora_a(seed: int) -> list[torch.Tensor]:
        model = wrap_with_lora(tiny_causal_lm("llama", seed=0), rank=2, seed=seed)
        return [p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n]

    state = torch.random.get_rng_state()
    first, again, other = lora_a(0), lora_a(0), lora_a(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize(
    "settings",
    [
        {"optimizer": "agzo"},
        {"optimizer": "mezo"},
        {"optimizer": "lozo"},
        {"optimizer": "zo-act", "lr": 1e-3},
        {"optimizer": "fo-adamw", "lr": 1e-3},
        {"optimizer": "agzo", "lora_rank": 2},
        {"optimizer": "mezo", "lora_rank": 2},
    ],
    ids=lambda s: "-".join(str(v) for v in s.values()),
)
def test_a_run_is_reproduced_by_its_seed_whatever_the_global_rng(
    model_dir, tmp_path, settings
) -> None:
    from agzo.train import train

    def trained(name: str, seed: int, global_seed: int) -> dict[str, torch.Tensor]:
        config = _layer_run(model_dir, tmp_path / name, seed=seed, save_mode="final", **settings)
        with seeded_global_rng(global_seed):  # a caller's stream must not reach the run
            named = train(config).model.named_parameters()
        return {n: p.detach().clone() for n, p in named if p.requires_grad}

    first, again, other = trained("a", 0, 1), trained("b", 0, 2), trained("c", 1, 1)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)


def test_agzo_probes_lora_b_inside_the_span_of_lora_a_outputs(tiny_llama) -> None:
    from agzo.adapters.lora import wrap_with_lora

    model = wrap_with_lora(tiny_llama, rank=3, targets=["q_proj"])
    opt = agzo.AGZO(model, rank=1)
    ids = torch.randint(3, 60, (2, 6))
    observed = opt.observation(lambda: model(input_ids=ids).logits.sum(), 0)
    probe = opt.probe(agzo.directions.ProbeContext(0, 0, 0, observed=observed))
    b_tensors = [(t, d) for t, d in zip(probe.tensors, probe.directions) if "lora_B" in t.name]
    assert b_tensors
    for tensor, direction in b_tensors:
        assert tensor.param.shape[1] == 3  # lora_B reads lora_A's r-dimensional output
        basis = observed.bases[tensor.index]
        rows = direction.dense()
        torch.testing.assert_close(rows - rows @ basis @ basis.T, torch.zeros_like(rows))


def test_lora_target_that_matches_nothing_is_one_clear_line(model_dir, tmp_path, capsys) -> None:
    from agzo.cli import main

    flags = ["--model", str(model_dir), "--output-dir", str(tmp_path / "r"), "--steps", "1"]
    assert main(["train", *flags, "--lora-rank", "2", "--lora-targets", "qq_proj"]) == 2
    err = capsys.readouterr().err
    assert "match no module" in err and "q_proj" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- adaptive rank


def test_adaptive_rank_keeps_the_directions_that_hold_the_energy() -> None:
    from agzo.observe import ActivationCapture
    from agzo.params import describe_tensors

    torch.manual_seed(0)
    layer = nn.Linear(12, 5)
    gen = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(200, 12, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen))
    s = torch.full((12,), 0.1)
    s[:2] = torch.tensor([10.0, 9.0])  # 55% and 45% of the energy; the rest 0.06%
    x = u @ torch.diag(s) @ v.T
    tensors = describe_tensors([("weight", layer.weight)], layer)
    for energy, expected in ((0.5, 1), (0.9, 2), (0.9999, 4), (1.0, None)):
        capture = ActivationCapture(tensors, rank=4, power_steps=8, seed=3, energy=energy)
        with torch.no_grad(), capture:
            layer(x)
        result = capture.result
        if expected is None:  # threshold 1: the fixed-rank capture, no ranks reported
            assert result.ranks == {} and result.bases[0].abs().sum(0).gt(0).sum() == 4
            continue
        rank = int(result.ranks[0])
        assert rank == expected <= 4
        assert torch.equal(result.bases[0][:, rank:], torch.zeros(12, 4 - rank))


def test_adaptive_rank_never_reached_is_fixed_rank_agzo() -> None:
    model, loss = _setup()
    twin = copy.deepcopy(model)
    twin_loss = loss_fn(twin, "llama", *batch("llama", pad=2))
    fixed = agzo.AGZO(model, rank=3, seed=5, lr=1e-3)
    adaptive = agzo.AGZO(twin, rank=3, seed=5, lr=1e-3, energy=1.0 - 1e-9)
    for _ in range(3):
        fixed.step(loss)
        adaptive.step(twin_loss)
    assert set(adaptive.ranks().values()) == {3}
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_adaptive_rank_statistics_summarise_the_ranks_each_weight_kept() -> None:
    model, loss = _setup()
    twin = copy.deepcopy(model)
    twin_loss = loss_fn(twin, "llama", *batch("llama", pad=2))
    adaptive = agzo.AGZO(model, rank=4, seed=5, lr=1e-3, energy=0.6)
    fixed = agzo.AGZO(twin, rank=4, seed=5, lr=1e-3)
    assert adaptive.step_statistics() == {}  # nothing kept before a step
    adaptive.step(loss)
    fixed.step(twin_loss)
    kept = list(adaptive.ranks().values())
    assert min(kept) >= 1 and max(kept) <= 4 and len(set(kept)) > 1  # the ranks differ
    assert adaptive.step_statistics() == {
        "rank_mean": pytest.approx(sum(kept) / len(kept)),
        "rank_min": min(kept),
        "rank_max": max(kept),
    }
    assert fixed.step_statistics() == {}  # a fixed rank has nothing to report


def test_a_training_run_logs_the_ranks_an_adaptive_rank_kept(model_dir, tmp_path) -> None:
    from agzo.train import train

    def train_rows(**changes):
        result = train(_layer_run(model_dir, tmp_path / str(len(changes)), steps=3, **changes))
        lines = (result.output_dir / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["split"] == "train"]

    adaptive = train_rows(rank=4, energy=0.6)
    assert [r["step"] for r in adaptive] == [1, 2, 3]
    for row in adaptive:
        assert 1 <= row["rank_min"] <= row["rank_mean"] <= row["rank_max"] <= 4, row
    assert not any("rank_mean" in row for row in train_rows())  # fixed rank: nothing


# --------------------------------------------------------------------------- protocol


def test_preset_paper_is_agzo_as_the_paper_runs_it() -> None:
    from agzo.train import TrainConfig

    config = TrainConfig.from_dict({"optimizer": "agzo", "preset": "paper"})
    resolved = config.resolved()
    assert resolved["preset"] == "paper"
    assert (resolved["embedding_mode"], resolved["rank"], resolved["power_steps"]) == (
        "gaussian", 1, 3,
    )  # fmt: skip
    assert resolved["two_sided"] is False
    # A flag still wins over the preset, and the resolved config says so.
    assert TrainConfig.from_dict({"preset": "paper", "rank": 2}).resolved()["rank"] == 2
    with pytest.raises(ValueError, match="not a preset of mezo"):
        TrainConfig.from_dict({"optimizer": "mezo", "preset": "paper"})


def test_select_dev_loss_keeps_the_lowest_dev_loss() -> None:
    from agzo.train.loop import _better

    first = {"accuracy": 0.6, "loss": 1.0}
    more_accurate_higher_loss = {"accuracy": 0.7, "loss": 1.2}
    lower_loss_less_accurate = {"accuracy": 0.55, "loss": 0.8}
    assert _better(more_accurate_higher_loss, first, "accuracy", "dev-accuracy")
    assert not _better(more_accurate_higher_loss, first, "accuracy", "dev-loss")
    assert _better(lower_loss_less_accurate, first, "accuracy", "dev-loss")
    assert not _better(lower_loss_less_accurate, first, "accuracy", "dev-accuracy")


def test_benchmark_tasks_train_with_their_papers_loss_by_default() -> None:
    from agzo.train import TrainConfig

    losses = {t: TrainConfig(task=t).resolved()["loss"] for t in ("sst2", "rte", "copa")}
    assert losses == {"sst2": "candidates", "rte": "candidates", "copa": "lm"}
    assert TrainConfig().resolved()["loss"] == "lm"  # the generated default task
    assert TrainConfig(task="sst2", loss="lm").resolved()["loss"] == "lm"  # a flag wins


def test_a_run_in_the_studys_settings_takes_the_rate_the_study_chose() -> None:
    """Without --lr, AGZO on SST-2 trains at the study's choice, and so do the arms the
    study chose a rate for (the paper preset, the dominant layer, before and after it is
    resolved, rank-8 adapters, an adaptive rank, the language-model loss); any setting the
    study did not run (another loss with a preset, adapters of another rank or scale, named
    layers, another option) falls back to the method's default, and a given --lr always
    wins."""
    from agzo.methods import get_method
    from agzo.tasks import get_task
    from agzo.train import TrainConfig

    chosen = get_task("sst2").chosen_rate("agzo")
    default = get_method("agzo").defaults().lr
    assert chosen is not None and chosen != default
    assert TrainConfig(task="sst2").resolved()["lr"] == chosen
    assert TrainConfig(task="sst2", loss="candidates").learning_rate == chosen
    assert TrainConfig(task="sst2", lr=1e-6).learning_rate == 1e-6
    paper = get_task("sst2").chosen_rate("agzo --preset paper")
    assert paper is not None and TrainConfig(task="sst2", preset="paper").learning_rate == paper
    assert TrainConfig(task="rte", preset="paper").learning_rate == default
    dominant = get_task("sst2").chosen_rate("agzo --layers dominant")
    assert dominant is not None and dominant not in (chosen, default)
    for layers in ("dominant", "dominant:2"):
        assert TrainConfig(task="sst2", layers=layers).learning_rate == dominant
    lora = get_task("sst2").chosen_rate("agzo --lora-rank 8")
    assert lora is not None and lora not in (chosen, default, dominant)
    assert TrainConfig(task="sst2", lora_rank=8).learning_rate == lora
    adaptive = get_task("sst2").chosen_rate("agzo --rank 4 --energy 0.9")
    assert adaptive is not None
    lozo = get_task("sst2").chosen_rate("lozo")
    assert lozo is not None and lozo != get_method("lozo").defaults().lr
    assert TrainConfig(task="sst2", optimizer="lozo").learning_rate == lozo
    assert TrainConfig(task="sst2", optimizer="lozo", loss="lm").learning_rate != lozo
    lm = get_task("sst2").chosen_rate("agzo --loss lm")
    assert lm is not None and TrainConfig(task="sst2", loss="lm").study_setting == "agzo --loss lm"
    assert TrainConfig(task="sst2", loss="lm").learning_rate == lm
    mezo_lm = get_task("sst2").chosen_rate("mezo --loss lm")
    assert mezo_lm is not None and mezo_lm not in (lm, get_method("mezo").defaults().lr)
    assert TrainConfig(task="sst2", optimizer="mezo", loss="lm").learning_rate == mezo_lm
    for given in ({"rank": 4, "energy": 0.9}, {"energy": 0.9, "rank": 4}):  # any order
        config = TrainConfig(task="sst2", options=given)
        assert config.study_setting == "agzo --rank 4 --energy 0.9"
        assert config.learning_rate == adaptive
    # Options set to what the arm uses anyway leave it the arm.
    assert TrainConfig(task="sst2", options={"rank": 1}).learning_rate == chosen
    one_sided = TrainConfig(task="sst2", preset="paper", options={"two_sided": False})
    assert one_sided.learning_rate == paper
    for changed in (
        {"preset": "paper", "loss": "lm"},
        {"lora_rank": 4},  # the study ran rank 8 only
        {"lora_rank": 8, "lora_alpha": 32},
        {"layers": "3"},
        {"layers": "dominant", "options": {"rank": 4}},
        {"options": {"rank": 4}},
        {"options": {"rank": 4, "energy": 0.8}},
        {"options": {"two_sided": True}},
    ):
        assert TrainConfig(task="sst2", **changed).learning_rate == default, changed
    rte = get_task("rte").chosen_rate("agzo")
    assert rte is not None and TrainConfig(task="rte").learning_rate == rte
    mezo_default = get_method("mezo").defaults().lr
    assert TrainConfig(task="rte", optimizer="mezo").learning_rate == mezo_default  # not yet
    assert TrainConfig(task="sst2", optimizer="mezo").learning_rate == 3e-5  # chosen too
    sgd = get_method("fo-sgd").defaults().lr
    assert TrainConfig(task="sst2", optimizer="fo-sgd").learning_rate == sgd  # not studied
