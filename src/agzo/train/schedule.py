"""Learning-rate schedules over a run's steps, made by transformers' `get_scheduler`.

`constant` (MeZO's protocol, and the default), `linear` and `cosine` (decaying to zero at
the run's last step), each after `warmup_steps` of linear warmup from zero. The rate a
step uses is the optimizer's rate (the peak) times the schedule's factor at that step.
The scheduler steps once per optimizer step, a skipped zeroth-order step included, and
its state is saved with every checkpoint; a run resumed with more --steps stretches its
decay over the new length from where it stands.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["SCHEDULES", "build_scheduler"]

SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine")


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, steps: int
) -> LRScheduler | None:
    """The scheduler of a run, or None for a constant rate without warmup (nothing to do)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if schedule == "constant" and warmup_steps == 0:
        return None
    # Imported here: transformers' optimization module imports its trainer's helpers, and
    # through them peft and bitsandbytes, a second of start-up that a constant run skips.
    from transformers import get_scheduler

    name = "constant_with_warmup" if schedule == "constant" else schedule
    scheduler: LRScheduler = get_scheduler(
        name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=steps
    )
    return scheduler
