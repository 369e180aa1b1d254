"""`agzo probe alignment | memory | speed | layers`: the instruments behind docs/RESULTS.md."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch

from agzo.probes.estimators import estimator_variants
from agzo.probes.memory import DEFAULT_MMAP_THRESHOLD


class ProbeError(ValueError):
    """Bad input to a probe (unknown estimator, method or shape)."""


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _numbers(kind: Callable[[str], Any], what: str) -> Callable[[str], list[Any]]:
    """An argparse type: comma-separated values of `kind`."""

    def parse(text: str) -> list[Any]:
        try:
            return [kind(v) for v in _csv(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None

    return parse


_floats = _numbers(float, "numbers")
_ints = _numbers(int, "integers")


def add_probe_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `probe alignment | memory | speed | layers` to the `agzo` command; returns its parser."""
    probe: argparse.ArgumentParser = subparsers.add_parser(
        "probe", help="measure gradient alignment, memory, speed or activation outliers per layer"
    )
    kinds = probe.add_subparsers(dest="probe", required=True)

    align = kinds.add_parser(
        "alignment", help="cosine between each estimator's g·Δ and the backprop gradient"
    )
    align.add_argument(
        "--model", default="smollm2-135m",
        help="built-in name, saved model dir, .gguf, hub id, a run dir (its tested weights) "
        "or a run's checkpoint dir",
    )  # fmt: skip
    align.add_argument("--task", default="sst2")
    align.add_argument(
        "--loss", choices=("lm", "candidates"), default=None,
        help="the loss whose gradient is probed (default: the one the task trains with)",
    )  # fmt: skip
    align.add_argument("--data-dir", default=None)
    align.add_argument("--batch-size", type=int, default=16)
    align.add_argument("--draws", type=int, default=30)
    align.add_argument(
        "--estimators",
        default=None,
        help="comma-separated (default: every zeroth-order method that trains the model's "
        "own weights and AGZO's r/K/embedding grid; zo-act on request: it is measured on "
        "a copy calibrated on the probed batch)",
    )
    align.add_argument("--include", action="append", default=None, help="parameter pattern")
    align.add_argument("--exclude", action="append", default=None, help="parameter pattern")
    align.add_argument("--seed", type=int, default=0, help="which training batch to probe")
    align.add_argument(
        "--lora-rank", type=int, default=None, help="probe peft LoRA adapters of this rank"
    )
    align.add_argument("--lora-targets", default=None, help="comma-separated module names")
    align.add_argument(
        "--curvature", action="store_true",
        help="also measure the loss's curvature along each probe and the most one SGD step "
        "can lower the batch's loss, at the rate that does it (two more forwards per draw)",
    )  # fmt: skip
    align.add_argument(
        "--at-lr", type=_floats, default=[],
        help="with --curvature: also print the modelled loss drop of one step at these "
        "comma-separated learning rates",
    )  # fmt: skip
    align.add_argument("--output", default="runs/probe-alignment", help="output directory")

    memory = kinds.add_parser("memory", help="peak memory per method, one fresh process each")
    memory.add_argument("--shape", default="smollm2-135m")
    memory.add_argument("--batch", type=_ints, default=[16], help="comma-separated sizes")
    memory.add_argument("--seq", type=_ints, default=[64, 256, 1024], help="comma-separated")
    memory.add_argument(
        "--configs", default=None, help="comma-separated: inference and method names (all)"
    )
    memory.add_argument(
        "--update", default=None, help="zeroth-order update rule: sgd | momentum | adam"
    )
    memory.add_argument("--dtype", default="float32")
    memory.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    memory.add_argument(
        "--malloc-mmap-threshold",
        type=_threshold,
        default=DEFAULT_MMAP_THRESHOLD,
        help="CPU: bytes at which glibc maps a block of its own (freed at once), or "
        f"'adaptive' for glibc's growing default [{DEFAULT_MMAP_THRESHOLD}]",
    )
    memory.add_argument(
        "--quantize", type=int, choices=(8, 4), default=None,
        help="weight-only quantized base (bitsandbytes) for every config, inference's too",
    )  # fmt: skip
    memory.add_argument("--output", default="runs/probe-memory")

    speed = kinds.add_parser("speed", help="step time over two plain forwards, and its parts")
    speed.add_argument("--shape", default="smollm2-135m")
    speed.add_argument("--batch", type=int, default=16)
    speed.add_argument("--seq", type=int, default=32)
    speed.add_argument(
        "--methods", default=None,
        help="comma-separated methods or probe variants of `probe alignment` (agzo-svd, "
        "agzo-adaptive, ...), or mezo-kept-noise (MeZO keeping each step's noise); "
        "default: every method",
    )  # fmt: skip
    speed.add_argument("--include", action="append", default=None, help="parameter pattern")
    speed.add_argument("--exclude", action="append", default=None, help="parameter pattern")
    speed.add_argument(
        "--lora-rank", type=int, default=None, help="step peft LoRA adapters of this rank"
    )
    speed.add_argument("--lora-targets", default=None, help="comma-separated module names")
    speed.add_argument("--rounds", type=int, default=5)
    speed.add_argument("--dtype", default="float32")
    speed.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    speed.add_argument("--output", default="runs/probe-speed")

    layers = kinds.add_parser(
        "layers", help="activation outliers per decoder layer; selects the dominant layer"
    )
    layers.add_argument("--model", default="smollm2-135m")
    layers.add_argument("--task", default="sst2")
    layers.add_argument("--data-dir", default=None)
    layers.add_argument("--examples", type=int, default=64, help="training examples to run")
    layers.add_argument("--batch-size", type=int, default=16)
    layers.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="select the first layer whose max/median ratio exceeds this multiple of the "
        "lowest layer's ratio (default 10)",
    )
    layers.add_argument("--seed", type=int, default=0, help="which training examples")
    layers.add_argument("--output", default="runs/probe-layers", help="output directory")
    layers.add_argument("--json", default=None, help="JSON path (default OUTPUT/layers.json)")
    layers.add_argument("--plot", default=None, help="PNG path (default OUTPUT/layers.png)")
    return probe


