"""Peak memory of inference and of each optimizer's training step, one fresh process each.

Each configuration (method x sequence length x batch size) runs in its own Python process,
so no allocator cache or earlier peak leaks between them. The peak counts from just after
the model is built (building a random model peaks above what training needs): on a GPU
`torch.cuda.max_memory_allocated`, on CPU the kernel's resident high-water mark (VmHWM,
reset through /proc/self/clear_refs). The table reports each peak and its ratio to
inference on the same batch.

On CPU the workers run with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_, 128 KiB by
default), so that the peak is the memory the step's tensors need. Left adaptive (glibc's
default, `malloc_mmap_threshold=None`), glibc serves ever larger blocks from its heap and
keeps what they free: the same AGZO step (SmolLM2-135M, 16 x 64) then reads anywhere from
1.0x to 1.4x inference from run to run, while training runs faster (docs/RESULTS.md,
"What a CPU peak-memory reading measures").

    python -m agzo.probes.memory --worker agzo --shape smollm2-135m --batch 16 --seq 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch

from agzo.methods import get_method, method_names
from agzo.probes.estimators import KEPT_NOISE_VARIANTS, method_of
from agzo.probes.shapes import build_shape, last_token_loss, random_batch
from agzo.probes.speed import probe_optimizer, step_function

# glibc serves blocks of at least this many bytes with their own mapping, unmapped on free.
DEFAULT_MMAP_THRESHOLD = 128 * 1024


def memory_configs() -> tuple[str, ...]:
    """What can be measured: inference, every registered method, and MeZO keeping each
    step's noise (`KEPT_NOISE_VARIANTS`)."""
    return ("inference", *method_names(), *KEPT_NOISE_VARIANTS)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's per-parameter state tensors (moments, buffers)."""
    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # not Linux, or not permitted: the peak then includes model construction


def peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_worker(
    config: str,
    shape: str,
    batch: int,
    seq: int,
    dtype: str,
    device: str,
    update: str | None = None,
    quantize: int | None = None,
) -> tuple[int, int]:
    """Run one configuration in this process: (peak memory, optimizer state) in bytes.
    `quantize` (8 or 4) makes the base's linear layers weight-only quantized first."""
    model = build_shape(shape, getattr(torch, dtype), device)
    if quantize is not None:
        from agzo.quantize import quantize_linear_weights

        quantize_linear_weights(model, quantize)
    ids, mask, targets = random_batch(model, batch, seq, device)
    closure = last_token_loss(model, ids, mask, targets)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()
    state = 0
    if config == "inference":
        with torch.no_grad():
            for _ in range(2):
                closure()
    else:
        options: dict[str, Any] = (
            {"update": update} if update and get_method(method_of(config)).zeroth_order else {}
        )
        optimizer = probe_optimizer(config, model, closure, **options)
        step = step_function(optimizer, closure)
        for _ in range(2):
            step()
        state = state_bytes(optimizer)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated()), state
    return peak_rss(), state


@dataclass
class MemoryRow:
    config: str
    batch: int
    seq: int
    peak_bytes: int | None  # None: the worker failed (see `error`)
    ratio_to_inference: float | None
    error: str | None = None
    state_bytes: int = 0  # the optimizer's state (moments, buffers), part of the peak


def measure_memory(
    shape: str,
    batches: list[int],
    seqs: list[int],
    configs: tuple[str, ...] | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    on_row: object = None,
    update: str | None = None,
    malloc_mmap_threshold: int | None = DEFAULT_MMAP_THRESHOLD,
    quantize: int | None = None,
) -> list[MemoryRow]:
    """One row per configuration, batch size and length; `update` sets the zeroth-order
    methods' update rule; `malloc_mmap_threshold` (bytes) fixes glibc's mmap threshold in
    the workers (None: the environment's setting, adaptive unless set); `quantize` (8 or
    4) quantizes the base's linear layers in every worker, inference's included."""
    configs = memory_configs() if configs is None else configs
    env = dict(os.environ)
    if malloc_mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(malloc_mmap_threshold)
    rows = []
    for batch in batches:
        for seq in seqs:
            peaks = {}
            for config in ("inference", *[c for c in configs if c != "inference"]):
                cmd = [
                    sys.executable, "-m", "agzo.probes.memory", "--worker", config,
                    "--shape", shape, "--batch", str(batch), "--seq", str(seq),
                    "--dtype", dtype, "--device", device,
                    *(["--update", update] if update else []),
                    *(["--quantize", str(quantize)] if quantize else []),
                ]  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode == 0:
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    peak = peaks[config] = result["peak_bytes"]
                    base = peaks.get("inference")
                    ratio = peak / base if base else None
                    row = MemoryRow(
                        config, batch, seq, peak, ratio, state_bytes=result["state_bytes"]
                    )
                else:
                    # A configuration that does not fit is a result, not a reason to stop.
                    row = MemoryRow(config, batch, seq, None, None, _failure(done.stderr))
                rows.append(row)
                if callable(on_row):
                    on_row(row)
    return rows


def _failure(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    return "out of memory" if "out of memory" in stderr.lower() else last[-200:]


def format_memory(rows: list[MemoryRow]) -> str:
    width = max([len("config"), *(len(r.config) for r in rows)]) + 2
    lines = [
        f"{'config':<{width}}{'batch':>6}{'seq':>6}{'peak MiB':>10}{'/ inference':>13}"
        f"{'state MiB':>11}{'peak - state':>14}"
    ]
    for r in rows:
        if r.peak_bytes is None:
            lines.append(f"{r.config:<{width}}{r.batch:>6}{r.seq:>6}  failed: {r.error}")
            continue
        ratio = " " * 13 if r.ratio_to_inference is None else f"{r.ratio_to_inference:>13.3f}"
        lines.append(
            f"{r.config:<{width}}{r.batch:>6}{r.seq:>6}{r.peak_bytes / 2**20:>10.0f}{ratio}"
            f"{r.state_bytes / 2**20:>11.0f}{(r.peak_bytes - r.state_bytes) / 2**20:>14.0f}"
        )
    return "\n".join(lines)


def plot_memory(rows: list[MemoryRow], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for config in dict.fromkeys(r.config for r in rows):
        mine = [r for r in rows if r.config == config and r.peak_bytes is not None]
        ax.plot(
            [f"{r.batch}x{r.seq}" for r in mine],
            [(r.peak_bytes or 0) / 2**20 for r in mine],
            marker="o",
            label=config,
        )
    ax.set_xlabel("batch x sequence length")
    ax.set_ylabel("peak memory (MiB)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _worker_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True, choices=memory_configs())
    parser.add_argument("--shape", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seq", type=int, required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--update", default=None)
    parser.add_argument("--quantize", type=int, default=None)
    args = parser.parse_args()
    peak, state = run_worker(
        args.worker, args.shape, args.batch, args.seq, args.dtype, args.device, args.update,
        args.quantize,
    )  # fmt: skip
    print(json.dumps({"peak_bytes": peak, "state_bytes": state}))


if __name__ == "__main__":
    _worker_main()
