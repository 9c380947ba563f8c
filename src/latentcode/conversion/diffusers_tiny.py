"""Exact conversion between a latentcode `AutoencoderModel` on the `"tiny"` backbone and diffusers'
`AutoencoderTiny` (TAESD), both ways.

Both compute TAESD's layers in the same order and take and return pixels in [-1, 1] (mapped to
TAESD's [0, 1] inside the encoder and back at the decoder's end), so conversion is a renaming of
keys: the encoders' `layers.<i>` are the same, and our decoder keeps TAESD's latent clamp as its
layer 0 where diffusers applies it before its sequential, so our `decoder.layers.<i + 1>` is
diffusers' `decoder.layers.<i>`.

diffusers' architecture is narrower than the tiny backbone. It has no group-norm pooling branch
(`taef2`: `tiny_midblock_pooling=True`), its stride-2 and upsampling convolutions keep the channel
count (so every level has the same width), and it has no 1x1 projections around the latent
(`use_quant_conv` / `use_post_quant_conv`). A model outside these is refused with a clear error.

Latent storage: `AutoencoderTiny.scale_latents` maps raw latents into [0, 1] with `latent_magnitude`
and `latent_shift` to store them as 8-bit images; `encode` / `decode` do not use them (only
`AutoencoderTiny.forward`'s uint8 round trip does). Like the other pipeline fields (`scaling_factor`,
`shift_factor`, `force_upcast`) they are carried on our config under the same names, so an exported
model has the config it was imported with. `sample_size` has no place in `AutoencoderTiny`
(TAESD is fully convolutional); an imported model gets TAESD's 512.
"""

from __future__ import annotations

import inspect
import math
import re

from torch import nn

from ..configuration import AutoencoderConfig, LatentCodeConfig
from ..modules.backbones.tiny import blocks_per_level
from .checkpoints import load_export, load_state_dict_exactly

CLASS_NAME = "AutoencoderTiny"
FAMILY = "autoencoder"  # the family that converts to it: AutoencoderTiny has no posterior or codebook
# diffusers fields that only pipelines and the uint8 storage read, carried on our config verbatim.
PIPELINE_FIELDS = ("force_upcast", "scaling_factor", "shift_factor", "latent_magnitude", "latent_shift")
# diffusers fields fixed to what the tiny backbone computes: name -> the only value it has.
_FIXED_FIELDS = {"act_fn": "relu", "upsample_fn": "nearest", "upsampling_scaling_factor": 2}
# The image size a converted TAESD model is meant for (the default of the image processor saved
# with it; TAESD itself is fully convolutional).
SAMPLE_SIZE = 512
_DECODER_KEY = re.compile(r"^decoder\.layers\.(\d+)\.")


def diffusers_tiny_key_to_latentcode(key: str) -> str:
    """Name of an `AutoencoderTiny` state-dict key in our model: `decoder.layers.<i>.` ->
    `decoder.layers.<i + 1>.` (our decoder's layer 0 is the clamp); encoder keys are the same."""
    return _DECODER_KEY.sub(lambda match: f"decoder.layers.{int(match.group(1)) + 1}.", key)


def _diffusers_defaults() -> dict:
    from diffusers import AutoencoderTiny

    parameters = inspect.signature(AutoencoderTiny.__init__).parameters.items()
    return {name: parameter.default for name, parameter in parameters if name != "self"}


def config_from_autoencoder_tiny(diffusers_config, **overrides) -> AutoencoderConfig:
    """Our `"tiny"`-backbone `AutoencoderConfig` for a diffusers `AutoencoderTiny` config (a dict or
    FrozenDict); `overrides` set training fields (`reconstruction_loss`, `dropout`). Raises
    `ValueError` naming what the tiny backbone cannot express."""
    defaults = _diffusers_defaults()
    fields = {**defaults, **{key: value for key, value in diffusers_config.items() if not key.startswith("_")}}
    for name, value in _FIXED_FIELDS.items():
        if fields[name] != value:
            raise ValueError(
                f"unsupported diffusers {CLASS_NAME} {name}={fields[name]!r}: latentcode's tiny backbone "
                f"(TAESD) has {name}={value!r}"
            )
    encoder_widths, decoder_widths = (
        list(fields["encoder_block_out_channels"]),
        list(fields["decoder_block_out_channels"]),
    )
    if decoder_widths != encoder_widths[::-1] or len(set(encoder_widths)) != 1:
        raise ValueError(
            f"diffusers {CLASS_NAME} with encoder_block_out_channels={encoder_widths} and decoder_block_out_channels="
            f"{decoder_widths}: only one width at every level converts (diffusers' resampling convolutions keep "
            "the channel count, so other widths do not run in diffusers either)"
        )
    levels, depth = len(encoder_widths), list(fields["num_encoder_blocks"])[-1]
    expected = blocks_per_level(levels, depth)
    if list(fields["num_encoder_blocks"]) != expected or list(fields["num_decoder_blocks"]) != expected[::-1]:
        raise ValueError(
            f"diffusers {CLASS_NAME} with num_encoder_blocks={list(fields['num_encoder_blocks'])} and "
            f"num_decoder_blocks={list(fields['num_decoder_blocks'])} is not a TAESD layout: expected "
            f"{expected} and {expected[::-1]} (one block at full resolution, the same number below)"
        )
    translated = dict(
        backbone="tiny",
        in_channels=fields["in_channels"],
        out_channels=fields["out_channels"],
        block_out_channels=encoder_widths,
        layers_per_block=depth,
        latent_channels=fields["latent_channels"],
        # The tiny backbone reads no norm_num_groups, but the config asks that it divide the widths:
        # the default 32 where it does (TAESD's 64), else the largest divisor below it.
        norm_num_groups=math.gcd(encoder_widths[0], AutoencoderConfig().norm_num_groups),
        use_quant_conv=False,
        use_post_quant_conv=False,
        sample_size=SAMPLE_SIZE,
        **{name: fields[name] for name in PIPELINE_FIELDS},
    )
    fixed = sorted(set(overrides) & (set(translated) - AutoencoderConfig.all_training_only_options()))
    if fixed:
        raise ValueError(f"cannot override {fixed}: they are fixed by the diffusers model's architecture")
    return AutoencoderConfig(**{**translated, **overrides})


