"""AGZO's subspaces under gradient accumulation: alignment with the gradient, and cost.

    python benchmarks/accumulation.py --model smollm2-135m --batch 16 --accumulate 4

For several step batches of a real task, the backprop gradient of the whole batch's loss
is computed once; then each way of finding the per-layer basis A from the unperturbed
pass is timed and scored by the captured fraction ‖∇ A Aᵀ‖ / ‖∇‖ (mean over linear
layers: how much of each layer's gradient the subspace can represent):

    whole K=3         one pass over the whole batch, 3 power steps (no accumulation)
    whole K=1         the same with 1 power step
    accumulated K=1   the micro-batches one by one, Σᵢ Hᵢᵀ(Hᵢ Q₀) (exact K=1)
    merged K=3        each micro-batch its own 3 steps, bases merged (approximate)

It also prints the largest distance between the accumulated K=1 basis and the whole
batch's K=1 basis (they are equal up to rounding).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from agzo.observe import AccumulatedCapture, ActivationCapture
from agzo.probes.alignment import captured_fraction, true_gradient
from agzo.seeding import derive_seed
from agzo.train import TrainConfig
from agzo.train.loop import sample_minibatch, training_batch
from agzo.train.optimizers import build_optimizer
from agzo.train.processes import split_evenly
from agzo.train.setup import load_run

Variant = tuple[type[ActivationCapture], int, bool]  # capture, power steps, micro-batches
VARIANTS: dict[str, Variant] = {
    "whole K=3": (ActivationCapture, 3, False),
    "whole K=1": (ActivationCapture, 1, False),
    "accumulated K=1": (AccumulatedCapture, 1, True),
    "merged K=3": (ActivationCapture, 3, True),
}


def capture(
    kind: type[ActivationCapture],
    steps: int,
    tensors: Sequence[Any],
    model: torch.nn.Module,
    losses: Sequence[Callable[[], torch.Tensor]],
    seed: int,
) -> tuple[dict[int, torch.Tensor], float]:
    observer = kind(tensors, 1, steps, seed, root=model)
    started = time.perf_counter()
    with torch.no_grad(), observer:
        for loss in losses:
            loss()
    bases = observer.result.bases
    return bases, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default=None, help="default: the embedded default task")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--accumulate", type=int, default=4)
    parser.add_argument("--batches", type=int, default=5, help="step batches measured")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings: dict[str, Any] = {"model": args.model, "batch_size": args.batch, "n_dev": 8}
    if args.task:
        settings["task"] = args.task
    config = TrainConfig.from_dict(settings)
    run = load_run(config)
    tensors = build_optimizer(run.model, config).tensors  # type: ignore[attr-defined]
    linear = [t for t in tensors if t.is_linear_weight]
    fractions: dict[str, list[float]] = {name: [] for name in VARIANTS}
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    distance = 0.0
    for step in range(1, args.batches + 1):
        examples = sample_minibatch(run.splits.train, config.seed, step, args.batch)
        # Padded: the capture reads each pass's token mask from its model call.
        whole = training_batch(run.scorer, examples, pack=False)
        parts = [
            training_batch(run.scorer, split_evenly(examples, args.accumulate, i), pack=False)
            for i in range(args.accumulate)
        ]
        gradient = true_gradient(run.model, functools.partial(run.scorer.loss, whole))
        seed = derive_seed(config.seed, step)
        found = {}
        for name, (kind, steps, micro) in VARIANTS.items():
            losses = [lambda b=b: run.scorer.loss(b) for b in (parts if micro else [whole])]
            bases, took = capture(kind, steps, tensors, run.model, losses, seed)
            found[name] = bases
            seconds[name].append(took)
            scores = [
                captured_fraction(gradient[id(t.param)], bases[t.index], t.transposed)
                for t in linear
                if t.index in bases
            ]
            fractions[name].append(statistics.fmean(scores))
        for index, basis in found["whole K=1"].items():
            other = found["accumulated K=1"][index]
            distance = max(distance, float((basis - other).abs().max()))
    print(
        f"{args.model}, batch {args.batch} in {args.accumulate} micro-batches, "
        f"{args.batches} step batches, {args.threads} thread(s)"
    )
    print(f"{'basis':<18}{'captured fraction':>20}{'capture pass (s)':>20}")
    for name in VARIANTS:
        mean, spread = statistics.fmean(fractions[name]), statistics.pstdev(fractions[name])
        print(f"{name:<18}{mean:>14.4f} ± {spread:.4f}{statistics.median(seconds[name]):>20.3f}")
    print(f"max |accumulated K=1 - whole K=1| over every basis entry: {distance:.2e}")


if __name__ == "__main__":
    main()
