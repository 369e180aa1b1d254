"""The instruments themselves, on tiny models: alignment, speed, memory."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from agzo.probes.alignment import captured_fraction, measure_alignment, plot_alignment
from agzo.probes.estimators import estimator_variants
from agzo.probes.memory import format_memory, measure_memory
from agzo.probes.shapes import build_shape, last_token_loss, random_batch
from agzo.probes.speed import measure_speed
from tests.tiny import batch, loss_fn, tiny_model


def test_alignment_ranks_agzo_above_mezo_and_reports_intervals(tmp_path) -> None:
    model = tiny_model("qwen3")
    ids, mask, labels = batch("qwen3", pad=2)
    closure = loss_fn(model, "qwen3", ids, mask, labels)
    variants = estimator_variants()
    names = ["mezo", "lozo", "agzo", "agzo-r4", "agzo-embed-gaussian"]
    results = measure_alignment(model, closure, {n: variants[n] for n in names}, draws=12)
    by_name = {r.name: r for r in results}
    assert by_name["agzo"].cosine.mean > 2 * by_name["mezo"].cosine.mean
    for r in results:
        assert 0 < r.cosine.mean < 1 and r.cosine.ci95 >= 0 and r.cosine.n == 12
        assert r.per_tensor  # per-layer cosines
    fractions = by_name["agzo"].captured_fraction
    assert fractions and all(0 <= f <= 1 + 1e-6 for f in fractions.values())
    assert not by_name["mezo"].captured_fraction
    assert all(p.grad is None for p in model.parameters())
    plot_alignment(results, str(tmp_path / "a.png"))
    assert (tmp_path / "a.png").stat().st_size > 1000
    json.dumps([r.to_dict() for r in results])


@pytest.mark.parametrize("estimator", ["mezo", "agzo"])
def test_curvature_along_a_probe_is_the_hessians_quadratic_form(estimator: str) -> None:
    """The second difference equals ΔᵀHΔ by double backprop, g is the estimator's own
    finite difference (two-sided MeZO, one-sided AGZO), and the weights come back."""
    from agzo.directions import ProbeContext
    from agzo.probes.alignment import _along_probe, true_gradient
    from agzo.seeding import derive_seed

    model = tiny_model("qwen3").double()
    model.set_attn_implementation("eager")  # SDPA on the CPU has no double backward
    ids, mask, labels = batch("qwen3")
    closure = loss_fn(model, "qwen3", ids, mask, labels)
    opt = estimator_variants()[estimator](model, 3)
    step_seed = derive_seed(opt.seed, 0)
    observed = opt.observation(closure, step_seed)
    probe = opt.probe(ProbeContext(0, step_seed, opt.seed, observed=observed))
    params = [t.param for t in probe.tensors]
    deltas = [d.dense().to(p.dtype) for p, d in zip(params, probe.directions)]
    with torch.enable_grad():
        grads = torch.autograd.grad(closure(), params, create_graph=True)
        directional = sum((g * d).sum() for g, d in zip(grads, deltas))
        hessian_delta = torch.autograd.grad(directional, params)
    quadratic = float(sum((h * d).sum() for h, d in zip(hessian_delta, deltas)))
    gradient = true_gradient(model, closure)
    dot = sum(float((gradient[id(p)].double() * d).sum()) for p, d in zip(params, deltas))
    delta_sq = sum(float(d.square().sum()) for d in deltas)
    before = [p.detach().clone() for p in params]

    with torch.no_grad():
        f0 = float(closure())
    draw = _along_probe(closure, probe, opt, f0, dot, delta_sq)

    # At the estimators' μ = 1e-3 the second difference is off by O(μ²) terms and the
    # float32 parts of the model's arithmetic: measured 0.5% and 0.25% here.
    assert draw.curvature == pytest.approx(quadratic, rel=2e-2)
    assert opt.two_sided == (estimator == "mezo")
    # Two-sided: g = ⟨∇,Δ⟩ + O(μ²); one-sided: g = ⟨∇,Δ⟩ + μ/2 ΔᵀHΔ + O(μ²).
    bias = 0.0 if opt.two_sided else opt.eps / 2 * quadratic
    assert draw.g == pytest.approx(dot + bias, rel=1e-2)  # without the bias: 4% off for AGZO
    for p, b in zip(params, before):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=1e-12)


def test_one_step_model_picks_the_minimizing_rate_and_brackets_it() -> None:
    from agzo.probes.alignment import DrawCurvature, OneStep

    # Two draws: E[g⟨∇,Δ⟩] = (4 + 1) / 2 = 2.5, E[g²ΔᵀHΔ] = (4·10 + 1·2) / 2 = 21.
    draws = [DrawCurvature(2.0, 2.0, 10.0, 5.0), DrawCurvature(-1.0, -1.0, 2.0, 1.0)]
    model = OneStep.of(draws, resamples=200)
    assert (model.descent, model.cost) == (2.5, 21.0)
    assert model.best_lr == pytest.approx(2.5 / 21)
    assert model.best_decrease == pytest.approx(2.5**2 / 42)
    assert model.decrease_at(model.best_lr) == pytest.approx(model.best_decrease)
    assert model.decrease_at(2 * model.best_lr) == pytest.approx(0.0, abs=1e-12)  # the edge
    assert model.decrease_at(0.01) == pytest.approx(0.01 * 2.5 - 0.0001 / 2 * 21)
    low, high = model.best_decrease_ci95
    assert low <= model.best_decrease <= high
    # An estimate that does not descend: the best positive rate is not to step.
    climbing = OneStep.of([DrawCurvature(2.0, -2.0, 10.0, 5.0)], resamples=10)
    assert climbing.best_decrease == 0.0 and climbing.best_lr == 0.0
    assert model.rayleigh.mean == pytest.approx((10 / 5 + 2 / 1) / 2)
    assert model.negative_curvature_draws == 0
    assert OneStep.of(draws, resamples=200) == model  # a fixed bootstrap


def test_probes_over_part_of_the_model_report_the_whole_models_cosine(
    model_dir, shared_data_dir, tmp_path
) -> None:
    """A layer subset (Dominant-Layer ZO's) and ZO-Act's coefficients are measured over
    their own tensors; their gradient share makes the cosine the whole model's, so the
    ratio to MeZO compares like with like."""
    from agzo.cli import main

    base = ["probe", "alignment", "--model", str(model_dir), "--task", "sst2", "--data-dir",
            str(shared_data_dir / "sst2"), "--batch-size", "4", "--draws", "3"]  # fmt: skip
    whole, layer, zo_act = (tmp_path / n for n in ("whole", "layer", "zo-act"))
    assert main([*base, "--estimators", "mezo,agzo", "--output", str(whole)]) == 0
    assert main([*base, "--estimators", "mezo,agzo", "--include", r"re:layers\.1\.",
                 "--output", str(layer)]) == 0  # fmt: skip
    # With --curvature the one-step model is printed for the others, not for ZO-Act (Adam).
    assert main([*base, "--estimators", "mezo,zo-act", "--curvature", "--at-lr", "1e-3",
                 "--output", str(zo_act)]) == 0  # fmt: skip

    def results(out):
        return {r["name"]: r for r in json.loads((out / "alignment.json").read_text())["results"]}

    assert all(r["gradient_share"] == pytest.approx(1.0) for r in results(whole).values())
    for r in results(layer).values():
        assert 0 < r["gradient_share"] < 1
        assert r["whole_model_cosine"] == pytest.approx(r["cosine"]["mean"] * r["gradient_share"])
    zo = results(zo_act)["zo-act"]
    assert 0 < zo["gradient_share"] < 1 and zo["cosine"]["n"] == 3
    assert zo["one_step"] is None and results(zo_act)["mezo"]["one_step"] is not None
    # Only the decoder's linear layers' coefficients: the embedding and norms are not in it.
    assert zo["per_tensor"] and all(n.endswith("proj.coefficients") for n in zo["per_tensor"])
    assert all(".layers.1." in n for n in results(layer)["agzo"]["per_tensor"])
    for bad in (["--estimators", "zo-act", "--lora-rank", "2"], ["--at-lr", "1e-3"],
                ["--draws", "1"]):  # fmt: skip
        assert main([*base, *bad, "--output", str(tmp_path / "bad")]) == 2, bad
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_captured_fraction_is_one_inside_and_zero_outside_the_subspace() -> None:
    basis = torch.eye(6)[:, :2]
    inside = torch.randn(4, 2) @ basis.T
    outside = torch.randn(4, 4) @ torch.eye(6)[:, 2:].T
    assert captured_fraction(inside, basis, transposed=False) == pytest.approx(1.0)
    assert captured_fraction(outside, basis, transposed=False) == pytest.approx(0.0, abs=1e-6)
    assert captured_fraction(inside.T, basis, transposed=True) == pytest.approx(1.0)


def test_speed_report_measures_every_method_and_region() -> None:
    model = build_shape("tiny")
    closure = last_token_loss(model, *random_batch(model, 4, 16))
    report = measure_speed(model, closure, ("agzo", "mezo", "lozo", "fo-adamw"), rounds=2)
    assert set(report.step_s) == {"agzo", "mezo", "lozo", "fo-adamw"}
    assert report.two_forwards_s > 0 and all(t > 0 for t in report.step_s.values())
    regions = report.breakdown_s["agzo"]
    assert regions["agzo.forward"] > 0 and regions["agzo.capture"] > 0
    assert regions["agzo.perturb"] > 0 and regions["agzo.update"] > 0
    assert report.breakdown_s["mezo"]["agzo.capture"] == 0  # MeZO captures nothing
    assert report.breakdown_s["mezo"]["agzo.rng"] > 0


def test_zo_act_steps_its_own_copy_of_the_model_beside_the_others() -> None:
    model = build_shape("tiny")
    batch = random_batch(model, 4, 16)
    before = [p.detach().clone() for p in model.parameters()]
    report = measure_speed(
        model,
        last_token_loss(model, *batch),
        ("agzo", "zo-act"),
        rounds=1,
        loss_for=lambda m: last_token_loss(m, *batch),
    )
    assert set(report.step_s) == {"agzo", "zo-act"}
    assert report.breakdown_s["zo-act"]["agzo.forward"] > 0
    # The shared model has no ZO-Act layers: its parameters are the ones it started with.
    assert len(list(model.parameters())) == len(before)
    with pytest.raises(ValueError, match="pass loss_for"):
        measure_speed(model, last_token_loss(model, *batch), ("zo-act",), rounds=1)


def test_speed_steps_probe_variants_on_the_selected_tensors_only(monkeypatch) -> None:
    """A probe variant is its method with the variant's options (agzo-svd: AGZO on the
    exact SVD basis), and include/exclude choose what every timed method trains."""
    from agzo.methods import BuildContext
    from agzo.probes.speed import probe_optimizer

    model = build_shape("tiny")
    layer_one = BuildContext(include=[r"re:layers\.1\."])
    svd = probe_optimizer("agzo-svd", model, context=layer_one)
    assert type(svd).__name__ == "AGZO" and svd.sampler.basis == "svd"
    names = [t.name for t in svd.tensors]
    assert names and all(".layers.1." in n for n in names)
    mezo = probe_optimizer("mezo", model, context=layer_one)
    assert [t.name for t in mezo.tensors] == names
    # The variant's options come first; an option given by name overrides them.
    assert probe_optimizer("agzo-adaptive", model, rank=2).sampler.rank == 2

    # measure_speed hands the selection to every method it builds.
    built = []

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        built.append(probe_optimizer(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr("agzo.probes.speed.probe_optimizer", recording)
    closure = last_token_loss(model, *random_batch(model, 4, 16))
    report = measure_speed(model, closure, ("agzo-svd", "mezo"), rounds=1, context=layer_one)
    assert set(report.breakdown_s) == {"agzo-svd", "mezo"}
    assert [[t.name for t in opt.tensors] for opt in built] == [names, names]


def test_memory_probe_runs_each_config_in_its_own_process() -> None:
    rows = measure_memory("tiny", [2], [16], ("inference", "agzo", "fo-adamw"))
    assert [r.config for r in rows] == ["inference", "agzo", "fo-adamw"]
    assert rows[0].ratio_to_inference == 1.0
    assert all(r.peak_bytes is not None and r.peak_bytes > 10 * 2**20 for r in rows)


def test_memory_probe_workers_run_with_the_chosen_malloc_threshold(monkeypatch) -> None:
    """glibc reads MALLOC_MMAP_THRESHOLD_ at start-up: the worker's environment carries it."""
    import agzo.probes.memory as memory

    seen = []

    def fake_run(cmd, **kwargs):  # noqa: ANN001, ANN202
        seen.append(kwargs["env"].get("MALLOC_MMAP_THRESHOLD_"))
        return subprocess.CompletedProcess(cmd, 0, '{"peak_bytes": 1, "state_bytes": 0}', "")

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setattr(memory.subprocess, "run", fake_run)
    measure_memory("tiny", [2], [16], ("inference",))
    measure_memory("tiny", [2], [16], ("inference",), malloc_mmap_threshold=2**20)
    measure_memory("tiny", [2], [16], ("inference",), malloc_mmap_threshold=None)
    assert seen == [str(128 * 1024), str(2**20), None]


