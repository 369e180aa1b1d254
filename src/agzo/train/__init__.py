"""Training workflow: config, loop, checkpoints, metrics logging, optimizer factory.

from agzo.train import TrainConfig, train
result = train(TrainConfig(optimizer="agzo", steps=150, output_dir="runs/demo"))
print(result.zero_shot["test"], result.final["test"])
"""

from agzo.train.checkpoint import Checkpoint, CheckpointError, TrainState, latest_checkpoint
from agzo.train.config import (
    DEFAULT_TASK,
    ConfigError,
    TrainConfig,
    load_config_file,
)
from agzo.train.errors import TrainError
from agzo.train.evaluate import evaluate
from agzo.train.evaluate_saved import evaluate_model
from agzo.train.logging import MetricsLogger, plot_metrics
from agzo.train.loop import TrainingInterrupted, TrainResult, sample_minibatch, train
from agzo.train.objective import CandidateScorer
from agzo.train.optimizers import build_optimizer, trainable_parameters

__all__ = [
    "DEFAULT_TASK",
    "CandidateScorer",
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "MetricsLogger",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "TrainState",
    "TrainingInterrupted",
    "build_optimizer",
    "evaluate",
    "evaluate_model",
    "latest_checkpoint",
    "load_config_file",
    "plot_metrics",
    "sample_minibatch",
    "train",
    "trainable_parameters",
]
