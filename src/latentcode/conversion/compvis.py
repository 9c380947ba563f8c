"""Import CompVis checkpoints: taming-transformers VQGAN, latent-diffusion first stages (VQ and
KL) and Stable Diffusion VAEs, as `.ckpt` (Lightning) or `.safetensors`.

Their `Encoder` / `Decoder` compute what our backbone computes, so import is a renaming of
keys plus one reordering: CompVis indexes `decoder.up[i]` by resolution level (`up[0]` is
full resolution) while ours stores the decoder's levels in the order they run. Attention
projections stored as 1x1 convolutions (`[C, C, 1, 1]`) become linear weights `[C, C]`.

The model config comes from the original YAML when given (a first-stage config, or a full
latent-diffusion config whose `first_stage_config` and `scale_factor` are used), else it is
inferred from the weights' shapes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import torch

from ..families import get_family
from .checkpoints import CheckpointError, load_state_dict_exactly, read_checkpoint
from .imported_vq_recipe import DIFFUSERS_VQ_BETA, IMPORTED_VQ_LOSS_WEIGHTS, IMPORTED_VQ_TRAINING

logger = logging.getLogger(__name__)

# Prefixes under which full latent-diffusion / Stable Diffusion checkpoints keep the autoencoder.
AUTOENCODER_PREFIXES = ("first_stage_model.", "vae.")
# Training state stored beside the autoencoder: the loss's modules (discriminator, LPIPS,
# learned logvar) and latent-diffusion's EMA bookkeeping (`model_ema.decay`, `.num_updates`, and
# the EMA copy, which pruned releases have already swapped into the main weights).
TRAINING_PREFIXES = ("loss.", "model_ema.")
# CompVis' GroupNorm always has 32 groups; the weights do not record it.
COMPVIS_NORM_GROUPS = 32
# latent-diffusion's latent scale for KL autoencoders when no YAML says otherwise (Stable
# Diffusion's value; diffusers' single-file loader assumes the same). VQ first stages use 1.0.
DEFAULT_KL_SCALING_FACTOR = 0.18215

VQ_TARGETS = (
    "taming.models.vqgan.VQModel",
    "ldm.models.autoencoder.VQModel",
    "ldm.models.autoencoder.VQModelInterface",
)
KL_TARGETS = ("ldm.models.autoencoder.AutoencoderKL",)
_ATTENTION_PROJECTIONS = {"q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out"}


def compvis_key_to_latentcode(key: str, num_levels: int) -> str:
    """Name of a CompVis autoencoder key in our models (`num_levels` = len(ch_mult)), e.g.
    `decoder.up.0.block.1.nin_shortcut.weight` -> `decoder.up.{L-1}.blocks.1.shortcut.weight`."""
    key = re.sub(r"^decoder\.up\.(\d+)\.", lambda match: f"decoder.up.{num_levels - 1 - int(match.group(1))}.", key)
    key = re.sub(r"\.(down|up)\.(\d+)\.block\.", r".\1.\2.blocks.", key)
    key = re.sub(r"\.(down|up)\.(\d+)\.attn\.", r".\1.\2.attentions.", key)
    key = re.sub(r"\.(down|up)\.(\d+)\.(?:downsample|upsample)\.", r".\1.\2.resample.", key)
    key = key.replace(".mid.attn_1.", ".mid.attention.").replace(".nin_shortcut.", ".shortcut.")
    key = re.sub(
        r"(\.attentions\.\d+|\.mid\.attention)\.(q|k|v|proj_out)\.",
        lambda match: f"{match.group(1)}.{_ATTENTION_PROJECTIONS[match.group(2)]}.",
        key,
    )
    return "quantizer.codebook" if key == "quantize.embedding.weight" else key


def autoencoder_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The autoencoder's weights from a loaded checkpoint: unwraps Lightning's `state_dict`,
    keeps only the `first_stage_model.` / `vae.` part of a full model, and drops the training
    state (`loss.*`, `model_ema.*`; see `TRAINING_PREFIXES`), which the autoencoder does not use."""
    state_dict = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"expected a dict of tensors (or a dict with 'state_dict'), got {type(state_dict).__name__}"
        )
    for prefix in AUTOENCODER_PREFIXES:
        if any(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
            break
    dropped = [key for key in state_dict if key.startswith(TRAINING_PREFIXES)]
    if dropped:
        logger.info("ignoring %d training-state entries (%s, ...)", len(dropped), dropped[0])
    state_dict = {key: value for key, value in state_dict.items() if key not in set(dropped)}
    not_tensors = sorted(key for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"checkpoint entries that are not tensors: {not_tensors}")
    return state_dict


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


def _levels(state_dict: Mapping, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))})