def test_memory_probe_records_a_failed_config_and_goes_on() -> None:
    """A configuration that does not fit (out of memory) is a row of the table, not a crash."""
    rows = measure_memory("tiny", [2], [16], ("inference", "agzo"), dtype="no_such_dtype")
    assert [r.config for r in rows] == ["inference", "agzo"]
    assert all(r.peak_bytes is None and r.ratio_to_inference is None for r in rows)
    assert all("no_such_dtype" in (r.error or "") for r in rows)
    assert "failed" in format_memory(rows)


def test_probe_commands_from_the_cli(tmp_path, capsys) -> None:
    from agzo.cli import main

    out = tmp_path / "speed"
    assert main(["probe", "speed", "--shape", "tiny", "--batch", "2", "--seq", "8", "--rounds",
                 "1", "--methods", "agzo,mezo,zo-act", "--output", str(out)]) == 0  # fmt: skip
    report = json.loads((out / "speed.json").read_text())
    assert set(report["step_over_two_forwards"]) == {"agzo", "mezo", "zo-act"}
    assert "two plain forward passes" in capsys.readouterr().out

    assert main(["probe", "speed", "--shape", "nope", "--output", str(out)]) == 2
    assert "unknown shape" in capsys.readouterr().err

    # Over LoRA adapters: the JSON records the setting, and variants are methods here.
    assert main(["probe", "speed", "--shape", "tiny", "--batch", "2", "--seq", "8", "--rounds",
                 "1", "--methods", "agzo,agzo-adaptive", "--lora-rank", "2",
                 "--output", str(out)]) == 0  # fmt: skip
    report = json.loads((out / "speed.json").read_text())
    assert report["lora_rank"] == 2 and set(report["step_s"]) == {"agzo", "agzo-adaptive"}
    capsys.readouterr()
    assert main(["probe", "speed", "--shape", "tiny", "--methods", "zo-act", "--include",
                 "q_proj", "--output", str(out)]) == 2  # fmt: skip
    assert "without --lora-rank, --include and --exclude" in capsys.readouterr().err
    # A selection of nothing is one line naming what was asked for, not a traceback.
    assert main(["probe", "speed", "--shape", "tiny", "--methods", "agzo", "--include",
                 "no_such_layer", "--output", str(out)]) == 2  # fmt: skip
    assert "no trainable parameter matches: include=['no_such_layer']" in capsys.readouterr().err
    assert main(["probe", "speed", "--shape", "tiny", "--methods", "agzo", "--lora-rank", "2",
                 "--lora-targets", "no_such_layer", "--output", str(out)]) == 2  # fmt: skip
    assert "match no module of this model" in capsys.readouterr().err
    assert main(["probe", "memory", "--configs", "inference,sgd", "--output", str(out)]) == 2
    assert "unknown config" in capsys.readouterr().err
    # A quantized base is frozen: a method that trains it would measure something else.
    assert main(["probe", "memory", "--quantize", "4", "--configs", "inference,agzo",
                 "--output", str(out)]) == 2  # fmt: skip
    assert "agzo train(s) them" in capsys.readouterr().err


