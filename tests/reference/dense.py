"""Slow, dense, obviously correct versions of each estimator's step.

Each function materializes every perturbation Δ as a full tensor, keeps a copy of the
original weights, and writes the update as the formula reads. They share only the seed
contract with the library (which generator draws which numbers), documented here:

- Gaussian probe k of tensor i:      generator_for(dev, step_seed, k, i, STREAM_PERTURBATION)
- AGZO, probe k: the factors R (d_out x r) of every tensor with a basis, in tensor order,
  are consecutive pieces of one draw from generator_for(dev, step_seed, k,
  STREAM_SHARED_FACTORS); the Gaussians of the small non-linear tensors (norms, biases)
  likewise from generator_for(dev, step_seed, k, STREAM_SHARED_SMALL)
- AGZO embedding rows of tensor i:   generator_for(dev, step_seed, k, i, STREAM_PERTURBATION, 1)
- power-iteration starts: consecutive (d_in x r) pieces, in tensor order, of one draw from
  generator_for(dev, step_seed, STREAM_POWER_ITERATION), times 2^-64
- LOZO U of tensor i:                generator_for(dev, step_seed, k, i, STREAM_PERTURBATION)
- LOZO V of tensor i:   generator_for(dev, seed, step // nu, i, STREAM_LOW_RANK_V)
- step_seed = derive_seed(seed, step)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from agzo.seeding import (
    STREAM_LOW_RANK_V,
    STREAM_PERTURBATION,
    STREAM_POWER_ITERATION,
    STREAM_SHARED_FACTORS,
    STREAM_SHARED_SMALL,
    derive_seed,
    generator_for,
)

Loss = Callable[[], torch.Tensor]


def _linear_kind(model: nn.Module, param: nn.Parameter) -> tuple[list[nn.Module], bool, bool]:
    """(linear modules using param, is Conv1D, is an embedding table)."""
    from transformers.pytorch_utils import Conv1D

    linears, conv, embedding = [], False, False
    for module in model.modules():
        if getattr(module, "weight", None) is not param:
            continue
        if isinstance(module, nn.Linear):
            linears.append(module)
        elif isinstance(module, Conv1D):
            linears.append(module)
            conv = True
        elif isinstance(module, nn.Embedding):
            embedding = True
    return linears, conv, embedding


def record_inputs(model: nn.Module, modules: list[nn.Module], loss: Loss):
    """Run `loss` once: its value, every listed module's inputs, and the calls in order."""
    inputs: dict[int, list[torch.Tensor]] = {id(m): [] for m in modules}
    calls: list[tuple[nn.Module, torch.Tensor]] = []

    def record(module, args):
        inputs[id(module)].append(args[0])
        calls.append((module, args[0]))

    handles = [m.register_forward_pre_hook(record) for m in modules]
    try:
        with torch.no_grad():
            value = float(loss())
    finally:
        for h in handles:
            h.remove()
    return value, inputs, calls


def power_iteration_starts(named_params, kinds, step_seed: int, rank: int):
    """Every linear tensor's (d_in x r) start, pieces of one scaled draw in tensor order."""
    shapes = {}
    for i, ((_, p), (linears, conv, _)) in enumerate(zip(named_params, kinds)):
        if linears:
            d_in = p.shape[0] if conv else p.shape[1]
            shapes[i] = (d_in, min(rank, d_in))
    gen = generator_for("cpu", step_seed, STREAM_POWER_ITERATION)
    pieces = _aligned_pieces([d * r for d, r in shapes.values()], gen)
    return {i: (piece * 2.0**-64).view(shape) for (i, shape), piece in zip(shapes.items(), pieces)}


