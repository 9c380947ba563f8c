"""The reconstruction loss: how far a decoded image is from its input, per value.

The one home of the loss both `model(pixels).loss` (`config.reconstruction_loss`) and a
training objective (`latentcode.objectives.AutoencoderObjective`) use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The values of `config.reconstruction_loss` and of a training recipe's `reconstruction_loss`.
RECONSTRUCTION_LOSSES = ("mse", "l1")


def check_reconstruction_loss(name: str) -> None:
    """Refuse a reconstruction loss that is not one of `RECONSTRUCTION_LOSSES`."""
    if name not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"reconstruction_loss must be one of {RECONSTRUCTION_LOSSES}, got {name!r}")


def mean_reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    """Mean per-value MSE (`name="mse"`) or L1 (`"l1"`) of `[B, C, H, W]` images, in fp32: a scalar."""
    check_reconstruction_loss(name)
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"the loss compares the reconstruction with the input, but a reconstruction of shape "
            f"{tuple(reconstruction.shape)} cannot match pixels of shape {tuple(target.shape)} (a model whose "
            "out_channels differs from its in_channels has no reconstruction loss)"
        )
    if name == "l1":
        return F.l1_loss(reconstruction.float(), target.float())
    return F.mse_loss(reconstruction.float(), target.float())