def test_alignment_probe_reads_a_training_checkpoint(model_dir, shared_data_dir, tmp_path, capsys):
    """`agzo probe alignment --model RUN/checkpoints/step-N` probes the trained weights, with
    the loss the task trains with (SST-2: the candidates' softmax)."""
    from agzo.cli import main

    run = tmp_path / "run"
    assert main(["train", "--model", str(model_dir), "--task", "sst2",
                 "--data-dir", str(shared_data_dir / "sst2"), "--steps", "2", "--batch-size", "2",
                 "--n-train", "8", "--n-dev", "4", "--n-test", "4", "--eval-every", "2",
                 "--checkpoint-every", "2", "--lr", "0.5", "--save", "none", "--quiet",
                 "--no-tensorboard", "--output-dir", str(run)]) == 0  # fmt: skip
    checkpoint = run / "checkpoints" / "step-000002"
    outputs = {}
    for name, spec in (("trained", checkpoint), ("base", model_dir), ("run", run)):
        out = tmp_path / name
        probe = ["probe", "alignment", "--model", str(spec), "--task", "sst2",
                 "--data-dir", str(shared_data_dir / "sst2"), "--batch-size", "2",
                 "--draws", "2", "--estimators", "mezo,agzo", "--output", str(out),
                 "--curvature", "--at-lr", "1e-3"]  # fmt: skip
        assert main(probe) == 0
        outputs[name] = json.loads((out / "alignment.json").read_text())
    assert outputs["trained"]["loss"] == "candidates"
    printed = capsys.readouterr().out
    assert "best lr" in printed and "loss drop" in printed
    for result in outputs["base"]["results"]:  # the one-step model, both estimators
        one_step = result["one_step"]
        assert one_step["rayleigh"]["n"] == 2 and one_step["best_lr"] != 0
        a, b = one_step["descent"], one_step["cost"]
        assert one_step["best_lr"] == (a / b if a > 0 and b > 0 else 0.0 if a <= 0 else math.inf)
    assert "loss drop of one step at lr 0.001: mezo " in printed
    # At lr 0.5 two steps move the weights: the probed gradient, hence the cosine, differs.
    cosine = {k: v["results"][0]["cosine"]["mean"] for k, v in outputs.items()}
    assert cosine["trained"] != cosine["base"]
    # The run itself (saved without model/) is probed at the weights it tested: best/'s.
    best_step = json.loads((run / "summary.json").read_text())["best_step"]
    assert cosine["run"] == cosine["trained" if best_step == 2 else "base"]


def test_memory_probe_on_a_quantized_base_measures_only_what_leaves_it_frozen() -> None:
    from agzo.probes.commands import _frozen_base_configs

    everything = ["inference", "agzo", "mezo", "zo-act", "fo-adamw"]
    assert _frozen_base_configs(everything, 4, explicit=False) == ["inference", "zo-act"]
    assert _frozen_base_configs(["inference", "zo-act"], 8, explicit=True) == [
        "inference",
        "zo-act",
    ]
