"""A `transformers.Trainer` whose steps are zeroth-order: forward passes only, no backward.

The change to an existing Trainer script is the class name and the method:

    from agzo.integrations import ZOTrainer

    trainer = ZOTrainer(                      # was: Trainer(
        model=model, args=args, train_dataset=train, data_collator=collator,
        zo_optimizer="agzo", zo_kwargs={"eps": 1e-3, "rank": 1},
    )
    trainer.train()

Datasets, collators, `TrainingArguments`, callbacks, LR schedules, logging, evaluation and
checkpoints stay the Trainer's own; its training loop is used as it is, not copied. Three
public hooks are overridden:

- `create_optimizer` builds the zeroth-order optimizer (lr, weight decay and seed taken from
  the `TrainingArguments`), so the Trainer's LR scheduler sets its param groups' lr as usual.
- `training_step` takes the whole zeroth-order step: the model in eval mode (dropout would
  make the perturbed evaluations differ by noise), a closure evaluating `compute_loss` under
  `no_grad`, `optimizer.step(closure)`; it returns the step's loss for logging.
- `log` leaves out `grad_norm` (there is no gradient) and reports skipped steps.

After `training_step` the Trainer's loop calls `optimizer.step()` without a closure, through
accelerate's wrapper. The optimizer is adapted in place (its class becomes a subclass of its
own class, with the same name, so checkpoints stay interchangeable with the plain optimizer)
so that exactly that call, owed after each step taken in `training_step`, does nothing; any
other closure-free call still raises. `zero_grad` and gradient clipping find no gradients;
clipping is switched off (`max_grad_norm=0`).

Gradient accumulation keeps its meaning, a larger effective batch at the memory of one
micro-batch: the micro-batches of one Trainer step are held (their inputs only) and the
single zeroth-order step of that Trainer step evaluates the loss on all of them, micro-batch
by micro-batch. One optimizer step per Trainer step keeps the LR schedule, `max_steps`,
checkpoints and resumption consistent; a step per micro-batch would not be accumulation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch import nn
from transformers import Trainer

from agzo.core.distributed import DistributedReducer
from agzo.core.estimator import Closure
from agzo.core.optimizer import ZerothOrderOptimizer
from agzo.methods import get_method, method_names
from agzo.params import select_named_parameters

ZOOptimizerFactory = Callable[[nn.Module], ZerothOrderOptimizer]
ZOOptimizerSpec = str | type[ZerothOrderOptimizer] | ZOOptimizerFactory


def _examples_in(batch: Mapping[str, Any]) -> int:
    """Rows of a collated batch (its first tensor's leading size)."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return 1


# Set through TrainingArguments, so that a run has one source for each.
_FROM_TRAINING_ARGUMENTS = {"lr": "learning_rate", "weight_decay": "weight_decay"}


class TrainerDrivenStep(ZerothOrderOptimizer):
    """A zeroth-order optimizer that accepts the Trainer's closure-free `step()` once per step.

    Never instantiated: `trainer_driven` makes an optimizer's class a subclass of this one.
    """

    _trainer_step_owed: bool = False

    def expect_trainer_step(self) -> None:
        """A step was taken for the Trainer: its next closure-free `step()` is a no-op."""
        self._trainer_step_owed = True

    def step(  # type: ignore[override]
        self,
        closure: Closure | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        if closure is not None:
            return super().step(closure, attention_mask=attention_mask)
        if not self._trainer_step_owed:
            raise ValueError(
                "a zeroth-order optimizer needs a closure returning the loss. Under ZOTrainer "
                "the step is taken in training_step; only the Trainer's own closure-free "
                "optimizer.step() that follows it is accepted"
            )
        self._trainer_step_owed = False
        return None


_ADAPTED_CLASSES: dict[type[ZerothOrderOptimizer], type[TrainerDrivenStep]] = {}


def trainer_driven(optimizer: ZerothOrderOptimizer) -> TrainerDrivenStep:
    """Adapt `optimizer` in place to be driven by ZOTrainer, and return it.

    Its class becomes a subclass of `TrainerDrivenStep` and of its own class, with its own
    class's name: isinstance checks hold, and `state_dict` still records e.g. "AGZO", so a
    checkpoint loads into the plain optimizer and back. Idempotent.
    """
    if isinstance(optimizer, TrainerDrivenStep):
        return optimizer
    base = type(optimizer)
    adapted = _ADAPTED_CLASSES.get(base)
    if adapted is None:
        namespace = {"__module__": __name__, "__qualname__": f"trainer_driven({base.__qualname__})"}
        adapted = cast(
            type[TrainerDrivenStep], type(base.__name__, (TrainerDrivenStep, base), namespace)
        )
        _ADAPTED_CLASSES[base] = adapted
    optimizer.__class__ = adapted
    return cast(TrainerDrivenStep, optimizer)


def _zeroth_order_inside(optimizer: Any) -> ZerothOrderOptimizer:
    """The zeroth-order optimizer under accelerate's (or any `.optimizer`) wrappers."""
    found = optimizer
    while not isinstance(found, ZerothOrderOptimizer):
        inner = getattr(found, "optimizer", None)
        if inner is None or inner is found:
            raise TypeError(
                "ZOTrainer needs a zeroth-order optimizer (agzo.AGZO, agzo.MeZO, agzo.LOZO or "
                f"another agzo.ZerothOrderOptimizer), got {type(optimizer).__name__}"
            )
        found = inner
    return found


def _method_class(name: str) -> type[ZerothOrderOptimizer]:
    """The optimizer class of a registered zeroth-order method."""
    try:
        method = get_method(name)
    except ValueError:
        method = None
    if method is None or not method.zeroth_order or method.optimizer_class is None:
        raise ValueError(
            f"unknown zeroth-order method {name!r}; choose from "
            f"{', '.join(method_names(zeroth_order=True))}, or pass an optimizer class or a "
            "factory `lambda model: agzo.AGZO(model, ...)`"
        )
    return cast(type[ZerothOrderOptimizer], method.optimizer_class)


def _check_spec(spec: ZOOptimizerSpec, kwargs: Mapping[str, Any]) -> None:
    if isinstance(spec, str):
        _method_class(spec)
    elif isinstance(spec, type):
        if not issubclass(spec, ZerothOrderOptimizer):
            raise TypeError(
                f"zo_optimizer={spec.__name__} is not a zeroth-order optimizer; ZOTrainer takes "
                "agzo.AGZO, agzo.MeZO, agzo.LOZO (or a name, or a factory). For a first-order "
                "optimizer use transformers.Trainer"
            )
    elif callable(spec):
        if kwargs:
            raise ValueError(
                "zo_kwargs go with a method name or class; a factory passes its own arguments"
            )
        return
    else:
        raise TypeError(f"zo_optimizer must be a name, a class or a factory, got {spec!r}")
    for key, field in _FROM_TRAINING_ARGUMENTS.items():
        if key in kwargs:
            raise ValueError(
                f"set {key} with TrainingArguments({field}=...), not in zo_kwargs: the "
                "Trainer's LR scheduler and logging read it from there"
            )


class ZOTrainer(Trainer):
    """`transformers.Trainer` taking zeroth-order steps (AGZO, MeZO, LOZO): no backward pass.

    zo_optimizer: the method, as
        - a registered method's name, "agzo" (default), "mezo", "lozo" (`agzo methods`),
          or one of the classes `agzo.AGZO`...:
          built on the model with lr=args.learning_rate, weight_decay=args.weight_decay
          (not applied to biases and norms, as Trainer does) and seed=args.seed, plus
          `zo_kwargs` (eps, rank, two_sided, include/exclude patterns, update, ...);
        - or a factory `lambda model: agzo.AGZO(model, lr=..., eps=...)`, called with the
          model the Trainer trains; its own lr is then the peak lr the scheduler scales.
    An optimizer built beforehand may instead come through `optimizers=(optimizer, None)`.
    Every other argument is `transformers.Trainer`'s.

    Under `torchrun` / `accelerate launch` each process takes its own share of the data,
    as with Trainer, and the optimizer reduces the step's losses (and AGZO's subspaces)
    over the processes with a `DistributedReducer`, so all of them take the same step.
    Each process's loss is weighted by its rows: a causal LM's loss, a mean over tokens,
    then differs from the mean over the union batch's tokens when the processes' batches
    hold different numbers of tokens.

    Raises ValueError at construction for settings a zeroth-order step cannot honour (fp16
    loss scaling, DeepSpeed, FSDP, several GPUs in one process); warns for ones it ignores.
    """

    def __init__(
        self,
        *args: Any,
        zo_optimizer: ZOOptimizerSpec | None = None,
        zo_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        given = kwargs.get("optimizers", (None, None))[0]
        if given is not None and (zo_optimizer is not None or zo_kwargs):
            raise ValueError(
                "pass the optimizer either through optimizers=(optimizer, scheduler) or through "
                "zo_optimizer/zo_kwargs, not both"
            )
        spec: ZOOptimizerSpec = "agzo" if zo_optimizer is None else zo_optimizer
        _check_spec(spec, zo_kwargs or {})
        self.zo_spec = spec
        self.zo_kwargs = dict(zo_kwargs or {})
        self._pending_batches: list[dict[str, Any]] = []
        self._pending_global_step = -1
        super().__init__(*args, **kwargs)
        if self.optimizer is not None:
            trainer_driven(_zeroth_order_inside(self.optimizer))
        self._check_training_arguments()

    # -- settings --------------------------------------------------------------------------
    def _check_training_arguments(self) -> None:
        args = self.args
        if getattr(self, "optimizer_cls_and_kwargs", None) is not None:
            raise ValueError(
                "ZOTrainer builds its optimizer from zo_optimizer; optimizer_cls_and_kwargs "
                "is for first-order optimizers"
            )
        if args.fp16 or getattr(self.accelerator, "scaler", None) is not None:
            raise ValueError(
                "fp16=True is mixed precision for backpropagation: on GPU the Trainer's "
                "GradScaler scales the loss for backward, unscales the gradients and refuses "
                "an optimizer step that produced none. A zeroth-order step has no backward and "
                "no gradients. Train in float32, use bf16=True (autocast, no scaler), or load "
                "the model in a half-precision dtype"
            )
        if getattr(self, "is_deepspeed_enabled", False) or getattr(self, "is_fsdp_enabled", False):
            raise ValueError(
                "ZOTrainer does not support DeepSpeed or FSDP: their sharded optimizers expect "
                "gradients, and a zeroth-order step perturbs whole tensors in place"
            )
        if args.n_gpu > 1:
            raise ValueError(
                f"ZOTrainer runs one device per process (n_gpu={args.n_gpu}: this process "
                "sees several GPUs, which Trainer would drive with nn.DataParallel). Launch "
                "one process per GPU: torchrun --nproc-per-node N your_script.py"
            )
        if args.max_grad_norm is not None and args.max_grad_norm > 0:
            if args.max_grad_norm != 1.0:  # 1.0 is the default, not a choice
                warnings.warn(
                    f"max_grad_norm={args.max_grad_norm} is ignored: a zeroth-order step has "
                    "no gradient to clip",
                    UserWarning,
                    stacklevel=3,
                )
            args.max_grad_norm = 0.0  # skip the Trainer's clipping of absent gradients
        checkpointing = getattr(args, "activation_checkpointing", None)
        if checkpointing or getattr(args, "gradient_checkpointing", None):
            warnings.warn(
                "gradient (activation) checkpointing saves memory for a backward pass, which "
                "a zeroth-order step never runs; it has no effect here. Leave it off",
                UserWarning,
                stacklevel=3,
            )
        if getattr(args, "neftune_noise_alpha", None) is not None:
            warnings.warn(
                "neftune_noise_alpha is ignored: NEFTune adds noise in training mode only, and "
                "ZOTrainer evaluates the model in eval mode (noise would differ between the "
                "perturbed evaluations and swamp the loss difference)",
                UserWarning,
                stacklevel=3,
            )

    # -- optimizer ---------------------------------------------------------------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Build the zeroth-order optimizer (once), adapted to the Trainer's step call."""
        if self.optimizer is None:
            target = self.model if model is None else model
            if target is None:
                raise RuntimeError("ZOTrainer has no model to build the optimizer on")
            self.optimizer = self._build_zeroth_order_optimizer(target)
        optimizer = trainer_driven(_zeroth_order_inside(self.optimizer))
        if self.args.world_size > 1 and not optimizer.reducer.collective:
            # Several processes: the step's losses and subspaces are those of every
            # process's batch together, so all of them take the same step.
            optimizer.reducer = DistributedReducer()
        # A new train() call starts afresh: no micro-batch of an interrupted one is kept.
        self._pending_batches = []
        return self.optimizer

    def _build_zeroth_order_optimizer(self, model: nn.Module) -> ZerothOrderOptimizer:
        spec = self.zo_spec
        if callable(spec) and not isinstance(spec, type):
            optimizer = spec(model)
            if not isinstance(optimizer, ZerothOrderOptimizer):
                raise TypeError(
                    "the zo_optimizer factory must return an agzo zeroth-order optimizer "
                    f"(agzo.AGZO, MeZO, LOZO), got {type(optimizer).__name__}"
                )
            return optimizer
        build: Callable[..., ZerothOrderOptimizer] = (
            _method_class(spec) if isinstance(spec, str) else spec
        )
        kwargs = dict(self.zo_kwargs)
        kwargs.setdefault("seed", self.args.seed)
        lr, weight_decay = self.args.learning_rate, self.args.weight_decay
        if not weight_decay:
            return build(model, lr=lr, **kwargs)
        # Like Trainer: no weight decay on biases and normalization weights.
        named = select_named_parameters(
            model, kwargs.pop("include", None), kwargs.pop("exclude", None)
        )
        decayed = set(self.get_decay_parameter_names(model))
        groups = [
            {"params": [p for n, p in named if n in decayed], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0},
        ]
        groups = [group for group in groups if group["params"]]
        return build(groups, model=model, lr=lr, weight_decay=weight_decay, **kwargs)

    @property
    def zeroth_order_optimizer(self) -> TrainerDrivenStep:
        """The zeroth-order optimizer itself, under accelerate's wrapper."""
        if self.optimizer is None:
            self.create_optimizer()
        return trainer_driven(_zeroth_order_inside(self.optimizer))

    # -- one step ----------------------------------------------------------------------------
    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """One zeroth-order step on this Trainer step's batch; returns its loss, detached.

        With gradient accumulation the micro-batches before the last are held and count 0;
        the last one takes the step on all of them and returns the loss of the whole batch,
        scaled as Trainer scales accumulated losses, so the logged loss means the same.
        """
        optimizer = self.zeroth_order_optimizer
        model.eval()
        inputs = self._prepare_inputs(inputs)
        if self._pending_global_step != self.state.global_step:
            self._pending_batches = []  # left over from an accumulation window cut short
            self._pending_global_step = self.state.global_step
        self._pending_batches.append(inputs)
        window = max(1, int(getattr(self, "current_gradient_accumulation_steps", 1)))
        if len(self._pending_batches) < window:
            return torch.zeros((), device=self.args.device)
        batches, self._pending_batches = self._pending_batches, []
        if isinstance(optimizer.reducer, DistributedReducer):
            optimizer.reducer.examples = sum(_examples_in(batch) for batch in batches)
        mask = batches[0].get("attention_mask") if len(batches) == 1 else None
        loss = optimizer.step(
            self._loss_closure(model, batches, num_items_in_batch),
            # Several micro-batches: AGZO reads each one's mask from the model call.
            attention_mask=mask if isinstance(mask, torch.Tensor) else None,
        )
        optimizer.expect_trainer_step()
        value = float("nan") if loss is None else float(loss)  # NaN: a skipped step
        return torch.tensor(value, device=self.args.device)

    def _loss_is_scaled_for_accumulation(self, num_items_in_batch: Any) -> bool:
        """Whether `compute_loss` already divides by the whole accumulated batch (as Trainer)."""
        explicit = getattr(self, "loss_is_scaled_for_ga", None)
        if explicit is not None:
            return bool(explicit)
        by_model = bool(getattr(self, "model_accepts_loss_kwargs", False))
        return (by_model and num_items_in_batch is not None) or (
            getattr(self, "compute_loss_func", None) is not None
        )

    def _loss_closure(
        self,
        model: nn.Module,
        batches: list[dict[str, Any]],
        num_items_in_batch: torch.Tensor | int | None,
    ) -> Callable[[], torch.Tensor]:
        """The loss of all `batches` at the current weights, evaluated one by one."""
        scaled = self._loss_is_scaled_for_accumulation(num_items_in_batch)

        def closure() -> torch.Tensor:
            total = torch.zeros((), dtype=torch.float32, device=self.args.device)
            with torch.no_grad():
                for batch in batches:
                    with self.compute_loss_context_manager():
                        # A copy: compute_loss may pop "labels", and the batch is reused.
                        loss = self.compute_loss(
                            model, dict(batch), num_items_in_batch=num_items_in_batch
                        )
                    if isinstance(loss, tuple):
                        loss = loss[0]
                    if not scaled:
                        loss = loss / len(batches)
                    total = total + loss.detach().float().to(total.device)
            return total

        return closure

    # -- logging -----------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log without `grad_norm` (there is no gradient), with skipped steps and
        the optimizer's figures about its last step (an adaptive rank's ranks)."""
        logs = {key: value for key, value in logs.items() if key != "grad_norm"}
        if "loss" in logs and self.optimizer is not None:
            optimizer = _zeroth_order_inside(self.optimizer)
            logs["zo_skipped_steps"] = float(optimizer.skipped_steps)
            logs |= optimizer.step_statistics()
        super().log(logs, start_time)
