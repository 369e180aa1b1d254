"""Stateful update rules against torch.optim and a dense LOZO-M reference.

Each step's estimate g·Δ is read off the weights the closure saw, fed as `.grad` to the
corresponding torch optimizer on a twin model, and the two models must agree.
"""

from __future__ import annotations

import copy

import pytest
import torch

import agzo
from agzo.seeding import STREAM_LOW_RANK_V, STREAM_PERTURBATION, derive_seed, generator_for
from tests.tiny import batch, loss_fn, tiny_model


def _recording(model, loss):
    seen: list[tuple[float, list[torch.Tensor]]] = []

    def closure():
        value = loss()
        seen.append((float(value), [p.detach().clone() for p in model.parameters()]))
        return value

    return seen, closure


def _measured_gradient(seen, eps: float, two_sided: bool):
    if two_sided:
        (fp, wp), (fm, wm) = seen
        return (fp - fm) / (2 * eps), [(a - b) / (2 * eps) for a, b in zip(wp, wm)]
    (f0, w0), (fp, wp) = seen
    return (fp - f0) / eps, [(a - b) / eps for a, b in zip(wp, w0)]


@pytest.mark.parametrize(
    "update, make_torch_opt",
    [
        ("momentum", lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9)),
        ("adam", lambda ps: torch.optim.Adam(ps, lr=1e-3)),
    ],
)
def test_agzo_update_rule_matches_torch_optimizer(update, make_torch_opt) -> None:
    model = tiny_model("llama").double()
    twin = copy.deepcopy(model)
    ids, mask, labels = batch("llama")
    seen, closure = _recording(model, loss_fn(model, "llama", ids, mask, labels))
    lr = 1e-2 if update == "momentum" else 1e-3
    opt = agzo.AGZO(model, lr=lr, eps=1e-4, update=update)
    torch_opt = make_torch_opt(list(twin.parameters()))
    for _ in range(4):
        seen.clear()
        opt.step(closure)
        g, deltas = _measured_gradient(seen, opt.eps, two_sided=False)
        for p, d in zip(twin.parameters(), deltas):
            p.grad = g * d
        torch_opt.step()
        for p, q in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-8)


def test_lozo_m_matches_dense_reference() -> None:
    rank, nu, beta, lr, eps, seed = 2, 2, 0.8, 1e-3, 1e-4, 9
    model = tiny_model("llama").double()
    ids, mask, labels = batch("llama")
    seen, closure = _recording(model, loss_fn(model, "llama", ids, mask, labels))
    opt = agzo.LOZO(model, lr=lr, eps=eps, rank=rank, refresh_every=nu, momentum=beta, seed=seed)
    weights = [p.detach().clone() for p in model.parameters()]
    buffers: dict[int, torch.Tensor] = {}
    for step in range(5):
        seen.clear()
        opt.step(closure)
        g, _ = _measured_gradient(seen, eps, two_sided=True)
        step_seed = derive_seed(seed, step)
        for i, p in enumerate(model.parameters()):
            gen = generator_for("cpu", step_seed, 0, i, STREAM_PERTURBATION)
            if p.dim() == 2:
                u = torch.randn(p.shape[0], rank, generator=gen).double()
                v_of = lambda period, i=i, p=p: torch.randn(  # noqa: E731
                    p.shape[1],
                    rank,
                    generator=generator_for("cpu", seed, period, i, STREAM_LOW_RANK_V),
                ).double()
                v = v_of(step // nu)
                if i in buffers and step % nu == 0:
                    old = v_of(step // nu - 1)
                    buffers[i] = buffers[i] @ old.T @ v @ torch.linalg.inv(v.T @ v)
                contribution = (1 - beta) * g * u
                buffers[i] = contribution if i not in buffers else beta * buffers[i] + contribution
                weights[i] = weights[i] - lr * buffers[i] @ v.T
            else:
                z = torch.randn(p.shape, generator=gen).double()
                contribution = (1 - beta) * g * z
                buffers[i] = contribution if i not in buffers else beta * buffers[i] + contribution
                weights[i] = weights[i] - lr * buffers[i]
        for p, w in zip(model.parameters(), weights):
            torch.testing.assert_close(p.detach(), w, rtol=1e-6, atol=1e-8)
