"""The one-step model of `agzo probe alignment --curvature`, over many batches.

    python benchmarks/curvature_over_batches.py docs/results/curvature/seed{0..7} --lr 3e-5

Each argument is the output folder of one probe (its alignment.json), each on its own
batch (`--seed K`). On one batch the probe measures, per estimator, a = E[g<∇,Δ>] (the
descent along the gradient) and b = E[g²ΔᵀHΔ] (the cost of the step's length through the
curvature); one SGD step at rate η lowers that batch's loss by η·a − η²/2·b in the
quadratic model. The training loss is the mean over batches, so the model of a step on a
batch drawn at random takes the mean of a and of b over the batches. Prints one row per
batch and the mean, with each estimator's drop at --lr relative to the first estimator's.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import NamedTuple


class Measured(NamedTuple):
    """One estimator on one batch, as the probe reports it."""

    descent: float  # a
    cost: float  # b
    cosine: float  # with the backprop gradient
    curvature: float  # ΔᵀHΔ / ‖Δ‖² along the probes


Batches = list[tuple[str, dict[str, Measured]]]


def one_step(descent: float, cost: float, lr: float) -> float:
    return lr * descent - lr * lr * cost / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probes", nargs="+", type=Path, help="folders holding alignment.json")
    parser.add_argument("--lr", type=float, default=3e-5, help="the rate of the modelled step")
    args = parser.parse_args()

    per_batch: Batches = []
    for folder in args.probes:
        if not (folder / "alignment.json").is_file():
            raise SystemExit(f"{folder}: no alignment.json (is the probe finished?)")
        report = json.loads((folder / "alignment.json").read_text())
        if not report.get("curvature"):
            raise SystemExit(f"{folder}: a probe without --curvature")
        rows = {}
        for result in report["results"]:
            step = result["one_step"]
            rows[result["name"]] = Measured(
                step["descent"], step["cost"], result["cosine"]["mean"], step["rayleigh"]["mean"]
            )
        per_batch.append((folder.name, rows))
    # The estimators every probe measured, in the first probe's order.
    names = [n for n in per_batch[0][1] if all(n in rows for _, rows in per_batch)]
    reference = names[0]
    header = (
        "| batch | "
        + " | ".join(f"{n} a | {n} b | {n} drop at {args.lr:g}" for n in names)
        + " | "
        + " | ".join(f"{n} / {reference}" for n in names[1:])
        + " |"
    )
    print(header)
    print("|" + "---|" * (1 + 3 * len(names) + len(names) - 1))
    for label, rows in [*per_batch, ("mean", _mean(per_batch, names))]:
        drops = {n: one_step(rows[n].descent, rows[n].cost, args.lr) for n in names}
        cells = [f"{rows[n].descent:.3g} | {rows[n].cost:.3g} | {drops[n]:.2g}" for n in names]
        ratios = [f"{drops[n] / drops[reference]:.2f}" for n in names[1:]]
        print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    print()
    for name in names:
        cosines = [rows[name].cosine for _, rows in per_batch]
        curvatures = [rows[name].curvature for _, rows in per_batch]
        mean = _mean(per_batch, [name])[name]
        best_rate = mean.descent / mean.cost
        print(
            f"{name}: best rate of the mean a/b {best_rate:.2g}; "
            f"cosine with the gradient {statistics.fmean(cosines):.3g} "
            f"(batches: {min(cosines):.3g} to {max(cosines):.3g}); "
            f"curvature along the probe per unit length {statistics.fmean(curvatures):.3g} "
            f"(batches: {min(curvatures):.3g} to {max(curvatures):.3g})"
        )


def _mean(per_batch: Batches, names: list[str]) -> dict[str, Measured]:
    """Each estimator's measures averaged over the batches."""
    return {
        n: Measured(
            *(statistics.fmean(field) for field in zip(*(rows[n] for _, rows in per_batch)))
        )
        for n in names
    }


if __name__ == "__main__":
    main()
