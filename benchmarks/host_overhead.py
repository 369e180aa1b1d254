"""Operator launches and host syncs per step: what bounds a small model's step on a GPU.

    python benchmarks/host_overhead.py --shape smollm2-135m --batch 16 --seq 64

On a GPU a 135M-parameter model's step is bound by the host: each tensor operator is a
kernel launch of a few microseconds, and each host sync (a Python number read off a
tensor, an output whose size depends on the data) drains the launch queue. Both are
counted here on any device by intercepting the dispatched operators of one step after a
warm-up step (operators that only make views are left out, so "kernels" approximates the
launches); the counts do not depend on the machine.
"""

from __future__ import annotations

import argparse

import torch

from agzo.probes.dispatch import OperatorCounter
from agzo.probes.shapes import SHAPES, build_shape, last_token_loss, random_batch
from agzo.probes.speed import make_step, side_by_side_methods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument(
        "--methods", default=",".join(side_by_side_methods()), help="comma-separated"
    )
    parser.add_argument("--top", type=int, default=0, help="also list the N commonest ops")
    args = parser.parse_args()

    model = build_shape(args.shape, torch.float32, "cpu")
    closure = last_token_loss(model, *random_batch(model, args.batch, args.seq, "cpu"))
    with torch.no_grad(), OperatorCounter() as forwards:
        closure()
        closure()
    print(f"{args.shape}, batch {args.batch} x {args.seq}: operators and host syncs per step")
    print(f"{'method':<14}{'kernels':>10}{'/ 2 fwd':>9}{'syncs':>7}")
    print(f"{'two forwards':<14}{forwards.launches:>10}{1.0:>9.2f}{forwards.syncs:>7}")
    for method in args.methods.split(","):
        step = make_step(method, model, closure)
        step()  # warm-up: the first step also runs one-time checks
        with OperatorCounter() as counter:
            step()
        total = counter.launches
        ratio = total / forwards.launches
        print(f"{method:<14}{total:>10}{ratio:>9.2f}{counter.syncs:>7}")
        if args.top:
            top = counter.kernels.most_common(args.top)
            print("   " + ", ".join(f"{n} {c}" for n, c in top))


if __name__ == "__main__":
    main()
