"""The reductions of a step whose batch is split across processes, over torch.distributed.

Every process regenerates the same perturbation from the shared seed, so a step only
exchanges what was computed over its examples (`agzo.core.reduce`): the losses, two
numbers per process and evaluation; for AGZO the power-iteration products HᵀHq
(d_in x r per layer and power step), their norms and the embedding's token rows; for
first-order baselines the gradients. Nothing else in a method knows about processes.

The process group is PyTorch's own (gloo on the CPU, NCCL on GPUs), started by
`torchrun` or `accelerate launch`. Each reduction here is a collective that every
process calls in the same order; a failed one (a peer died, or hung past the group's
timeout) becomes a `ProcessGroupError` naming what was being reduced.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist

from agzo.core.reduce import NO_ROW, PendingSum, Reducer

__all__ = ["DistributedReducer", "ProcessGroupError", "collective"]


class ProcessGroupError(RuntimeError):
    """A collective failed: another process of the run died or stopped answering."""


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn the backend's failure of a collective into a one-line ProcessGroupError."""
    try:
        yield
    except ProcessGroupError:
        raise
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        rank = dist.get_rank() if dist.is_initialized() else "?"
        raise ProcessGroupError(
            f"process {rank}: {what} failed, so another process of the run died or stopped "
            f"answering (within the timeout); stopping this one too ({detail[:200]})"
        ) from error


def comm_device() -> torch.device:
    """Where the backend exchanges tensors: the GPU of this process for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _Bucket:
    """Sums started between two flushes, sent as one all-reduce of their concatenation:
    a collective costs the same fixed latency for 3 numbers as for 3,000."""

    WHAT = "summing AGZO's power-iteration products"

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        self.group = group
        self.tensors: list[torch.Tensor] = []
        self.offsets: list[int] = [0]  # where each tensor starts in the concatenation
        self._flat: torch.Tensor | None = None
        self._work: dist.Work | None = None
        self._received = False

    @property
    def sent(self) -> bool:
        return self._work is not None

    def add(self, tensor: torch.Tensor) -> int:
        self.tensors.append(tensor)
        self.offsets.append(self.offsets[-1] + tensor.numel())
        return len(self.tensors) - 1

    def send(self) -> None:
        if self._work is None:
            # One dtype per exchange, float64: wide enough for float32 and float64 parts.
            parts = [t.reshape(-1).to(comm_device(), torch.float64) for t in self.tensors]
            self._flat = torch.cat(parts)
            with collective(self.WHAT):
                self._work = dist.all_reduce(self._flat, group=self.group, async_op=True)

    def result(self, position: int) -> torch.Tensor:
        self.send()
        assert self._work is not None and self._flat is not None
        if not self._received:
            with collective(self.WHAT):
                self._work.wait()
            self._received = True
        tensor = self.tensors[position]
        piece = self._flat[self.offsets[position] : self.offsets[position + 1]]
        return piece.view(tensor.shape).to(tensor.device, tensor.dtype)


class _PendingInBucket(PendingSum):
    def __init__(self, bucket: _Bucket, position: int) -> None:
        self._bucket, self._position = bucket, position

    def wait(self) -> torch.Tensor:
        return self._bucket.result(self._position)


class DistributedReducer(Reducer):
    """Sums and unions over the processes of the default (or given) process group.

    examples: this process's examples in the current step, set by whoever splits the
    batch; losses and first-order gradients are averaged weighted by it, so the result is
    the mean over the union batch even when processes hold different numbers of examples.
    """

    collective = True

    def __init__(self, group: dist.ProcessGroup | None = None, examples: int = 1) -> None:
        if not dist.is_initialized():
            raise RuntimeError("DistributedReducer needs torch.distributed to be initialized")
        self.group = group
        self.examples = examples
        self.world_size = dist.get_world_size(group)
        self._bucket: _Bucket | None = None  # sums started since the last flush

    def _all_reduce(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        """`tensor` summed over processes (a new tensor on `tensor`'s device)."""
        device = comm_device()
        work = tensor.to(device, copy=True)
        with collective(what):
            dist.all_reduce(work, group=self.group)
        return work.to(tensor.device)

    def loss(self, value: float) -> float:
        # float64: the reduced loss is differenced and divided by eps.
        pair = torch.tensor([value * self.examples, float(self.examples)], dtype=torch.float64)
        total = self._all_reduce(pair, "reducing a loss")
        return float(total[0] / total[1])

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor.copy_(self._all_reduce(tensor, "summing AGZO's power-iteration products"))
        return tensor

    def sum_async(self, tensor: torch.Tensor) -> PendingSum:
        if self._bucket is None or self._bucket.sent:
            self._bucket = _Bucket(self.group)
        return _PendingInBucket(self._bucket, self._bucket.add(tensor))

    def flush(self) -> None:
        if self._bucket is not None:
            self._bucket.send()
            self._bucket = None

    def norm(self, norms: torch.Tensor) -> torch.Tensor:
        squares = self._all_reduce(norms * norms, "summing AGZO's subspace norms")
        return squares.sqrt()

    def gather_rows(self, ids: torch.Tensor) -> torch.Tensor:
        # Processes' batches pad to different lengths: gather the counts, pad every list
        # to the longest with NO_ROW (padding, which sorts last), gather the lists.
        device = comm_device()
        count = torch.tensor([ids.numel()], dtype=torch.int64, device=device)
        counts = [torch.empty_like(count) for _ in range(self.world_size)]
        with collective("gathering the embedding rows"):
            dist.all_gather(counts, count, group=self.group)
        width = int(max(int(c) for c in counts))
        padded = torch.full((width,), NO_ROW, dtype=torch.int64, device=device)
        padded[: ids.numel()] = ids.to(device, torch.int64)
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        with collective("gathering the embedding rows"):
            dist.all_gather(gathered, padded, group=self.group)
        return torch.cat(gathered).to(ids.device)

    def mean_(self, tensors: Sequence[torch.Tensor]) -> None:
        total = self._all_reduce(torch.tensor([float(self.examples)]), "counting examples")
        weight = self.examples / float(total[0])
        for tensor in tensors:
            tensor.copy_(self._all_reduce(tensor * weight, "averaging the gradients"))
