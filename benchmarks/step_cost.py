"""Step time and peak memory of every zeroth-order method relative to plain inference.

    python benchmarks/step_cost.py --shape smollm2-135m --batch 16 --seq 32
    python benchmarks/step_cost.py --shape qwen3-0.6b --batch 8 --seq 64

Prints, measured side by side in one run: each method's median step time divided by the
time of two plain no-grad forward passes on the same batch (methods interleaved round by
round; ZO-Act on its own prepared copy of the model), and each method's peak memory
divided by inference's (a fresh process per method). Targets: AGZO step <= 1.10x two
forwards and no slower than MeZO's; AGZO peak memory <= 1.05x inference. Weights are
random: cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from agzo.methods import method_names
from agzo.probes.memory import format_memory, measure_memory
from agzo.probes.shapes import SHAPES, build_shape, last_token_loss, random_batch
from agzo.probes.speed import format_speed, measure_speed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()

    methods = method_names(zeroth_order=True)
    model = build_shape(args.shape, getattr(torch, args.dtype), args.device)
    batch = random_batch(model, args.batch, args.seq, args.device)
    speed = measure_speed(
        model,
        last_token_loss(model, *batch),
        methods,
        args.rounds,
        on_round=lambda i, t: print(
            f"round {i}: " + ", ".join(f"{k} {v:.3f}s" for k, v in t.items()), file=sys.stderr
        ),
        loss_for=lambda some_model: last_token_loss(some_model, *batch),
    )
    del model  # the memory workers need the memory
    print(f"{args.shape} {args.dtype}, batch {args.batch} x {args.seq} tokens, {args.device}")
    print(format_speed(speed))
    ratios = speed.ratios()
    print(
        f"\nAGZO step / two forwards: {ratios['agzo']:.2f} (target <= 1.10); "
        f"AGZO / MeZO step: {speed.step_s['agzo'] / speed.step_s['mezo']:.2f} (target <= 1.00)"
    )
    result: dict[str, object] = {"args": vars(args), "speed": speed.to_dict()}
    if not args.skip_memory:
        rows = measure_memory(
            args.shape, [args.batch], [args.seq],
            ("inference", *methods), args.dtype, args.device,
        )  # fmt: skip
        print()
        print(format_memory(rows))
        agzo_row = next(r for r in rows if r.config == "agzo")
        ratio = agzo_row.ratio_to_inference or float("nan")  # nan: a worker failed
        print(f"\nAGZO peak / inference peak: {ratio:.3f} (target <= 1.05)")
        result["memory"] = [vars(r) for r in rows]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
