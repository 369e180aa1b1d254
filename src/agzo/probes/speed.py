"""Per-step wall time of each optimizer over two plain forward passes, and where it goes.

All methods run on the same model and batch in one process, interleaved round by round,
so that machine noise hits them alike; the figure reported is each method's median step
time divided by the median time of two no-grad forward passes of the model (the least
any two-evaluation method can cost). A method that adds layers to the model (ZO-Act)
steps a copy of it, prepared on the same batch, so the others never see its layers. A
separate profiled round splits a step into the library's own labelled regions (forward
passes, activation capture, perturbation, update, random-number generation), which the
optimizers mark with `record_function`.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from agzo.core.optimizer import ZerothOrderOptimizer
from agzo.methods import BuildContext, get_method
from agzo.methods import methods as all_methods
from agzo.probes.estimators import kept_noise_variant, method_of, variant_of

REGIONS = (
    "agzo.forward",
    "agzo.capture",
    "agzo.sample",
    "agzo.perturb",
    "agzo.update",
    "agzo.rng",
)

Step = Callable[[], object]


def side_by_side_methods(zeroth_order_only: bool = False) -> tuple[str, ...]:
    """The registered methods that can be measured side by side on one shared model: all
    but those that add layers to it (ZO-Act), which are measured in a process of their own."""
    return tuple(
        m.name
        for m in all_methods()
        if m.prepare is None and (m.zeroth_order or not zeroth_order_only)
    )


def probe_optimizer(
    method: str,
    model: nn.Module,
    closure: Callable[[], torch.Tensor] | None = None,
    *,
    context: BuildContext | None = None,
    **options: Any,
) -> torch.optim.Optimizer:
    """A registered method's (or a probe variant's, `variant_of`) optimizer with its
    defaults, except a tiny lr (the probes measure cost, not progress) and the given
    `options`; `context` selects the trained tensors (include, exclude). A method that
    adds layers to the model (ZO-Act) prepares it first, calibrating on one pass of
    `closure`. A kept-noise variant (`KEPT_NOISE_VARIANTS`) keeps its noise for the step."""
    method, keep_noise = kept_noise_variant(method)
    if keep_noise:
        context = dataclasses.replace(context or BuildContext(), keep_noise=True)
    method, variant_options = variant_of(method)
    spec = get_method(method)
    chosen = spec.make_options(**{"lr": 1e-12, **variant_options, **options})
    if spec.prepare is not None:
        if closure is None:
            raise ValueError(f"{method} prepares the model on a batch: pass the closure")
        spec.prepare(model, chosen, SimpleNamespace(attention_mask=None), lambda _: closure())
    return spec.build(model, chosen, context)


def step_function(optimizer: torch.optim.Optimizer, closure: Callable[[], torch.Tensor]) -> Step:
    """One training step of `optimizer` on the closure's batch (backward if first-order)."""
    if isinstance(optimizer, ZerothOrderOptimizer):
        zo = optimizer
        return lambda: zo.step(closure)

    def first_order() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            closure().backward()
        optimizer.step()

    return first_order


LossFor = Callable[[nn.Module], Callable[[], torch.Tensor]]


def make_step(
    method: str,
    model: nn.Module,
    closure: Callable[[], torch.Tensor],
    loss_for: LossFor | None = None,
    context: BuildContext | None = None,
    **options: Any,
) -> Step:
    """One step of `method` (a registered name or a probe variant) on the closure's batch,
    on the model shared with the other methods measured beside it. A method that adds
    layers to the model (ZO-Act) steps a copy instead, whose loss on the same batch
    `loss_for(copy)` gives."""
    if not _adds_layers(method):
        step = probe_optimizer(method, model, closure, context=context, **options)
        return step_function(step, closure)
    if loss_for is None:
        raise ValueError(
            f"{method} adds layers to the model, which the other methods measured beside it "
            "would then see; pass loss_for (the batch's loss of a model) to step a copy"
        )
    own = copy.deepcopy(model)
    own_closure = loss_for(own)
    own_step = probe_optimizer(method, own, own_closure, context=context, **options)
    return step_function(own_step, own_closure)


def _adds_layers(name: str) -> bool:
    return get_method(method_of(name)).prepare is not None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class SpeedReport:
    two_forwards_s: float
    step_s: dict[str, float]
    breakdown_s: dict[str, dict[str, float]] = field(default_factory=dict)
    rounds: int = 0

    def ratios(self) -> dict[str, float]:
        return {m: t / self.two_forwards_s for m, t in self.step_s.items()}

    def to_dict(self) -> dict[str, object]:
        return {
            "two_forwards_s": self.two_forwards_s,
            "step_s": self.step_s,
            "step_over_two_forwards": self.ratios(),
            "breakdown_s": self.breakdown_s,
            "rounds": self.rounds,
        }


def _profile_regions(step: Step) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    totals = {region: 0.0 for region in REGIONS}
    for event in prof.key_averages():
        if event.key in totals:
            totals[event.key] = event.cpu_time_total / 1e6
    return totals


def measure_speed(
    model: nn.Module,
    closure: Callable[[], torch.Tensor],
    methods: tuple[str, ...] | None = None,
    rounds: int = 5,
    breakdown: bool = True,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
    loss_for: LossFor | None = None,
    context: BuildContext | None = None,
) -> SpeedReport:
    """Median step time of each method or probe variant (default: every zeroth-order
    method that shares the model) and of two plain forwards, interleaved per round.
    `loss_for(model)`: the batch's loss closure of a given model, for methods that step a
    copy (`make_step`); `context`: the tensors every method trains (include, exclude)."""
    if methods is None:
        methods = side_by_side_methods(zeroth_order_only=True)
    device = next(model.parameters()).device

    def two_forwards() -> None:
        with torch.no_grad():
            closure()
            closure()

    runs: dict[str, Step] = {"two_forwards": two_forwards}
    runs |= {m: make_step(m, model, closure, loss_for, context) for m in methods}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(rounds + 1):
        timings = {}
        for name, fn in runs.items():
            _synchronize(device)
            start = time.perf_counter()
            fn()
            _synchronize(device)
            timings[name] = time.perf_counter() - start
            if round_index > 0:  # round 0 warms caches, allocators and lazy inits
                samples[name].append(timings[name])
        if on_round is not None:
            on_round(round_index, timings)
    medians = {name: statistics.median(s) for name, s in samples.items()}
    report = SpeedReport(medians.pop("two_forwards"), medians, rounds=rounds)
    if breakdown:
        report.breakdown_s = {
            m: _profile_regions(runs[m]) for m in methods if get_method(method_of(m)).zeroth_order
        }
    return report


def format_speed(report: SpeedReport) -> str:
    width = max([10, *(len(m) + 2 for m in report.step_s)])
    lines = [
        f"two plain forward passes: {report.two_forwards_s:.3f} s (median of {report.rounds})",
        f"{'method':<{width}}{'step s':>9}{'/ 2 fwd':>9}",
    ]
    for method, seconds in report.step_s.items():
        ratio = seconds / report.two_forwards_s
        lines.append(f"{method:<{width}}{seconds:>9.3f}{ratio:>9.2f}")
    if report.breakdown_s:
        lines.append("")
        lines.append("where a step goes (profiled round, seconds; rng is inside perturb/update,")
        lines.append("capture inside forward):")
        header = f"{'method':<{width}}" + "".join(f"{r.split('.')[1]:>9}" for r in REGIONS)
        lines.append(header)
        for method, regions in report.breakdown_s.items():
            lines.append(f"{method:<{width}}" + "".join(f"{regions[r]:>9.3f}" for r in REGIONS))
    return "\n".join(lines)
