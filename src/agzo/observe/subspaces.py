"""Forward hooks that turn each linear layer's input into a small orthonormal basis.

During the unperturbed forward pass every hooked linear layer sees its input H
(tokens x d_in). Its weight gradient is Gᵀ H for some G, so every row of the gradient
lies in the row space of H; the top-r right singular directions of H are where a probe
is worth spending. Power iteration on HᵀH finds them with K products of H and Hᵀ and a
thin QR, in float32. Only the d_in x r basis outlives the hook: H itself is released with
the forward pass, so capturing costs no more memory than inference.

Embedding tables are hooked too: their input is token ids, whose one-hot rows make the
gradient non-zero only in the rows of the tokens that occurred.

Sums over tokens (the products HᵀHq, the norms) and the union of token rows go through
a `Reducer`, so a batch split across processes yields the basis of the whole batch.

This module knows nothing about how the bases are used (see `agzo.directions`).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.profiler import record_function

from agzo.core.reduce import LOCAL, Reducer
from agzo.params import TrainableTensor
from agzo.seeding import STREAM_POWER_ITERATION, generator_for


def _orthonormalize(q: torch.Tensor) -> torch.Tensor:
    if q.shape[1] == 1:
        # For one column QR is a normalization; skipping LAPACK matters on small layers.
        return q / q.norm().clamp_min(torch.finfo(q.dtype).tiny)
    # Fix QR's sign freedom (positive diagonal of R) so the basis is reproducible.
    basis, triangular = torch.linalg.qr(q)
    signs = torch.sign(torch.diagonal(triangular))
    return basis * torch.where(signs == 0, torch.ones_like(signs), signs)


def power_iteration(
    h: torch.Tensor,
    rank: int,
    steps: int,
    generator: torch.Generator,
    reducer: Reducer = LOCAL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal basis (d x r) of the top-r right singular subspace of `h` (n x d).

    Computed in float32, or float64 when `h` is float64.

    Starts from a Gaussian drawn from `generator` and repeats `Q = qr(Hᵀ(H Q))` `steps`
    times. Returns the basis and the norms ‖H q_j‖ (singular-value estimates), which
    let bases from several calls of the same layer be merged. An all-zero input (its
    layer's gradient is zero) or an overflowing one gives a zero basis: no probe.
    """
    # float32 at least (bf16 products lose the subspace); float64 inputs stay float64.
    h = h.to(torch.promote_types(h.dtype, torch.float32))
    d = h.shape[1]
    rank = min(rank, d)
    q = torch.randn(d, rank, generator=generator, dtype=torch.float32, device=h.device)
    q = q.to(h.dtype)
    if steps == 0:
        q = _orthonormalize(q)
        return q, reducer.norm((h @ q).norm(dim=0))
    # The start is not orthonormalized: the first step's QR gives the same basis either
    # way (the Q factor of M R⁻¹, R triangular with a positive diagonal, is M's).
    # Every operation here is one kernel launch, and on a GPU the launches, not the
    # arithmetic, are what a small model's capture costs; a Python `if` on a tensor
    # would also wait for the GPU, so the zero/overflow check is a `torch.where`.
    for _ in range(steps):
        product = reducer.sum_(h.T @ (h @ q))
        norm = torch.linalg.vector_norm(product)
        if rank == 1:
            q = product / norm.clamp_min(torch.finfo(q.dtype).tiny)
        else:
            q = _orthonormalize(product)
    # A zero product stays zero and a non-finite one stays non-finite through later
    # steps, so checking the last one is enough. NaN compares False.
    usable = (norm > 0) & (norm < torch.inf)
    # Where `usable` is False it is also the zero to fill in (a scalar 0.0 would cost a
    # kernel of its own to become a tensor).
    q = torch.where(usable, q, usable)
    return q, torch.where(usable, reducer.norm((h @ q).norm(dim=0)), usable)