def run_probe(args: argparse.Namespace) -> int:
    """Run the probe named on the command line, writing JSON (and a PNG) to --output."""
    out = Path(args.output)
    if args.probe == "alignment":
        estimators, with_zo_act = _alignment_estimators(args)  # a bad flag writes nothing
        out.mkdir(parents=True, exist_ok=True)
        return _alignment(args, out, estimators, with_zo_act)
    out.mkdir(parents=True, exist_ok=True)
    if args.probe == "memory":
        return _memory(args, out)
    if args.probe == "layers":
        return _layers(args, out)
    return _speed(args, out)


def _model_or_checkpoint(spec: str) -> tuple[Any, Any]:
    """A model spec; a run or its model/ (the saved model); or a training checkpoint, or a
    run saved without model/: its run's model with the trained weights."""
    from agzo.models import load_model
    from agzo.train.checkpoint import load_weights
    from agzo.train.config import TrainConfig
    from agzo.train.evaluate_saved import saved_settings
    from agzo.train.optimizers import trainable_parameters

    settings, weights = saved_settings(spec)
    if weights is None:
        return load_model(settings["model"])
    config = TrainConfig.from_dict(settings)
    if config.lora_rank is not None or config.optimizer == "zo-act" or config.quantize:
        raise ProbeError(
            f"{spec}: the trained weights of adapters (LoRA, ZO-Act) or of a quantized base; "
            "probe a run's saved model/ instead"
        )
    model, tokenizer = load_model(config.model, config.dtype)
    load_weights(trainable_parameters(model, config), weights)
    return model, tokenizer


