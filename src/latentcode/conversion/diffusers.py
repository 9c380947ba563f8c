"""Exact conversion between latentcode models and diffusers' `VQModel` / `AutoencoderKL` (and, for
an autoencoder on the `"tiny"` backbone, `AutoencoderTiny`: see `latentcode.conversion.diffusers_tiny`).

The backbones compute the same operations in the same order, so conversion is only a
renaming of state-dict keys (see [`diffusers_key_to_latentcode`]) and a translation of
config fields:

| diffusers                                   | latentcode                                   |
|---------------------------------------------|----------------------------------------------|
| `down_block_types` / `up_block_types` with   | `attention_levels` (the same levels in       |
| `AttnDownEncoderBlock2D` / `AttnUpDecoderBlock2D` | encoder and decoder)                    |
| `num_vq_embeddings`, `vq_embed_dim`          | `codebook_size`, `codebook_dim`              |
| everything else of the backbone              | the same name                                |

Config fields that only diffusers pipelines read (`force_upcast`, `shift_factor`,
`latents_mean`, `latents_std`, `lookup_from_codebook`) are carried on our config under the
same names, so an exported model has the config it was imported with.

VQ models keep the recipe their codebooks were trained with (see
`latentcode.conversion.imported_vq_recipe`); it is training-only quantizer options (each quantizer class
lists its own in `training_only_options`): export ignores them, and the
quantizer's training state (EMA statistics) has no place in a `VQModel` and is not exported.
"""

from __future__ import annotations

import inspect
import os
import re

import torch
from torch import nn

from ..configuration import LatentCodeConfig, VAEConfig, VQVAEConfig
from ..families import FAMILIES, family_for_diffusers, family_of, get_family
from ..modules.backbones import get_backbone
from ..modules.quantizers import registry as quantizers
from . import diffusers_tiny
from .checkpoints import CheckpointError, load_export, load_state_dict_exactly
from .imported_vq_recipe import IMPORTED_VQ_LOSS_WEIGHTS, IMPORTED_VQ_TRAINING

# diffusers -> latentcode key renaming, applied in order. One table serves both directions:
# export renames the keys of a freshly built diffusers model with it to find their sources.
_KEY_RULES = [
    (r"\b(down|up)_blocks\.(\d+)\.resnets\.", r"\1.\2.blocks."),
    (r"\b(down|up)_blocks\.(\d+)\.attentions\.", r"\1.\2.attentions."),
    (r"\b(down|up)_blocks\.(\d+)\.(?:down|up)samplers\.0\.", r"\1.\2.resample."),
    (r"\bmid_block\.resnets\.0\.", "mid.block_1."),
    (r"\bmid_block\.resnets\.1\.", "mid.block_2."),
    (r"\bmid_block\.attentions\.0\.", "mid.attention."),
    (r"\.conv_shortcut\.", ".shortcut."),
    (r"\.group_norm\.", ".norm."),
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.conv_norm_out\.", ".norm_out."),
    (r"^quantize\.embedding\.weight$", "quantizer.codebook"),
]

# Config fields that diffusers pipelines read and our models do not use; carried verbatim.
_PIPELINE_FIELDS = {
    "VQModel": ("force_upcast", "lookup_from_codebook"),
    "AutoencoderKL": ("force_upcast", "shift_factor", "latents_mean", "latents_std"),
}
# diffusers config fields that conversion translates (the rest are pipeline fields or errors).
_TRANSLATED_FIELDS = {
    "in_channels",
    "out_channels",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "act_fn",
    "latent_channels",
    "norm_num_groups",
    "sample_size",
    "scaling_factor",
    "mid_block_add_attention",
    "num_vq_embeddings",
    "vq_embed_dim",
    "norm_type",
    "use_quant_conv",
    "use_post_quant_conv",
}
# Our config fields that the diffusers config expresses (translated above).
_EXPRESSED_FIELDS = {
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "latent_channels",
    "norm_num_groups",
    "attention_levels",
    "mid_block_add_attention",
    "sample_size",
    "scaling_factor",
    "use_quant_conv",
    "use_post_quant_conv",
    "codebook_size",
    "codebook_dim",
    "quantizer",
}


