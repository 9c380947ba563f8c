"""Import TAESD tiny autoencoders (madebyollin/taesd): `taesd`, `taesdxl`, `taesd3`, `taef1`, `taef2`.

A TAESD model is two files, the state_dicts of its `Encoder()` and `Decoder()` `nn.Sequential`s.
The variant is read from the weights: the latent channels (4 for taesd / taesdxl, 16 for taesd3 /
taef1, 32 for taef2), the group-norm pooling branch (taef2), the widths and the number of blocks
per level. The result is an `AutoencoderModel` on latentcode's `"tiny"` backbone, whose
`encoder.layers` / `decoder.layers` have TAESD's layer indices, so the keys only gain a prefix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from ..configuration import AutoencoderConfig
from ..modules.backbones.tiny import FULL_RESOLUTION_BLOCKS
from .checkpoints import CheckpointError, load_state_dict_exactly, read_checkpoint
from .diffusers_tiny import SAMPLE_SIZE

# Latent channels -> the published variants with that layout.
VARIANTS = {4: "taesd / taesdxl", 16: "taesd3 / taef1", 32: "taef2"}

_BLOCK_KEY = re.compile(r"^(\d+)\.conv\.0\.weight$")
_CONV_KEY = re.compile(r"^(\d+)\.weight$")


def _read_state_dict(path: str | os.PathLike, role: str) -> dict[str, torch.Tensor]:
    state_dict = read_checkpoint(path)
    if not isinstance(state_dict, Mapping) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointError(
            f"{os.fspath(path)!r} is not a state_dict (a dict of tensors), got {type(state_dict).__name__}; "
            f"expected TAESD's {role} weights (e.g. taesd_{role}.pth)"
        )
    if not any(_BLOCK_KEY.match(key) for key in state_dict):
        raise CheckpointError(
            f"{os.fspath(path)!r} holds no TAESD residual blocks ('<i>.conv.0.weight'); expected TAESD's {role} "
            f"weights, got keys starting with: {', '.join(sorted(state_dict)[:6])}"
        )
    return dict(state_dict)


def _encoder_layout(state_dict: dict) -> tuple[list[int], list[int]]:
    """(width of each level, blocks of each level) from the encoder's keys: a level starts with a
    plain convolution (`<i>.weight`) and holds the residual blocks (`<i>.conv.0.weight`) after it."""
    layers = {}
    for key, value in state_dict.items():
        if match := _CONV_KEY.match(key):
            layers[int(match.group(1))] = ("conv", value.shape[0])
        elif match := _BLOCK_KEY.match(key):
            layers[int(match.group(1))] = ("block", value.shape[0])
    widths, blocks = [], []
    for index in sorted(layers)[:-1]:  # the last convolution makes the latent
        kind, width = layers[index]
        if kind == "conv":
            widths.append(width)
            blocks.append(0)
        elif widths:
            blocks[-1] += 1
    return widths, blocks


def config_from_taesd(encoder: dict, decoder: dict) -> AutoencoderConfig:
    """The `"tiny"`-backbone config of the TAESD model with these encoder / decoder weights;
    refuses a layout the backbone does not have."""
    if "0.weight" not in encoder or "0.weight" in decoder:
        raise CheckpointError(
            "TAESD's encoder starts with a convolution (layer 0) and its decoder with the latent clamp (no "
            f"weights at layer 0); got layer 0 weights in the encoder: {'0.weight' in encoder}, in the decoder: "
            f"{'0.weight' in decoder}. Are --encoder_path and --decoder_path swapped?"
        )
    widths, blocks = _encoder_layout(encoder)
    last = max(int(match.group(1)) for key in encoder if (match := _CONV_KEY.match(key)))
    latent_channels = encoder[f"{last}.weight"].shape[0]
    deeper = set(blocks[1:])
    if len(widths) < 2 or blocks[0] != FULL_RESOLUTION_BLOCKS or len(deeper) != 1:
        raise CheckpointError(
            f"the encoder's blocks per level {blocks} are not a TAESD layout ({FULL_RESOLUTION_BLOCKS} block at "
            "full resolution, then the same number at each lower level)"
        )
    decoder_input = decoder.get("1.weight")
    if decoder_input is None or decoder_input.shape[1] != latent_channels:
        got = "no layer 1.weight" if decoder_input is None else f"{decoder_input.shape[1]} input channels"
        raise CheckpointError(
            f"the decoder does not take the encoder's {latent_channels}-channel latents ({got}): the two files "
            "belong to different TAESD variants"
        )
    last_decoder = max(int(match.group(1)) for key in decoder if (match := _CONV_KEY.match(key)))
    return AutoencoderConfig(
        backbone="tiny",
        in_channels=encoder["0.weight"].shape[1],
        out_channels=decoder[f"{last_decoder}.weight"].shape[0],
        block_out_channels=widths,
        layers_per_block=deeper.pop(),
        latent_channels=latent_channels,
        tiny_midblock_pooling=any(".pool." in key for key in encoder),
        use_quant_conv=False,
        use_post_quant_conv=False,
        sample_size=SAMPLE_SIZE,
    )


def taesd_variant(config: AutoencoderConfig) -> str:
    """The published TAESD variant(s) with this config's layout, e.g. `"taef2"`."""
    return VARIANTS.get(config.latent_channels, f"a {config.latent_channels}-channel TAESD")


def from_taesd(encoder_path: str | os.PathLike, decoder_path: str | os.PathLike):
    """A latentcode `AutoencoderModel` (tiny backbone) computing exactly what the TAESD encoder and
    decoder in these files compute, in latentcode's [-1, 1] pixels. Raises [`CheckpointError`]
    for files that are not TAESD weights, or an encoder and decoder of different variants."""
    from ..modeling import AutoencoderModel

    encoder = _read_state_dict(encoder_path, "encoder")
    decoder = _read_state_dict(decoder_path, "decoder")
    model = AutoencoderModel(config_from_taesd(encoder, decoder))
    weights = {f"encoder.layers.{key}": value for key, value in encoder.items()}
    weights |= {f"decoder.layers.{key}": value for key, value in decoder.items()}
    load_state_dict_exactly(model, weights, f"{os.fspath(encoder_path)} + {os.fspath(decoder_path)}")
    return model.eval()