def _alignment_estimators(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """The estimators `probe alignment` measures on the model, by name, and whether ZO-Act
    is measured too (on its own copy); ProbeError for any flag it cannot take."""
    variants = estimator_variants(args.include, args.exclude)
    # agzo-k20 is left out by default: twenty power steps per layer, for the K ablation only.
    names = _csv(args.estimators) if args.estimators else [n for n in variants if n != "agzo-k20"]
    unknown = [n for n in names if n not in variants and n != ZO_ACT]
    if unknown:
        choices = sorted([*variants, ZO_ACT])
        raise ProbeError(f"unknown estimator(s) {unknown}; choose from {choices}")
    if args.draws < 2:
        raise ProbeError(f"--draws must be at least 2 (an interval needs two), got {args.draws}")
    if args.at_lr and not args.curvature:
        raise ProbeError("--at-lr prints the one-step model of --curvature: add --curvature")
    _refuse_zo_act_with_a_selection(names, args)
    return {n: variants[n] for n in names if n != ZO_ACT}, ZO_ACT in names


def _alignment(
    args: argparse.Namespace, out: Path, estimators: dict[str, Any], with_zo_act: bool
) -> int:
    from agzo.probes.alignment import (
        gradient_norm,
        measure_alignment,
        plot_alignment,
        true_gradient,
    )
    from agzo.tasks import load_splits
    from agzo.train.objective import CandidateScorer

    model, tokenizer = _model_or_checkpoint(args.model)
    # With LoRA only the adapters are trainable: every estimator is measured over them alone.
    model = _trained_selection(model, args)
    splits = load_splits(
        args.task, args.data_dir, seed=args.seed, n_train=args.batch_size, n_dev=1, n_test=1
    )
    from agzo.train.config import TrainConfig
    from agzo.train.objective import LossKind

    loss_kind = args.loss or TrainConfig(task=args.task).loss_kind
    scorer = CandidateScorer(model, tokenizer, loss_kind=cast(LossKind, loss_kind))
    batch = scorer.batch(splits.train[: args.batch_size])

    def closure() -> torch.Tensor:
        return scorer.loss(batch)

    started = time.time()
    gradient = true_gradient(model, closure)

    def progress(name: str, draw: int) -> None:
        if draw + 1 == args.draws:
            print(f"  {name}: {args.draws} draws ({time.time() - started:.0f}s)", file=sys.stderr)

    results = measure_alignment(
        model,
        closure,
        estimators,
        draws=args.draws,
        attention_mask=batch.attention_mask,
        gradient=gradient,
        progress=progress,
        curvature=args.curvature,
    )
    if with_zo_act:
        norm = gradient_norm(gradient)
        results += _zo_act_alignment(model, tokenizer, scorer, batch, norm, args, progress)
    payload = {
        "model": args.model,
        "task": args.task,
        "loss": loss_kind,
        "batch_size": args.batch_size,
        "draws": args.draws,
        "include": args.include,
        "exclude": args.exclude,
        "curvature": args.curvature,
        "results": [r.to_dict() for r in results],
    }
    (out / "alignment.json").write_text(json.dumps(payload, indent=2))
    plot_alignment(results, str(out / "alignment.png"))
    # Ratios compare whole-model cosines: an estimator over part of the model is zero
    # elsewhere. Shares are printed when some estimator covers part of the model only.
    mezo = next((r.whole_model_cosine for r in results if r.name == "mezo"), None)
    partial = any(r.gradient_share < 0.999 for r in results)
    shares = f"{'share of ∇':>12}{'whole model':>13}" if partial else ""
    print(f"{'estimator':<22}{'cosine':>11}{'± 95%':>11}{shares}{'/ MeZO':>9}")
    for r in results:
        ratio = f"{r.whole_model_cosine / mezo:>9.1f}" if mezo else ""
        shares = f"{r.gradient_share:>12.3f}{r.whole_model_cosine:>13.6f}" if partial else ""
        print(f"{r.name:<22}{r.cosine.mean:>11.6f}{r.cosine.ci95:>11.6f}{shares}{ratio}")
        if r.ranks:  # an adaptive rank: how many directions the layers kept
            used = sorted(r.ranks.values())
            print(f"{'':<22}ranks used: mean {sum(used) / len(used):.2f}, min {used[0]}, "
                  f"max {used[-1]} over {len(used)} linear weights")  # fmt: skip
    if args.curvature:
        _print_one_step(results, args.at_lr)
    print(f"wrote {out / 'alignment.json'} and {out / 'alignment.png'}")
    return 0


ZO_ACT = "zo-act"  # measured on a calibrated copy of the model: see _zo_act_alignment


def _zo_act_alignment(
    model: Any,
    tokenizer: Any,
    scorer: Any,
    batch: Any,
    whole_norm: float,
    args: argparse.Namespace,
    progress: Any,
) -> list[Any]:
    """ZO-Act on a copy of the model, calibrated on the probed batch: its probe lies in C
    (W = W0 + C Aᵀ), whose gradient is ∇_W A at C = 0. Since A is orthonormal, the cosine
    in C's coordinates times ‖∇_C‖ / ‖∇_W‖ is the cosine of the weight update C Aᵀ with
    the base model's gradient: the whole-model figure, comparable with the others."""
    import copy

    from agzo.methods import BuildContext, get_method
    from agzo.probes.alignment import measure_alignment
    from agzo.train.objective import CandidateScorer

    method = get_method(ZO_ACT)
    options = method.defaults()
    adapted = copy.deepcopy(model)
    adapted_scorer = CandidateScorer(adapted, tokenizer, loss_kind=scorer.loss_kind)
    assert method.prepare is not None
    adapted = method.prepare(adapted, options, batch, adapted_scorer.loss, None)

    def build(m: Any, seed: int) -> Any:
        return method.build(m, options, BuildContext(seed=seed))

    return measure_alignment(
        adapted,
        lambda: adapted_scorer.loss(batch),
        {ZO_ACT: build},
        draws=args.draws,
        attention_mask=batch.attention_mask,
        progress=progress,
        # The one-step model is of an SGD step; ZO-Act steps with Adam by default.
        curvature=False,
        whole_norm=whole_norm,
    )


def _print_one_step(results: Sequence[Any], rates: Sequence[float]) -> None:
    """The one-step quadratic model per estimator (agzo.probes.alignment's module doc)."""
    mezo = next((r.one_step for r in results if r.name == "mezo"), None)
    print()
    print("One SGD step in the quadratic model of the batch's loss (a = E[g<∇,Δ>], "
          "b = E[g²ΔᵀHΔ]; best lr a/b, loss drop a²/2b)")  # fmt: skip
    print(f"{'estimator':<22}{'ΔᵀHΔ/‖Δ‖²':>11}{'a':>10}{'b':>10}{'best lr':>10}"
          f"{'loss drop':>11}{'95%':>19}{'/ MeZO':>8}")  # fmt: skip
    for r in results:
        m = r.one_step
        if m is None:  # measured without the one-step model (zo-act)
            continue
        ratio = "-"
        if mezo is not None and mezo.best_decrease > 0:
            ratio = f"{m.best_decrease / mezo.best_decrease:.2f}"
        low, high = m.best_decrease_ci95
        down = m.negative_curvature_draws
        note = f"  ({down} of {m.rayleigh.n} draws curve down)" if down else ""
        print(f"{r.name:<22}{m.rayleigh.mean:>11.3g}{m.descent:>10.3g}{m.cost:>10.3g}"
              f"{m.best_lr:>10.3g}{m.best_decrease:>11.3g}{f'{low:.3g} - {high:.3g}':>19}"
              f"{ratio:>8}{note}")  # fmt: skip
    modelled = [r for r in results if r.one_step is not None]
    for lr in rates:
        drops = ", ".join(f"{r.name} {r.one_step.decrease_at(lr):.3g}" for r in modelled)
        print(f"loss drop of one step at lr {lr:g}: {drops}")


def _frozen_base_configs(chosen: list[str], bits: int, explicit: bool) -> list[str]:
    """The configurations that can run on a quantized base: inference and the methods
    that leave the base weights alone. Asked for by name, any other is an error, as in
    `agzo train`; by default they are left out."""
    from agzo.methods import get_method
    from agzo.probes.estimators import method_of

    trains_base = [
        c for c in chosen if c != "inference" and get_method(method_of(c)).trains_base_weights
    ]
    if trains_base and explicit:
        raise ProbeError(
            f"--quantize {bits} freezes the base weights in a quantized form, but "
            f"{', '.join(trains_base)} train(s) them; measure inference and zo-act"
        )
    return [c for c in chosen if c not in trains_base]


def _refuse_zo_act_with_a_selection(names: Sequence[str], args: argparse.Namespace) -> None:
    if ZO_ACT in names and (args.lora_rank is not None or args.include or args.exclude):
        raise ProbeError("zo-act adds its own adapters to every linear layer: measure it "
                         "without --lora-rank, --include and --exclude")  # fmt: skip


def _trained_selection(model: Any, args: argparse.Namespace) -> Any:
    """The model whose trainable tensors --lora-rank, --include and --exclude choose (LoRA
    adapters wrapped on); a choice that selects nothing is a ProbeError."""
    from agzo.params import select_named_parameters

    try:
        if args.lora_rank is not None:
            from agzo.adapters.lora import wrap_with_lora

            targets = _csv(args.lora_targets) if args.lora_targets else None
            model = wrap_with_lora(model, args.lora_rank, targets=targets)
        select_named_parameters(model, args.include, args.exclude)
    except ValueError as error:
        raise ProbeError(str(error)) from None
    return model


def _check_choices(kind: str, given: list[str], valid: Sequence[str]) -> None:
    unknown = [g for g in given if g not in valid]
    if unknown:
        raise ProbeError(f"unknown {kind} {unknown}; choose from {list(valid)}")


def _threshold(text: str) -> int | None:
    if text == "adaptive":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected bytes or 'adaptive', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _memory(args: argparse.Namespace, out: Path) -> int:
    from agzo.probes.memory import (
        MemoryRow,
        format_memory,
        measure_memory,
        memory_configs,
        plot_memory,
    )
    from agzo.probes.shapes import SHAPES

    _check_choices("shape", [args.shape], list(SHAPES))
    chosen = _csv(args.configs) if args.configs else list(memory_configs())
    _check_choices("config", chosen, memory_configs())
    if args.quantize is not None:
        chosen = _frozen_base_configs(chosen, args.quantize, explicit=bool(args.configs))

    done: list[MemoryRow] = []

    def record(row: MemoryRow) -> None:
        # Written after every configuration: a sweep stopped midway keeps what it measured.
        done.append(row)
        peak = (
            "failed: " + str(row.error)
            if row.peak_bytes is None
            else f"{row.peak_bytes / 2**20:.0f} MiB"
        )
        print(f"  {row.config} batch {row.batch} seq {row.seq}: {peak}", file=sys.stderr)
        payload = {"shape": args.shape, "dtype": args.dtype, "device": args.device,
                   "update": args.update, "malloc_mmap_threshold": args.malloc_mmap_threshold,
                   "quantize": args.quantize,
                   "rows": [vars(r) for r in done]}  # fmt: skip
        (out / "memory.json").write_text(json.dumps(payload, indent=2))

    rows = measure_memory(
        args.shape, args.batch, args.seq, tuple(chosen), args.dtype, args.device,
        on_row=record, update=args.update, malloc_mmap_threshold=args.malloc_mmap_threshold,
        quantize=args.quantize,
    )  # fmt: skip
    plot_memory(rows, str(out / "memory.png"))
    print(format_memory(rows))
    print(f"wrote {out / 'memory.json'} and {out / 'memory.png'}")
    return 0


def _speed(args: argparse.Namespace, out: Path) -> int:
    from agzo.methods import BuildContext, method_names
    from agzo.probes.estimators import KEPT_NOISE_VARIANTS, variant_settings
    from agzo.probes.shapes import SHAPES, build_shape, last_token_loss, random_batch
    from agzo.probes.speed import format_speed, measure_speed

    _check_choices("shape", [args.shape], list(SHAPES))
    every = list(method_names())
    methods = _csv(args.methods) if args.methods else every
    _check_choices("method", methods, [*every, *variant_settings(), *KEPT_NOISE_VARIANTS])
    _refuse_zo_act_with_a_selection(methods, args)

    model = build_shape(args.shape, getattr(torch, args.dtype), args.device)
    # With LoRA the two plain forwards run through the adapters too.
    model = _trained_selection(model, args)
    batch = random_batch(model, args.batch, args.seq, args.device)
    context = BuildContext(include=args.include, exclude=args.exclude)

    def loss_for(some_model: torch.nn.Module) -> Any:
        return last_token_loss(some_model, *batch)

    def on_round(index: int, timings: dict[str, float]) -> None:
        shown = ", ".join(f"{k} {v:.3f}s" for k, v in timings.items())
        print(f"  round {index}{' (warm-up)' if index == 0 else ''}: {shown}", file=sys.stderr)

    report = measure_speed(
        model,
        loss_for(model),
        tuple(methods),
        args.rounds,
        on_round=on_round,
        loss_for=loss_for,
        context=context,
    )
    payload = {
        "shape": args.shape,
        "include": args.include,
        "exclude": args.exclude,
        "lora_rank": args.lora_rank,
        "lora_targets": args.lora_targets,
        "batch": args.batch,
        "seq": args.seq,
        "dtype": args.dtype,
        "device": args.device,
        "threads": torch.get_num_threads(),
        **report.to_dict(),
    }
    (out / "speed.json").write_text(json.dumps(payload, indent=2))
    trained = [f"LoRA rank {args.lora_rank}"] if args.lora_rank is not None else []
    trained += [f"include {p}" for p in args.include or []]
    trained += [f"exclude {p}" for p in args.exclude or []]
    print(f"{args.shape} {args.dtype}, batch {args.batch} x {args.seq} tokens, {args.device}"
          + "".join(f"; {t}" for t in trained))  # fmt: skip
    print(format_speed(report))
    print(f"wrote {out / 'speed.json'}")
    return 0


def _layers(args: argparse.Namespace, out: Path) -> int:
    from agzo.models import load_model
    from agzo.probes.layers import (
        DEFAULT_THRESHOLD,
        LayerProbeError,
        format_layers,
        plot_layers,
        probe_layers,
    )
    from agzo.tasks import load_splits
    from agzo.train.objective import CandidateScorer

    if args.examples < 1 or args.batch_size < 1:
        raise ProbeError("--examples and --batch-size must be positive")
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    if threshold <= 0:
        raise ProbeError(f"--threshold must be positive, got {threshold}")
    splits = load_splits(
        args.task, args.data_dir, seed=args.seed, n_train=args.examples, n_dev=1, n_test=1
    )
    model, tokenizer = load_model(args.model)
    scorer = CandidateScorer(model, tokenizer)
    # The batches training would see: the same examples, tokenized and padded the same way.
    train = splits.train[: args.examples]
    batches = [
        scorer.batch(train[i : i + args.batch_size]) for i in range(0, len(train), args.batch_size)
    ]
    try:
        probe = probe_layers(model, batches, threshold)
    except LayerProbeError as error:
        raise ProbeError(str(error)) from error
    json_path = Path(args.json) if args.json else out / "layers.json"
    plot_path = Path(args.plot) if args.plot else out / "layers.png"
    for path in (json_path, plot_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": args.model,
        "task": args.task,
        "examples": len(train),
        "batch_size": args.batch_size,
        "seed": args.seed,
        **probe.to_dict(),
    }
    json_path.write_text(json.dumps(payload, indent=2))
    plot_layers(probe, str(plot_path))
    print(f"{args.model} on {len(train)} {args.task} training examples")
    print(format_layers(probe))
    print(f"wrote {json_path} and {plot_path}")
    return 0