def diffusers_key_to_latentcode(key: str) -> str:
    """Name of a diffusers `VQModel` / `AutoencoderKL` state-dict key in our models,
    e.g. `encoder.down_blocks.1.resnets.0.conv_shortcut.weight` -> `encoder.down.1.blocks.0.shortcut.weight`."""
    for pattern, replacement in _KEY_RULES:
        key = re.sub(pattern, replacement, key)
    return key


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


def _attention_levels(down_block_types, up_block_types) -> list[int]:
    """Levels with attention, from diffusers' block types; encoder and decoder must agree.

    `down_block_types[i]` is level i; `up_block_types` runs from the lowest resolution, so
    `up_block_types[i]` is level `L - 1 - i`.
    """
    known_down = {"DownEncoderBlock2D": False, "AttnDownEncoderBlock2D": True}
    known_up = {"UpDecoderBlock2D": False, "AttnUpDecoderBlock2D": True}
    for name, types, known in (("down", down_block_types, known_down), ("up", up_block_types, known_up)):
        unknown = [t for t in types if t not in known]
        if unknown:
            raise ValueError(f"unsupported diffusers {name}_block_types {unknown}: expected entries of {list(known)}")
    encoder = [level for level, t in enumerate(down_block_types) if known_down[t]]
    decoder = sorted(len(up_block_types) - 1 - i for i, t in enumerate(up_block_types) if known_up[t])
    if encoder != decoder:
        raise ValueError(
            f"attention at encoder levels {encoder} but decoder levels {decoder} (down_block_types="
            f"{list(down_block_types)}, up_block_types={list(up_block_types)}): latentcode models put attention "
            "at the same levels in encoder and decoder, so this asymmetric model cannot be converted"
        )
    return encoder


def config_from_diffusers(diffusers_config, config_class: type[LatentCodeConfig], **overrides) -> LatentCodeConfig:
    """Our config for a diffusers `VQModel` / `AutoencoderKL` config (a dict or FrozenDict).

    `overrides` set training fields (e.g. `kl_weight`) and training-only quantizer options
    (`quantizer_config={"commitment_weight": 0.25}`, or flat as `commitment_weight=0.25`); fields
    that change what the model computes cannot be overridden. Raises `ValueError` naming any
    diffusers feature our models cannot express (spatial norm, a non-SiLU activation,
    asymmetric attention, unknown config fields).
    """
    from diffusers import AutoencoderKL, VQModel

    is_vq = issubclass(config_class, VQVAEConfig)
    diffusers_class = VQModel if is_vq else AutoencoderKL
    class_name = diffusers_config.get("_class_name", diffusers_class.__name__)
    if class_name != diffusers_class.__name__:
        raise ValueError(
            f"{config_class.__name__} converts from a diffusers {diffusers_class.__name__}, got a {class_name}"
        )
    # Constructor defaults fill what an older config.json leaves out, as diffusers does.
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(diffusers_class.__init__).parameters.items()
        if name != "self"
    }
    fields = {**defaults, **{key: value for key, value in diffusers_config.items() if not key.startswith("_")}}
    # Fields outside the constructor do not reach the model (diffusers ignores them too).
    unknown = {
        key: value
        for key, value in fields.items()
        if key in defaults
        and key not in _TRANSLATED_FIELDS | set(_PIPELINE_FIELDS[class_name])
        and value != defaults[key]
    }
    if unknown:
        raise ValueError(f"unsupported diffusers {class_name} config fields {unknown}: latentcode cannot express them")
    if fields["act_fn"] != "silu":
        raise ValueError(f"unsupported diffusers act_fn={fields['act_fn']!r}: latentcode backbones use 'silu'")
    if fields.get("norm_type", "group") != "group":
        raise ValueError(
            f"unsupported diffusers norm_type={fields['norm_type']!r} (MoVQ's spatially conditioned norm in the "
            "decoder): latentcode backbones use GroupNorm ('group')"
        )
    levels = len(fields["block_out_channels"])
    if not len(fields["down_block_types"]) == len(fields["up_block_types"]) == levels:
        raise ValueError(
            f"diffusers config has {levels} block_out_channels but {len(fields['down_block_types'])} "
            f"down_block_types and {len(fields['up_block_types'])} up_block_types; they must agree"
        )
    sample_size = fields["sample_size"]
    if isinstance(sample_size, (list, tuple)):
        sample_size = sample_size[0]  # diffusers' own tiling uses the first entry as well
    translated = dict(
        in_channels=fields["in_channels"],
        out_channels=fields["out_channels"],
        block_out_channels=list(fields["block_out_channels"]),
        layers_per_block=fields["layers_per_block"],
        latent_channels=fields["latent_channels"],
        norm_num_groups=fields["norm_num_groups"],
        attention_levels=_attention_levels(fields["down_block_types"], fields["up_block_types"]),
        mid_block_add_attention=fields["mid_block_add_attention"],
        sample_size=sample_size,
        scaling_factor=fields["scaling_factor"],
    )
    if is_vq:
        translated.update(
            codebook_size=fields["num_vq_embeddings"],
            codebook_dim=fields["vq_embed_dim"] or fields["latent_channels"],
            use_quant_conv=True,
            use_post_quant_conv=True,
            quantizer_config=_imported_quantizer_config(overrides),
            **IMPORTED_VQ_LOSS_WEIGHTS,
        )
    else:
        translated.update(use_quant_conv=fields["use_quant_conv"], use_post_quant_conv=fields["use_post_quant_conv"])
    translated.update({name: fields[name] for name in _PIPELINE_FIELDS[class_name] if name in fields})
    fixed = sorted(set(overrides) & (set(translated) - config_class.all_training_only_options()))
    if fixed:
        raise ValueError(f"cannot override {fixed}: they are fixed by the diffusers model's architecture")
    return config_class(**{**translated, **overrides})


