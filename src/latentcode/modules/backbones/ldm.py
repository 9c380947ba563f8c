"""The `"ldm"` backbone (the default): the convolutional encoder/decoder of taming / latent diffusion.

Computationally equivalent to the ``Encoder`` / ``Decoder`` of taming-transformers,
latent-diffusion and diffusers (same operations in the same order), so their checkpoints
convert with exact outputs. Module names follow the resolution levels:

    Encoder: conv_in -> down[0..L-1] -> mid -> norm_out -> SiLU -> conv_out
    Decoder: conv_in -> mid -> up[0..L-1] -> norm_out -> SiLU -> conv_out

``down[i]`` works at 1/2**i of the input resolution; ``up`` is stored in the order it runs,
so ``up[0]`` works at the lowest resolution. Each resolution level and the middle block is a
transformers ``GradientCheckpointingLayer``: ``model.activation_checkpointing_enable()``
recomputes their activations in the backward pass of training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .. import winograd

GROUP_NORM_EPS = 1e-6


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups, channels, eps=GROUP_NORM_EPS, affine=True)


def _inference() -> bool:
    """True when no autograd graph is recorded, so fresh intermediates may be overwritten in
    place instead of allocating a new tensor per elementwise op (fewer copies, less memory)."""
    return not torch.is_grad_enabled()


def activation_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout the backbone runs its activations in, chosen once per call at its entry.

    channels_last (NHWC strides; the tensor is still indexed `[B, C, H, W]`) on CPU, where
    oneDNN's convolutions and GroupNorm are faster in it, except under CPU autocast, where
    GroupNorm's round trip through fp32 is ~4x slower in channels_last than in NCHW (profiled
    with `benchmarks/bench_models.py`'s models). On CUDA, channels_last for half precision,
    where cuDNN's tensor-core convolutions want it; fp32 CUDA tensors keep their layout.
    """
    if x.device.type == "cpu":
        return torch.preserve_format if torch.is_autocast_enabled("cpu") else torch.channels_last
    half = x.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(x.device.type)
    return torch.channels_last if half else torch.preserve_format


def to_activation_layout(x: torch.Tensor) -> torch.Tensor:
    """`x` `[B, C, H, W]` in [`activation_memory_format`]: one copy at most, none when it already is."""
    memory_format = activation_memory_format(x)
    return x if memory_format is torch.preserve_format else x.contiguous(memory_format=memory_format)


def convolve(conv: nn.Conv2d, x: torch.Tensor, implementation: str) -> torch.Tensor:
    """`conv(x)`, by Winograd F(4x4, 3x3) where `implementation` says so (`winograd.applies`)."""
    return winograd.winograd_conv2d(conv, x) if winograd.applies(conv, x, implementation) else conv(x)


class _Convolving(nn.Module):
    """A backbone module whose 3x3 convolutions run through `convolve(..., self.conv_implementation)`."""

    conv_implementation = winograd.CONV_IMPLEMENTATIONS[0]  # the default; see set_conv_implementation


def set_conv_implementation(module: nn.Module, implementation: str) -> None:
    """Run the 3x3 convolutions of the backbone modules in `module` by `implementation`, one of
    `winograd.CONV_IMPLEMENTATIONS` (see `latentcode.modules.winograd`)."""
    winograd.check_implementation(implementation)
    for block in module.modules():
        if isinstance(block, _Convolving):
            block.conv_implementation = implementation


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU of a fresh intermediate; in place under no_grad / inference_mode."""
    return F.silu(x, inplace=_inference())


def add_residual(h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """`h + residual` for a fresh `h`; in place under no_grad / inference_mode."""
    return h.add_(residual) if _inference() else h + residual


class ResnetBlock(_Convolving):
    """GroupNorm -> SiLU -> conv -> GroupNorm -> SiLU -> dropout -> conv, plus a shortcut.

    `[B, in_channels, H, W] -> [B, out_channels, H, W]`. The shortcut is a 1x1 convolution
    when the channel count changes and the identity otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int, num_groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = convolve(self.conv1, silu(self.norm1(x)), self.conv_implementation)
        h = convolve(self.conv2, self.dropout(silu(self.norm2(h))), self.conv_implementation)
        return add_residual(h, self.shortcut(x))


