"""Forward hooks that turn each linear layer's input into a small orthonormal basis.

During the unperturbed forward pass every hooked linear layer sees its input H
(tokens x d_in). Its weight gradient is Gᵀ H for some G, so every row of the gradient
lies in the row space of H; the top-r right singular directions of H are where a probe
is worth spending. Power iteration on HᵀH finds them with K products of H and Hᵀ and a
thin QR, in float32. Only the d_in x r basis outlives the hook: H itself is released with
the forward pass, so capturing costs no more memory than inference.

Embedding tables are hooked too: their input is token ids, whose one-hot rows make the
gradient non-zero only in the rows of the tokens that occurred (`TokenRows`).

Sums over tokens (the products HᵀHq, the norms) and the lists of token rows go through
a `Reducer`, so a batch split across processes yields the basis of the whole batch.

This module knows nothing about how the bases are used (see `agzo.directions`).
"""

from __future__ import annotations

import weakref
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd.profiler import record_function

from agzo.core.reduce import LOCAL, NO_ROW, Reducer
from agzo.observe.forward_mask import published_token_mask
from agzo.observe.token_rows import TokenRows
from agzo.params import TrainableTensor
from agzo.seeding import STREAM_POWER_ITERATION, generator_for, split_draw


def _orthonormalize(q: torch.Tensor) -> torch.Tensor:
    if q.shape[1] == 1:
        # For one column QR is a normalization; skipping LAPACK matters on small layers.
        return q / q.norm().clamp_min(torch.finfo(q.dtype).tiny)
    # Fix QR's sign freedom (positive diagonal of R) so the basis is reproducible.
    basis, triangular = torch.linalg.qr(q)
    signs = torch.sign(torch.diagonal(triangular))
    return basis * torch.where(signs == 0, torch.ones_like(signs), signs)


# Distinct layer inputs an iteration waits, across processes, between starting a sum
# and using it; as many iterations' inputs are held meanwhile.
PIPELINE_LAG = 3
FLUSH_EVERY = 2

# The start of a rank-1 iteration is scaled down by this power of two (exact in any
# float format): with no normalization between steps the iterate grows like σ₁^(2K), and
# the scale keeps K = 3 steps of float32 finite for σ₁² up to ~1e19 and clear of
# underflow down to ~1e-8 (norms are taken in float64, so their squares never overflow).
# Longer iterations renormalize every NORMALIZE_EVERY steps.
START_SCALE = 2.0**-64
NORMALIZE_EVERY = 3


def _norm(
    v: torch.Tensor, dim: int | tuple[int, ...] | None = None, keepdim: bool = False
) -> torch.Tensor:
    """Euclidean norm accumulated in float64: one kernel, and no overflow of the squares
    of float32 entries however large or small."""
    return torch.linalg.vector_norm(v, dim=dim, keepdim=keepdim, dtype=torch.float64)


class Subspace:
    """The top-r basis of one layer input, with its singular values on demand.

    The singular values are needed only to merge the bases of a layer that runs more
    than once in a pass (`merge_bases`). For rank 1 they are left to be computed from the
    last power step's iterate v and its image H v, as ‖H v‖ / ‖v‖, so that a layer run
    once costs no extra kernel for them.
    """

    def __init__(
        self,
        basis: torch.Tensor | None = None,
        norms: torch.Tensor | None = None,
        *,
        direction: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        iterate: torch.Tensor | None = None,
        reducer: Reducer = LOCAL,
    ) -> None:
        if (basis is None) == (direction is None):
            raise ValueError("a Subspace takes a basis or an unnormalized direction, not both")
        self._basis = basis
        # Rank one: the iteration's last vector, normalized when the basis is first asked
        # for, or with every other pass's by `normalize_together`.
        self._direction = direction
        self._norms = norms
        self._image, self._iterate, self._reducer = image, iterate, reducer
        # ‖H‖_F², the input's whole energy, when an adaptive rank needs it.
        self.energy: torch.Tensor | None = None

    @property
    def basis(self) -> torch.Tensor:
        if self._basis is None:
            normalize_together([self])
        assert self._basis is not None
        return self._basis

    @property
    def norms(self) -> torch.Tensor:
        if self._norms is None:
            assert self._image is not None and self._iterate is not None
            image = self._reducer.norm(_norm(self._image, dim=0))
            # Zero or non-finite (the basis is then zero too): a weight of zero in a merge.
            ratio = (image / _norm(self._iterate, dim=0)).to(self.basis.dtype)
            self._norms = torch.nan_to_num(ratio, nan=0.0, posinf=0.0, neginf=0.0)
            self._image = self._iterate = None
        return self._norms

    def __iter__(self) -> Iterator[torch.Tensor]:
        """`basis, norms = subspace`."""
        yield self.basis
        yield self.norms


