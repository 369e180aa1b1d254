"""AGZO, MeZO and LOZO as `torch.optim.Optimizer`s driven by a loss closure.

    opt = agzo.AGZO(model, lr=1e-4, eps=1e-3)
    loss = opt.step(lambda: loss_fn(model, batch))

`step` evaluates the closure two or three times under `torch.no_grad()` (the closure must
return the scalar loss and must not call backward), perturbing the weights in place in
between, and leaves them at W₀ minus the update. Each method is the composition of a
direction sampler (where to probe) and an update rule (how to step); the base class owns
the seeds, the fault handling and the bookkeeping that `state_dict` round-trips.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.autograd.profiler import record_function

from agzo.capture import ActivationCapture, CapturedSubspaces
from agzo.directions import ActivationSampler, GaussianSampler, LowRankSampler
from agzo.directions.activation import EmbeddingMode
from agzo.directions.base import Direction, LowRankDirection
from agzo.directions.sampler import DirectionSampler, ProbeContext
from agzo.estimator import (
    Closure,
    Estimate,
    NonFiniteLossError,
    PrecisionWarning,
    Probe,
    check_precision,
    evaluate,
    one_sided,
    two_sided,
)
from agzo.params import TrainableTensor, describe_tensors, select_named_parameters
from agzo.seeding import derive_seed
from agzo.updates import SGD, UpdateRule, make_update_rule

ParamsLike = nn.Module | Iterable[torch.Tensor] | Iterable[dict[str, Any]]


class SkippedStepWarning(UserWarning):
    """A step was skipped because the loss was not finite; the weights were restored."""


def _named_params_from(
    params: Iterable[Any], model: nn.Module | None
) -> tuple[list[dict[str, Any]], list[tuple[str, nn.Parameter]]]:
    """Param groups and (name, param) pairs, tied tensors de-duplicated, frozen ones dropped."""
    names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    raw = list(params)
    groups = raw if raw and isinstance(raw[0], dict) else [{"params": raw}]
    seen: set[int] = set()
    named: list[tuple[str, nn.Parameter]] = []
    clean_groups = []
    for group in groups:
        kept = []
        for p in group["params"]:
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            kept.append(p)
            named.append((names.get(id(p), f"param{len(named)}"), p))
        if kept:
            clean_groups.append({**group, "params": kept})
    if not named:
        raise ValueError("no trainable parameter given (all empty or requires_grad=False)")
    return clean_groups, named


class ZerothOrderOptimizer(torch.optim.Optimizer):
    """Shared machinery: select tensors, seed each step, perturb, estimate, update.

    params: a model (its trainable parameters, filtered by `include` / `exclude` name
        patterns), or parameters / param groups as for any torch optimizer.
    model: the module whose layers are hooked, when `params` is not the model itself.
    lr, weight_decay: per param group, as usual. eps: the perturbation scale μ, one for
        the whole step (the difference of losses is divided by it).
    update: "sgd" (fused, stateless), "momentum" or "adam", or an `UpdateRule`.
    two_sided: SPSA's (f(W+μΔ) − f(W−μΔ))/2μ instead of (f(W+μΔ) − f(W))/μ.
    seed: every step's noise derives from (seed, step), so runs and resumes repeat.
    """

    def __init__(
        self,
        params: ParamsLike,
        sampler: DirectionSampler,
        *,
        lr: float,
        eps: float,
        weight_decay: float = 0.0,
        update: str | UpdateRule = "sgd",
        two_sided: bool = False,
        seed: int = 0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        model: nn.Module | None = None,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if eps <= 0:
            raise ValueError(f"eps (the perturbation scale mu) must be > 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if isinstance(params, nn.Module):
            model = params
            named = select_named_parameters(model, include, exclude)
            groups: list[dict[str, Any]] = [{"params": [p for _, p in named]}]
        else:
            if include is not None or exclude is not None:
                raise ValueError("include/exclude patterns need a model, not a parameter list")
            groups, named = _named_params_from(params, model)
        super().__init__(groups, {"lr": lr, "eps": eps, "weight_decay": weight_decay})
        self.model = model
        self.sampler = sampler
        self.update_rule = make_update_rule(update) if isinstance(update, str) else update
        self.two_sided = two_sided
        self.seed = int(seed)
        self.step_count = 0
        self.skipped_steps = 0
        self.tensors: list[TrainableTensor] = describe_tensors(named, model)
        self._warned_dropout = False
        if sampler.needs_capture and model is None:
            raise ValueError(
                f"{type(self).__name__} hooks the model's layers: pass the model itself "
                "(or model=...) so its linear layers can be found"
            )

    # -- one step ------------------------------------------------------------------------
    @property
    def eps(self) -> float:
        values = {g["eps"] for g in self.param_groups}
        if len(values) != 1:
            raise ValueError(f"all param groups must share one eps, got {sorted(values)}")
        return float(values.pop())

    def _unperturbed_loss(
        self, closure: Closure, step_seed: int, attention_mask: torch.Tensor | None
    ) -> tuple[float | None, CapturedSubspaces | None]:
        """f(W₀), with the activation capture when the sampler needs it."""
        if self.sampler.needs_capture:
            capture = self._make_capture(step_seed, attention_mask)
            with capture:
                f0 = evaluate(closure)
            return f0, capture.result
        if self.two_sided:
            return None, None  # SPSA never evaluates the unperturbed weights
        return evaluate(closure), None

    def _make_capture(
        self, step_seed: int, attention_mask: torch.Tensor | None
    ) -> ActivationCapture:
        raise NotImplementedError(f"{type(self).__name__} does not capture activations")

    def probe(self, context: ProbeContext) -> Probe:
        """This step's directions for every trainable tensor (regenerable from the seed)."""
        with record_function("agzo.sample"):
            directions = [self.sampler.sample(t, context) for t in self.tensors]
        return Probe(self.tensors, directions)

    def _check_dropout(self) -> None:
        if self._warned_dropout or self.model is None:
            return
        for module in self.model.modules():
            if isinstance(module, nn.Dropout) and module.training and module.p > 0:
                self._warned_dropout = True
                warnings.warn(
                    "the model is in training mode with active dropout: the two loss "
                    "evaluations of a zeroth-order step then differ by dropout noise as "
                    "well as by the perturbation. Call model.eval() before training.",
                    UserWarning,
                    stacklevel=3,
                )
                return

    def _skip(self, reason: str) -> None:
        self.skipped_steps += 1
        self.step_count += 1  # the next step draws fresh noise rather than repeating this one
        warnings.warn(
            f"step skipped ({reason}); the weights were left unchanged "
            f"({self.skipped_steps} skipped so far)",
            SkippedStepWarning,
            stacklevel=3,
        )

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Closure | None = None, *, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """One zeroth-order step; returns the step's loss (f(W₀), or the SPSA mean).

        attention_mask: (batch, seq), 1 on real tokens, so padding rows are left out of
        the activation subspace. Optional: by default it is read from the model call.
        """
        if closure is None:
            raise ValueError("a zeroth-order optimizer needs a closure returning the loss")
        self._check_dropout()
        eps = self.eps
        step_seed = derive_seed(self.seed, self.step_count)
        try:
            f0, captured = self._unperturbed_loss(closure, step_seed, attention_mask)
        except NonFiniteLossError as err:
            self._skip(str(err))
            return None
        context = ProbeContext(self.step_count, step_seed, self.seed, captured=captured)
        probe = self.probe(context)
        if self.step_count == 0:
            check_precision(probe, eps)
        try:
            estimate = (
                two_sided(closure, probe, eps)
                if self.two_sided or f0 is None
                else one_sided(closure, probe, eps, f0)
            )
        except NonFiniteLossError as err:
            self._skip(str(err))
            return None
        except BaseException as err:
            self.skipped_steps += 1
            if hasattr(err, "add_note"):
                err.add_note("agzo: the weights were restored to their values before the step")
            raise
        self._warn_if_vanished(estimate, f0)
        self._apply(probe, estimate)
        self.step_count += 1
        return torch.tensor(estimate.loss)

    def _warn_if_vanished(self, estimate: Estimate, f0: float | None) -> None:
        unchanged = estimate.f_plus == estimate.f_minus if f0 is None else estimate.f_plus == f0
        if unchanged:
            warnings.warn(
                f"the perturbed loss equals the unperturbed one exactly (eps={self.eps}): "
                "the perturbation vanished, probably in a low-precision dtype. Raise eps "
                "or keep float32 master weights.",
                PrecisionWarning,
                stacklevel=3,
            )

    def _current_groups(self) -> list[dict[str, Any]]:
        """Each tensor's param group, looked up now: `load_state_dict` replaces the group
        dicts, and LR schedulers write to whichever dicts `param_groups` holds."""
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        return [group_of[id(t.param)] for t in self.tensors]

    def _apply(self, probe: Probe, estimate: Estimate) -> None:
        groups = self._current_groups()
        done = 0
        try:
            with record_function("agzo.update"):
                for tensor, direction, group in zip(probe.tensors, probe.directions, groups):
                    self._update_tensor(tensor, direction, estimate, group)
                    done += 1
        except BaseException:
            # Interrupted mid-update (Ctrl-C): tensors already stepped keep their step, the
            # rest are moved back to W₀, so nothing is left perturbed.
            for tensor, direction in zip(probe.tensors[done:], probe.directions[done:]):
                direction.add_to(tensor.param.data, -estimate.offset)
            raise

    def _update_tensor(
        self,
        tensor: TrainableTensor,
        direction: Direction,
        estimate: Estimate,
        group: dict[str, Any],
    ) -> None:
        self.update_rule.apply(
            tensor.param.data,
            direction,
            estimate.offset,
            estimate.g,
            group["lr"],
            group["weight_decay"],
            self.state[tensor.param],
        )

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["zeroth_order"] = {
            "method": type(self).__name__,
            "step": self.step_count,
            "seed": self.seed,
            "skipped_steps": self.skipped_steps,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        zo = state_dict.pop("zeroth_order", None)
        if zo is None:
            raise ValueError("not a zeroth-order optimizer state (no 'zeroth_order' entry)")
        if zo["method"] != type(self).__name__:
            raise ValueError(f"state was saved by {zo['method']}, not {type(self).__name__}")
        super().load_state_dict(state_dict)
        self.step_count = int(zo["step"])
        self.seed = int(zo["seed"])
        self.skipped_steps = int(zo["skipped_steps"])


class AGZO(ZerothOrderOptimizer):
    """Activation-guided zeroth-order optimization.

    The unperturbed pass doubles as the capture: hooks on every linear layer extract the
    top-`rank` input directions with `power_steps` power-iteration steps; linear weights
    are then probed with Δ = R Aᵀ inside that subspace (see `agzo.directions.activation`
    for embeddings and other tensors). One-sided by default: the capture pass is f(W₀).
    """

    def __init__(
        self,
        params: ParamsLike,
        lr: float = 1e-4,
        eps: float = 1e-3,
        rank: int = 1,
        power_steps: int = 3,
        embedding_mode: EmbeddingMode = "activation",
        **kwargs: Any,
    ) -> None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if power_steps < 0:
            raise ValueError(f"power_steps must be >= 0, got {power_steps}")
        self.rank = rank
        self.power_steps = power_steps
        super().__init__(params, ActivationSampler(embedding_mode), lr=lr, eps=eps, **kwargs)

    def _make_capture(
        self, step_seed: int, attention_mask: torch.Tensor | None
    ) -> ActivationCapture:
        return ActivationCapture(
            self.tensors,
            self.rank,
            self.power_steps,
            step_seed,
            root=self.model,
            attention_mask=attention_mask,
        )

    def _unperturbed_loss(
        self, closure: Closure, step_seed: int, attention_mask: torch.Tensor | None
    ) -> tuple[float | None, CapturedSubspaces | None]:
        f0, captured = super()._unperturbed_loss(closure, step_seed, attention_mask)
        if self.two_sided:
            return None, captured  # the capture pass only supplies the subspace
        return f0, captured


class MeZO(ZerothOrderOptimizer):
    """Memory-efficient zeroth-order SGD: isotropic Gaussian probes, two-sided by default."""

    def __init__(
        self,
        params: ParamsLike,
        lr: float = 3e-6,
        eps: float = 1e-3,
        two_sided: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(params, GaussianSampler(), lr=lr, eps=eps, two_sided=two_sided, **kwargs)


class LOZO(ZerothOrderOptimizer):
    """Low-rank zeroth-order SGD: Δ = U Vᵀ with V redrawn every `refresh_every` steps.

    momentum > 0 gives LOZO-M: the momentum lives on the d_out x r factor
    (N ← βN + (1−β)gU, W ← W − ηNVᵀ), so it costs r/d_in of a dense buffer. When V is
    redrawn, N is carried into the new factor by least squares (N Vᵀ ≈ N' V'ᵀ), so the
    accumulated direction is kept as far as the new subspace can express it.
    Non-matrix tensors use a dense momentum buffer (they are small).
    """

    def __init__(
        self,
        params: ParamsLike,
        lr: float = 3e-6,
        eps: float = 1e-3,
        rank: int = 2,
        refresh_every: int = 50,
        momentum: float = 0.0,
        two_sided: bool = True,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        update = kwargs.get("update", "sgd")
        if momentum and not (update == "sgd" or isinstance(update, SGD)):
            raise ValueError("LOZO-M (momentum > 0) applies its own update; leave update='sgd'")
        self.momentum = momentum
        self.low_rank = LowRankSampler(rank, refresh_every)
        super().__init__(params, self.low_rank, lr=lr, eps=eps, two_sided=two_sided, **kwargs)

    def _update_tensor(
        self,
        tensor: TrainableTensor,
        direction: Direction,
        estimate: Estimate,
        group: dict[str, Any],
    ) -> None:
        if not self.momentum:
            super()._update_tensor(tensor, direction, estimate, group)
            return
        param, state, lr = tensor.param.data, self.state[tensor.param], group["lr"]
        direction.add_to(param, -estimate.offset)  # back to W₀
        if group["weight_decay"]:
            param.mul_(1 - lr * group["weight_decay"])
        beta = self.momentum
        if isinstance(direction, LowRankDirection):
            period = self.step_count // self.low_rank.refresh_every
            buf = state.get("factor_momentum")
            if buf is not None and state["period"] != period:
                old_v = self.low_rank.right_factor(tensor, self.seed, state["period"])
                new_v = direction.right
                # N' = N Vᵀ V' (V'ᵀV')⁻¹: least-squares image of N Vᵀ in the new factor.
                buf = buf @ (old_v.T @ new_v) @ torch.linalg.inv(new_v.T @ new_v)
            contribution = direction.left * ((1 - beta) * estimate.g)
            buf = contribution if buf is None else buf.mul_(beta).add_(contribution)
            state["factor_momentum"], state["period"] = buf, period
            LowRankDirection(buf, direction.right, direction.transposed).add_to(param, -lr)
        else:
            grad = direction.dense().mul_((1 - beta) * estimate.g)
            buf = state.get("momentum_buffer")
            buf = grad if buf is None else buf.mul_(beta).add_(grad)
            state["momentum_buffer"] = buf
            param.copy_(param.float().add_(buf, alpha=-lr).to(param.dtype))
