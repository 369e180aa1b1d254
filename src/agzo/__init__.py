"""Forward-only fine-tuning of language models: AGZO, MeZO, LOZO."""

from agzo.capture import ActivationCapture, power_iteration
from agzo.estimator import NonFiniteLossError, PrecisionWarning
from agzo.optim import AGZO, LOZO, MeZO, SkippedStepWarning, ZerothOrderOptimizer

__version__ = "0.1.0"

__all__ = [
    "AGZO",
    "LOZO",
    "ActivationCapture",
    "MeZO",
    "NonFiniteLossError",
    "PrecisionWarning",
    "SkippedStepWarning",
    "ZerothOrderOptimizer",
    "__version__",
    "power_iteration",
]