def _start(h: torch.Tensor, rank: int, start: torch.Tensor | torch.Generator) -> torch.Tensor:
    """The (d x r) start: given, or drawn from a generator; scaled by START_SCALE."""
    if isinstance(start, torch.Generator):
        d = h.shape[1]
        start = torch.randn(d, rank, generator=start, dtype=torch.float32, device=h.device)
        start = start * START_SCALE
    return start.to(h.dtype)


def power_iteration(
    h: torch.Tensor,
    rank: int,
    steps: int,
    start: torch.Tensor | torch.Generator,
    reducer: Reducer = LOCAL,
) -> Subspace:
    """Orthonormal basis (d x r) of the top-r right singular subspace of `h` (n x d).

    Computed in float32, or float64 when `h` is float64. Starts from `start` (d x r, scaled
    by START_SCALE), or from a Gaussian drawn from it when it is a generator, and applies
    HᵀH `steps` times, orthonormalizing after each step for rank > 1 and only at the end
    for rank 1. Unpacks as `basis, norms`, the norms being the
    singular-value estimates that let bases of several calls of one layer be merged. An
    all-zero input (its layer's gradient is zero) or an overflowing one gives a zero
    basis: no probe.
    """
    return run_to_end(power_steps(h, rank, steps, start, reducer))


Steps = Generator[None, None, "Subspace"]


def _finished(subspace: Subspace) -> Steps:
    """A subspace already known, in the form of an iteration with no reduction left."""
    return subspace
    yield  # a generator function: its first resumption returns the subspace


