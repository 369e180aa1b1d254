"""A probe direction Δ for one tensor, applied in place without materializing it.

Zeroth-order methods add μΔ, evaluate, then subtract (μ + ηg)Δ. Storing a dense Δ per
tensor would double the model's memory, so each direction keeps only what regenerates it:
a seed for Gaussian noise, the small factors of a low-rank product, or the rows an
embedding lookup touched. `add_to` updates the weight in place; `dense` materializes Δ
for the rare callers that need it (stateful update rules, gradient-alignment probes).

Low-precision weights (bfloat16, float16) are updated through float32 copies of a few
rows at a time (`row_chunks`), so μΔ is formed in float32 and rounded once, and no
float32 copy of a whole tensor (a 150k-token embedding is 1.5 GB in float32) is made.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator, Sequence
from types import EllipsisType

import torch
from torch.autograd.profiler import record_function

from agzo.observe.token_rows import TokenRows
from agzo.seeding import ALIGN_ENTRIES, generator_for

# Float32 working copies of low-precision weights are made this many entries at a time.
CHUNK_ENTRIES = 1 << 22

Rows = slice | EllipsisType


def is_low_precision(tensor: torch.Tensor) -> bool:
    return tensor.dtype in (torch.float16, torch.bfloat16)


def row_chunks(shape: torch.Size) -> Iterator[Rows]:
    """Leading-dimension slices of about CHUNK_ENTRIES entries each (`...`: all at once)."""
    numel = shape.numel()
    if len(shape) == 0 or numel <= CHUNK_ENTRIES:
        yield ...
        return
    per_row = max(1, numel // shape[0])
    step = max(1, CHUNK_ENTRIES // per_row)
    for start in range(0, shape[0], step):
        yield slice(start, min(shape[0], start + step))


class Direction(ABC):
    """Δ for one tensor of shape `shape`."""

    shape: torch.Size

    @abstractmethod
    def add_to(self, param: torch.Tensor, alpha: float) -> None:
        """param += alpha * Δ, in place."""

    @abstractmethod
    def dense(self) -> torch.Tensor:
        """Δ as a float32 tensor of the parameter's shape."""

    # Whether `dense_rows` costs in proportion to the rows asked for; a direction that
    # must draw all of Δ to give any part of it says False.
    cheap_rows = True

    def dense_rows(self, rows: Rows) -> torch.Tensor:
        """Δ[rows] in float32."""
        return self.dense()[rows]

    def add_rows_into(self, target: torch.Tensor, rows: Rows, alpha: float) -> None:
        """target += alpha * Δ[rows], for a float32 working copy of those rows."""
        target.add_(self.dense_rows(rows), alpha=alpha)

    def scaled_rows(self, scale: float, rows: Rows = ...) -> torch.Tensor:
        """scale * Δ[rows] as a new tensor (`dense` may return stored values)."""
        return (self.dense() if rows is ... else self.dense_rows(rows)).mul_(scale)


class ZeroDirection(Direction):
    """No probe: for a layer that did not take part in the forward pass (zero gradient)."""

    def __init__(self, shape: torch.Size, device: torch.device) -> None:
        self.shape = shape
        self.device = device

    def add_to(self, param: torch.Tensor, alpha: float) -> None:
        return None

    def dense(self) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=torch.float32, device=self.device)

    def dense_rows(self, rows: Rows) -> torch.Tensor:
        shape = torch.empty(self.shape, device="meta")[rows].shape
        return torch.zeros(shape, dtype=torch.float32, device=self.device)


class GaussianDirection(Direction):
    """Δ = z ~ N(0, I), drawn from `seed_parts` again on every use (never stored), or,
    with `keep`, drawn on first use and kept for the direction's later uses: the same
    numbers, for a float32 copy of the tensor held while the direction lives (a step).

    MeZO draws z three times a step (perturb, flip, restore and update fused), which on a
    CPU costs about as much as its two forward passes ("Step cost on the CPU").
    """

    def __init__(
        self,
        shape: torch.Size,
        device: torch.device,
        seed_parts: Sequence[int],
        keep: bool = False,
    ) -> None:
        self.shape = shape
        self.device = device
        self.seed_parts = tuple(seed_parts)
        self.keep = keep
        self._kept: torch.Tensor | None = None

    def _noise(self) -> torch.Tensor:
        if self._kept is not None:
            return self._kept
        with record_function("agzo.rng"):
            gen = generator_for(self.device, *self.seed_parts)
            z = torch.randn(self.shape, generator=gen, dtype=torch.float32, device=self.device)
        if self.keep:
            self._kept = z
        return z

    def dense(self) -> torch.Tensor:
        # Callers may write into what they get (scaled_rows, SumDirection): a kept z is a
        # copy away from them.
        z = self._noise()
        return z.clone() if self.keep else z

    cheap_rows = False  # z is drawn whole from one seed

    def add_to(self, param: torch.Tensor, alpha: float) -> None:
        z = self._noise()
        if is_low_precision(param):
            for rows in row_chunks(param.shape):
                part = param[rows]
                part.copy_(part.float().add_(z[rows], alpha=alpha))
        else:
            param.add_(z.to(param.dtype), alpha=alpha)


