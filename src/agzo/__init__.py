"""Forward-only fine-tuning of language models: AGZO, MeZO, LOZO."""

from agzo.core.estimator import NonFiniteLossError, PrecisionWarning
from agzo.core.optimizer import SkippedStepWarning, ZerothOrderOptimizer
from agzo.methods import AGZO, LOZO, MeZO
from agzo.observe import ActivationCapture, power_iteration

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
