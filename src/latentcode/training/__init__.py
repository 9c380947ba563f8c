"""Training of latentcode models: config, loop, checkpoints, EMA (see `training/train.py`)."""

from .config import TrainingConfig, load_config, parse_args
from .loop import NonFiniteLossError, Trainer, TrainingResult, train

__all__ = ["NonFiniteLossError", "Trainer", "TrainingConfig", "TrainingResult", "load_config", "parse_args", "train"]
