"""`ZerothOrderOptimizer`: a direction sampler composed with an update transform.

    opt = ZerothOrderOptimizer(model, ActivationSampler(rank=1), chain(adam(), weight_decay()),
                               lr=1e-4, eps=1e-3)
    loss = opt.step(lambda: loss_fn(model, batch))

`step` evaluates the closure under `torch.no_grad()` (it must return the scalar loss and
must not call backward): once unperturbed (observed by the sampler, if it asks), then at
each of q probes, perturbing the weights in place in between, and leaves them at W₀ minus
the update. The core has no method-specific branch: what a method observes and where it
probes is its sampler's business, how it steps its transform's. `agzo.AGZO`, `MeZO` and
`LOZO` are named constructors of this class (`agzo.methods`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.autograd.profiler import record_function

from agzo.core.estimator import (
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
from agzo.core.reduce import LOCAL, Reducer
from agzo.core.transforms import Gradient, Transform, Update, apply_update, make_transform
from agzo.directions.base import batchable
from agzo.directions.sampler import DirectionSampler, ObservationContext, ProbeContext
from agzo.params import TrainableTensor, describe_tensors, select_named_parameters
from agzo.seeding import derive_seed

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
    """Select tensors, seed each step, observe, probe q times, estimate, transform, update.

    params: a model (its trainable parameters, filtered by `include` / `exclude` name
        patterns, see `agzo.params`), or parameters / param groups as for any torch
        optimizer (then `model=` names the module to observe, if the sampler observes).
    sampler: where each probe lies (`agzo.directions`). transform: how the estimate moves
        the weights (`agzo.core.transforms`), or the name of a rule: "sgd", "momentum",
        "adam" (each with the group's decoupled weight decay).
    lr, weight_decay: per param group, as usual. eps: the perturbation scale μ, one for
        the whole step (the difference of losses is divided by it).
    queries: probes per step (q); their estimates are averaged, each from its own seed.
    two_sided: SPSA's (f(W+μΔ) − f(W−μΔ))/2μ instead of (f(W+μΔ) − f(W))/μ.
    seed: every step's noise derives from (seed, step), so runs and resumes repeat.
    keep_noise: draw each Gaussian direction's noise once per step and keep it, rather
        than drawing it again for the flip and the update: the same numbers and weights,
        about a third of a MeZO step saved on a CPU, for a float32 copy of the
        Gaussian-probed tensors per probe held during the step.
    reducer: how losses and observations are combined over the step's examples (the
        identity in one process; see `agzo.core.reduce`).
    """

    def __init__(
        self,
        params: ParamsLike,
        sampler: DirectionSampler,
        transform: Transform | str = "sgd",
        *,
        lr: float,
        eps: float,
        weight_decay: float = 0.0,
        queries: int = 1,
        two_sided: bool = False,
        seed: int = 0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        model: nn.Module | None = None,
        reducer: Reducer = LOCAL,
        keep_noise: bool = False,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if eps <= 0:
            raise ValueError(f"eps (the perturbation scale mu) must be > 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if queries < 1:
            raise ValueError(f"queries (probes per step) must be >= 1, got {queries}")
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
        self.transform = make_transform(transform) if isinstance(transform, str) else transform
        self.queries = queries
        self.two_sided = two_sided
        self.seed = int(seed)
        self.reducer = reducer
        self.keep_noise = keep_noise
        self.step_count = 0
        self.skipped_steps = 0
        self.tensors: list[TrainableTensor] = describe_tensors(named, model)
        self._warned_dropout = False
        if sampler.observes_model and model is None:
            raise ValueError(
                f"{type(self).__name__} observes the model's layers: pass the model itself "
                "(or model=...) so its linear layers can be found"
            )
        decays = [g["weight_decay"] for g in self.param_groups if g["weight_decay"]]
        if decays and not self.transform.reads_group_weight_decay():
            raise ValueError(
                f"weight_decay={decays[0]} is set but the transform has no weight_decay() "
                "stage to apply it: chain(..., weight_decay())"
            )

    # -- one step ------------------------------------------------------------------------
    @property
    def eps(self) -> float:
        values = {g["eps"] for g in self.param_groups}
        if len(values) != 1:
            raise ValueError(f"all param groups must share one eps, got {sorted(values)}")
        return float(values.pop())

    def probe(self, context: ProbeContext) -> Probe:
        """One probe's directions for every trainable tensor (regenerable from the seed)."""
        with record_function("agzo.sample"):
            directions = self.sampler.sample_all(self.tensors, context)
        return Probe(self.tensors, directions)

    def _unperturbed(
        self,
        evaluate_loss: Callable[[], float],
        step_seed: int,
        attention_mask: torch.Tensor | None,
        micro_batches: int = 1,
    ) -> tuple[float | None, Any]:
        """f(W₀) (None when two-sided: SPSA never needs it) and what the sampler observed."""
        observer = self._observer(step_seed, attention_mask, micro_batches)
        if observer is None:
            return (None if self.two_sided else evaluate_loss()), None
        with observer:
            f0 = evaluate_loss()
        return (None if self.two_sided else f0), observer.result

    def _observer(
        self, step_seed: int, attention_mask: torch.Tensor | None, micro_batches: int = 1
    ) -> Any:
        return self.sampler.observer(
            ObservationContext(
                self.tensors, step_seed, self.model, attention_mask, self.reducer, micro_batches
            )
        )

    def observation(
        self,
        closure: Closure,
        step_seed: int,
        attention_mask: torch.Tensor | None = None,
    ) -> Any:
        """What the sampler observes of one unperturbed pass of `closure` at `step_seed`
        (None if it observes nothing); for instruments that inspect probes without
        stepping."""
        observer = self._observer(step_seed, attention_mask)
        if observer is None:
            return None
        with torch.no_grad(), observer:
            closure()
        return observer.result

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
        self,
        closure: Closure | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        micro_batches: int = 1,
    ) -> torch.Tensor | None:
        """One zeroth-order step; returns the step's loss (f(W₀), or the SPSA mean).

        attention_mask: (batch, seq), 1 on real tokens, so padding rows are left out of
        what the sampler observes. Optional: by default it is read from the model call.
        micro_batches: how many model calls the closure splits its batch into (gradient
        accumulation), for observers that combine them.
        """
        if closure is None:
            raise ValueError("a zeroth-order optimizer needs a closure returning the loss")
        self._check_dropout()
        eps = self.eps
        step_seed = derive_seed(self.seed, self.step_count)

        def evaluate_loss() -> float:
            return evaluate(closure, self.reducer)

        try:
            f0, observed = self._unperturbed(
                evaluate_loss, step_seed, attention_mask, micro_batches
            )
        except NonFiniteLossError as err:
            self._skip(str(err))
            return None

        def make_probe(k: int) -> Probe:
            context = ProbeContext(
                self.step_count, step_seed, self.seed, k, observed, self.keep_noise
            )
            probe = self.probe(context)
            if self.step_count == 0 and k == 0:
                check_precision(probe, eps)
            return probe

        try:
            estimate = (
                two_sided(evaluate_loss, make_probe, self.queries, eps)
                if f0 is None
                else one_sided(evaluate_loss, make_probe, self.queries, eps, f0)
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
        self._apply(estimate)
        self.step_count += 1
        return torch.tensor(estimate.loss)

    def _warn_if_vanished(self, estimate: Estimate, f0: float | None) -> None:
        baseline = estimate.f_minus if f0 is None else [f0] * len(estimate.f_plus)
        assert baseline is not None
        if list(estimate.f_plus) == list(baseline):
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

    def _apply(self, estimate: Estimate) -> None:
        """Restore and update every tensor. The weights sit at W₀ + offset·Δ (last probe)."""
        offset, last = estimate.offset, estimate.last.directions
        if not self.transform.stateless:
            for tensor in self.tensors:
                self.transform.reserve(tensor.param.data, self.state[tensor.param])
        done: set[int] = set()
        together: dict[tuple[float, float], list[int]] = {}
        try:
            with record_function("agzo.update"):
                for i, (tensor, group) in enumerate(zip(self.tensors, self._current_groups())):
                    param, gradient = tensor.param.data, estimate.gradient(i)
                    if self.transform.stateless and len(gradient.terms) == 1:
                        # Plain SGD, one probe: restore and step in one pass, no dense Δ.
                        decay = self.transform(Update(gradient), param, {}, group).decay
                        if batchable(param, last[i]):
                            together.setdefault((group["lr"], decay), []).append(i)
                            continue
                        _fused_sgd_step(param, gradient, offset, group["lr"], decay)
                        done.add(i)
                        continue
                    if offset:
                        last[i].add_to(param, -offset)
                    done.add(i)  # at W₀ now: must not be shifted back again
                    update = self.transform(
                        Update(gradient), param, self.state[tensor.param], group
                    )
                    apply_update(param, update, group["lr"])
                g = estimate.gs[0]
                for (lr, decay), indices in together.items():
                    self._fused_sgd_together(indices, last, offset, lr * g, 1.0 - lr * decay)
                    done.update(indices)
        except BaseException:
            # Interrupted mid-update (Ctrl-C): tensors already stepped keep their step, the
            # rest are moved back to W₀, so nothing is left perturbed.
            for i, tensor in enumerate(self.tensors):
                if i not in done:
                    last[i].add_to(tensor.param.data, -offset)
            raise

    def _fused_sgd_together(
        self, indices: list[int], directions: Sequence[Any], offset: float, step: float, keep: float
    ) -> None:
        """`_fused_sgd_step` for held small directions, as multi-tensor operations."""
        params = [self.tensors[i].param.data for i in indices]
        if keep != 1.0:
            torch._foreach_mul_(params, keep)
        values = [directions[i].values for i in indices]
        torch._foreach_add_(params, values, alpha=-(offset * keep + step))

    def step_statistics(self) -> dict[str, float]:
        """Figures about the last step that a training loop logs beside its loss (none
        here; a method with something to report overrides this)."""
        return {}

    # -- checkpoints --------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The hyperparameters a saved state depends on (checked by `load_state_dict`)."""
        return {
            **self.sampler.settings(),
            "queries": self.queries,
            "two_sided": self.two_sided,
            "transform": self.transform.describe(),
        }

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["zeroth_order"] = {
            "method": type(self).__name__,
            "step": self.step_count,
            "seed": self.seed,
            "skipped_steps": self.skipped_steps,
            "settings": self.settings(),
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        zo = state_dict.pop("zeroth_order", None)
        if zo is None:
            raise ValueError("not a zeroth-order optimizer state (no 'zeroth_order' entry)")
        if zo["method"] != type(self).__name__:
            raise ValueError(f"state was saved by {zo['method']}, not {type(self).__name__}")
        saved, mine = _plain(zo.get("settings", self.settings())), _plain(self.settings())
        differ = sorted(k for k in saved.keys() | mine.keys() if saved.get(k) != mine.get(k))
        if differ:
            listed = ", ".join(f"{k}: saved {saved.get(k)!r}, here {mine.get(k)!r}" for k in differ)
            raise ValueError(
                f"state was saved by {zo['method']} with other hyperparameters ({listed}); "
                "build the optimizer with the saved ones to continue from it"
            )
        super().load_state_dict(state_dict)
        self.step_count = int(zo["step"])
        self.seed = int(zo["seed"])
        self.skipped_steps = int(zo["skipped_steps"])


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so settings compare equal after a round trip."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _fused_sgd_step(
    param: torch.Tensor, gradient: Gradient, offset: float, lr: float, decay: float
) -> None:
    """From W₀ + offset·Δ to W₀(1 − ηλ) − ηgΔ in place: (W₀ + cΔ)·k − (c·k + ηg)Δ."""
    (g, direction), *_ = gradient.terms
    keep = 1.0 - lr * decay
    if keep != 1.0:
        param.mul_(keep)
    direction.add_to(param, -(offset * keep + lr * g))
