"""The processes of one run: who writes, which examples each takes, that they agree.

`torchrun --nproc-per-node N -m agzo train ...` (or `accelerate launch`) starts N copies
of the same run; torch.distributed's environment (WORLD_SIZE, RANK, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) says which one this is. Every process draws the same step
batch from (seed, step) and takes its own contiguous share of it; the optimizer's
`DistributedReducer` combines what the shares computed, so every process applies the
same update. Only process 0 evaluates and writes (logs, metrics, checkpoints, model/).

The weights of all processes must stay bit-identical: every `sync_check_every` steps
the processes compare a checksum of their trained tensors and stop if they drifted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from agzo.core.distributed import DistributedReducer, ProcessGroupError, collective, comm_device
from agzo.core.reduce import LOCAL, Reducer
from agzo.train.errors import TrainError

__all__ = ["Processes", "RanksDivergedError", "join", "split_evenly"]

T = TypeVar("T")


class RanksDivergedError(ProcessGroupError):
    """The processes' weights are no longer bit-identical."""


def split_evenly(items: Sequence[T], parts: int, index: int) -> list[T]:
    """The `index`-th of `parts` equal contiguous shares of `items` (len divisible)."""
    size = len(items) // parts
    return list(items[index * size : (index + 1) * size])


def check_batch_split(batch_size: int, world: int, accumulate: int) -> None:
    """A clear error when a step's batch cannot be split evenly into processes and
    micro-batches: every share must hold the same number of examples."""
    if batch_size % world:
        below, above = batch_size - batch_size % world, batch_size + world - batch_size % world
        raise TrainError(
            f"batch_size {batch_size} does not divide across {world} processes: pass a "
            f"multiple of {world} (e.g. --batch-size {above}"
            + (f" or {below}" if below else "")
            + ") or launch a number of processes that divides it"
        )
    per_process = batch_size // world
    if per_process % accumulate:
        raise TrainError(
            f"--accumulate {accumulate} does not divide the {per_process} examples each "
            f"process takes per step (batch_size {batch_size} over {world} process"
            f"{'es' if world > 1 else ''}): choose an --accumulate that divides {per_process}"
        )


def _checksums(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One int64 per tensor: the wrapping sum of its raw bits (any changed bit shows)."""
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}
    sums = []
    for tensor in tensors:
        if tensor.is_meta:  # offloaded: the host copy is checked through its own entry
            sums.append(torch.zeros((), dtype=torch.int64))
            continue
        bits = tensor.detach().contiguous().view(ints[tensor.element_size()])
        sums.append(bits.sum(dtype=torch.int64).cpu())
    return torch.stack(sums)


@dataclass
class Processes:
    """This process's place in the run (a single process by default)."""

    rank: int = 0
    world: int = 1
    reducer: Reducer = LOCAL
    owns_group: bool = False
    _closed: bool = field(default=False, repr=False)

    @property
    def is_main(self) -> bool:
        """Process 0: the one that evaluates and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def take(self, examples: Sequence[T]) -> list[T]:
        """This process's contiguous share of a step's batch (the reducer weighs what
        it computes by its size)."""
        mine = split_evenly(examples, self.world, self.rank)
        if isinstance(self.reducer, DistributedReducer):
            self.reducer.examples = len(mine)
        return mine

    def barrier(self, what: str) -> None:
        if self.distributed:
            # A tiny all-reduce rather than dist.barrier: it honours the group's timeout on
            # every backend and fails like the step's own collectives.
            with collective(what):
                dist.all_reduce(torch.zeros(1, device=comm_device()))

    def broadcast(self, value: Any, what: str) -> Any:
        """Process 0's `value` on every process (a picklable object)."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        with collective(what):
            dist.broadcast_object_list(box, src=0, device=comm_device())
        return box[0]

    @torch.no_grad()
    def broadcast_weights(self, tensors: Sequence[torch.Tensor]) -> None:
        """Process 0's values of `tensors` on every process: the run starts in agreement
        even where loading drew random weights (a new head)."""
        if not self.distributed:
            return
        device = comm_device()
        for tensor in tensors:
            if tensor.is_meta:
                continue
            work = tensor.data.to(device, copy=True)
            with collective("sharing process 0's weights"):
                dist.broadcast(work, src=0)
            tensor.data.copy_(work)

    def check_in_sync(self, named: Sequence[tuple[str, torch.Tensor]], step: int) -> None:
        """Stop every process, with the tensor named, if the weights differ anywhere."""
        if not self.distributed:
            return
        mine = _checksums([p for _, p in named]).to(comm_device())
        every = [torch.empty_like(mine) for _ in range(self.world)]
        with collective("comparing the weights' checksums"):
            dist.all_gather(every, mine)
        every = [theirs.cpu() for theirs in every]
        for rank, theirs in enumerate(every):
            differs = (theirs != every[0]).nonzero()
            if len(differs):
                name = named[int(differs[0])][0]
                raise RanksDivergedError(
                    f"after step {step} the weights of process {rank} differ from process "
                    f"0's (first in {name}, {len(differs)} tensor(s) in all): the processes "
                    "no longer train one model. Check that every process runs the same "
                    "code, model and data; resume from the last checkpoint"
                )

    def close(self) -> None:
        if self.owns_group and not self._closed:
            self._closed = True
            dist.destroy_process_group()


def join(device: torch.device, timeout_s: float) -> Processes:
    """The run's processes from torch.distributed's environment (one, if it is absent).

    Starts the default process group when this launch has several processes and none
    is started yet (a script may start its own): NCCL when the run computes on a GPU,
    gloo otherwise. A collective waits at most `timeout_s` for the others.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    owns = False
    if not dist.is_initialized():
        if world <= 1:
            return Processes()
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        with collective("starting the process group"):
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        owns = True
    world = dist.get_world_size()
    if world <= 1:
        return Processes(owns_group=owns)
    return Processes(
        rank=dist.get_rank(),
        world=world,
        reducer=DistributedReducer(),
        owns_group=owns,
    )