def run_to_end(steps: Steps) -> Subspace:
    """Drive `power_steps` through every reduction at once."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def power_steps(
    h: torch.Tensor,
    rank: int,
    steps: int,
    start: torch.Tensor | torch.Generator,
    reducer: Reducer = LOCAL,
) -> Steps:
    """`power_iteration` one reduction at a time: it pauses (yields) after starting each
    sum over processes and waits for it only when resumed, so that a caller can compute
    on (the next layers of a forward pass) while the sum travels. Returns the Subspace."""
    # float32 at least (bf16 products lose the subspace); float64 inputs stay float64.
    h = h.to(torch.promote_types(h.dtype, torch.float32))
    rank = min(rank, h.shape[1])
    q = _start(h, rank, start)
    if steps == 0:
        q = _orthonormalize(q)
        return Subspace(q, reducer.norm((h @ q).norm(dim=0)))
    if rank == 1:
        return (yield from _rank_one(h, q, steps, reducer))
    # The start is not orthonormalized: the first step's QR gives the same basis either
    # way (the Q factor of M R⁻¹, R triangular with a positive diagonal, is M's).
    for _ in range(steps):
        pending = reducer.sum_async(h.T @ (h @ q))
        yield
        product = pending.wait()
        norm = _norm(product)  # float64: the scaled start's first product does not underflow
        q = _orthonormalize(product)
    # A zero product stays zero and a non-finite one stays non-finite through later
    # steps, so checking the last one is enough. NaN compares False. A Python `if` on a
    # tensor would wait for the GPU, so the check is a `torch.where`; where `usable` is
    # False it is also the zero to fill in.
    usable = (norm > 0) & (norm < torch.inf)
    q = torch.where(usable, q, usable)
    return Subspace(q, torch.where(usable, reducer.norm((h @ q).norm(dim=0)), usable))


def _rank_one(h: torch.Tensor, v: torch.Tensor, steps: int, reducer: Reducer) -> Steps:
    """v ← Hᵀ(H v) `steps` times, normalized once at the end.

    On a GPU a small model's capture costs kernel launches, not arithmetic: the loop is
    two matrix-vector products per step, and the end three kernels (norm, divide, and
    zeroing a degenerate result), with no host sync.
    """
    for step in range(1, steps + 1):
        iterate, image = v, h @ v
        pending = reducer.sum_async(h.T @ image)
        yield
        v = pending.wait()
        if step % NORMALIZE_EVERY == 0 and step < steps:
            v = v * (START_SCALE / _norm(v))
    return Subspace(direction=v, image=image, iterate=iterate, reducer=reducer)


def normalize_together(subspaces: Sequence[Subspace]) -> None:
    """Normalize the rank-one directions of `subspaces` into their bases, stacking those
    of one shape: five kernels per shape instead of three per layer input (a pass of a
    small model has a hundred inputs and two or three shapes).

    Each row's norm is a reduction of that row alone, as `_norm` of it would be, so the
    bases are the same bits whether normalized together or one by one.
    """
    groups: dict[tuple[Any, ...], list[tuple[Subspace, torch.Tensor]]] = {}
    seen: set[int] = set()  # layers that read one input share its subspace
    for subspace in subspaces:
        v = subspace._direction
        if v is not None and id(subspace) not in seen:
            seen.add(id(subspace))
            groups.setdefault((tuple(v.shape), v.dtype, v.device), []).append((subspace, v))
    for group in groups.values():
        directions = [v for _, v in group]
        stacked = directions[0].unsqueeze(0) if len(group) == 1 else torch.stack(directions)
        norms = _norm(stacked, dim=tuple(range(1, stacked.dim())), keepdim=True)
        # 0/0 (a zero input) and inf/inf (an overflow) are NaN, finite/inf is 0: a zero
        # basis, which probes nothing. The norm is rounded to the vector's dtype first, as
        # dividing by a float64 scalar would do.
        bases = torch.nan_to_num(stacked / norms.to(stacked.dtype), nan=0.0, posinf=0.0, neginf=0.0)
        for (subspace, _), basis in zip(group, bases.unbind(0)):
            subspace._basis, subspace._direction = basis, None


def exact_subspace(h: torch.Tensor, rank: int) -> Subspace:
    """The top-`rank` right singular vectors of `h` (n x d) and their singular values,
    exact to rounding: the basis power iteration approximates, as a reference.

    From an eigendecomposition of the smaller Gram matrix (HᵀH, d x d, or HHᵀ, n x n,
    whose eigenvectors u give v = Hᵀu / σ) rather than an SVD of H: the same vectors, and
    for the top ones the same relative accuracy (the error of either grows as σ₁ / gap),
    in 0.4x an SVD's time on a SmolLM2 step (random weights, 16 x 64 tokens, one thread:
    8.6 s against 22.8 s). Columns of singular value 0 are zero: no probe there.
    """
    h = h.to(torch.promote_types(h.dtype, torch.float32))
    rank = min(rank, *h.shape)
    rows_side = h.shape[0] < h.shape[1]
    eigenvalues, eigenvectors = torch.linalg.eigh(h @ h.T if rows_side else h.T @ h)
    # eigh sorts ascending; rounding can leave a zero eigenvalue slightly negative.
    values = eigenvalues.flip(0)[:rank].clamp_min(0).sqrt()
    vectors = eigenvectors.flip(1)[:, :rank]
    if rows_side:
        vectors = h.T @ vectors
        norms = vectors.norm(dim=0, keepdim=True)
        vectors = vectors / torch.where(norms > 0, norms, 1.0)
    # A sign convention (each column's largest entry positive): LAPACK's is arbitrary.
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(0, keepdim=True)))
    vectors = vectors * torch.where(signs == 0, 1.0, signs)
    return Subspace(vectors * (values > 0), values)


def merge_bases(first: Subspace, second: Subspace) -> Subspace:
    """Top-r subspace of H₁ᵀH₁ + H₂ᵀH₂ from each call's rank-r summary (basis, norms).

    Exact when each call's activations have rank ≤ r; otherwise the best rank-r subspace
    of the two rank-r approximations. Used when one layer runs more than once per
    closure (micro-batches, weight sharing).
    """
    (q1, s1), (q2, s2) = first, second
    stacked = torch.cat([q1 * s1, q2 * s2], dim=1)
    u, s, _ = torch.linalg.svd(stacked, full_matrices=False)
    rank = q1.shape[1]
    merged = Subspace(u[:, :rank], s[:rank])
    if first.energy is not None and second.energy is not None:
        merged.energy = first.energy + second.energy
    return merged


def adaptive_columns(subspace: Subspace, threshold: float) -> torch.Tensor:
    """A 0/1 mask over the basis columns: the first k, k the smallest count whose squared
    singular values reach `threshold` of the input's energy (all of them if none does).

    Computed on the device, so choosing a rank per layer costs no host sync.
    """
    assert subspace.energy is not None
    captured = subspace.norms.square().cumsum(0) / subspace.energy
    reached_before = torch.cat([captured.new_zeros(1), captured[:-1]]) >= threshold
    return (~reached_before).to(subspace.basis.dtype)


class PendingSubspace:
    """A layer input's subspace whose power iteration may still be under way."""

    def __init__(self, steps: Steps, issued_at: int) -> None:
        self.steps = steps
        self.issued_at = issued_at  # the input count when its last reduction started
        self.value: Subspace | None = None
        self.energy: torch.Tensor | None = None

    def resume(self) -> bool:
        """Wait for the reduction under way and start the next; True once finished."""
        try:
            next(self.steps)
        except StopIteration as done:
            self.value = done.value
            self.value.energy = self.energy
            return True
        return False

    def subspace(self) -> Subspace:
        assert self.value is not None, "the capture's iterations were not finished"
        return self.value