class LowRankDirection(Direction):
    """Δ = L Rᵀ with L (rows x r) and R (cols x r), both kept in float32.

    `transposed=True` stores Δ as R Lᵀ, for transformers' Conv1D whose weight is
    (d_in, d_out) while L stays the d_out-side factor.
    """

    def __init__(
        self,
        left: torch.Tensor,
        right: torch.Tensor,
        transposed: bool = False,
        basis_key: Hashable | None = None,
    ) -> None:
        if left.dim() != 2 or right.dim() != 2 or left.shape[1] != right.shape[1]:
            raise ValueError(
                f"low-rank factors must be (m, r) and (n, r); got {tuple(left.shape)} "
                f"and {tuple(right.shape)}"
            )
        # Factors are kept in float32 at least (float64 when either is given so).
        dtype = torch.promote_types(torch.promote_types(left.dtype, right.dtype), torch.float32)
        self.left = left.to(dtype)
        self.right = right.to(dtype)
        self.transposed = transposed
        # Names the right factor while it stays fixed over several steps (LOZO's refresh
        # period, a calibration basis); None when it changes every step (AGZO).
        self.basis_key = basis_key
        rows, cols = (
            (right.shape[0], left.shape[0]) if transposed else (left.shape[0], right.shape[0])
        )
        self.shape = torch.Size((rows, cols))

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.right, self.left) if self.transposed else (self.left, self.right)

    # Rows are formed as sums of rank-one outer products, entry by entry, rather than by a
    # matrix product: a matrix kernel may round a block of rows differently from the
    # whole, and low-precision weights and stateful updates work a few rows at a time.
    def dense(self) -> torch.Tensor:
        return self.dense_rows(...)

    def dense_rows(self, rows: Rows) -> torch.Tensor:
        a, b = self._factors()
        out = torch.outer(a[rows, 0], b[:, 0])
        for k in range(1, a.shape[1]):
            out.addr_(a[rows, k], b[:, k])
        return out

    def add_rows_into(self, target: torch.Tensor, rows: Rows, alpha: float) -> None:
        a, b = self._factors()
        for k in range(a.shape[1]):
            target.addr_(a[rows, k], b[:, k], alpha=alpha)

    def add_to(self, param: torch.Tensor, alpha: float) -> None:
        a, b = self._factors()
        if is_low_precision(param):
            for rows in row_chunks(param.shape):
                part = param[rows]
                work = part.float()
                self.add_rows_into(work, rows, alpha)
                part.copy_(work)
        elif a.shape[1] == 1:
            # Rank one: an outer-product update reads and writes the weight once.
            param.addr_(a[:, 0].to(param.dtype), b[:, 0].to(param.dtype), alpha=alpha)
        else:
            param.addmm_(a.to(param.dtype), b.T.to(param.dtype), alpha=alpha)


