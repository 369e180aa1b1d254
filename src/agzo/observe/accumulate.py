"""AGZO's subspaces when a step's batch is evaluated in micro-batches (gradient accumulation).

An exact power step on the whole batch needs HᵀH Q₀ with H every micro-batch's
activations stacked, and HᵀH Q₀ = Σᵢ Hᵢᵀ(Hᵢ Q₀): with the start Q₀ fixed per layer and
step, one pass over the micro-batches accumulates it exactly, holding one d_in x r sum per
layer. So with K = 1 power step the accumulated basis equals the whole batch's K = 1
basis (up to rounding). K > 1 would need K passes over the micro-batches, one forward
each; the capture here does one step whatever K says, and `ActivationSampler` uses it
only when K = 1 (docs/RESULTS.md measures K = 1 accumulated against K = 3).

Every call of a layer adds to its sum (a layer run twice in one pass contributes both
inputs, which is the Gram matrix of all of them); layers reading one input share its
product, as in `ActivationCapture`. The sums are reduced across processes once, at the
end, in the order the layers first ran.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.profiler import record_function

from agzo.observe.subspaces import (
    ActivationCapture,
    CapturedSubspaces,
    Subspace,
    _norm,
    _orthonormalize,
    _start,
)
from agzo.params import TrainableTensor


class AccumulatedCapture(ActivationCapture):
    """`ActivationCapture` with one power step accumulated over every call of a layer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._products: dict[int, torch.Tensor] = {}
        self._result: CapturedSubspaces | None = None

    def _linear_hook(self, tensor: TrainableTensor) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            x = args[0]
            with torch.no_grad(), record_function("agzo.capture"):
                shared = self._shared_summary(x)
                if shared is not None:
                    product = shared.basis  # here the summary holds the layer's product
                else:
                    h = self._real_rows(x.detach())
                    h = h.to(torch.promote_types(h.dtype, torch.float32))
                    # The same start for every call of this layer (call 0's, the one
                    # `ActivationCapture` uses): the sum is then one power step on the
                    # stacked inputs.
                    start = _start(h, min(self.rank, h.shape[1]), self._start_for(tensor, h, 0))
                    product = h.T @ (h @ start)
                    self._remember_input(x, Subspace(product))
                previous = self._products.get(tensor.index)
                self._products[tensor.index] = product if previous is None else previous + product

        return hook

    @property
    def result(self) -> CapturedSubspaces:
        if self._result is None:
            bases = {i: self._basis(p) for i, p in self._products.items()}
            self._result = CapturedSubspaces(bases=bases, token_rows=self._looked_up_rows())
        return self._result

    def _basis(self, product: torch.Tensor) -> torch.Tensor:
        """Orthonormal basis of the summed product; zero where it is zero or not finite."""
        product = self.reducer.sum_(product.clone())
        norm = _norm(product)  # float64: the scaled start's product does not underflow
        if product.shape[1] == 1:
            q = product / norm.clamp_min(torch.finfo(torch.float64).tiny)
        else:
            q = _orthonormalize(product)
        usable = (norm > 0) & (norm < torch.inf)
        return torch.where(usable, q, usable)
