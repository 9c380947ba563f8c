"""What a run must save and check besides weights: the state a training forward pass changes
outside autograd (rolled back when a step is skipped), the quantizers' per-process usage
windows, the settings a resume must keep, and the errors of a run that cannot go on."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import PartialState
from torch import nn

from ..modules.quantizers.base import CodebookUsageWindow
from .checkpointing import list_checkpoints

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many NaN/inf steps in a row."""


class ProcessLostError(RuntimeError):
    """Another process of a multi-process run died or stopped answering (`ddp_timeout`)."""


class NonFiniteSteps:
    """Counts the optimiser steps skipped for a NaN/inf loss or gradient, and stops the run after
    `limit` in a row (`max_consecutive_nonfinite_steps`) with a [`NonFiniteLossError`]."""

    def __init__(self, limit: int):
        self.limit, self.total, self.streak = limit, 0, 0

    def finite(self) -> None:
        self.streak = 0

    def skipped(self, step: int, output_dir: Path) -> None:
        """Step `step` (1-based) was skipped; raises at the `limit`-th in a row."""
        self.total += 1
        self.streak += 1
        logger.warning("non-finite loss or gradient at step %d: step skipped", step)
        if self.streak >= self.limit:
            last = list_checkpoints(output_dir)
            raise NonFiniteLossError(
                f"{self.streak} steps in a row had a NaN/inf loss or gradient (up to step {step}); stopping. "
                f"Last good checkpoint: {last[-1] if last else 'none'}"
            )


class ResumeMismatchError(ValueError):
    """A resume with settings that would break the run's trajectory."""


def resume_settings(config, extra: dict | None = None) -> dict:
    """The settings a resume must keep (`type(config).resume_fixed` plus `extra`), as saved in a
    checkpoint (read back from JSON: tuples become lists)."""
    values = config.option_values()  # by option name: names are unique across groups
    settings = {key: values[key] for key in type(config).resume_fixed}
    return json.loads(json.dumps({**settings, **(extra or {})}))


def check_resume_settings(saved: dict, current: dict, checkpoint: Path) -> None:
    """Raise [`ResumeMismatchError`] naming every trajectory setting that differs from `saved`."""
    changed = [
        f"{key}: {saved[key]!r} -> {current[key]!r}" for key in current if key in saved and saved[key] != current[key]
    ]
    if changed:
        raise ResumeMismatchError(
            f"cannot resume from {checkpoint}: these settings differ from the run that wrote it, and changing "
            f"them would silently break the run (data position, random streams, weights): {'; '.join(changed)}. "
            "Resume with the checkpoint's values, or start a new run in another output_dir."
        )


def usage_windows(model: nn.Module) -> list[CodebookUsageWindow]:
    """The quantizers' usage windows: per-process state that lives outside the state dict."""
    return [
        module.usage for module in model.modules() if isinstance(getattr(module, "usage", None), CodebookUsageWindow)
    ]


def _cloned(state: dict) -> dict:
    return {key: value.clone() if torch.is_tensor(value) else value for key, value in state.items()}


def usage_state(model: nn.Module) -> list[dict]:
    return [_cloned(vars(usage)) for usage in usage_windows(model)]


def load_usage_state(model: nn.Module, states: list[dict]) -> None:
    for usage, saved in zip(usage_windows(model), states, strict=True):
        vars(usage).update(_cloned(saved))


def snapshot_forward_state(model: nn.Module) -> dict:
    """What a training forward pass changes in place, outside autograd: buffers, parameters without
    gradients (EMA codebooks, updated by the quantizer itself) and the quantizers' usage windows."""
    tensors = {
        name: value.detach().clone()
        for name, value in model.state_dict(keep_vars=True).items()
        if not (isinstance(value, nn.Parameter) and value.requires_grad)
    }
    return {"tensors": tensors, "usage": usage_state(model)}


@torch.no_grad()
def restore_forward_state(model: nn.Module, snapshot: dict) -> None:
    current = model.state_dict(keep_vars=True)
    for name, value in snapshot["tensors"].items():
        current[name].copy_(value)
    load_usage_state(model, snapshot["usage"])


# What gloo / NCCL say when a peer process is gone (killed: the connection closes) or frozen
# (the collective times out after ddp_timeout).
_LOST_PROCESS_MESSAGES = ("connection closed by peer", "connection reset by peer", "timed out", "broken pipe")


@contextmanager
def lost_process_errors(ddp_timeout: int, where: Callable[[], str]):
    """Turn the backend's error for a dead or frozen peer into a [`ProcessLostError`] naming the
    ranks this process was waiting for, `ddp_timeout` and `where()` it happened."""
    try:
        yield
    except (RuntimeError, torch.distributed.DistError) as error:
        state = PartialState()
        if state.num_processes > 1 and _is_lost_process(error):
            me, world = state.process_index, state.num_processes
            others = [rank for rank in range(world) if rank != me]
            raise ProcessLostError(
                f"rank {me} of {world} at {where()}: a collective operation with the other processes (ranks "
                f"{others}) failed: one of them died or did not answer within ddp_timeout={ddp_timeout} s "
                f"({_first_line(error)}). Resume with --resume_from_checkpoint latest."
            ) from error
        raise


def _is_lost_process(error: BaseException) -> bool:
    return isinstance(error, torch.distributed.DistError) or any(
        text in str(error).lower() for text in _LOST_PROCESS_MESSAGES
    )


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"
