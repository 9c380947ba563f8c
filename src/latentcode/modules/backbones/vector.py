"""The vector-latent backbone of the disentanglement literature (Burgess et al. 2018).

The encoder / decoder of "Understanding disentangling in beta-VAE", as the disentangling-vae
repository ("Burgess" model) implements it: 4x4 stride-2 convolutions with `hidden_channels`
channels from the image down to 4x4 (three at 32x32, a fourth at 64x64), flattened in
channel-major order, two `hidden_size`-unit linear layers and a linear head; the decoder mirrors
it with transposed convolutions and ends in a sigmoid. All activations are ReLU.

The original works on pixels in [0, 1]; latentcode's pixels are in [-1, 1], so the encoder maps
`x -> (x + 1) / 2` before its first convolution and the decoder maps its sigmoid output
`y -> 2 * y - 1`. With that, a converted checkpoint computes exactly what the original does.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Image sizes the layout is defined for: the convolutions halve the image down to 4x4.
VECTOR_SAMPLE_SIZES = (32, 64)
FEATURE_SIZE = 4  # spatial size of the last feature map, before flattening


def num_convolutions(sample_size: int) -> int:
    """Stride-2 convolutions from `sample_size` down to 4x4: 3 at 32x32, 4 at 64x64."""
    if sample_size not in VECTOR_SAMPLE_SIZES:
        raise ValueError(
            f"the vector backbone is defined for images of {VECTOR_SAMPLE_SIZES} pixels (Burgess et al.), "
            f"got sample_size={sample_size}; resize the images or use backbone='ldm' or 'tiny'"
        )
    return int(math.log2(sample_size // FEATURE_SIZE))


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)


def _conv_transpose(in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)


class VectorEncoder(nn.Module):
    """Pixels `[B, in_channels, S, S]` in [-1, 1] (S = `sample_size`) -> `[B, out_features]`.

    `convs` (stride 2, ReLU after each), `linears` (ReLU after each), then `head` (no activation):
    for a VAE `out_features = 2 * D`, the means then the log-variances.
    """

    def __init__(
        self, in_channels: int, out_features: int, sample_size: int, hidden_channels: int = 32, hidden_size: int = 256
    ):
        super().__init__()
        count = num_convolutions(sample_size)
        channels = [in_channels] + [hidden_channels] * count
        self.convs = nn.ModuleList(_conv(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:]))
        flat = hidden_channels * FEATURE_SIZE * FEATURE_SIZE
        self.linears = nn.ModuleList([nn.Linear(flat, hidden_size), nn.Linear(hidden_size, hidden_size)])
        self.head = nn.Linear(hidden_size, out_features)

    def forward(self, x: torch.Tensor, hidden_states: list[torch.Tensor] | None = None) -> torch.Tensor:
        """`hidden_states`, when given, receives the feature map after each convolution
        (`[B, hidden_channels, S/2^(i+1), S/2^(i+1)]`) and the output of each linear layer
        (`[B, hidden_size]`)."""
        h = (x + 1) / 2
        for conv in self.convs:
            h = torch.relu(conv(h))
            if hidden_states is not None:
                hidden_states.append(h)
        h = h.flatten(1)  # channel-major, as the original's x.view(batch_size, -1)
        for linear in self.linears:
            h = torch.relu(linear(h))
            if hidden_states is not None:
                hidden_states.append(h)
        return self.head(h)


class VectorDecoder(nn.Module):
    """Code `[B, in_features]` -> pixels `[B, out_channels, S, S]` in [-1, 1].

    `linears` (`in_features -> hidden_size -> hidden_size -> hidden_channels * 4 * 4`, ReLU after
    each), reshaped to `[B, hidden_channels, 4, 4]`, then `deconvs` (transposed stride-2
    convolutions, ReLU between them, a sigmoid after the last).
    """

    def __init__(
        self, in_features: int, out_channels: int, sample_size: int, hidden_channels: int = 32, hidden_size: int = 256
    ):
        super().__init__()
        count = num_convolutions(sample_size)
        self.hidden_channels = hidden_channels
        flat = hidden_channels * FEATURE_SIZE * FEATURE_SIZE
        self.linears = nn.ModuleList(
            [nn.Linear(in_features, hidden_size), nn.Linear(hidden_size, hidden_size), nn.Linear(hidden_size, flat)]
        )
        channels = [hidden_channels] * count + [out_channels]
        self.deconvs = nn.ModuleList(_conv_transpose(c_in, c_out) for c_in, c_out in zip(channels[:-1], channels[1:]))

    @property
    def last_layer(self) -> nn.Parameter:
        """Weight of the output layer (the adaptive GAN weight differentiates through it)."""
        return self.deconvs[-1].weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for linear in self.linears:
            h = torch.relu(linear(h))
        h = h.view(h.shape[0], self.hidden_channels, FEATURE_SIZE, FEATURE_SIZE)
        for deconv in self.deconvs[:-1]:
            h = torch.relu(deconv(h))
        return 2 * torch.sigmoid(self.deconvs[-1](h)) - 1
