"""CodeCorrector: a small trainable network that refines a de-quantised latent before the decoder.

A VQ-VAE made from a pretrained continuous autoencoder (`VQVAEModel.from_autoencoder`) decodes
the quantiser's code with the source's frozen decoder. The code the quantiser gives back is the
nearest codeword, not the continuous latent the decoder was trained on; this block learns the
difference (the "rectifier" of ReVQ, "Quantize-then-Rectify", 2025):

    z_hat [B, C, h, w] -> z_hat + net(z_hat),   net = conv3x3 -> (ReLU -> conv3x3) x num_blocks

Its last convolution starts at zero (`ZeroConv2d`), so a new corrector is the identity: adding one changes
nothing until it is trained. Configured by `VQVAEConfig.corrector_config` (None: no corrector).
"""

from __future__ import annotations

import torch
from torch import nn

# The keys of `VQVAEConfig.corrector_config` and their defaults.
CORRECTOR_DEFAULTS = {"hidden_channels": 64, "num_blocks": 2}


def check_corrector_config(config: dict | None) -> dict | None:
    """`config` with its defaults filled in (None stays None: no corrector); unknown keys and
    values that are not positive ints are refused, naming the valid keys."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ValueError(f"corrector_config must be a dict or None, got {type(config).__name__}")
    unknown = sorted(set(config) - set(CORRECTOR_DEFAULTS))
    if unknown:
        raise ValueError(f"corrector_config has no key {unknown[0]!r}; its keys are: {', '.join(CORRECTOR_DEFAULTS)}")
    resolved = {**CORRECTOR_DEFAULTS, **config}
    for key, value in resolved.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"corrector_config[{key!r}] must be a positive int, got {value!r}")
    return resolved


class ZeroConv2d(nn.Conv2d):
    """A convolution whose initialisation (`reset_parameters`, which the models' `_init_weights`
    calls too) is zero: the last layer of a residual block that starts as the identity."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class CodeCorrector(nn.Module):
    """`[B, channels, h, w]` -> the same shape: the input plus a learned residual (zero when new).

    Args:
        channels: channels of the latent it corrects.
        hidden_channels: width of its hidden convolutions.
        num_blocks: ReLU + 3x3 convolutions after the first convolution.
    """

    def __init__(self, channels: int, hidden_channels: int = 64, num_blocks: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden_channels, 3, padding=1)]
        for block in range(num_blocks):
            out = channels if block == num_blocks - 1 else hidden_channels
            last = block == num_blocks - 1
            layers += [nn.ReLU(), (ZeroConv2d if last else nn.Conv2d)(hidden_channels, out, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return latents + self.net(latents)