def _imported_quantizer_config(overrides: dict) -> dict:
    """The `quantizer_config` of an imported VQModel: the recipe it was trained with, updated by the
    options of `overrides["quantizer_config"]`, which is removed from `overrides`. Only
    training-only options may change."""
    given = dict(overrides.pop("quantizer_config", None) or {})
    quantizers.check_options("vq", given)
    fixed = sorted(set(given) - quantizers.training_only_options("vq"))
    if fixed:
        raise ValueError(
            f"cannot override quantizer options {fixed}: they change what the diffusers model's codebook computes"
        )
    return {**IMPORTED_VQ_TRAINING, **given}


def _check_ldm_backbone(config: LatentCodeConfig, class_name: str) -> None:
    """Refuse another backbone than "ldm", the one diffusers' `class_name` is built on."""
    if get_backbone(config.backbone).vector_latent:
        raise ValueError(
            f"diffusers has no vector-latent {class_name}: its {class_name} takes and returns a latent grid "
            f"[B, C, h, w] (a VQModel quantises each grid position), and backbone={config.backbone!r} codes an image "
            "as one vector [B, D] (a VQ-VAE quantises num_latent_tokens groups of it); such a model stays a "
            "latentcode model (save_pretrained / from_pretrained)"
        )
    if config.backbone != "ldm":
        raise ValueError(
            f"diffusers {class_name} is built on the taming / latent-diffusion backbone (backbone='ldm'), got "
            f"backbone={config.backbone!r}: diffusers has no {class_name} on it (only an AutoencoderModel on the "
            f"'tiny' backbone exports, to {diffusers_tiny.CLASS_NAME})"
        )


