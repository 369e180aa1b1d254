"""Step time and peak memory of AGZO, MeZO and LOZO relative to plain inference.

    python benchmarks/step_cost.py --shape smollm2-135m --batch 16 --seq 32
    python benchmarks/step_cost.py --shape qwen3-0.6b --batch 8 --seq 64

Times are measured side by side in one process, methods interleaved round by round, and
reported as ratios to two plain no-grad forward passes on the same batch (the floor for
any two-evaluation method). Peak memory is measured in a fresh process per method (peak
RSS on CPU, torch.cuda.max_memory_allocated on a GPU) and reported as a ratio to a
process that only runs inference. Weights are random: cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

import agzo

METHODS = ("agzo", "mezo", "lozo")


def build_model(shape: str, dtype: torch.dtype) -> nn.Module:
    import transformers as tf

    if shape == "smollm2-135m":
        config = tf.LlamaConfig(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            tie_word_embeddings=True,
            max_position_embeddings=2048,
        )
        model = tf.LlamaForCausalLM(config)
    elif shape == "qwen3-0.6b":
        config = tf.Qwen3Config(
            vocab_size=151936,
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            tie_word_embeddings=True,
            max_position_embeddings=2048,
        )
        model = tf.Qwen3ForCausalLM(config)
    else:
        raise SystemExit(f"unknown shape {shape!r}; choose smollm2-135m or qwen3-0.6b")
    return model.to(dtype).eval()


def make_closure(model: nn.Module, batch: int, seq: int, device: str) -> Callable[[], torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    mask = torch.ones_like(ids)
    targets = torch.randint(0, vocab, (batch,), generator=gen).to(device)

    def closure() -> torch.Tensor:
        # Score the last position only, as the training objective does.
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
        return nn.functional.cross_entropy(logits.float(), targets)

    return closure


def make_optimizer(method: str, model: nn.Module) -> torch.optim.Optimizer:
    if method == "agzo":
        return agzo.AGZO(model, lr=1e-9, eps=1e-3)
    if method == "mezo":
        return agzo.MeZO(model, lr=1e-9, eps=1e-3)
    if method == "lozo":
        return agzo.LOZO(model, lr=1e-9, eps=1e-3)
    raise ValueError(method)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_it(fn: Callable[[], object], device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure_times(args: argparse.Namespace) -> dict[str, float]:
    model = build_model(args.shape, getattr(torch, args.dtype)).to(args.device)
    closure = make_closure(model, args.batch, args.seq, args.device)
    optimizers = {m: make_optimizer(m, model) for m in METHODS}

    def two_forwards() -> None:
        with torch.no_grad():
            closure()
            closure()

    runs: dict[str, Callable[[], object]] = {"two_forwards": two_forwards}
    for method, opt in optimizers.items():
        runs[method] = lambda opt=opt: opt.step(closure)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for round_index in range(args.rounds + 1):
        for name, fn in runs.items():
            elapsed = time_it(fn, args.device)
            if round_index > 0:  # round 0 warms caches and allocators
                samples[name].append(elapsed)
        print(
            f"round {round_index}: "
            + ", ".join(f"{n} {s[-1]:.3f}s" for n, s in samples.items() if s),
            file=sys.stderr,
        )
    return {name: statistics.median(s) for name, s in samples.items()}


def memory_worker(args: argparse.Namespace) -> None:
    """Run one configuration and print its peak memory in bytes (fresh process)."""
    model = build_model(args.shape, getattr(torch, args.dtype)).to(args.device)
    closure = make_closure(model, args.batch, args.seq, args.device)
    # Building a random model peaks above what training needs: start counting after it.
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    if args.memory_worker == "inference":
        with torch.no_grad():
            for _ in range(3):
                closure()
    else:
        opt = make_optimizer(args.memory_worker, model)
        for _ in range(2):
            opt.step(closure)
    peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else peak_rss()
    print(json.dumps({"peak_bytes": peak}))


def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of resident memory (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux or not permitted: the peak then includes model construction


def peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure_memory(args: argparse.Namespace) -> dict[str, int]:
    peaks = {}
    for config in ("inference", *METHODS):
        cmd = [
            sys.executable,
            __file__,
            "--memory-worker",
            config,
            "--shape",
            args.shape,
            "--batch",
            str(args.batch),
            "--seq",
            str(args.seq),
            "--dtype",
            args.dtype,
            "--device",
            args.device,
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        peaks[config] = json.loads(out.strip().splitlines()[-1])["peak_bytes"]
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="smollm2-135m", choices=["smollm2-135m", "qwen3-0.6b"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.memory_worker:
        memory_worker(args)
        return

    times = measure_times(args)
    base = times["two_forwards"]
    print(f"\n{args.shape} {args.dtype} batch {args.batch} x {args.seq} tokens on {args.device}")
    print(f"two plain forward passes: {base:.3f} s (median of {args.rounds})")
    print(f"{'method':<8}{'step s':>9}{'/ 2 fwd':>10}{'/ MeZO':>9}")
    for method in METHODS:
        t = times[method]
        print(f"{method:<8}{t:>9.3f}{t / base:>10.2f}{t / times['mezo']:>9.2f}")
    result: dict[str, object] = {"args": vars(args), "times_s": times}
    if not args.skip_memory:
        peaks = measure_memory(args)
        print(f"\n{'config':<10}{'peak MiB':>10}{'/ inference':>13}")
        for config, peak in peaks.items():
            print(f"{config:<10}{peak / 2**20:>10.0f}{peak / peaks['inference']:>13.3f}")
        result["peak_bytes"] = peaks
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
