"""What fixing glibc's mmap threshold costs in step time and saves in resident memory.

    python benchmarks/heap_threshold.py --shape smollm2-135m --batch 16 --seq 64

For each setting of MALLOC_MMAP_THRESHOLD_ (glibc's own variable; "adaptive" leaves it
unset, glibc's default), a fresh process builds the shape, times two plain forwards and one
step of each method (median over --rounds, interleaved round by round) and reads its
resident peak (VmHWM) over the steps. Settings alternate --repeats times; each keeps its
fastest medians and its lowest peak. Printed: step times and peaks relative to the first
setting, measured in the same run. Run it on otherwise idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

METHODS = ("agzo", "mezo")


def _worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    from agzo.probes.memory import peak_rss, reset_peak_rss
    from agzo.probes.shapes import build_shape, last_token_loss, random_batch
    from agzo.probes.speed import measure_speed

    model = build_shape(args.shape, torch.float32, "cpu")
    ids, mask, targets = random_batch(model, args.batch, args.seq, "cpu")
    closure = last_token_loss(model, ids, mask, targets)
    reset_peak_rss()
    report = measure_speed(model, closure, METHODS, rounds=args.rounds, breakdown=False)
    print(json.dumps({"two_forwards": report.two_forwards_s, **report.step_s,
                      "peak": peak_rss()}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", default="adaptive,131072,1048576")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    settings = args.settings.split(",")
    best: dict[str, dict[str, float]] = {}
    for repeat in range(args.repeats):
        for setting in settings:
            env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
            if setting != "adaptive":
                env["MALLOC_MMAP_THRESHOLD_"] = setting
            command = [sys.executable, __file__, "--worker", *sys.argv[1:]]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            row = json.loads(done.stdout.splitlines()[-1])
            print(f"repeat {repeat} {setting}: " + ", ".join(
                f"{k} {v / 2**20:.0f} MiB" if k == "peak" else f"{k} {v:.3f} s"
                for k, v in row.items()), flush=True)  # fmt: skip
            kept = best.setdefault(setting, row)
            for key, value in row.items():
                kept[key] = min(kept[key], value)
    reference = best[settings[0]]
    keys = ["two_forwards", *METHODS]
    print(f"\n{args.shape}, batch {args.batch} x {args.seq}, {args.threads} thread(s); "
          f"relative to the first setting's figures")  # fmt: skip
    print("| MALLOC_MMAP_THRESHOLD_ | " + " | ".join(f"{k} step" for k in keys) + " | peak |")
    print("|---" * (len(keys) + 2) + "|")
    for setting, row in best.items():
        cells = [f"{row[k]:.3f} s ({row[k] / reference[k]:.3f})" for k in keys]
        peak = f"{row['peak'] / 2**20:.0f} MiB ({row['peak'] / reference['peak']:.3f})"
        print(f"| {setting} | " + " | ".join(cells) + f" | {peak} |")


if __name__ == "__main__":
    main()