class RowDirection(Direction):
    """Gaussian noise on the rows a batch looked up only (an embedding table's).

    One noise row is drawn per looked-up position (`TokenRows`: a size the host knows)
    and each distinct row takes the noise at its first position; repeats add nothing.
    """

    def __init__(
        self,
        shape: torch.Size,
        rows: TokenRows,
        device: torch.device,
        seed_parts: Sequence[int],
    ) -> None:
        self.shape = shape
        self.rows = rows.to(device)
        self.device = device
        self.seed_parts = tuple(seed_parts)

    def values(self) -> torch.Tensor:
        """A noise row per position (n x d), zero on repeats."""
        with record_function("agzo.rng"):
            gen = generator_for(self.device, *self.seed_parts)
            width = self.shape[1:].numel()
            size = self.rows.positions * width
            # Drawn to a multiple of ALIGN_ENTRIES: on the CPU the first rows of a longer
            # draw are then the same numbers, so a batch padded more (or split across
            # processes, whose lists are longer) gives its rows the same noise. (A GPU
            # lays a draw out by its size: there only the distribution is the same.)
            flat = torch.randn(
                -(-size // ALIGN_ENTRIES) * ALIGN_ENTRIES,
                generator=gen,
                dtype=torch.float32,
                device=self.device,
            )
            noise = flat[:size].view(self.rows.positions, *self.shape[1:])
        return noise * self.rows.first.view(-1, *([1] * (noise.dim() - 1)))

    def dense(self) -> torch.Tensor:
        out = torch.zeros(self.shape, dtype=torch.float32, device=self.device)
        out.index_add_(0, self.rows.ids, self.values())
        return out

    def dense_rows(self, rows: Rows) -> torch.Tensor:
        if not isinstance(rows, slice):
            return self.dense()
        start, stop, _ = rows.indices(self.shape[0])
        out = torch.zeros((stop - start, *self.shape[1:]), dtype=torch.float32, device=self.device)
        if stop <= start:
            return out
        # Positions outside the slice add zero (at a clamped index): no data-sized gather.
        ids = self.rows.ids
        inside = ((ids >= start) & (ids < stop)).to(torch.float32)
        values = self.values() * inside.view(-1, *([1] * (len(self.shape) - 1)))
        out.index_add_(0, (ids - start).clamp(0, stop - start - 1), values)
        return out

    def add_to(self, param: torch.Tensor, alpha: float) -> None:
        values = self.values()
        if is_low_precision(param):
            # Every position of a row carries that row's noise, so each writes the same
            # rounded value and the order of the writes does not matter.
            values = values.index_select(0, self.rows.group_starts())
            updated = param.index_select(0, self.rows.ids).float().add_(values, alpha=alpha)
            param.index_copy_(0, self.rows.ids, updated.to(param.dtype))
        else:
            # Repeats add exact zeros, in whatever order the additions run.
            param.index_add_(0, self.rows.ids, values.to(param.dtype), alpha=alpha)


class SumDirection(Direction):
    """Δ = Δ₁ + Δ₂ + …: a tied embedding/lm_head weight probed in both of its subspaces."""

    def __init__(self, parts: Sequence[Direction]) -> None:
        if not parts:
            raise ValueError("SumDirection needs at least one part")
        shapes = {tuple(p.shape) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"parts of a SumDirection must share one shape, got {shapes}")
        self.parts = list(parts)
        self.shape = parts[0].shape

    @property
    def cheap_rows(self) -> bool:  # type: ignore[override]
        return all(part.cheap_rows for part in self.parts)

    def dense(self) -> torch.Tensor:
        total = self.parts[0].dense()
        for part in self.parts[1:]:
            total += part.dense()
        return total

    def dense_rows(self, rows: Rows) -> torch.Tensor:
        total = self.parts[0].dense_rows(rows)
        for part in self.parts[1:]:
            total += part.dense_rows(rows)
        return total

    def add_to(self, param: torch.Tensor, alpha: float) -> None:
        for part in self.parts:
            part.add_to(param, alpha)


class DenseDirection(Direction):
    """Δ held as a tensor: small probes kept for the step, or an update rule's state (a
    momentum buffer). `dense` returns the held tensor itself."""

    def __init__(self, values: torch.Tensor) -> None:
        self.values = values
        self.shape = values.shape

    def dense(self) -> torch.Tensor:
        return self.values

    def dense_rows(self, rows: Rows) -> torch.Tensor:
        return self.values[rows]

    def scaled_rows(self, scale: float, rows: Rows = ...) -> torch.Tensor:
        return self.values[rows] * scale

    def add_to(self, param: torch.Tensor, alpha: float) -> None:
        if is_low_precision(param):
            for rows in row_chunks(param.shape):
                part = param[rows]
                part.copy_(part.float().add_(self.values[rows], alpha=alpha))
        else:
            param.add_(self.values, alpha=alpha)


def batchable(param: torch.Tensor, direction: Direction) -> bool:
    """Whether `direction` can join one multi-tensor add (`torch._foreach_add_`) with
    others: a held tensor of the weight's own full-precision dtype."""
    return (
        isinstance(direction, DenseDirection)
        and direction.values.dtype == param.dtype
        and not is_low_precision(param)
    )
