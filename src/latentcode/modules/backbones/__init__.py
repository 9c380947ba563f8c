"""Backbones: the encoder / decoder pairs a model can be built on, by name.

The backbone is one axis of a model, the bottleneck (AutoEncoder, VAE, VQ-VAE) the other.
`config.backbone` names an entry of [`BACKBONES`]; the entry builds the encoder and decoder from
the config and declares what everything downstream asks about: the downsampling factor, the
latent shape (`[C, h, w]`, or `[D]` for a vector latent) and the bottleneck families it offers.

| name | what | latent | VQ-VAE tokens |
|---|---|---|---|
| `"ldm"` (default) | taming / latent-diffusion convolutional backbone | `[C, H/f, W/f]` | `[H/f, W/f]` grid |
| `"vector"` | conv + fully connected encoder/decoder of Burgess et al. 2018 (beta-VAE) | `[D]` | `[G]` groups of the vector |
| `"tiny"` | TAESD-style: 3x3 conv + ReLU residual blocks, no normalisation | `[C, H/f, W/f]` | `[H/f, W/f]` grid |

Every backbone offers the three families. A VQ-VAE on the `"vector"` backbone quantises its code
vector `[G * codebook_dim]` as G = `config.num_latent_tokens` tokens of `codebook_dim` entries each
(see `VQVAEConfig`; `latentcode.tokens.vector_code_as_grid` is the layout).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .ldm import Decoder as LDMDecoder
from .ldm import Encoder as LDMEncoder
from .tiny import TinyDecoder, TinyEncoder
from .vector import VECTOR_SAMPLE_SIZES, VectorDecoder, VectorEncoder, num_convolutions


@dataclass(frozen=True)
class Backbone:
    """One backbone.

    Attributes:
        name: its value of `config.backbone`.
        description: one line for error messages, model cards and the demo.
        vector_latent: the code is a vector `[B, D]` (one per image) rather than a grid.
        families: the bottleneck families (`latentcode.families` names) offered on it.
        build_encoder: `(config, out_channels) -> nn.Module`, pixels -> `[B, out_channels, ...]`;
            its forward takes an optional list to fill with feature maps.
        build_decoder: `(config, in_channels) -> nn.Module`, `[B, in_channels, ...]` -> pixels.
        downsampling_factor: `config -> int`, image size / latent size (for a vector latent the
            image size: the whole image is one latent position).
        num_hidden_states: `config -> int`, the feature maps the encoder reports.
    """

    name: str
    description: str
    vector_latent: bool
    families: tuple[str, ...]
    build_encoder: Callable[[object, int], nn.Module]
    build_decoder: Callable[[object, int], nn.Module]
    downsampling_factor: Callable[[object], int]
    num_hidden_states: Callable[[object], int]

    def __reduce__(self):
        # Pickled by name (its builders are lambdas): a model holding its backbone stays picklable.
        return get_backbone, (self.name,)

    def projection(self, in_channels: int, out_channels: int) -> nn.Module:
        """The map between backbone and bottleneck (`quant_conv` / `post_quant_conv`): a 1x1
        convolution on a latent grid, the same linear map on a latent vector."""
        if self.vector_latent:
            return nn.Linear(in_channels, out_channels)
        return nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def latent_code_shape(
        self, config, channels: int, image_size: int | tuple[int, int] | None = None
    ) -> tuple[int, ...]:
        """Shape of one image's continuous code with `channels` channels (what a model's
        `latent_code_shape` returns): `(channels,)` for a vector latent,
        else `(channels, H/f, W/f)` for `image_size` (`H` or `(H, W)`, default `config.sample_size`)."""
        size = config.sample_size if image_size is None else image_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if self.vector_latent:
            if (height, width) != (config.sample_size, config.sample_size):
                raise ValueError(
                    f"a vector-latent model codes {config.sample_size}x{config.sample_size} images only "
                    f"(sample_size), got {height}x{width}; resize the images to {config.sample_size}"
                )
            return (channels,)
        factor = config.downsampling_factor  # the backbone's, times a VQ-VAE's latent_patch_size
        if height % factor or width % factor:
            raise ValueError(
                f"image size must be divisible by the downsampling factor {factor}, got {height}x{width}; "
                "crop or resize the images to a multiple of it"
            )
        return (channels, height // factor, width // factor)

    def check_family(self, family: str) -> None:
        """Refuse a bottleneck family this backbone does not offer, naming the supported pairs."""
        if family not in self.families:
            pairs = ", ".join(f"{b.name} x {f}" for b in BACKBONES.values() for f in b.families)
            raise ValueError(
                f"backbone={self.name!r} ({self.description}) does not offer the {family!r} family; "
                f"the supported backbone x family pairs are: {pairs}"
            )


def _levels_factor(config) -> int:
    return 2 ** (len(config.block_out_channels) - 1)


def _ldm_options(config, decoder: bool = False) -> dict:
    return dict(
        block_out_channels=config.decoder_widths if decoder else config.block_out_channels,
        layers_per_block=config.decoder_depth if decoder else config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        attention_levels=config.attention_levels,
        mid_block_add_attention=config.mid_block_add_attention,
        dropout=config.dropout,
    )


def _vector_options(config) -> dict:
    return dict(
        sample_size=config.sample_size,
        hidden_channels=config.vector_hidden_channels,
        hidden_size=config.vector_hidden_size,
    )


def _tiny_options(config) -> dict:
    return dict(
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        pooling=config.tiny_midblock_pooling,
    )


BACKBONES: dict[str, Backbone] = {
    backbone.name: backbone
    for backbone in (
        Backbone(
            name="ldm",
            description="taming / latent-diffusion convolutional encoder and decoder",
            vector_latent=False,
            families=("autoencoder", "vae", "vqvae"),
            build_encoder=lambda config, out: LDMEncoder(config.in_channels, out, **_ldm_options(config)),
            build_decoder=lambda config, inp: LDMDecoder(
                inp, config.out_channels, **_ldm_options(config, decoder=True)
            ),
            downsampling_factor=_levels_factor,
            # after conv_in, after each resolution level and after the mid block
            num_hidden_states=lambda config: len(config.block_out_channels) + 2,
        ),
        Backbone(
            name="vector",
            description=f"conv + fully connected vector-latent backbone of Burgess et al. 2018 "
            f"({' or '.join(map(str, VECTOR_SAMPLE_SIZES))} pixel images)",
            vector_latent=True,
            families=("autoencoder", "vae", "vqvae"),
            build_encoder=lambda config, out: VectorEncoder(config.in_channels, out, **_vector_options(config)),
            build_decoder=lambda config, inp: VectorDecoder(inp, config.out_channels, **_vector_options(config)),
            downsampling_factor=lambda config: config.sample_size,
            # after each convolution and each of the two linear layers
            num_hidden_states=lambda config: num_convolutions(config.sample_size) + 2,
        ),
        Backbone(
            name="tiny",
            description="TAESD-style tiny encoder and decoder (3x3 conv + ReLU residual blocks)",
            vector_latent=False,
            families=("autoencoder", "vae", "vqvae"),
            build_encoder=lambda config, out: TinyEncoder(config.in_channels, out, **_tiny_options(config)),
            build_decoder=lambda config, inp: TinyDecoder(inp, config.out_channels, **_tiny_options(config)),
            downsampling_factor=_levels_factor,
            num_hidden_states=lambda config: len(config.block_out_channels),  # after each level
        ),
    )
}


def get_backbone(name: str) -> Backbone:
    """The backbone called `name`; a `ValueError` lists the known ones otherwise."""
    if name not in BACKBONES:
        known = "; ".join(f"{b.name!r}: {b.description}" for b in BACKBONES.values())
        raise ValueError(f"unknown backbone {name!r}; expected one of {known}")
    return BACKBONES[name]


__all__ = ["BACKBONES", "Backbone", "TinyDecoder", "TinyEncoder", "VectorDecoder", "VectorEncoder", "get_backbone"]
