"""What a finished run reports: summary.json and the lines printed at the end."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from agzo.train.checkpoint import TrainState
from agzo.train.rundir import MODEL_DIR
from agzo.train.setup import FEW_TEST_EXAMPLES, RunData

__all__ = ["comparison", "describe", "run_summary", "write_json"]


def run_summary(
    run: RunData,
    state: TrainState,
    final: dict[str, dict[str, float]],
    best_step: int,
    tested_step: int,
) -> dict[str, Any]:
    """The content of summary.json."""
    config = run.config
    return {
        "task": config.task,
        "optimizer": config.optimizer,
        "model": config.model,
        "metric": run.metric,
        "steps": state.step,
        "best_step": best_step,
        "tested_step": tested_step,
        "zero_shot": state.zero_shot,
        "final": final,
        "last_dev": state.last_dev,
        "train_seconds": round(state.train_seconds, 3),
        "seconds_per_step": round(state.train_seconds / max(state.step, 1), 4),
        "skipped_steps": state.skipped_steps,
        "split_sizes": {k: len(getattr(run.splits, k)) for k in ("train", "dev", "test")},
        "dev_examples_evaluated": len(run.dev),
        "notes": run.splits.notes,
        "warnings": run.splits.warnings,
        "model_dir": MODEL_DIR if config.save_mode != "none" else None,
        "config": config.resolved(),
    }


def describe(label: str, metrics: dict[str, dict[str, float]], metric: str) -> str:
    """ "zero-shot accuracy: dev 0.5000, test 0.4800" (and "in-context test 0.6100" when
    the in-context baseline was evaluated)."""
    parts = [
        f"{split.replace('icl_', 'in-context ')} {m[metric]:.4f}" for split, m in metrics.items()
    ]
    return f"{label} {metric}: " + ", ".join(parts)


def comparison(
    zero_shot: dict[str, float],
    final: dict[str, float],
    metric: str,
    tested_step: int,
    run_dir: Path,
    *,
    final_weights: bool = False,
) -> str:
    """The run's last line: zero-shot against fine-tuned test metric."""
    gain = 100 * (final[metric] - zero_shot[metric])
    if final_weights:
        which = f"the last step's weights, step {tested_step}"
    elif tested_step == 0:
        which = "zero-shot weights: no dev gain"
    else:
        which = f"step {tested_step}, best on dev"
    line = (
        f"test {metric}: zero-shot {zero_shot[metric]:.4f} -> fine-tuned {final[metric]:.4f} "
        f"({gain:+.1f} points; {which}). Outputs in {run_dir}"
    )
    n_test = int(final.get("n_examples", FEW_TEST_EXAMPLES))
    if n_test < FEW_TEST_EXAMPLES:
        line += f". Only {n_test} test examples: one example is {100 / n_test:.1f} points"
    return line


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(staging, path)
