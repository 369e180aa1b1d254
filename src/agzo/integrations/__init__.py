"""Integrations with other training frameworks.

`ZOTrainer`: a `transformers.Trainer` whose steps are zeroth-order (see hf_trainer.py).
"""

from agzo.integrations.hf_trainer import ZOTrainer

__all__ = ["ZOTrainer"]