def merge_bases(
    first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-r subspace of H₁ᵀH₁ + H₂ᵀH₂ from each call's rank-r summary (basis, norms).

    Exact when each call's activations have rank ≤ r; otherwise the best rank-r subspace
    of the two rank-r approximations. Used when one layer runs more than once per
    closure (micro-batches, weight sharing).
    """
    (q1, s1), (q2, s2) = first, second
    stacked = torch.cat([q1 * s1, q2 * s2], dim=1)
    u, s, _ = torch.linalg.svd(stacked, full_matrices=False)
    rank = q1.shape[1]
    return u[:, :rank], s[:rank]


@dataclass
class CapturedSubspaces:
    """What one capturing forward pass learned, keyed by `TrainableTensor.index`."""

    bases: dict[int, torch.Tensor]
    token_rows: dict[int, torch.Tensor]


class ActivationCapture:
    """Context manager hooking the linear and embedding modules of `tensors`.

    attention_mask: (batch, seq) with 1 on real tokens. When a layer's input has the
    same leading shape, padding rows are dropped before the power iteration. If None,
    the mask is taken from the `attention_mask` keyword of the call to `root` (a
    transformers model), when there is one.
    """

    def __init__(
        self,
        tensors: Sequence[TrainableTensor],
        rank: int,
        power_steps: int,
        seed: int,
        root: nn.Module | None = None,
        attention_mask: torch.Tensor | None = None,
        capture_tokens: bool = True,
        reducer: Reducer = LOCAL,
    ) -> None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if power_steps < 0:
            raise ValueError(f"power_steps must be >= 0, got {power_steps}")
        self.tensors = list(tensors)
        self.rank = rank
        self.power_steps = power_steps
        self.seed = seed
        self.root = root
        self.explicit_mask = attention_mask
        self.capture_tokens = capture_tokens
        self.reducer = reducer
        self._seen_mask: torch.Tensor | None = None
        self._summaries: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._token_rows: dict[int, torch.Tensor] = {}
        self._calls: dict[int, int] = {}
        self._last_input: weakref.ref[torch.Tensor] | None = None
        self._last_version = 0
        self._last_summary: tuple[torch.Tensor, torch.Tensor] | None = None
        self._row_index: torch.Tensor | None = None
        self._row_index_mask: torch.Tensor | None = None
        self._row_index_device: torch.device | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- hooks -------------------------------------------------------------------------
    def _mask(self) -> torch.Tensor | None:
        return self.explicit_mask if self.explicit_mask is not None else self._seen_mask

    def _real_row_index(self, mask: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        """Flat indices of the real tokens, or None when there is no padding at all.

        Computed once per mask and reused by every hooked layer: gathering rows by index
        is cheaper than boolean masking each layer's input.
        """
        if self._row_index_mask is not mask or self._row_index_device != device:
            flat = mask.reshape(-1).to(device)
            self._row_index = None if bool(flat.all()) else flat.nonzero().squeeze(1)
            self._row_index_mask, self._row_index_device = mask, device
        return self._row_index

    def _real_rows(self, x: torch.Tensor, feature_dims: int) -> torch.Tensor:
        """Flatten leading dims of `x` to rows, dropping rows the mask marks as padding."""
        rows = x.reshape(-1, *x.shape[x.dim() - feature_dims :])
        mask = self._mask()
        lead = x.shape[: x.dim() - feature_dims]
        if mask is None or tuple(mask.shape) != tuple(lead):
            return rows
        index = self._real_row_index(mask, x.device)
        return rows if index is None else rows.index_select(0, index)

    def _root_pre_hook(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            self._seen_mask = mask

    def _shared_summary(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The summary of `x` if the previous hooked layer saw this very tensor.

        Attention's q/k/v projections (and an MLP's gate/up) read the same input one after
        another: its subspace is computed once and shared. Only a weak reference to the
        last input is kept, so no activation outlives its forward pass, and the tensor's
        version counter guards against in-place changes in between.
        """
        if self._last_input is None or self._last_input() is not x:
            return None
        if x._version != self._last_version:
            return None
        return self._last_summary

    def _remember_input(self, x: torch.Tensor, summary: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._last_input = weakref.ref(x)
        self._last_version = x._version
        self._last_summary = summary

    def _linear_hook(self, tensor: TrainableTensor) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            x = args[0]
            with torch.no_grad(), record_function("agzo.capture"):
                summary = self._shared_summary(x)
                if summary is None:
                    h = self._real_rows(x.detach(), feature_dims=1)
                    if h.shape[0] == 0 and not self.reducer.collective:
                        return  # (across processes, the others' rows still need this sum)
                    # A layer run twice in one pass starts its second iteration afresh.
                    call = self._calls.get(tensor.index, 0)
                    self._calls[tensor.index] = call + 1
                    gen = generator_for(
                        h.device, self.seed, tensor.index, STREAM_POWER_ITERATION, call
                    )
                    summary = power_iteration(h, self.rank, self.power_steps, gen, self.reducer)
                    self._remember_input(x, summary)
                previous = self._summaries.get(tensor.index)
                if previous is not None:
                    summary = merge_bases(previous, summary)
                self._summaries[tensor.index] = summary

        return hook

    def _embedding_hook(self, tensor: TrainableTensor) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            ids = self._real_rows(args[0].detach(), feature_dims=0)
            rows = torch.unique(ids.reshape(-1))
            previous = self._token_rows.get(tensor.index)
            if previous is not None:
                rows = torch.unique(torch.cat([previous, rows.to(previous.device)]))
            self._token_rows[tensor.index] = rows

        return hook

    # -- context manager ---------------------------------------------------------------
    def __enter__(self) -> ActivationCapture:
        if self.root is not None and self.explicit_mask is None:
            self._handles.append(
                self.root.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True)
            )
        for tensor in self.tensors:
            for module in tensor.linear_modules:
                self._handles.append(module.register_forward_pre_hook(self._linear_hook(tensor)))
            if self.capture_tokens:
                for module in tensor.embedding_modules:
                    self._handles.append(
                        module.register_forward_pre_hook(self._embedding_hook(tensor))
                    )
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._seen_mask = None
        self._last_input = self._last_summary = None

    @property
    def result(self) -> CapturedSubspaces:
        return CapturedSubspaces(
            bases={i: q for i, (q, _) in self._summaries.items()},
            token_rows={i: self.reducer.union_rows(r) for i, r in self._token_rows.items()},
        )
