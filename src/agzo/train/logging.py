"""Metrics of a run: metrics.jsonl as it happens, metrics.csv and plot.png as summaries,
TensorBoard scalars when the `tensorboard` package is installed.

Every record is a flat dict `{"step", "split", ...values}` with split "train" (loss of one
step), "dev" (an evaluation during training; step 0 is zero-shot) or "test". JSONL lines are
flushed one by one, so an interrupted run keeps everything up to its last step; on resume
the log is rewritten from the checkpoint, dropping lines past it.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["MetricsLogger", "plot_metrics"]

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
PLOT = "plot.png"
TENSORBOARD_DIR = "tensorboard"


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: a non-finite float (a skipped step's loss) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Collects records in memory and on disk.

    records: earlier records (from a checkpoint) to start from. start_step: the step the
    run resumes after; TensorBoard events past it, left by the interrupted run, are purged.
    tensorboard: write TensorBoard scalars if the package is importable. files: False keeps
    the records in memory only (the processes of a run other than process 0).
    """

    def __init__(
        self,
        run_dir: Path,
        records: Sequence[dict[str, Any]] = (),
        *,
        metric: str = "accuracy",
        tensorboard: bool = True,
        start_step: int = 0,
        files: bool = True,
    ) -> None:
        self.run_dir = run_dir
        self.metric = metric
        self.records: list[dict[str, Any]] = [dict(r) for r in records]
        self.files = files
        self._file: IO[str] | None = None
        self._tb: Any = None
        if not files:
            return
        path = run_dir / METRICS_JSONL
        path.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")
        self._file = path.open("a", encoding="utf-8")
        self._tb = (
            _tensorboard_writer(run_dir / TENSORBOARD_DIR, start_step) if tensorboard else None
        )

    def log(self, split: str, step: int, **values: Any) -> dict[str, Any]:
        record = {"step": step, "split": split, **{k: _clean(v) for k, v in values.items()}}
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{split}/{key}", value, step)
        return record

    def upto(self, step: int) -> list[dict[str, Any]]:
        """Records of steps <= `step` (what a checkpoint at `step` stores)."""
        return [r for r in self.records if r["step"] <= step]

    def write_summaries(self) -> None:
        """metrics.csv and plot.png from all records so far (both replaced atomically)."""
        if not self.files:
            return
        write_csv(self.records, self.run_dir / METRICS_CSV)
        plot_metrics(self.records, self.run_dir / PLOT, metric=self.metric)
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _tensorboard_writer(log_dir: Path, start_step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    # purge_step drops events a previous, interrupted run wrote past the resume point.
    return SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step else None)


def write_csv(records: Sequence[dict[str, Any]], path: Path) -> None:
    columns = ["step", "split"] + sorted({k for r in records for k in r} - {"step", "split"})
    staging = path.with_name(f".{path.name}.tmp")
    with staging.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(records)
    os.replace(staging, path)


def _running_mean(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_metrics(records: Sequence[dict[str, Any]], path: Path, metric: str = "accuracy") -> None:
    """Training loss (per step and running mean) and dev `metric` over steps, as a PNG."""
    # The object API with the Agg canvas: no pyplot, so no global backend switch and no
    # window, whatever backend the caller's session uses.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    train = [r for r in records if r["split"] == "train" and r.get("loss") is not None]
    dev = [r for r in records if r["split"] == "dev" and r.get(metric) is not None]
    figure = Figure(figsize=(7, 6), layout="constrained")
    FigureCanvasAgg(figure)
    loss_ax, dev_ax = figure.subplots(2, 1, sharex=True)
    if train:
        steps = [r["step"] for r in train]
        losses = [float(r["loss"]) for r in train]
        window = max(1, min(20, len(losses) // 5))
        if window > 1:
            loss_ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="per step")
            mean = _running_mean(losses, window)
            loss_ax.plot(steps, mean, color="tab:blue", label=f"mean of last {window}")
            loss_ax.legend(loc="upper right")
        else:  # too few steps for a running mean
            loss_ax.plot(steps, losses, "o-", color="tab:blue", markersize=3)
    loss_ax.set_ylabel("training loss")
    loss_ax.grid(alpha=0.3)
    if dev:
        dev_ax.plot([r["step"] for r in dev], [r[metric] for r in dev], "o-", color="tab:green")
    dev_ax.set_ylabel(f"dev {metric}")
    dev_ax.set_xlabel("step (0 = zero-shot)")
    dev_ax.grid(alpha=0.3)
    dev_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    staging = path.with_name(f".{path.name}.tmp")
    figure.savefig(staging, format="png", dpi=100)
    os.replace(staging, path)