def config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Our config fields inferred from a CompVis autoencoder's weight shapes, plus `"family"`
    (`"vqvae"` or `"vae"`, a name of `latentcode.families`). `norm_num_groups` is CompVis' fixed 32; `sample_size` stays default."""
    required = (
        "encoder.conv_in.weight",
        "encoder.conv_out.weight",
        "decoder.conv_in.weight",
        "decoder.conv_out.weight",
    )
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise CheckpointError(f"not a CompVis autoencoder checkpoint: missing {missing}")
    levels = _levels(state_dict, r"encoder\.down\.(\d+)\.")
    if levels != list(range(len(levels))) or not levels:
        raise CheckpointError(f"encoder levels must be numbered 0..L-1, found {levels}")
    block_out_channels = [state_dict[f"encoder.down.{level}.block.0.conv1.weight"].shape[0] for level in levels]
    is_vq = "quantize.embedding.weight" in state_dict
    latent_channels = state_dict["decoder.conv_in.weight"].shape[1]
    config = dict(
        family="vqvae" if is_vq else "vae",
        in_channels=state_dict["encoder.conv_in.weight"].shape[1],
        out_channels=state_dict["decoder.conv_out.weight"].shape[0],
        block_out_channels=block_out_channels,
        layers_per_block=len(_levels(state_dict, r"encoder\.down\.0\.block\.(\d+)\.")),
        latent_channels=latent_channels,
        norm_num_groups=COMPVIS_NORM_GROUPS,
        attention_levels=[level for level in levels if f"encoder.down.{level}.attn.0.q.weight" in state_dict],
        mid_block_add_attention="encoder.mid.attn_1.q.weight" in state_dict,
        use_quant_conv="quant_conv.weight" in state_dict,
        use_post_quant_conv="post_quant_conv.weight" in state_dict,
        scaling_factor=1.0 if is_vq else DEFAULT_KL_SCALING_FACTOR,
    )
    if is_vq:
        codebook_size, codebook_dim = state_dict["quantize.embedding.weight"].shape
        # The recipe taming / latent-diffusion trained with (see latentcode.conversion.imported_vq_recipe).
        config.update(
            codebook_size=codebook_size,
            codebook_dim=codebook_dim,
            quantizer_config=dict(IMPORTED_VQ_TRAINING),
            **IMPORTED_VQ_LOSS_WEIGHTS,
        )
    return config


def _read_yaml(original_config) -> dict:
    if isinstance(original_config, Mapping):
        return dict(original_config)
    try:
        import yaml
    except ImportError as error:
        raise ImportError("reading the original YAML config needs PyYAML: pip install pyyaml") from error
    with open(original_config) as file:
        return yaml.safe_load(file)


