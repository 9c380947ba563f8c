"""Exponential moving average of model weights."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class EMAModel:
    """fp32 shadow copies of a model's parameters, `shadow = d * shadow + (1 - d) * param` per step.

    The decay warms up exactly as in diffusers' `EMAModel`: the first update copies the weights,
    the n-th uses `min(decay, (1 + n) / (10 + n))`, so the average does not stay stuck at the
    random init. Ours rather than diffusers' because its shadows are fp32 whatever the weights'
    dtype: diffusers averages in the weights' dtype, where bf16 drops every update smaller than
    its resolution and a 0.999 average of bf16 weights never moves (tests/test_training.py).
    It is a checkpointable object (`state_dict` / `load_state_dict`) for
    `accelerator.register_for_checkpointing`.
    """

    def __init__(self, parameters: Iterable[nn.Parameter], decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow = [p.detach().float().clone() for p in parameters]

    def current_decay(self) -> float:
        n = self.num_updates
        return 0.0 if n == 0 else min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def step(self, parameters: Iterable[nn.Parameter]) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        for average, param in zip(self.shadow, parameters, strict=True):
            average.lerp_(param.detach().float(), 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[nn.Parameter]) -> None:
        """Overwrite `parameters` with the averages."""
        for average, param in zip(self.shadow, parameters, strict=True):
            param.copy_(average.to(param.dtype))

    def to(self, device: torch.device | str) -> EMAModel:
        self.shadow = [average.to(device) for average in self.shadow]
        return self

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state holds {len(state['shadow'])} tensors, the model has {len(self.shadow)}")
        device = self.shadow[0].device if self.shadow else "cpu"
        self.decay, self.num_updates = state["decay"], state["num_updates"]
        self.shadow = [average.to(device) for average in state["shadow"]]