def autoencoder_tiny_config_from(config: LatentCodeConfig) -> dict:
    """The diffusers `AutoencoderTiny` constructor arguments for our config; raises `ValueError`
    for a model diffusers has no architecture for (see the module docstring)."""
    if not isinstance(config, AutoencoderConfig):
        raise ValueError(
            f"a {type(config).__name__} on backbone={config.backbone!r} has no diffusers counterpart: diffusers' "
            f"{CLASS_NAME} (the TAESD backbone) is deterministic, with no posterior or codebook; only an "
            "AutoencoderModel with backbone='tiny' exports to it"
        )
    if config.backbone != "tiny":
        raise ValueError(
            f"AutoencoderModel has no diffusers counterpart on backbone={config.backbone!r}: diffusers' one "
            f"deterministic autoencoder, {CLASS_NAME}, is the TAESD backbone (backbone='tiny')"
        )
    if config.tiny_midblock_pooling:
        raise ValueError(
            f"diffusers {CLASS_NAME} has no group-norm pooling branch (tiny_midblock_pooling=True, the layout of "
            f"taef2, {config.latent_channels} latent channels): diffusers has no architecture for this model; "
            "use it as a latentcode model (it works in diffusers pipelines as it is)"
        )
    if len(set(config.block_out_channels)) != 1:
        raise ValueError(
            f"diffusers {CLASS_NAME} has one width at every level (its resampling convolutions keep the channel "
            f"count), got block_out_channels={config.block_out_channels}"
        )
    if config.use_quant_conv or config.use_post_quant_conv:
        raise ValueError(
            f"diffusers {CLASS_NAME} has no 1x1 projections around the latent, got use_quant_conv="
            f"{config.use_quant_conv}, use_post_quant_conv={config.use_post_quant_conv}; both must be False"
        )
    defaults = _diffusers_defaults()
    widths = tuple(config.block_out_channels)
    blocks = tuple(blocks_per_level(len(widths), config.layers_per_block))
    return dict(
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        encoder_block_out_channels=widths,
        decoder_block_out_channels=widths,
        latent_channels=config.latent_channels,
        num_encoder_blocks=blocks,
        num_decoder_blocks=blocks[::-1],
        **_FIXED_FIELDS,
        **{name: getattr(config, name, defaults[name]) for name in PIPELINE_FIELDS},
    )


def from_autoencoder_tiny(cls: type, source, source_name: str, **config_overrides):
    """`cls` (`AutoencoderModel`) built from the diffusers `AutoencoderTiny` instance `source`, with
    its dtype and bit-identical weights, in eval mode."""
    model = cls(config_from_autoencoder_tiny(source.config, **config_overrides))
    state_dict = {diffusers_tiny_key_to_latentcode(key): value for key, value in source.state_dict().items()}
    model.to(next(source.parameters()).dtype)
    load_state_dict_exactly(model, state_dict, source_name)
    return model.eval()


def to_autoencoder_tiny(model: nn.Module):
    """The diffusers `AutoencoderTiny` equivalent to `model` (see [`autoencoder_tiny_config_from`]),
    with bit-identical weights, in eval mode, on the model's device and dtype."""
    from diffusers import AutoencoderTiny

    exported = AutoencoderTiny(**autoencoder_tiny_config_from(model.config))
    ours = model.state_dict()
    state_dict = {key: ours[diffusers_tiny_key_to_latentcode(key)].clone() for key in exported.state_dict()}
    return load_export(exported, state_dict, model)


__all__ = [
    "CLASS_NAME",
    "autoencoder_tiny_config_from",
    "config_from_autoencoder_tiny",
    "diffusers_tiny_key_to_latentcode",
    "from_autoencoder_tiny",
    "to_autoencoder_tiny",
]
