"""Gradient alignment at checkpoints along training runs, against the model they started from.

    python benchmarks/alignment_along_runs.py --task sst2 --data-dir ../shared/data/sst2 \
        --start smollm2-135m runs/keep/agzo-lr3e-05-seed0 runs/keep/mezo-lr1e-05-seed0 \
        --out docs/results/alignment-along-runs

Each argument after the options is a folder of checkpoints (`step-NNNNNN`, as a run's
`checkpoints/` holds them; the study runner deletes them when a run ends, so keep copies) or
one checkpoint. Every checkpoint, and the --start model as step 0, is probed once with
`agzo probe alignment` (same batch, same draws, the loss the task trains with), in its own
process; a probe already written is not run again. Prints one table: cosine of each
estimator with the backprop gradient, per run and step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if folder.name.startswith("step-"):
        return [(int(folder.name.split("-")[1]), folder)]
    found = [(int(p.name.split("-")[1]), p) for p in folder.glob("step-*") if p.is_dir()]
    return sorted(found)


def probe(model: str, out: Path, args: argparse.Namespace) -> dict:
    report = out / "alignment.json"
    if not report.is_file():
        command = [
            sys.executable, "-m", "agzo", "probe", "alignment", "--model", model,
            "--task", args.task, "--draws", str(args.draws), "--estimators", args.estimators,
            "--batch-size", str(args.batch_size), "--output", str(out),
            *(["--data-dir", args.data_dir] if args.data_dir else []),
        ]  # fmt: skip
        print(f"probing {model}", file=sys.stderr, flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="checkpoint folders")
    parser.add_argument("--start", default="smollm2-135m", help="the model at step 0")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--estimators", default="agzo,mezo")
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    estimators = args.estimators.split(",")
    start = probe(args.start, args.out / "step-000000", args)
    lines = [
        "| run | step | " + " | ".join(f"{e} cosine" for e in estimators) + " | agzo / mezo |",
        "|---" * (len(estimators) + 3) + "|",
    ]

    def row(label: str, step: int, report: dict) -> str:
        cosine = {r["name"]: r["cosine"]["mean"] for r in report["results"]}
        cells = " | ".join(f"{cosine[e]:.2e}" for e in estimators)
        ratio = cosine["agzo"] / cosine["mezo"] if {"agzo", "mezo"} <= cosine.keys() else None
        return f"| {label} | {step} | {cells} | {'' if ratio is None else f'{ratio:.1f}'} |"

    lines.append(row(args.start, 0, start))
    for folder in args.runs:
        for step, path in checkpoints(folder):
            label = folder.name if not folder.name.startswith("step-") else folder.parent.name
            report = probe(str(path), args.out / label / path.name, args)
            lines.append(row(label, step, report))
    text = "\n".join(lines)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
