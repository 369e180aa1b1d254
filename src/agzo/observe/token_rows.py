"""The embedding rows a batch looked up, in a form whose size is known to the host.

An embedding table's gradient is non-zero only in the rows of the tokens that occurred.
`torch.unique` would list them, but its output's length is data, so the host would wait
for the device at the first layer of every pass. Instead every looked-up position is
kept: the ids sorted, with a mark on the first position of each distinct id. Its length
is the number of positions, which the host knows from the batch's shape.

Padding positions enter as `NO_ROW`, sort after every real id, and then take the largest
real id (a repeat, so unmarked). The position of a row's first occurrence therefore
counts only the real ids below it: it does not depend on how much padding the batch had,
nor on how a batch was split across processes. A probe draws one noise row per position
and gives each distinct row the noise at its first position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agzo.core.reduce import NO_ROW


@dataclass(frozen=True)
class TokenRows:
    """Looked-up ids, sorted (n,), and a float 0/1 mark (n,) on each id's first position."""

    ids: torch.Tensor
    first: torch.Tensor

    @classmethod
    def from_lookups(cls, ids: torch.Tensor) -> TokenRows:
        """From every looked-up position's id, `NO_ROW` at padding (any order, any shape)."""
        ordered = ids.reshape(-1).to(torch.long).sort().values
        if ordered.numel() == 0:  # nothing looked up (a shape, so no sync to know it)
            return cls(ordered, torch.zeros(0, dtype=torch.float32, device=ordered.device))
        real = ordered != NO_ROW
        # Padding takes the largest real id (none real: row 0, a probe of no consequence).
        largest = torch.where(real, ordered, -1).amax()
        ordered = torch.where(real, ordered, largest).clamp_min(0)
        first = torch.ones_like(ordered, dtype=torch.float32)
        first[1:] = ordered[1:] != ordered[:-1]
        return cls(ordered, first)

    @property
    def positions(self) -> int:
        return self.ids.numel()

    def group_starts(self) -> torch.Tensor:
        """For each position, the position where its id first occurs."""
        at = torch.arange(self.positions, device=self.ids.device)
        return torch.where(self.first > 0, at, 0).cummax(0).values

    def distinct(self) -> torch.Tensor:
        """The distinct rows, sorted (a host sync: for inspection and tests)."""
        return self.ids[self.first > 0]

    def to(self, device: torch.device) -> TokenRows:
        return TokenRows(self.ids.to(device), self.first.to(device))
