"""How much of a training batch's gradient is the task's, with and without the label prior.

    python benchmarks/gradient_signal.py --task rte --data-dir ../shared/data/rte --seed 0 \\
        --floor docs/results/prior-floor-rte/floor.json --batches 32 \\
        --out docs/results/gradient-signal/rte.json

At the untrained weights it takes the backprop gradient g_i of the candidates loss on
--batches training batches of --batch-size examples drawn at random, and estimates

- the signal ‖∇L‖², where ∇L = E[g_i] is the gradient of the loss over the whole task:
  the mean of g_i·g_j over every pair of distinct batches (unbiased, since two batches
  are drawn independently). It is the first-order descent of the task's loss per unit
  rate of one SGD step, and what a zeroth-order step with an unbiased estimate (MeZO's)
  descends in expectation at that rate;
- the noise E‖g_i − ∇L‖², the mean ‖g_i‖² less the signal.

The batches are split into --groups groups, and each group's own estimate is reported
beside the estimate over all pairs, as the spread one would see with fewer batches.

Each gradient is taken twice, from one forward: on the loss as it is, and with the label
prior removed, the per-candidate shift benchmarks/prior_floor.py fitted on dev added to
every example's scores (--floor, its floor.json). At that shift the loss has no
first-order pull towards a label word, so what is left of the signal is the pull towards
ranking examples better.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agzo.tasks.base import Example
from agzo.train.config import TrainConfig
from agzo.train.objective import CandidateScorer
from agzo.train.setup import Printer, load_run

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prior_floor import candidates_loss  # noqa: E402

LOSSES = ("as_is", "prior_removed")


def batch_gradients(
    scorer: CandidateScorer, examples: Sequence[Example], shifts: Sequence[torch.Tensor]
) -> list[list[torch.Tensor]]:
    """The gradient of the mean candidates loss over `examples`, the scores moved by each
    of `shifts` in turn, from one forward; each a list of float32 tensors, one per
    trainable parameter."""
    params = [p for p in scorer.model.parameters() if p.requires_grad]
    labels = torch.tensor([e.label for e in examples])
    with torch.enable_grad():
        scores = scorer.scores_and_losses(scorer.batch(examples)).scores.double()
        gradients = []
        for index, shift in enumerate(shifts):
            loss = candidates_loss(scores, labels, shift)
            last = index == len(shifts) - 1
            grads = torch.autograd.grad(loss, params, retain_graph=not last, allow_unused=True)
            gradients.append(
                [torch.zeros_like(p) if g is None else g.float() for p, g in zip(params, grads)]
            )
    return gradients


def squared_norm(gradient: Sequence[torch.Tensor]) -> float:
    return sum(float(g.double().square().sum()) for g in gradient)


@dataclass
class PairSums:
    """Running sums that give the mean g_i·g_j over distinct pairs without keeping the g_i:
    Σ_{i≠j} g_i·g_j = ‖Σ g_i‖² − Σ ‖g_i‖²."""

    total: list[torch.Tensor] | None = None
    squares: list[float] = field(default_factory=list)

    def add(self, gradient: list[torch.Tensor]) -> None:
        self.squares.append(squared_norm(gradient))
        self._sum(gradient)

    def merge(self, other: PairSums) -> None:
        if other.total is not None:
            self._sum(other.total)
            self.squares += other.squares

    def _sum(self, tensors: list[torch.Tensor]) -> None:
        if self.total is None:
            self.total = [t.clone() for t in tensors]
        else:
            for kept, t in zip(self.total, tensors):
                kept.add_(t)

    def figures(self) -> dict[str, float]:
        n = len(self.squares)
        if self.total is None or n < 2:
            raise ValueError("the signal needs at least two batches")
        signal = (squared_norm(self.total) - sum(self.squares)) / (n * (n - 1))
        mean_square = sum(self.squares) / n
        return {"batches": n, "signal": signal, "noise": mean_square - signal,
                "mean_squared_norm": mean_square}  # fmt: skip


def measure(
    scorer: CandidateScorer,
    batches: Sequence[Sequence[Example]],
    shifts: dict[str, torch.Tensor],
    groups: int,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Signal and noise of each loss of `shifts`, over all `batches` and per group."""
    size = len(batches) // groups
    overall = {name: PairSums() for name in shifts}
    per_group: dict[str, list[dict[str, float]]] = {name: [] for name in shifts}
    for start in range(0, size * groups, size):
        group = {name: PairSums() for name in shifts}
        for index in range(start, start + size):
            gradients = batch_gradients(scorer, batches[index], list(shifts.values()))
            for name, gradient in zip(shifts, gradients):
                group[name].add(gradient)
            say(f"  batch {index + 1} of {size * groups}")
        for name in shifts:
            per_group[name].append(group[name].figures())
            overall[name].merge(group[name])
    return {name: {**overall[name].figures(), "groups": per_group[name]} for name in shifts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--data-dir", help="the task's folder")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--floor", type=Path, required=True, help="prior_floor.py's floor.json")
    parser.add_argument("--batches", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True, help="a JSON file")
    args = parser.parse_args()
    if args.batch_size < 1 or args.groups < 1 or args.batches < 2 * args.groups:
        parser.error("need --batch-size >= 1, --groups >= 1 and two batches per group")
    floor = json.loads(args.floor.read_text())
    if floor["task"] != args.task or floor["model"] != args.model:
        raise SystemExit(f"{args.floor} is of {floor['model']} on {floor['task']}")
    if str(args.seed) not in floor["by_seed"]:
        raise SystemExit(f"{args.floor} has no seed {args.seed}; run prior_floor.py for it")

    config = TrainConfig(
        model=args.model, task=args.task, data_dir=args.data_dir, seed=args.seed,
        loss="candidates", device="cpu",
    )  # fmt: skip
    run = load_run(config, Printer(quiet=False))
    run.model.eval()  # no dropout: the gradient of the loss the scores give
    draw = random.Random(args.seed)
    train = list(run.splits.train)
    batches = [draw.sample(train, args.batch_size) for _ in range(args.batches)]
    fitted = list(floor["by_seed"][str(args.seed)]["shift"].values())
    shifts = {
        "as_is": torch.zeros(len(fitted), dtype=torch.float64),
        "prior_removed": torch.tensor(fitted, dtype=torch.float64),
    }
    results = measure(run.scorer, batches, shifts, args.groups)
    report = {"model": args.model, "task": args.task, "seed": args.seed,
              "batch_size": args.batch_size, **results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))


def table(report: dict[str, Any]) -> str:
    lines = ["| loss | signal ‖∇L‖² | per group | noise E‖g − ∇L‖² | noise / signal |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name in LOSSES:
        r = report[name]
        groups = ", ".join(f"{g['signal']:.3g}" for g in r["groups"])
        lines.append(
            f"| {name.replace('_', ' ')} | {r['signal']:.3g} | {groups} | {r['noise']:.3g} "
            f"| {r['noise'] / r['signal']:.3g} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
