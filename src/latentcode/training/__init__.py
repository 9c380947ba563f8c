"""Training of latentcode models: config, the engine every script runs, train.py's task,
checkpoints, EMA (see `training/train.py`).

Lazy like `import latentcode`: `latentcode.training.config` (the options, `--help`) loads without
torch; the engine and the task load on first use of their names."""

import typing as _typing

from ..lazy import lazy_attributes as _lazy_attributes

# Public name -> the submodule that defines it.
_PUBLIC_NAMES = {
    "TrainingConfig": "config",
    "load_config": "config",
    "parse_args": "config",
    "Engine": "engine",
    "TrainingResult": "engine",
    "TrainingTask": "engine",
    "AutoencoderTask": "autoencoder_task",
    "build_engine": "autoencoder_task",
    "train": "autoencoder_task",
    "NonFiniteLossError": "state",
}

__all__ = [  # a literal list: what IDEs and type checkers read (a test keeps it equal to _PUBLIC_NAMES)
    "AutoencoderTask",
    "Engine",
    "NonFiniteLossError",
    "TrainingConfig",
    "TrainingResult",
    "TrainingTask",
    "build_engine",
    "load_config",
    "parse_args",
    "train",
]

if _typing.TYPE_CHECKING:
    from .autoencoder_task import AutoencoderTask, build_engine, train
    from .config import TrainingConfig, load_config, parse_args
    from .engine import Engine, TrainingResult, TrainingTask
    from .state import NonFiniteLossError


__getattr__, __dir__ = _lazy_attributes(__name__, _PUBLIC_NAMES)