class SelfAttention(nn.Module):
    """Single-head self-attention over all spatial positions, with a residual connection.

    `[B, C, H, W] -> [B, C, H, W]`. Projections are linear layers (a 1x1 convolution in the
    original taming code computes the same thing); attention runs through PyTorch's fused
    `scaled_dot_product_attention` with scale `1 / sqrt(C)`.
    """

    def __init__(self, channels: int, num_groups: int):
        super().__init__()
        self.norm = group_norm(channels, num_groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # [B, H*W, C]
        q, k, v = (proj(h).unsqueeze(1) for proj in (self.to_q, self.to_k, self.to_v))  # [B, 1, H*W, C]
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        h = self.to_out(h).transpose(1, 2).reshape(batch, channels, height, width)
        # `h` is a transposed (channels_last) view; `x` first makes the sum take x's memory
        # format, so the layout chosen at the backbone's entry holds after attention.
        return x + h


class Downsample(nn.Module):
    """Stride-2 3x3 convolution after padding one pixel on the right and bottom only.

    The asymmetric padding is what taming / latent-diffusion / diffusers do; matching it is
    needed for exact checkpoint conversion. `[B, C, H, W] -> [B, C, H/2, W/2]`.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(_Convolving):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution. `[B, C, H, W] -> [B, C, 2H, 2W]`."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return convolve(self.conv, F.interpolate(x, scale_factor=2.0, mode="nearest"), self.conv_implementation)


class ResolutionLevel(GradientCheckpointingLayer):
    """ResNet blocks at one resolution, each optionally followed by self-attention, then an
    optional resampling (Downsample in the encoder, Upsample in the decoder)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        num_groups: int,
        dropout: float,
        attention: bool,
        resample: nn.Module | None,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, num_groups, dropout)
            for i in range(num_blocks)
        )
        self.attentions = nn.ModuleList(
            SelfAttention(out_channels, num_groups) for _ in range(num_blocks if attention else 0)
        )
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.attentions:
                x = self.attentions[i](x)
        if self.resample is not None:
            x = self.resample(x)
        return x


class MidBlock(GradientCheckpointingLayer):
    """ResNet block -> optional self-attention -> ResNet block, at the lowest resolution."""

    def __init__(self, channels: int, num_groups: int, dropout: float, attention: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, num_groups, dropout)
        self.attention = SelfAttention(channels, num_groups) if attention else None
        self.block_2 = ResnetBlock(channels, channels, num_groups, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block_1(x)
        if self.attention is not None:
            x = self.attention(x)
        return self.block_2(x)


class Encoder(_Convolving):
    """Image to latent features. `[B, in_channels, H, W] -> [B, out_channels, H/f, W/f]` with
    `f = 2 ** (len(block_out_channels) - 1)`. For a VAE `out_channels` is twice the latent
    channels (mean and log-variance)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        norm_num_groups: int,
        attention_levels: Sequence[int] = (),
        mid_block_add_attention: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        num_levels = len(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        level_in = block_out_channels[0]
        for level, channels in enumerate(block_out_channels):
            is_last = level == num_levels - 1
            self.down.append(
                ResolutionLevel(
                    level_in,
                    channels,
                    num_blocks=layers_per_block,
                    num_groups=norm_num_groups,
                    dropout=dropout,
                    attention=level in attention_levels,
                    resample=None if is_last else Downsample(channels),
                )
            )
            level_in = channels
        self.mid = MidBlock(level_in, norm_num_groups, dropout, mid_block_add_attention)
        self.norm_out = group_norm(level_in, norm_num_groups)
        self.conv_out = nn.Conv2d(level_in, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, hidden_states: list[torch.Tensor] | None = None) -> torch.Tensor:
        """`[B, in_channels, H, W] -> [B, out_channels, H/f, W/f]`. With a `hidden_states` list,
        appends the feature maps after `conv_in`, after each level `l` (`[B, block_out_channels[l],
        H/2^(l+1), W/2^(l+1)]`, the last level at `H/f`) and after the mid block."""
        x = convolve(self.conv_in, to_activation_layout(x), self.conv_implementation)
        features = [x]
        for level in self.down:
            x = level(x)
            features.append(x)
        x = self.mid(x)
        if hidden_states is not None:
            hidden_states.extend([*features, x])
        return convolve(self.conv_out, silu(self.norm_out(x)), self.conv_implementation)


class Decoder(_Convolving):
    """Latent to image. `[B, in_channels, h, w] -> [B, out_channels, h*f, w*f]`.

    Each level has `layers_per_block + 1` ResNet blocks, as in latent-diffusion.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: Sequence[int],
        layers_per_block: int,
        norm_num_groups: int,
        attention_levels: Sequence[int] = (),
        mid_block_add_attention: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        num_levels = len(block_out_channels)
        level_in = block_out_channels[-1]
        self.conv_in = nn.Conv2d(in_channels, level_in, kernel_size=3, padding=1)
        self.mid = MidBlock(level_in, norm_num_groups, dropout, mid_block_add_attention)
        self.up = nn.ModuleList()
        for level in reversed(range(num_levels)):
            channels = block_out_channels[level]
            self.up.append(
                ResolutionLevel(
                    level_in,
                    channels,
                    num_blocks=layers_per_block + 1,
                    num_groups=norm_num_groups,
                    dropout=dropout,
                    attention=level in attention_levels,
                    resample=None if level == 0 else Upsample(channels),
                )
            )
            level_in = channels
        self.norm_out = group_norm(level_in, norm_num_groups)
        self.conv_out = nn.Conv2d(level_in, out_channels, kernel_size=3, padding=1)

    @property
    def last_layer(self) -> nn.Parameter:
        """Weight of the final convolution; VQGAN's adaptive GAN weight uses its gradients."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = convolve(self.conv_in, to_activation_layout(z), self.conv_implementation)
        x = self.mid(x)
        for level in self.up:
            x = level(x)
        return convolve(self.conv_out, silu(self.norm_out(x)), self.conv_implementation)
