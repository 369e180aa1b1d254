"""Communication overhead of data-parallel zeroth-order steps, and what a step exchanges.

    python benchmarks/data_parallel.py --shape smollm2-135m --batch 8 --seq 32

Measures each method's median step time in one process (1 thread, batch b) and in two
processes launched by torchrun over gloo (1 thread each, b examples each, so the step
covers 2b), alternating the two setups `--repeats` times and keeping each one's fastest
median. The ratio two-process / one-process step time is the communication overhead
(target <= 1.10 for AGZO and MeZO). It also counts the numbers one step exchanges per
process (all-reduced or gathered elements), per method. Random weights: cost does not
depend on them. Run it on an otherwise idle machine with at least two free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

METHODS = ("agzo", "mezo", "lozo")


def _worker(args: argparse.Namespace) -> None:
    """One process of a measurement (torchrun sets the environment of each of two)."""
    torch.set_num_threads(1)
    import torch.distributed as dist

    from agzo.core.distributed import DistributedReducer
    from agzo.core.reduce import LOCAL, Reducer
    from agzo.methods import get_method
    from agzo.methods.registry import BuildContext
    from agzo.probes.shapes import build_shape, last_token_loss, random_batch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    exchanged = [0]
    waited = [0.0]  # seconds inside collectives: transfer plus waiting for the other
    calls: list[tuple[str, int, torch.dtype]] = []  # the step's collectives, to replay
    if world > 1:
        dist.init_process_group("gloo")
        real_all_reduce, real_all_gather = dist.all_reduce, dist.all_gather

        def all_reduce(tensor: torch.Tensor, *a: Any, **k: Any) -> Any:
            exchanged[0] += tensor.numel()
            calls.append(("reduce", tensor.numel(), tensor.dtype))
            started = time.perf_counter()
            result = real_all_reduce(tensor, *a, **k)
            waited[0] += time.perf_counter() - started
            return result

        def all_gather(out: list[torch.Tensor], tensor: torch.Tensor, *a: Any, **k: Any) -> Any:
            exchanged[0] += tensor.numel()
            calls.append(("gather", tensor.numel(), tensor.dtype))
            started = time.perf_counter()
            result = real_all_gather(out, tensor, *a, **k)
            waited[0] += time.perf_counter() - started
            return result

        dist.all_reduce, dist.all_gather = all_reduce, all_gather  # type: ignore[assignment]
    rank = dist.get_rank() if world > 1 else 0
    model = build_shape(args.shape)
    torch.manual_seed(100 + rank)  # each process its own examples
    closure = last_token_loss(model, *random_batch(model, args.batch, args.seq, "cpu"))
    results: dict[str, Any] = {}
    for name in args.methods.split(","):
        method = get_method(name)
        reducer: Reducer = DistributedReducer(examples=args.batch) if world > 1 else LOCAL
        optimizer = method.build(model, method.make_options(lr=1e-9), BuildContext(reducer=reducer))
        times, waits = [], []
        for step in range(args.steps + 2):  # two warm-up steps
            if world > 1:
                real_all_reduce(torch.zeros(1))  # start together
            exchanged[0], waited[0] = 0, 0.0
            calls.clear()
            started = time.perf_counter()
            optimizer.step(closure)
            if step >= 2:
                times.append(time.perf_counter() - started)
                waits.append(waited[0])
        results[name] = {
            "step_s": statistics.median(times),
            "collective_s": statistics.median(waits),
            "exchanged": exchanged[0],
            "collectives": len(calls),
            "replay_s": _replay(calls, real_all_reduce, real_all_gather) if world > 1 else 0.0,
        }
    if rank == 0:
        Path(args.out).write_text(json.dumps(results))
    if world > 1:
        dist.destroy_process_group()


def _replay(calls: list[tuple[str, int, torch.dtype]], all_reduce: Any, all_gather: Any) -> float:
    """Seconds the last step's collectives take back to back, with no computation in
    between: the communication itself, without waiting for a slower process."""
    tensors = [(kind, torch.zeros(n, dtype=dtype)) for kind, n, dtype in calls]
    times = []
    for _ in range(5):
        all_reduce(torch.zeros(1))  # start together
        started = time.perf_counter()
        for kind, tensor in tensors:
            if kind == "reduce":
                all_reduce(tensor)
            else:
                all_gather([torch.empty_like(tensor) for _ in range(2)], tensor)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _measure(args: argparse.Namespace, processes: int, out: Path) -> dict[str, Any]:
    script = [str(Path(__file__).resolve()), "--worker", "--out", str(out)]
    script += ["--shape", args.shape, "--batch", str(args.batch), "--seq", str(args.seq)]
    script += ["--steps", str(args.steps), "--methods", args.methods]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, *script]
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
        command += ["--master-port", str(port), *script]
    subprocess.run(command, env=env, check=True, timeout=1800)
    return dict(json.loads(out.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8, help="examples per process (b)")
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per method")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    folder = Path(tempfile.mkdtemp(prefix="agzo-dp-"))
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for repeat in range(args.repeats):
        for processes in (1, 2):
            runs[processes].append(_measure(args, processes, folder / f"{processes}-{repeat}.json"))
    print(
        f"{args.shape}, {args.seq} tokens, b = {args.batch} examples per process, "
        f"1 thread per process, gloo; fastest of {args.repeats} medians of {args.steps} steps"
    )
    print(f"{'method':<8}{'1 process (s)':>15}{'2 processes (s)':>17}{'ratio':>8}"
          f"{'in collectives (s)':>20}{'replayed (s)':>14}{'collectives':>13}"
          f"{'numbers exchanged':>19}")  # fmt: skip
    for name in args.methods.split(","):
        one = min(r[name]["step_s"] for r in runs[1])
        best = min(runs[2], key=lambda r: r[name]["step_s"])[name]
        two, waited, count = best["step_s"], best["collective_s"], best["exchanged"]
        replay = min(r[name]["replay_s"] for r in runs[2])
        print(f"{name:<8}{one:>15.3f}{two:>17.3f}{two / one:>8.2f}{waited:>20.3f}"
              f"{replay:>14.4f}{best['collectives']:>13}{count:>19,}")  # fmt: skip
    print(
        "ratio: two-process / one-process step time (the communication overhead when the "
        "two processes have their cores to themselves); in collectives: rank 0's time "
        "inside all-reduce / all-gather per step, transfer plus waiting for the other rank; "
        "replayed: the same collectives back to back, without computation (the "
        "communication alone); numbers exchanged: elements each process sends per step"
    )


if __name__ == "__main__":
    main()