@dataclass
class CapturedSubspaces:
    """What one capturing forward pass learned, keyed by `TrainableTensor.index`."""

    bases: dict[int, torch.Tensor]
    token_rows: dict[int, TokenRows]
    # With an adaptive rank: each basis's number of columns in use (a device scalar; the
    # columns beyond it are zero).
    ranks: dict[int, torch.Tensor] = field(default_factory=dict)


class ActivationCapture:
    """Context manager hooking the linear and embedding modules of `tensors`.

    attention_mask: (batch, seq) with 1 on real tokens. When a layer's input has the
    same leading shape, padding rows are zeroed before the power iteration, which leaves
    them out of HᵀH. If None, the mask is the one published for the call under way
    (`agzo.observe.forward_mask`, by packed rows), or else the `attention_mask` keyword of
    the call to `root` (a transformers model), when there is one.
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
        energy: float = 1.0,
        exact: bool = False,
    ) -> None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if exact and reducer.collective:
            raise ValueError(
                "an exact SVD basis needs each layer's whole input in one process; use power "
                "iteration (basis 'power') across processes"
            )
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
        # Below 1, each basis keeps only the columns needed to capture this share of its
        # input's energy (an adaptive rank up to `rank`); at 1 every column is kept.
        self.energy = energy
        # True: each basis is the exact top-r SVD of the input instead of K power steps.
        self.exact = exact
        self._seen_mask: torch.Tensor | None = None
        self._summaries: dict[int, list[PendingSubspace]] = {}
        # Across processes each power step's sum travels while later layers compute: an
        # iteration resumes only after PIPELINE_LAG more distinct layer inputs (its own is
        # held until then). In one process there is nothing to wait for: lag 0.
        self._lag = PIPELINE_LAG if reducer.collective else 0
        self._inputs_seen = 0
        self._in_flight: list[PendingSubspace] = []
        self._token_rows: dict[int, list[torch.Tensor]] = {}  # each call's ids
        self._calls: dict[int, int] = {}
        self._last_input: weakref.ref[torch.Tensor] | None = None
        self._last_version = 0
        self._last_summary: Any = None  # a PendingSubspace (here) or what a subclass keeps
        self._row_weights: torch.Tensor | None = None
        self._row_weights_mask: torch.Tensor | None = None
        self._row_weights_device: torch.device | None = None
        self._starts: dict[torch.device, dict[int, torch.Tensor]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- hooks -------------------------------------------------------------------------
    def _mask(self) -> torch.Tensor | None:
        for mask in (self.explicit_mask, published_token_mask(), self._seen_mask):
            if mask is not None:
                return mask
        return None

    def _start_for(self, tensor: TrainableTensor, h: torch.Tensor, call: int) -> Any:
        """This call's power-iteration start for `tensor`'s layer.

        A layer's first call takes a view of one draw made for every hooked layer on the
        device (one kernel per step, not one per layer); a layer run again in the same
        pass starts afresh from a generator of its own.
        """
        if call == 0:
            if h.device not in self._starts:
                self._starts[h.device] = self._draw_starts(h.device)
            start = self._starts[h.device].get(tensor.index)
            if start is not None and start.shape[0] == h.shape[1]:
                return start
        return generator_for(h.device, self.seed, tensor.index, STREAM_POWER_ITERATION, call)

    def _draw_starts(self, device: torch.device) -> dict[int, torch.Tensor]:
        shapes = {
            t.index: (d_in, min(self.rank, d_in))
            for t in self.tensors
            if t.linear_modules and t.param.device == device
            for d_in in [t.param.shape[0] if t.transposed else t.param.shape[1]]
        }
        flat = split_draw(
            [d * r for d, r in shapes.values()],
            device,
            self.seed,
            STREAM_POWER_ITERATION,
            scale=START_SCALE,
        )
        return {i: v.view(shape) for (i, shape), v in zip(shapes.items(), flat)}

    def _rows(self, x: torch.Tensor, feature_dims: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`x` with its leading dims flattened to rows, and a 0/1 column marking the real
        (non-padding) rows, or None when no mask applies to `x`.

        The column is made once per mask and device and shared by every hooked layer.
        Padding rows are zeroed with it, not dropped: dropping needs their number, which
        would make the host wait for the device at the first layer of every pass.
        """
        rows = x.reshape(-1, *x.shape[x.dim() - feature_dims :])
        mask = self._mask()
        lead = x.shape[: x.dim() - feature_dims]
        if mask is None or tuple(mask.shape) != tuple(lead):
            return rows, None
        if self._row_weights_mask is not mask or self._row_weights_device != x.device:
            self._row_weights = mask.reshape(-1, 1).to(x.device, torch.float32)
            self._row_weights_mask, self._row_weights_device = mask, x.device
        return rows, self._row_weights

    def _real_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of a layer input (n x d), padding rows zeroed: a zero row adds
        nothing to HᵀH, so the subspace is that of the real rows alone."""
        rows, weights = self._rows(x, feature_dims=1)
        return rows if weights is None else rows * weights.to(rows.dtype)

    def _root_pre_hook(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            self._seen_mask = mask

    def _shared_summary(self, x: torch.Tensor) -> Any:
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

    def _remember_input(self, x: torch.Tensor, summary: Any) -> None:
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
                    h = self._real_rows(x.detach())
                    if h.shape[0] == 0 and not self.reducer.collective:
                        return  # (across processes, the others' rows still need this sum)
                    if self._lag and h.data_ptr() == x.data_ptr():
                        h = h.clone()  # held past this layer: the model may reuse x in place
                    # A layer run twice in one pass starts its second iteration afresh.
                    call = self._calls.get(tensor.index, 0)
                    self._calls[tensor.index] = call + 1
                    start = self._start_for(tensor, h, call)
                    if self.exact:
                        steps = _finished(exact_subspace(h, self.rank))
                    else:
                        steps = power_steps(h, self.rank, self.power_steps, start, self.reducer)
                    # The clock of the pipeline: layer inputs that start an iteration.
                    self._inputs_seen += 1
                    summary = PendingSubspace(steps, self._inputs_seen)
                    if self.energy < 1.0:
                        summary.energy = self.reducer.sum_(h.float().square().sum())
                    if not summary.resume():  # computes the first product, starts its sum
                        self._in_flight.append(summary)
                    self._remember_input(x, summary)
                    self._advance()
                self._summaries.setdefault(tensor.index, []).append(summary)

        return hook

    def _embedding_hook(self, tensor: TrainableTensor) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            ids, weights = self._rows(args[0].detach(), feature_dims=0)
            ids = ids.to(torch.long)  # NO_ROW needs 64 bits (int32 ids would wrap it)
            if weights is not None:  # padding looks up no row
                ids = torch.where(weights.reshape(-1) > 0, ids, NO_ROW)
            self._token_rows.setdefault(tensor.index, []).append(ids.reshape(-1))

        return hook

    def _advance(self, finish: bool = False) -> None:
        """Resume every iteration whose sum started at least `lag` inputs ago (all of
        them, to the end, when finishing), in the order they began: the same order on
        every process, as collectives need."""
        self._resume_due(finish)
        if finish or self._inputs_seen % FLUSH_EVERY == 0:
            self.reducer.flush()  # the sums started over these inputs travel as one

    def _resume_due(self, finish: bool) -> None:
        while self._in_flight:
            due = [
                p for p in self._in_flight if finish or self._inputs_seen - p.issued_at >= self._lag
            ]
            if not due:
                return
            for pending in due:
                if pending.resume():
                    self._in_flight.remove(pending)
                else:
                    pending.issued_at = self._inputs_seen
            if not finish and self._lag:
                return  # each resumed iteration waits another `lag` inputs

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
        if exc[0] is None:
            self._advance(finish=True)
        else:  # a failed pass: nothing will read its subspaces
            self._in_flight.clear()
        self._seen_mask = None
        self._last_input = self._last_summary = None
        self._starts.clear()

    def _merged(self) -> dict[int, Subspace]:
        """Each tensor's subspace; a layer run several times merges its calls' in order."""
        self._advance(finish=True)
        normalize_together([p.subspace() for calls in self._summaries.values() for p in calls])
        merged = {}
        for index, calls in self._summaries.items():
            summary = calls[0].subspace()
            for later in calls[1:]:
                summary = merge_bases(summary, later.subspace())
            merged[index] = summary
        return merged

    def _looked_up_rows(self) -> dict[int, TokenRows]:
        """Each embedding's rows over every call and process."""
        return {
            i: TokenRows.from_lookups(self.reducer.gather_rows(torch.cat(calls)))
            for i, calls in self._token_rows.items()
        }

    @property
    def result(self) -> CapturedSubspaces:
        token_rows = self._looked_up_rows()
        summaries = self._merged()
        if self.energy >= 1.0:
            bases = {i: summary.basis for i, summary in summaries.items()}
            return CapturedSubspaces(bases, token_rows)
        masks = {i: adaptive_columns(s, self.energy) for i, s in summaries.items()}
        return CapturedSubspaces(
            bases={i: s.basis * masks[i] for i, s in summaries.items()},
            token_rows=token_rows,
            ranks={i: mask.sum() for i, mask in masks.items()},
        )
