"""One paper-style table from several studies (one per task) of benchmarks/method_sweep.py.

    python benchmarks/study_table.py runs/study-sst2 runs/study-rte runs/study-cb \
        --out docs/results/study-table.md

Rows: zero-shot, the in-context baseline, then every arm in the order the studies name them;
columns: the tasks. A cell is the test metric's mean ± standard deviation over the seeds that
finished at the arm's chosen rate, with the number of seeds; "searching" while the rate is
not chosen yet, "edge" when it was chosen at an edge of the widened grid.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def cell(values: list[float], note: str = "") -> str:
    if not values:
        return "-"
    shown = [100 * v for v in values]  # papers print percentages
    text = f"{shown[0]:.1f}" if len(shown) == 1 else (
        f"{statistics.fmean(shown):.1f} ± {statistics.stdev(shown):.1f}")  # fmt: skip
    return f"{text} ({len(values)}){note}"


def arm_cell(arm: dict[str, Any]) -> str:
    if arm.get("tied"):
        return "no rate chosen (every rate tied on dev)"
    if arm["chosen"] is None:
        return "searching"
    note = ", edge" if arm["at_edge"] else ""
    return cell(list(arm["test"].values())) + f" [lr {arm['chosen']:g}{note}]"


def table(studies: list[dict[str, Any]]) -> str:
    tasks = [s["task"] for s in studies]
    header = "| | " + " | ".join(f"{t} ({s['metric']}, {s['steps']} steps)"
                                   for t, s in zip(tasks, studies, strict=True)) + " |"  # fmt: skip
    lines = [header, "|---" * (len(studies) + 1) + "|"]
    zero = [cell(list(s["zero_shot"].values())) for s in studies]
    lines.append("| zero-shot | " + " | ".join(zero) + " |")
    if any(s.get("icl") for s in studies):
        icl = [cell(list(s["icl"].values())) + (f" [k = {s['icl_demonstrations']}]"
               if s.get("icl") else "") for s in studies]  # fmt: skip
        lines.append("| in-context | " + " | ".join(icl) + " |")
    labels: list[str] = []
    for study in studies:
        labels += [label for label in study["arms"] if label not in labels]
    for label in labels:
        row = [arm_cell(s["arms"][label]) if label in s["arms"] else "not run" for s in studies]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", type=Path, help="method_sweep.py --out folders")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    studies = []
    for folder in args.studies:
        path = folder / "sweep.json" if folder.is_dir() else folder
        try:
            studies.append(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            raise SystemExit(f"{path}: not a finished study report ({error})") from None
    text = table(studies)
    commands = "\n".join(f"- {s['task']}: `{s['command']}`" for s in studies)
    text += ("\n\nTest metric in percent, mean ± sd over seeds (number of seeds), the rate "
             "chosen on dev in brackets. Commands:\n\n" + commands)  # fmt: skip
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