def config_from_yaml(original_config) -> dict:
    """Our config fields, plus `"family"`, from a taming-transformers / latent-diffusion YAML
    (a path or the parsed dict). Raises `ValueError` naming any option our backbone cannot express."""
    parsed = _read_yaml(original_config)
    model = parsed.get("model", parsed)
    params = model.get("params", {})
    scale_factor = params.get("scale_factor")
    if "first_stage_config" in params:  # a full latent-diffusion model: use its autoencoder
        model = params["first_stage_config"]
        params = model.get("params", {})
    target = model.get("target", "")
    if target not in VQ_TARGETS + KL_TARGETS:
        raise ValueError(f"unsupported autoencoder target {target!r}: expected one of {VQ_TARGETS + KL_TARGETS}")
    is_vq = target in VQ_TARGETS
    dd = params["ddconfig"]
    unsupported = {
        name: dd[name]
        for name, supported in (
            ("resamp_with_conv", True),
            ("give_pre_end", False),
            ("tanh_out", False),
            ("use_linear_attn", False),
        )
        if dd.get(name, supported) != supported
    }
    if dd.get("attn_type", "vanilla") not in ("vanilla", "vanilla-xformers", "none"):
        unsupported["attn_type"] = dd["attn_type"]
    if is_vq and params.get("remap") is not None:
        unsupported["remap"] = params["remap"]
    if dd.get("double_z", not is_vq) == is_vq:
        unsupported["double_z"] = dd["double_z"]
    if not is_vq and params["embed_dim"] != dd["z_channels"]:
        unsupported["embed_dim"] = f"{params['embed_dim']} (differs from z_channels={dd['z_channels']})"
    if unsupported:
        raise ValueError(f"{target} options that latentcode models cannot express: {unsupported}")

    with_attention = dd.get("attn_type", "vanilla") != "none"
    num_levels = len(dd["ch_mult"])
    attention_levels = [
        level for level in range(num_levels) if dd["resolution"] // 2**level in dd.get("attn_resolutions", [])
    ]
    config = dict(
        family="vqvae" if is_vq else "vae",
        in_channels=dd["in_channels"],
        out_channels=dd["out_ch"],
        block_out_channels=[dd["ch"] * multiplier for multiplier in dd["ch_mult"]],
        layers_per_block=dd["num_res_blocks"],
        latent_channels=dd["z_channels"],
        norm_num_groups=COMPVIS_NORM_GROUPS,
        attention_levels=attention_levels if with_attention else [],
        mid_block_add_attention=with_attention,
        dropout=dd.get("dropout", 0.0),
        sample_size=dd["resolution"],
        use_quant_conv=True,
        use_post_quant_conv=True,
        scaling_factor=scale_factor if scale_factor is not None else (1.0 if is_vq else DEFAULT_KL_SCALING_FACTOR),
    )
    loss = params.get("lossconfig", {}).get("params", {})
    if is_vq:
        # taming's loss multiplies the quantiser's legacy loss (see latentcode.conversion.imported_vq_recipe).
        scale = loss.get("codebook_weight", 1.0)
        config.update(
            codebook_size=params["n_embed"],
            codebook_dim=params["embed_dim"],
            quantizer_config=dict(IMPORTED_VQ_TRAINING),
            commitment_weight=scale,
            codebook_weight=scale * DIFFUSERS_VQ_BETA,
        )
    elif "kl_weight" in loss:
        # latent-diffusion sums both the reconstruction loss and the KL per image, so its
        # kl_weight means the same as ours (KL per pixel value against a per-pixel loss).
        config["kl_weight"] = loss["kl_weight"]
    return config


# ----------------------------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------------------------


def from_compvis(checkpoint, original_config=None, **config_overrides):
    """A `VQVAEModel` or `VAEModel` from a CompVis autoencoder checkpoint, with identical outputs.

    Args:
        checkpoint: path to a `.ckpt` / `.safetensors` file, or an already loaded dict.
        original_config: the original YAML (path or parsed dict); without it the config is
            inferred from the weights' shapes.
        **config_overrides: fields of our config to set, e.g. `sample_size`, `scaling_factor`,
            or `norm_num_groups` for a non-CompVis GroupNorm.

    Raises:
        CheckpointError: unreadable file, or missing / unexpected / mis-shaped keys (all named).
        ValueError: an architecture our models cannot express.
    """
    source = repr(os.fspath(checkpoint)) if isinstance(checkpoint, (str, os.PathLike)) else "the given state dict"
    loaded = read_checkpoint(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    state_dict = autoencoder_state_dict(loaded)
    config = config_from_yaml(original_config) if original_config is not None else config_from_state_dict(state_dict)
    family = get_family(config.pop("family"))
    overrides = dict(config_overrides)
    if "quantizer_config" in config:  # quantizer options override the imported recipe one by one
        config["quantizer_config"] = {**config["quantizer_config"], **(overrides.pop("quantizer_config", None) or {})}
    config.update(overrides)
    model = family.model_class(family.config_class(**config))

    num_levels = len(config["block_out_channels"])
    renamed = {}
    for key, value in state_dict.items():
        name = compvis_key_to_latentcode(key, num_levels)
        if re.search(r"\.to_(q|k|v|out)\.weight$", name) and value.dim() == 4:
            value = value[:, :, 0, 0]  # a 1x1 convolution's weight is a linear weight
        renamed[name] = value
    reference = renamed.get("encoder.conv_in.weight")
    if reference is not None and reference.is_floating_point():
        model.to(reference.dtype)  # keep the checkpoint's precision, as from_diffusers does
    load_state_dict_exactly(model, renamed, source)
    return model.eval()


__all__ = [
    "autoencoder_state_dict",
    "compvis_key_to_latentcode",
    "config_from_state_dict",
    "config_from_yaml",
    "from_compvis",
]
