"""TRL's `SFTTrainer` taking zeroth-order steps: ZO fine-tuning on chat datasets without
leaving TRL.

    from trl import SFTConfig
    from agzo.integrations.trl import ZOSFTTrainer

    trainer = ZOSFTTrainer(                  # was: SFTTrainer(
        model=model, args=SFTConfig(...), train_dataset=chats, processing_class=tokenizer,
        zo_optimizer="agzo", zo_kwargs={"eps": 1e-3},
    )
    trainer.train()

Everything of SFTTrainer stays: dataset formats (conversational "messages", prompt /
completion pairs, with the loss on the completion only), chat templates, packing,
tokenization, its loss and its token metrics. `ZOTrainer` supplies the step (see
`agzo.integrations.hf_trainer`): the model in eval mode, the loss evaluated under
`no_grad` at the perturbed weights, no backward. Needs `pip install trl` (agzo[trl]).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn
from trl import SFTTrainer

from agzo.integrations.hf_trainer import ZOTrainer

__all__ = ["ZOSFTTrainer"]


@contextlib.contextmanager
def _training_flag(model: nn.Module | None, training: bool) -> Iterator[None]:
    """Set only the top module's `training` flag, which SFTTrainer reads to file its
    metrics under train or eval; submodules keep their mode, so dropout stays off."""
    if model is None or not training or model.training:
        yield
        return
    model.training = True
    try:
        yield
    finally:
        model.training = False


class ZOSFTTrainer(ZOTrainer, SFTTrainer):
    """`trl.SFTTrainer` whose optimizer steps are zeroth-order (AGZO, MeZO, LOZO).

    Takes SFTTrainer's arguments plus `zo_optimizer` and `zo_kwargs` (as `ZOTrainer`).
    SFTConfig's gradient checkpointing, on by default, is switched off: it only saves
    memory for a backward pass, which a zeroth-order step never runs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = kwargs.get("args")
        # Read the stored values: the deprecated name is a property that warns when read.
        stored = vars(config) if config is not None else {}
        for name in ("activation_checkpointing", "gradient_checkpointing"):
            if stored.get(name):
                stored[name] = False
        self._zo_stepping = False
        super().__init__(*args, **kwargs)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        self._zo_stepping = True
        try:
            return super().training_step(*args, **kwargs)
        finally:
            self._zo_stepping = False

    def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        # A zeroth-order step runs in eval mode, but its token metrics are training ones.
        with _training_flag(self.model, self._zo_stepping):
            return super().compute_loss(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # A training log (it has "loss"; evaluation logs have "eval_loss") reports the
        # training metrics, although the model sits in eval mode between ZO steps.
        with _training_flag(self.model, "loss" in logs):
            super().log(logs, start_time)
