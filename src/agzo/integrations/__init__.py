"""Bridges from agzo's zeroth-order optimizers to other training frameworks.

`agzo.integrations.hf_trainer.ZOTrainer`: a `transformers.Trainer` whose steps are
forward-only AGZO / MeZO / LOZO steps (see docs/hf_trainer.md).
"""

from agzo.integrations.hf_trainer import ZO_METHODS, ZOTrainer

__all__ = ["ZO_METHODS", "ZOTrainer"]
