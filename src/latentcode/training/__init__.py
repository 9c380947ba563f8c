"""Training of latentcode models: config, the engine every script runs, train.py's task,
checkpoints, EMA (see `training/train.py`)."""

from .config import TrainingConfig, load_config, parse_args
from .engine import Engine, TrainingResult, TrainingTask
from .loop import AutoencoderTask, train, trainer
from .state import NonFiniteLossError

__all__ = [
    "AutoencoderTask",
    "Engine",
    "NonFiniteLossError",
    "TrainingConfig",
    "TrainingResult",
    "TrainingTask",
    "load_config",
    "parse_args",
    "train",
    "trainer",
]
