"""How much one training batch's gradient says about the dev loss, with and without the prior.

    python benchmarks/gradient_signal.py --task rte --data-dir ../shared/data/rte --seeds 0 \\
        --floor docs/results/prior-floor-rte/floor.json --out docs/results/gradient-signal-rte.json

At the untrained weights, for --batches training batches of --batch-size examples drawn at
random and the first --dev-examples dev examples, it takes the backprop gradient of the
candidates loss, g_b for a batch and g_dev for dev, and reports g_b·g_dev per batch: the
dev loss's first-order descent per unit rate of one SGD step on that batch. A zeroth-order
step whose estimate is unbiased (MeZO's) descends that much in expectation, at the small
rate its noise allows; AGZO's, a projection of it. So the ratio of two tasks' g_b·g_dev is
the ratio of the steps such a method needs for the same expected first-order progress at
one rate.

Each gradient is taken twice: on the loss as it is, and with the label prior removed, the
per-candidate shift benchmarks/prior_floor.py fitted on dev added to every example's
scores (--floor, its floor.json). At that shift the loss has no first-order pull towards a
label word on dev, so what is left of g_b·g_dev is the signal for ranking examples better.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from agzo.probes.alignment import gradient_norm, true_gradient
from agzo.tasks.base import Example
from agzo.train.config import TrainConfig
from agzo.train.objective import CandidateScorer
from agzo.train.setup import Printer, load_run

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prior_floor import candidates_loss  # noqa: E402

Gradient = dict[int, torch.Tensor]


def loss_gradient(
    model: nn.Module, scorer: CandidateScorer, examples: Sequence[Example], shift: torch.Tensor
) -> Gradient:
    """∇ of the mean candidates loss over `examples`, their scores moved by `shift`."""
    labels = torch.tensor([e.label for e in examples])

    def loss() -> torch.Tensor:
        scores = scorer.scores_and_losses(scorer.batch(examples)).scores
        return candidates_loss(scores.double(), labels, shift)

    return true_gradient(model, loss)


def mean_gradient(
    model: nn.Module,
    scorer: CandidateScorer,
    examples: Sequence[Example],
    shift: torch.Tensor,
    batch_size: int,
) -> Gradient:
    """∇ of the mean loss over all `examples`, taken `batch_size` at a time."""
    total: Gradient = {}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        weight = len(chunk) / len(examples)
        for key, g in loss_gradient(model, scorer, chunk, shift).items():
            if key in total:
                total[key].add_(g, alpha=weight)
            else:
                total[key] = g.mul_(weight)
    return total


def dot(a: Gradient, b: Gradient) -> float:
    return sum(float((a[key] * b[key]).sum()) for key in a)


def batch_row(batch: Gradient, dev: Gradient, dev_norm: float) -> dict[str, float]:
    product, norm = dot(batch, dev), gradient_norm(batch)
    return {"dot": product, "norm": norm, "cosine": product / (norm * dev_norm)}


def summarize(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean and standard error of each batch quantity."""
    out = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        mean = sum(values) / len(values)
        spread = (
            math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
            if len(values) > 1
            else math.nan
        )
        out[key] = mean
        out[f"{key}_stderr"] = spread
    return out


def seeds(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--data-dir", help="the task's folder")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seeds", type=seeds, default=[0])
    parser.add_argument("--floor", type=Path, required=True, help="prior_floor.py's floor.json")
    parser.add_argument("--dev-examples", type=int, default=128)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True, help="a JSON file")
    args = parser.parse_args()
    if min(args.dev_examples, args.batches, args.batch_size) < 1:
        parser.error("--dev-examples, --batches and --batch-size must be >= 1")
    floor = json.loads(args.floor.read_text())
    if floor["task"] != args.task or floor["model"] != args.model:
        raise SystemExit(f"{args.floor} is of {floor['model']} on {floor['task']}")

    report: dict[str, Any] = {
        "model": args.model, "task": args.task, "dev_examples": args.dev_examples,
        "batch_size": args.batch_size, "by_seed": {},
    }  # fmt: skip
    for seed in args.seeds:
        if str(seed) not in floor["by_seed"]:
            raise SystemExit(f"{args.floor} has no seed {seed}; run prior_floor.py for it")
        config = TrainConfig(
            model=args.model, task=args.task, data_dir=args.data_dir, seed=seed,
            loss="candidates", device="cpu",
        )  # fmt: skip
        run = load_run(config, Printer(quiet=False))
        run.model.eval()  # no dropout: the gradient of the loss the scores give
        dev = list(run.splits.dev)[: args.dev_examples]
        draw = random.Random(seed)
        batches = [
            draw.sample(list(run.splits.train), args.batch_size) for _ in range(args.batches)
        ]
        fitted = torch.tensor(
            list(floor["by_seed"][str(seed)]["shift"].values()), dtype=torch.float64
        )
        row: dict[str, Any] = {}
        for name, shift in (("as_is", torch.zeros_like(fitted)), ("prior_removed", fitted)):
            print(f"seed {seed}, {name}: the dev gradient over {len(dev)} examples", flush=True)
            dev_gradient = mean_gradient(run.model, run.scorer, dev, shift, args.batch_size)
            dev_norm = gradient_norm(dev_gradient)
            per_batch = []
            for index, batch in enumerate(batches):
                gradient = loss_gradient(run.model, run.scorer, batch, shift)
                per_batch.append(batch_row(gradient, dev_gradient, dev_norm))
                print(f"  batch {index}: {json.dumps(per_batch[-1])}", flush=True)
                del gradient
            del dev_gradient
            row[name] = {"dev_norm": dev_norm, "batches": per_batch, **summarize(per_batch)}
        report["by_seed"][str(seed)] = row
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))


def table(report: dict[str, Any]) -> str:
    lines = ["| seed | loss | ‖g_dev‖ | ‖g_b‖ | g_b·g_dev (± stderr) | cosine |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for seed, row in report["by_seed"].items():
        for name, r in row.items():
            lines.append(
                f"| {seed} | {name.replace('_', ' ')} | {r['dev_norm']:.3g} | {r['norm']:.3g} "
                f"| {r['dot']:.3g} ± {r['dot_stderr']:.2g} | {r['cosine']:.3f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