def _aligned_pieces(sizes: list[int], gen: torch.Generator) -> list[torch.Tensor]:
    """One draw, cut into pieces of `sizes` that start at multiples of 16 entries."""
    padded = [-(-size // 16) * 16 for size in sizes]
    flat = torch.randn(sum(padded), generator=gen)
    return [piece[:size] for piece, size in zip(flat.split(padded), sizes)]


def linear_bases(calls, index_of, starts, rank, steps, row_mask, basis="power"):
    """Each linear tensor's basis, one power iteration per distinct input.

    Layers called one after another on the very same input tensor (q/k/v, gate/up) share
    the basis computed for the first of them, from that tensor's start.
    """
    bases: dict[int, torch.Tensor] = {}
    previous_input, previous_basis = None, None
    for module, x in calls:
        i = index_of[id(module)]
        if x is previous_input:
            bases[i] = previous_basis
            continue
        h = x.reshape(-1, x.shape[-1])
        if row_mask is not None and h.shape[0] == row_mask.numel():
            h = h[row_mask.reshape(-1).bool()]
        if basis == "svd":
            bases[i] = plain_top_eigenvectors(h, rank)
        else:
            bases[i] = plain_power_iteration(h, steps, starts[i])
        previous_input, previous_basis = x, bases[i]
    return bases


def plain_power_iteration(h: torch.Tensor, steps: int, start: torch.Tensor):
    """Gram-Schmidt power iteration, written out: columns orthonormal, R's diagonal > 0."""
    h = h.to(torch.promote_types(h.dtype, torch.float32))
    q = gram_schmidt(start.to(h.dtype))
    for _ in range(steps):
        q = gram_schmidt(h.T @ (h @ q))
    return q


def plain_top_eigenvectors(h: torch.Tensor, rank: int) -> torch.Tensor:
    """The top eigenvectors of HᵀH in float64 (the right singular vectors of H), each
    column's largest entry positive."""
    values, vectors = torch.linalg.eigh(h.double().T @ h.double())
    top = vectors[:, values.argsort(descending=True)[:rank]]
    for j in range(top.shape[1]):
        if top[top[:, j].abs().argmax(), j] < 0:
            top[:, j] = -top[:, j]
    return top.to(torch.promote_types(h.dtype, torch.float32))


def gram_schmidt(x: torch.Tensor) -> torch.Tensor:
    cols = []
    for j in range(x.shape[1]):
        v = x[:, j].clone()
        for c in cols:
            v -= (c @ v) * c
        cols.append(v / v.norm())
    return torch.stack(cols, dim=1)


def agzo_deltas(
    model: nn.Module,
    named_params: list[tuple[str, nn.Parameter]],
    kinds,
    bases,
    inputs,
    embeddings,
    step_seed: int,
    probe: int,
    embedding_mode: str,
    row_mask: torch.Tensor | None,
) -> list[torch.Tensor]:
    """AGZO's Δ of every tensor for probe `probe` of a step, dense."""
    factor_shapes, small_shapes = {}, {}
    for i, ((_, param), (linears, conv, is_embedding)) in enumerate(zip(named_params, kinds)):
        if is_embedding and embedding_mode == "gaussian":
            continue
        if linears:
            factor_shapes[i] = (param.shape[1] if conv else param.shape[0], bases[i].shape[1])
        elif not is_embedding:
            small_shapes[i] = tuple(param.shape)
    factors = _pieces(factor_shapes, step_seed, probe, STREAM_SHARED_FACTORS)
    small = _pieces(small_shapes, step_seed, probe, STREAM_SHARED_SMALL)
    deltas = []
    for i, ((_, param), (linears, conv, is_embedding)) in enumerate(zip(named_params, kinds)):
        dev = param.device
        if i in small:
            deltas.append(small[i])
            continue
        if is_embedding and embedding_mode == "gaussian":
            gen = generator_for(dev, step_seed, probe, i, STREAM_PERTURBATION)
            deltas.append(torch.randn(param.shape, generator=gen))
            continue
        delta = torch.zeros(param.shape, dtype=torch.float64)
        if linears:
            outer = factors[i].double() @ bases[i].double().T
            delta += outer.T if conv else outer
        if is_embedding:
            table = next(m for m in embeddings if m.weight is param)
            ids = torch.cat([x.reshape(-1) for x in inputs[id(table)]])
            positions = ids.numel()  # one noise row is drawn per looked-up position
            if row_mask is not None and ids.numel() == row_mask.numel():
                ids = ids[row_mask.reshape(-1).bool()]
            # Each distinct real id takes the noise row at its first position among the
            # real ids sorted.
            gen = generator_for(dev, step_seed, probe, i, STREAM_PERTURBATION, 1)
            size = positions * param.shape[1]
            draw = torch.randn(-(-size // 16) * 16, generator=gen)[:size]
            noise = draw.view(positions, param.shape[1])
            ordered = sorted(ids.tolist())
            for position, row in enumerate(ordered):
                if position == 0 or ordered[position - 1] != row:
                    delta[row] += noise[position]
        deltas.append(delta)
    return deltas


def _pieces(shapes: dict, step_seed: int, probe: int, stream: int) -> dict:
    """Consecutive pieces, in tensor order, of one draw for the given shapes."""
    sizes = [int(torch.Size(shape).numel()) for shape in shapes.values()]
    pieces = _aligned_pieces(sizes, generator_for("cpu", step_seed, probe, stream))
    return {i: piece.view(shape) for (i, shape), piece in zip(shapes.items(), pieces)}


def agzo_step(
    model: nn.Module,
    named_params: list[tuple[str, nn.Parameter]],
    loss: Loss,
    *,
    lr: float,
    eps: float,
    seed: int,
    step: int,
    rank: int = 1,
    power_steps: int = 3,
    embedding_mode: str = "activation",
    row_mask: torch.Tensor | None = None,
    two_sided: bool = False,
    queries: int = 1,
    weight_decay: float = 0.0,
    basis: str = "power",
) -> float:
    """One AGZO step with SGD, dense: the bases come from the unperturbed pass, which is
    also f0 when one-sided. Returns the step's loss."""
    step_seed = derive_seed(seed, step)
    kinds = [_linear_kind(model, p) for _, p in named_params]
    all_linears = [m for linears, _, _ in kinds for m in linears]
    embeddings = [
        m
        for m in model.modules()
        if isinstance(m, nn.Embedding) and any(m.weight is p for _, p in named_params)
    ]
    f0, inputs, calls = record_inputs(model, all_linears + embeddings, loss)
    index_of = {id(m): i for i, (linears, _, _) in enumerate(kinds) for m in linears}
    linear_calls = [(m, x) for m, x in calls if id(m) in index_of]
    starts = power_iteration_starts(named_params, kinds, step_seed, rank)
    bases = linear_bases(linear_calls, index_of, starts, rank, power_steps, row_mask, basis)
    probes = [
        agzo_deltas(
            model,
            named_params,
            kinds,
            bases,
            inputs,
            embeddings,
            step_seed,
            k,
            embedding_mode,
            row_mask,
        )
        for k in range(queries)
    ]
    return zo_sgd(named_params, probes, loss, lr, eps, None if two_sided else f0, weight_decay)


def zo_sgd(
    named_params,
    probes: list[list[torch.Tensor]],
    loss: Loss,
    lr: float,
    eps: float,
    f0: float | None,
    weight_decay: float = 0.0,
) -> float:
    """W ← W(1 − ηλ) − η Σₖ gₖ Δₖ / q over the probes' deltas; one-sided from f0, or
    two-sided when f0 is None. Returns f0, or the mean of the two-sided losses."""
    originals = [p.detach().clone() for _, p in named_params]
    gs, losses = [], []
    with torch.no_grad():
        for deltas in probes:
            for (_, p), w, d in zip(named_params, originals, deltas):
                p.copy_(w + eps * d)
            f_plus = float(loss())
            if f0 is None:
                for (_, p), w, d in zip(named_params, originals, deltas):
                    p.copy_(w - eps * d)
                f_minus = float(loss())
                gs.append((f_plus - f_minus) / (2 * eps))
                losses.append(0.5 * (f_plus + f_minus))
            else:
                gs.append((f_plus - f0) / eps)
        for i, ((_, p), w) in enumerate(zip(named_params, originals)):
            step = sum(g * deltas[i] for g, deltas in zip(gs, probes)) / len(probes)
            p.copy_(w * (1 - lr * weight_decay) - lr * step)
    return f0 if f0 is not None else sum(losses) / len(losses)


def mezo_deltas(named_params, step_seed: int, probe: int) -> list[torch.Tensor]:
    return [
        torch.randn(
            p.shape, generator=generator_for(p.device, step_seed, probe, i, STREAM_PERTURBATION)
        )
        for i, (_, p) in enumerate(named_params)
    ]


def mezo_step(
    named_params,
    loss: Loss,
    *,
    lr: float,
    eps: float,
    seed: int,
    step: int,
    two_sided: bool = True,
    queries: int = 1,
    weight_decay: float = 0.0,
) -> float:
    """One MeZO step, dense (two-sided by default)."""
    step_seed = derive_seed(seed, step)
    probes = [mezo_deltas(named_params, step_seed, k) for k in range(queries)]
    with torch.no_grad():
        f0 = None if two_sided else float(loss())
    return zo_sgd(named_params, probes, loss, lr, eps, f0, weight_decay)


def lozo_deltas(
    model: nn.Module,
    named_params,
    *,
    seed: int,
    step: int,
    rank: int,
    refresh_every: int,
    probe: int = 0,
) -> list[torch.Tensor]:
    """LOZO's Δ per tensor: U Vᵀ for matrices (Conv1D transposed), Gaussian otherwise."""
    step_seed = derive_seed(seed, step)
    deltas = []
    for i, (_, p) in enumerate(named_params):
        gen = generator_for(p.device, step_seed, probe, i, STREAM_PERTURBATION)
        if p.dim() != 2:
            deltas.append(torch.randn(p.shape, generator=gen))
            continue
        _, conv, _ = _linear_kind(model, p)
        d_out, d_in = (p.shape[1], p.shape[0]) if conv else tuple(p.shape)
        u = torch.randn(d_out, rank, generator=gen)
        vgen = generator_for(p.device, seed, step // refresh_every, i, STREAM_LOW_RANK_V)
        v = torch.randn(d_in, rank, generator=vgen)
        outer = u.double() @ v.double().T
        deltas.append(outer.T if conv else outer)
    return deltas


def lozo_step(
    model, named_params, loss: Loss, *, lr, eps, seed, step, rank, refresh_every, queries=1
):
    """One two-sided LOZO step, dense."""
    probes = [
        lozo_deltas(
            model,
            named_params,
            seed=seed,
            step=step,
            rank=rank,
            refresh_every=refresh_every,
            probe=k,
        )
        for k in range(queries)
    ]
    return zo_sgd(named_params, probes, loss, lr, eps, None)