def diffusers_config_from(config: LatentCodeConfig) -> dict:
    """The diffusers `VQModel` / `AutoencoderKL` constructor arguments for our config.

    Raises `ValueError` for anything the diffusers class cannot express: a quantizer other
    than plain `"vq"`, or any other non-default field that changes the model's outputs.
    """
    is_vq = isinstance(config, VQVAEConfig)
    if not is_vq and not isinstance(config, VAEConfig):
        raise ValueError(
            f"{type(config).__name__} has no diffusers counterpart: only VQVAEConfig (-> VQModel) and "
            "VAEConfig (-> AutoencoderKL) export"
        )
    class_name = "VQModel" if is_vq else "AutoencoderKL"
    _check_ldm_backbone(config, class_name)
    if is_vq and config.quantizer != "vq":
        raise ValueError(
            f"diffusers VQModel has a plain nearest-neighbour codebook and cannot express quantizer="
            f"{config.quantizer!r}; only quantizer='vq' models export to diffusers"
        )
    known = _EXPRESSED_FIELDS | type(config).all_training_only_options() | {"quantizer_config"}
    defaults = type(config)()
    inexpressible = {
        name: getattr(config, name)
        for name in sorted(set(type(config).field_names()) - known)
        if getattr(config, name) != getattr(defaults, name)
    }
    if is_vq:
        # Options of the quantizer that change what it computes must be VQModel's (the defaults).
        option_defaults = quantizers.option_defaults(config.quantizer)
        inexpressible.update(
            {
                f"quantizer_config.{name}": value
                for name, value in sorted(config.quantizer_config.items())
                if name not in config.training_only_quantizer_options() and value != option_defaults[name]
            }
        )
    if inexpressible:
        allowed = sorted(known - {"quantizer_config"})
        if is_vq:
            allowed.append(f"quantizer_config's {sorted(config.training_only_quantizer_options())}")
        raise ValueError(
            f"diffusers {class_name} cannot express {inexpressible}; export supports the plain architecture "
            f"(non-default values are allowed only for {', '.join(map(str, allowed))})"
        )
    levels = len(config.block_out_channels)
    attention = set(config.attention_levels)
    arguments = dict(
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        down_block_types=tuple(
            "AttnDownEncoderBlock2D" if level in attention else "DownEncoderBlock2D" for level in range(levels)
        ),
        up_block_types=tuple(
            "AttnUpDecoderBlock2D" if level in attention else "UpDecoderBlock2D" for level in reversed(range(levels))
        ),
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        act_fn="silu",
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=config.sample_size,
        scaling_factor=config.scaling_factor,
        mid_block_add_attention=config.mid_block_add_attention,
    )
    if is_vq:
        arguments.update(num_vq_embeddings=config.codebook_size, vq_embed_dim=config.codebook_dim)
    else:
        arguments.update(use_quant_conv=config.use_quant_conv, use_post_quant_conv=config.use_post_quant_conv)
    arguments.update({name: getattr(config, name) for name in _PIPELINE_FIELDS[class_name] if hasattr(config, name)})
    return arguments


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def _load_diffusers_model(diffusers_class: type, path: str, **load_kwargs):
    """`diffusers_class.from_pretrained(path)`, refusing any missing, unexpected or mis-shaped weight
    (diffusers itself only logs them). Works offline from the Hugging Face cache."""
    model, info = diffusers_class.from_pretrained(path, output_loading_info=True, **load_kwargs)
    problems = {name: info.get(name) for name in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
    problems = {name: value for name, value in problems.items() if value}
    if problems:
        details = "\n".join(f"  {name}: {value}" for name, value in problems.items())
        raise CheckpointError(f"the diffusers weights at {path!r} do not fit {diffusers_class.__name__}:\n{details}")
    return model


def _read_diffusers_class_name(path: str, **load_kwargs) -> str:
    """`_class_name` of a diffusers model's config.json (any ConfigMixin class reads any config)."""
    from diffusers import VQModel

    return VQModel.load_config(path, **load_kwargs).get("_class_name", "")


def _counterpart(family) -> str | None:
    """The diffusers class `family` converts to and from: its registered one, or `AutoencoderTiny` for
    the AutoEncoder (on the tiny backbone only, which export checks)."""
    if family.diffusers_class_name is None and family.name == diffusers_tiny.FAMILY:
        return diffusers_tiny.CLASS_NAME
    return family.diffusers_class_name


def _conversion_classes(cls: type, class_name: str) -> tuple[type, type]:
    """(our model class, diffusers class) of converting a diffusers `class_name` model into `cls`.
    A family's class converts from its own counterpart only; the shared base class (in no family)
    takes the family of the diffusers class."""
    import diffusers

    if any(issubclass(cls, family.model_class) for family in FAMILIES.values()):
        family = family_of(cls)
    elif class_name == diffusers_tiny.CLASS_NAME:
        family = get_family(diffusers_tiny.FAMILY)
    else:
        family = family_for_diffusers(class_name)
    if class_name != _counterpart(family):
        raise ValueError(f"{cls.__name__} converts from a diffusers {_counterpart(family)}, got a {class_name}")
    target = cls if issubclass(cls, family.model_class) else family.model_class
    return target, getattr(diffusers, class_name)


def from_diffusers(
    cls: type,
    model_or_path,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    **config_overrides,
):
    """Build `cls` from a diffusers `VQModel` / `AutoencoderKL` / `AutoencoderTiny` with identical outputs.

    Args:
        cls: `VQVAEModel`, `VAEModel`, `AutoencoderModel` (from `AutoencoderTiny`: the tiny
            backbone), or `LatentCodePreTrainedModel` to pick the family from the diffusers model.
        model_or_path: a diffusers model instance, a local folder, or a Hub id (loaded from the
            Hugging Face cache when `HF_HUB_OFFLINE=1` or `local_files_only=True`).
        subfolder / revision / cache_dir / local_files_only / token: as in diffusers'
            `from_pretrained` (e.g. `subfolder="vae"` for a Stable Diffusion repo).
        **config_overrides: training fields of our config (`kl_weight`, `commitment_weight`, ...).

    Returns:
        The model, in eval mode, with the diffusers model's dtype and bit-identical weights.
    """
    from diffusers import ModelMixin

    if isinstance(model_or_path, ModelMixin):
        source, source_name = model_or_path, f"a {type(model_or_path).__name__} instance"
        class_name = type(source).__name__
    else:
        path = os.fspath(model_or_path)
        load_kwargs = dict(subfolder=subfolder, revision=revision, cache_dir=cache_dir, token=token)
        if local_files_only is not None:
            load_kwargs["local_files_only"] = local_files_only
        class_name = _read_diffusers_class_name(path, **load_kwargs)
        source_name = repr(path if subfolder is None else f"{path}/{subfolder}")
        source = None
    target, diffusers_class = _conversion_classes(cls, class_name)
    if source is None:
        source = _load_diffusers_model(diffusers_class, path, **load_kwargs)
    if class_name == diffusers_tiny.CLASS_NAME:
        return diffusers_tiny.from_autoencoder_tiny(target, source, source_name, **config_overrides)

    config = config_from_diffusers(source.config, target.config_class, **config_overrides)
    model = target(config)
    state_dict = {diffusers_key_to_latentcode(key): value for key, value in source.state_dict().items()}
    dtype = next(source.parameters()).dtype
    model.to(dtype)
    load_state_dict_exactly(model, state_dict, source_name)
    return model.eval()


def to_diffusers(model: nn.Module):
    """The diffusers `VQModel` / `AutoencoderKL` (`AutoencoderTiny` for an AutoEncoder on the tiny
    backbone) equivalent to `model`, with bit-identical weights.

    Raises `ValueError` when the diffusers class cannot express the model (see
    [`diffusers_config_from`] and `diffusers_tiny.autoencoder_tiny_config_from`). The result is in
    eval mode, on the model's device and dtype.
    """
    family = family_of(model)
    if _counterpart(family) == diffusers_tiny.CLASS_NAME or model.config.backbone == "tiny":
        return diffusers_tiny.to_autoencoder_tiny(model)
    diffusers_class = family.diffusers_class
    exported = diffusers_class(**diffusers_config_from(model.config))
    ours = model.state_dict()
    for name in ("quant_conv", "post_quant_conv"):
        if getattr(model, name) is None and isinstance(getattr(exported, name, None), nn.Conv2d):
            # VQModel always has the 1x1 projections. Identity weights reproduce the input exactly
            # (each output is x_i * 1 plus zeros), so the exported model computes the same.
            conv = getattr(exported, name)
            ours[f"{name}.weight"] = torch.eye(conv.out_channels).view_as(conv.weight)
            ours[f"{name}.bias"] = torch.zeros_like(conv.bias)
    names = {key: diffusers_key_to_latentcode(key) for key in exported.state_dict()}
    # Parameters must all find a place; buffers are training state (EMA statistics).
    unused = {name for name, _ in model.named_parameters()} - set(names.values())
    if unused:
        raise ValueError(f"diffusers {diffusers_class.__name__} has no place for {sorted(unused)}")
    state_dict = {key: ours[name].clone() for key, name in names.items() if name in ours}
    return load_export(exported, state_dict, model)


__all__ = [
    "config_from_diffusers",
    "diffusers_config_from",
    "diffusers_key_to_latentcode",
    "from_diffusers",
    "to_diffusers",
]
