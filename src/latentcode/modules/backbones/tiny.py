"""The tiny TAESD-style backbone (madebyollin/taesd; diffusers' `AutoencoderTiny`).

3x3 convolutions and ReLUs only, no normalisation: residual blocks `conv-ReLU-conv-ReLU-conv`
plus a skip, stride-2 convolutions to downsample, nearest-neighbour x2 upsampling. The FLUX.2
variant (`taef2`) adds a group-norm "pooling" branch to the blocks at the lowest resolution. The
decoder first soft-clamps the latent to (-3, 3) with `tanh(z / 3) * 3`.

Both halves are one `nn.Sequential` (`layers`) in the order of TAESD's own `Encoder()` /
`Decoder()` sequentials, the clamp included as the decoder's layer 0, so that a published
TAESD state_dict loads key for key. TAESD works on pixels in [0, 1]; latentcode's are in
[-1, 1]: the encoder maps `x -> (x + 1) / 2` first and the decoder `y -> 2 * y - 1` last, as
diffusers' `EncoderTiny` / `DecoderTiny` do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# TAESD's pooling branch: 1x1 conv to 4x the channels, GroupNorm(4), ReLU, 1x1 conv back.
POOLING_EXPANSION = 4
POOLING_GROUPS = 4
# Blocks at full resolution: TAESD has one in the encoder and one in the decoder.
FULL_RESOLUTION_BLOCKS = 1


def _conv(in_channels: int, out_channels: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, **kwargs)


class LatentClamp(nn.Module):
    """`tanh(z / 3) * 3`: the soft clamp TAESD's decoder applies to its input latent."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z / 3) * 3


class TinyBlock(nn.Module):
    """`relu(conv(x) + x)` with `conv` = conv-ReLU-conv-ReLU-conv (3x3). With `pooling`, `x` first
    gets `x + pool(x)`, `pool` = 1x1 conv -> GroupNorm(4) -> ReLU -> 1x1 conv (TAESD's
    `use_midblock_gn`). `[B, C, h, w] -> [B, C, h, w]`."""

    def __init__(self, channels: int, pooling: bool = False):
        super().__init__()
        self.conv = nn.Sequential(
            _conv(channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(), _conv(channels, channels)
        )
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if pooling:
            wide = POOLING_EXPANSION * channels
            self.pool = nn.Sequential(
                nn.Conv2d(channels, wide, kernel_size=1, bias=False),
                nn.GroupNorm(POOLING_GROUPS, wide),
                nn.ReLU(),
                nn.Conv2d(wide, channels, kernel_size=1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def blocks_per_level(levels: int, layers_per_block: int) -> list[int]:
    """Residual blocks of each level, full resolution first: one, then `layers_per_block`."""
    return [FULL_RESOLUTION_BLOCKS] + [layers_per_block] * (levels - 1)


def _blocks(count: int, channels: int, pooling: bool) -> list[TinyBlock]:
    return [TinyBlock(channels, pooling) for _ in range(count)]


class TinyEncoder(nn.Module):
    """Pixels `[B, in_channels, H, W]` in [-1, 1] -> `[B, out_channels, H/f, W/f]`,
    `f = 2 ** (len(block_out_channels) - 1)`.

    `layers`: conv_in, the full-resolution blocks, then per lower level a stride-2 conv (no bias)
    and its blocks (with the pooling branch at the lowest level when `pooling`), then conv_out.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int = 3,
        pooling: bool = False,
    ):
        super().__init__()
        channels = list(block_out_channels)
        counts = blocks_per_level(len(channels), layers_per_block)
        layers, self.level_ends = [], []
        for level, (width, count) in enumerate(zip(channels, counts)):
            if level == 0:
                layers.append(_conv(in_channels, width))
            else:
                layers.append(_conv(channels[level - 1], width, stride=2, bias=False))
            layers += _blocks(count, width, pooling and level == len(channels) - 1)
            self.level_ends.append(len(layers) - 1)
        layers.append(_conv(channels[-1], out_channels))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, hidden_states: list[torch.Tensor] | None = None) -> torch.Tensor:
        """`hidden_states`, when given, receives each level's output `[B, block_out_channels[l],
        H/2^l, W/2^l]`."""
        h = (x + 1) / 2
        for index, layer in enumerate(self.layers):
            h = layer(h)
            if hidden_states is not None and index in self.level_ends:
                hidden_states.append(h)
        return h


class TinyDecoder(nn.Module):
    """Latents `[B, in_channels, h, w]` -> pixels `[B, out_channels, h*f, w*f]` in [-1, 1].

    `layers`: the clamp, conv_in + ReLU, then from the lowest level up its blocks (pooling at the
    lowest level when `pooling`) and, except at full resolution, nearest x2 upsampling and a conv
    (no bias), then conv_out.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int = 3,
        pooling: bool = False,
    ):
        super().__init__()
        channels = list(block_out_channels)
        counts = blocks_per_level(len(channels), layers_per_block)
        layers = [LatentClamp(), _conv(in_channels, channels[-1]), nn.ReLU()]
        for level in reversed(range(len(channels))):
            layers += _blocks(counts[level], channels[level], pooling and level == len(channels) - 1)
            if level > 0:
                layers += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    _conv(channels[level], channels[level - 1], bias=False),
                ]
        layers.append(_conv(channels[0], out_channels))
        self.layers = nn.Sequential(*layers)

    @property
    def last_layer(self) -> nn.Parameter:
        """Weight of the output convolution (the adaptive GAN weight differentiates through it)."""
        return self.layers[-1].weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z) * 2 - 1
