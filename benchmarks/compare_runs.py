"""Compare finished `agzo train` runs: one table, loss and dev-accuracy curves in one plot.

    python benchmarks/compare_runs.py runs/sst2-agzo runs/sst2-mezo runs/sst2-fo-adamw \
        --plot runs/comparison.png

Reads each run's summary.json and metrics.jsonl; prints a Markdown table (zero-shot and
final test metric, best step, seconds per step) ready for docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_run(path: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((path / "summary.json").read_text())
    records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return summary, records


def smoothed(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--plot", default=None, help="write the curves to this PNG")
    parser.add_argument("--window", type=int, default=20, help="loss smoothing window")
    args = parser.parse_args()

    rows = []
    curves = {}
    for run in args.runs:
        summary, records = read_run(run)
        config = summary["config"]
        metric = summary["metric"]
        label = f"{config['optimizer']} lr {config['lr']:g}"
        zero_shot = summary["zero_shot"]["test"][metric]
        final = summary["final"]["test"][metric]
        rows.append(
            f"| {config['optimizer']} | {config['lr']:g} | {summary['steps']} | "
            f"{zero_shot:.3f} | {final:.3f} | "
            f"{summary['best_step']} | {summary['seconds_per_step']:.2f} |"
        )
        train = [r for r in records if r["split"] == "train"]
        dev = [r for r in records if r["split"] == "dev"]
        curves[label] = (
            [r["step"] for r in train],
            [r["loss"] for r in train],
            [r["step"] for r in dev],
            [r.get(metric, r.get("accuracy")) for r in dev],
        )
    print("| optimizer | lr | steps | zero-shot test | final test | best step | s/step |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        for label, (steps, losses, dev_steps, dev_values) in curves.items():
            top.plot(steps, smoothed(losses, args.window), label=label)
            bottom.plot(dev_steps, dev_values, marker="o", label=label)
        top.set_ylabel(f"training loss (mean of last {args.window})")
        bottom.set_ylabel("dev metric")
        bottom.set_xlabel("step (0 = zero-shot)")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
