"""Configurations of the three model families.

All three share the backbone fields (named as in diffusers' ``AutoencoderKL`` / ``VQModel``
so that a model drops into a diffusers pipeline); each family adds only its bottleneck's
fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
from collections.abc import Sequence

from transformers import PretrainedConfig

from .hub import check_pretrained_source
from .modules.backbones import get_backbone
from .modules.backbones.vector import num_convolutions
from .modules.code_corrector import check_corrector_config
from .modules.latent_adapters import check_source_autoencoder, complete_source_autoencoder
from .modules.quantizers import registry as quantizers
from .modules.quantizers.loss_weights import QuantizerLossWeights

logger = logging.getLogger(__name__)

# The recipe that keeps a learned codebook alive on real images (see VQVAEConfig): the default
# `quantizer_config` of these quantizer types, whose constructors leave every trick off.
CODEBOOK_RECIPE = {"codebook_ema": True, "kmeans_init": True, "dead_code_restart": True, "dead_code_threshold": 0.5}
QUANTIZER_CONFIG_DEFAULTS = {"vq": CODEBOOK_RECIPE, "residual_vq": CODEBOOK_RECIPE}

# Keys that PretrainedConfig (transformers 5) takes besides its dataclass fields: what its
# __post_init__ consumes, `model_type` (in every config.json) and `tie_word_embeddings` (which
# PreTrainedModel.tie_weights reads from every config).
TRANSFORMERS_CONFIG_KEYS = frozenset(
    {
        "model_type",
        "torch_dtype",
        "num_labels",
        "name_or_path",
        "_name_or_path",
        "_commit_hash",
        "output_attentions",
        "attn_implementation",
        "experts_implementation",
        "per_layer_config",
        "tie_word_embeddings",
        "_attn_implementation_internal",
        "_experts_implementation_internal",
    }
    | {field.name for field in dataclasses.fields(PretrainedConfig)}
)

# Fields that only diffusers pipelines read (`force_upcast`, `latents_mean` / `latents_std` in
# SDXL, `shift_factor` in SD3 / Flux, `lookup_from_codebook` in aMUSEd, `AutoencoderTiny`'s
# `latent_magnitude` / `latent_shift` for latents stored as 8-bit images): a model converted from
# diffusers keeps them on its config for those pipelines; the model itself does not use them.
DIFFUSERS_PIPELINE_FIELDS = frozenset(
    {"force_upcast", "latents_mean", "latents_std", "shift_factor", "lookup_from_codebook"}
    | {"latent_magnitude", "latent_shift"}
)


# The values of `config.reconstruction_loss` (and of a training recipe's): `mean_reconstruction_loss`
# in `latentcode.modeling.base` computes them.
RECONSTRUCTION_LOSSES = ("mse", "l1")


def check_reconstruction_loss(name: str) -> None:
    """Refuse a reconstruction loss that is not one of `RECONSTRUCTION_LOSSES`."""
    if name not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"reconstruction_loss must be one of {RECONSTRUCTION_LOSSES}, got {name!r}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class LatentCodeConfig(PretrainedConfig):
    r"""Backbone fields shared by [`AutoencoderConfig`], [`VAEConfig`] and [`VQVAEConfig`].

    Args:
        in_channels (`int`, defaults to 3): channels of the input image (1 grey, 3 RGB, 4 RGBA).
        out_channels (`int`, *optional*): channels of the reconstruction; defaults to `in_channels`.
        block_out_channels (`Sequence[int]`, defaults to `(128, 256, 512)`): channels of each
            resolution level. The image is downsampled by 2 between levels, so the spatial
            downsampling factor is `2 ** (len(block_out_channels) - 1)`.
        layers_per_block (`int`, defaults to 2): ResNet blocks per level in the encoder (the
            decoder uses one more, as in latent-diffusion).
        decoder_block_out_channels (`Sequence[int]`, *optional*): the decoder's channels per level
            (as many levels as `block_out_channels`), for a decoder wider than the encoder (ViTok,
            arXiv 2501.09755: reconstruction gains from the decoder's size, not the encoder's).
            Defaults to `block_out_channels`. `"ldm"` backbone only; diffusers' `VQModel` /
            `AutoencoderKL` have one width for both halves, so such a model does not export.
        decoder_layers_per_block (`int`, *optional*): the decoder's `layers_per_block` (it runs one
            more ResNet block per level than this number). Defaults to `layers_per_block`.
        latent_channels (`int`, defaults to 4): channels of the latent code at the encoder's output.
        norm_num_groups (`int`, defaults to 32): groups of every GroupNorm.
        attention_levels (`Sequence[int]`, defaults to `()`): levels (0 = full resolution) whose
            ResNet blocks are each followed by self-attention, in encoder and decoder.
        mid_block_add_attention (`bool`, defaults to `True`): self-attention in the middle blocks.
        dropout (`float`, defaults to 0.0): dropout inside the ResNet blocks.
        sample_size (`int`, defaults to 256): the image size the model is meant for; also the
            default tile size of tiled encode/decode.
        scaling_factor (`float`, defaults to 1.0): as in diffusers, latent-diffusion models
            multiply latents by it before the diffusion model and divide before decoding.
        use_quant_conv / use_post_quant_conv (`bool`, defaults to `True`): 1x1 convolutions
            between the backbone and the bottleneck, as in diffusers.
        reconstruction_loss (`str`, defaults to `"mse"`): `"mse"` or `"l1"`, used by `model(x).loss`.
        backbone (`str`, defaults to `"ldm"`): the encoder / decoder pair, a name in
            `latentcode.modules.backbones.BACKBONES`: `"ldm"` (taming / latent-diffusion),
            `"vector"` (conv + fully connected, a `[D]` latent with `D = latent_channels`; images
            of `sample_size` 32 or 64) or `"tiny"` (TAESD-style; `block_out_channels` per level,
            `layers_per_block` blocks at each level below full resolution, which has one).
        vector_hidden_channels (`int`, defaults to 32) / vector_hidden_size (`int`, defaults to
            256): channels of the `"vector"` backbone's convolutions and width of its linear layers.
        tiny_midblock_pooling (`bool`, defaults to `False`): the `"tiny"` backbone's group-norm
            pooling branch in the blocks at the lowest resolution (TAESD's `taef2`).
    """

    # Fields that set how a model trains, not what it computes (dropout is inactive in eval).
    # Each class lists its own; `all_training_only_options()` collects them over the class hierarchy.
    # Export to diffusers drops them, and conversion lets them be overridden.
    training_only_options = ("dropout", "reconstruction_loss")
    # Fields a class takes through `**kwargs` rather than by name, because another class declares
    # them (the VQ-VAE's loss weights, declared once in `QuantizerLossWeights`).
    declared_elsewhere: tuple[str, ...] = ()

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        block_out_channels: Sequence[int] = (128, 256, 512),
        layers_per_block: int = 2,
        decoder_block_out_channels: Sequence[int] | None = None,
        decoder_layers_per_block: int | None = None,
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        attention_levels: Sequence[int] = (),
        mid_block_add_attention: bool = True,
        dropout: float = 0.0,
        sample_size: int = 256,
        scaling_factor: float = 1.0,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        reconstruction_loss: str = "mse",
        backbone: str = "ldm",
        vector_hidden_channels: int = 32,
        vector_hidden_size: int = 256,
        tiny_midblock_pooling: bool = False,
        **kwargs,
    ):
        self._reject_unknown_keys(kwargs)
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.block_out_channels = list(block_out_channels)
        self.layers_per_block = layers_per_block
        # Stored only where the decoder differs: None means "as the encoder", so a symmetric
        # model's config is the same whichever way it was written (and exports to diffusers).
        if decoder_block_out_channels is not None:
            decoder_block_out_channels = list(decoder_block_out_channels)
        self.decoder_block_out_channels = (
            None if decoder_block_out_channels == self.block_out_channels else decoder_block_out_channels
        )
        self.decoder_layers_per_block = (
            None if decoder_layers_per_block == layers_per_block else decoder_layers_per_block
        )
        self.latent_channels = latent_channels
        self.norm_num_groups = norm_num_groups
        self.attention_levels = sorted(attention_levels)
        self.mid_block_add_attention = mid_block_add_attention
        self.dropout = dropout
        self.sample_size = sample_size
        self.scaling_factor = scaling_factor
        self.use_quant_conv = use_quant_conv
        self.use_post_quant_conv = use_post_quant_conv
        self.reconstruction_loss = reconstruction_loss
        self.backbone = backbone
        self.vector_hidden_channels = vector_hidden_channels
        self.vector_hidden_size = vector_hidden_size
        self.tiny_midblock_pooling = tiny_midblock_pooling
        super().__init__(**kwargs)
        self._validate_backbone()
        self._validate_backbone_choice()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """transformers' `from_pretrained`, failing at once, naming the path, when there is no such
        folder and no Hub repo to look for (as the models' `from_pretrained` does)."""
        check_pretrained_source(
            pretrained_model_name_or_path,
            cache_dir=kwargs.get("cache_dir"),
            revision=kwargs.get("revision"),
            local_files_only=kwargs.get("local_files_only", False),
            token=kwargs.get("token"),
        )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def field_names(cls) -> list[str]:
        """The fields this config class accepts: the keyword arguments of its and its bases' `__init__`."""
        names = set()
        for klass in cls.__mro__:
            if issubclass(klass, LatentCodeConfig):
                parameters = inspect.signature(klass.__init__).parameters.values()
                names |= {p.name for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD and p.name != "self"}
                names |= set(vars(klass).get("declared_elsewhere", ()))
        return sorted(names)

    @classmethod
    def all_training_only_options(cls) -> set[str]:
        """The training-only fields of this class and its bases (see `training_only_options`)."""
        return {name for klass in cls.__mro__ for name in vars(klass).get("training_only_options", ())}

    def _reject_unknown_keys(self, kwargs: dict) -> None:
        """A misspelt field would otherwise be stored as an attribute nobody reads, and the model
        built with the default: raise naming the key and the closest valid names."""
        unknown = [key for key in kwargs if key not in TRANSFORMERS_CONFIG_KEYS | DIFFUSERS_PIPELINE_FIELDS]
        if not unknown:
            return
        known = self.field_names()
        valid = known + sorted(TRANSFORMERS_CONFIG_KEYS | DIFFUSERS_PIPELINE_FIELDS)
        close = difflib.get_close_matches(unknown[0], valid, n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"its fields are: {', '.join(known)}"
        raise ValueError(f"{type(self).__name__} has no field {unknown[0]!r}; {hint}")

    @property
    def downsampling_factor(self) -> int:
        """Ratio of image size to latent size, as the backbone declares it: `2 **
        (len(block_out_channels) - 1)` for a latent grid, `sample_size` for a vector latent."""
        return get_backbone(self.backbone).downsampling_factor(self)

    def _validate_backbone_choice(self) -> None:
        """The backbone exists and its own options are valid (`get_backbone` lists the names)."""
        backbone = get_backbone(self.backbone)
        if self.backbone != "ldm":
            for name in ("decoder_block_out_channels", "decoder_layers_per_block"):
                _check(
                    getattr(self, name) is None,
                    f"{name} is an option of the 'ldm' backbone, got {name}={getattr(self, name)!r} with "
                    f"backbone={self.backbone!r}; remove it (the {self.backbone!r} decoder mirrors its encoder)",
                )
        for name in ("vector_hidden_channels", "vector_hidden_size"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"{name} must be a positive int, got {value!r}")
        if backbone.vector_latent:
            num_convolutions(self.sample_size)  # raises for an image size the layout does not have

    @property
    def decoder_widths(self) -> list[int]:
        """The decoder's channels per level: `decoder_block_out_channels`, else `block_out_channels`."""
        return self.block_out_channels if self.decoder_block_out_channels is None else self.decoder_block_out_channels

    @property
    def decoder_depth(self) -> int:
        """The decoder's `layers_per_block`: `decoder_layers_per_block`, else `layers_per_block`."""
        return self.layers_per_block if self.decoder_layers_per_block is None else self.decoder_layers_per_block

    def _validate_backbone(self) -> None:
        _check(len(self.block_out_channels) >= 1, "block_out_channels needs at least one level, got []")
        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"{name} must be a positive int, got {value!r}")
        for name, widths in (
            ("block_out_channels", self.block_out_channels),
            ("decoder_block_out_channels", self.decoder_widths),
        ):
            for channels in widths:
                _check(
                    isinstance(channels, int) and channels >= 1 and channels % self.norm_num_groups == 0,
                    f"every entry of {name} must be a positive int divisible by norm_num_groups="
                    f"{self.norm_num_groups}, got {name}={widths}",
                )
        _check(
            len(self.decoder_widths) == len(self.block_out_channels),
            f"decoder_block_out_channels must have one entry per level of block_out_channels "
            f"({len(self.block_out_channels)}: {self.block_out_channels}), got {self.decoder_block_out_channels}; "
            "the number of levels sets the downsampling factor, which encoder and decoder share",
        )
        depth = self.decoder_depth
        _check(isinstance(depth, int) and depth >= 1, f"decoder_layers_per_block must be a positive int, got {depth!r}")
        levels = len(self.block_out_channels)
        for level in self.attention_levels:
            _check(
                0 <= level < levels,
                f"attention_levels must be in [0, {levels - 1}] for {levels} levels, got {self.attention_levels}",
            )
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        check_reconstruction_loss(self.reconstruction_loss)


class AutoencoderConfig(LatentCodeConfig):
    r"""Configuration of [`AutoencoderModel`]: a deterministic latent code, no extra fields."""

    model_type = "latentcode_autoencoder"

    # An explicit __init__ is needed: transformers >= 5 turns config subclasses without one
    # into dataclasses whose generated __init__ would bypass LatentCodeConfig.__init__.
    def __init__(self, **kwargs):
        super().__init__(**kwargs)


class VAEConfig(LatentCodeConfig):
    r"""Configuration of [`VAEModel`]: a diagonal Gaussian latent code.

    Args:
        kl_weight (`float`, defaults to 1e-3): weight of the KL term in `model(x).loss`, with the
            KL expressed in nats per pixel value so that it is on the scale of the per-pixel
            reconstruction loss. For an MSE loss this is `2 * sigma**2` of a Gaussian decoder.
        **kwargs: the backbone fields of [`LatentCodeConfig`].
    """

    model_type = "latentcode_vae"
    training_only_options = ("kl_weight",)

    def __init__(self, kl_weight: float = 1e-3, **kwargs):
        self.kl_weight = kl_weight
        super().__init__(**kwargs)
        _check(kl_weight >= 0, f"kl_weight must be >= 0, got {kl_weight}")


class VQVAEConfig(LatentCodeConfig):
    r"""Configuration of [`VQVAEModel`]: a discrete codebook code.

    The quantizer is `config.quantizer` (a type name of `latentcode.modules.quantizers.QUANTIZERS`)
    built as `QuantizerClass(codebook_size=..., codebook_dim=..., num_quantizers=...,
    **quantizer_config)`: the sizes live at the top level (diffusers' `VQModel` names them too), every
    other option in `quantizer_config` under the quantizer constructor's own argument name.

    The defaults of `"vq"` and `"residual_vq"` are the recipe that keeps a codebook alive on real
    images (EMA codes, k-means initialisation, dead-code expiry every step: >= 95% of the codes
    used on CIFAR-10 at K = 512 to 65,536 where plain VQ uses a fraction; see benchmarks/README.md
    and tests/test_quantizers.py), so a config that only sets sizes trains well.

    Args:
        codebook_size (`int`, *optional*): number of codes K (the vocabulary), per level for
            `"residual_vq"`. Defaults to 1024; for `"fsq"` it is `prod(levels)`, for `"lfq"` and
            `"bsq"` `2 ** codebook_dim`.
        codebook_dim (`int`, *optional*): dimension D of a code; defaults to `latent_channels`
            (`len(levels)` for FSQ, `log2(codebook_size)` for LFQ / BSQ). When it differs,
            `use_quant_conv` / `use_post_quant_conv` must be on: the 1x1 convolutions project
            between the two. A small D with `quantizer_config={"l2_normalize": True}` is the
            factorised lookup of ViT-VQGAN / LlamaGen (e.g. `latent_channels=256, codebook_dim=8`).
        quantizer (`str`, defaults to `"vq"`): `"vq"` ([`VectorQuantizer`], a learned codebook),
            `"simvq"` ([`SimVectorQuantizer`]), `"fsq"` ([`FiniteScalarQuantizer`]), `"lfq"`
            ([`LookupFreeQuantizer`]), `"bsq"` ([`BinarySphericalQuantizer`]) or `"residual_vq"`
            ([`ResidualVectorQuantizer`]: `num_quantizers` VQ levels; indices get a depth axis).
        num_quantizers (`int`, *optional*): depth of `"residual_vq"` (defaults to 4).
        num_latent_tokens (`int`, *optional*): tokens per image G of a vector-latent VQ-VAE
            (`backbone="vector"`; TiTok's name for a 1-D tokenizer's token count). `quant_conv`
            maps the encoder's `[latent_channels]` vector to G groups of `codebook_dim` entries
            (group g is entries `[g * codebook_dim, (g + 1) * codebook_dim)`), each quantised as
            one token: `encode(...).indices` is `[B, G]` (`[B, G, num_quantizers]` for
            `"residual_vq"`), `.latents` / `.quantized` are `[B, G * codebook_dim]` (`code_channels`).
            Defaults to `latent_channels // codebook_dim` (the vector split into groups). Not
            set on a grid backbone, whose tokens are the latent grid's positions.
        quantizer_config (`dict`, *optional*): the quantizer's other constructor arguments, e.g.
            `{"gradient_estimator": "rotation"}`, `{"levels": [8, 5, 5, 5]}` (FSQ) or
            `{"temperature": 0.05}` (LFQ); unknown keys are refused naming the valid ones. For
            `"vq"` / `"residual_vq"` it defaults to `CODEBOOK_RECIPE`; given keys override it.
        commitment_weight, codebook_weight, entropy_weight, diversity_weight,
            entropy_annealing_steps, entropy_annealing_start_factor (*optional*, keyword only):
            the weights of the quantizer's terms in the family's default objective, as
            `VAEConfig.kl_weight`: what `model(x).loss` and `AutoencoderObjective.for_model` use;
            a training recipe may override each. Their names, defaults and meaning are declared
            once, in [`QuantizerLossWeights`] (`latentcode.modules.quantizers.loss_weights`).
            None: the default where the quantizer has the term; a weight of a term the quantizer
            does not have is stored as None (with a warning when it was set). `model(x).loss` has
            no optimiser step: it uses `entropy_weight` without the annealing, which the
            objective applies.
        source_autoencoder (`dict`, *optional*): set by `VQVAEModel.from_autoencoder` on a VQ-VAE
            made from a pretrained continuous model (None: an ordinary VQ-VAE): that model's family,
            whether it had `quant_conv` / `post_quant_conv` (kept, frozen, inside this model's
            projections, `modules/latent_adapters.py`), whether its parts are `frozen` (see
            `VQVAEModel.freeze_autoencoder`), whether its decoder was fine-tuned on the quantised
            code (`decoder_finetuned`; absent in older models: False) and its `name_or_path`, for
            people.
        latent_patch_size (`int`, defaults to 1): with `source_autoencoder`, the side p of the
            patch of the source's latent grid that one token codes (DiT's `patch_size`, on the
            latent): `quant_conv` takes each p x p patch of z, `p * p * latent_channels` values,
            to one `codebook_dim` code, so a token covers `f * p` pixels square and the model's
            `downsampling_factor` (image size / token grid size) is `f * p`, f the backbone's.
        corrector_config (`dict`, *optional*): with `source_autoencoder`, a trainable
            [`CodeCorrector`] that refines the de-quantised latent before the decoder
            (`modules/code_corrector.py`): `{"hidden_channels": 64, "num_blocks": 2}` (given keys
            override these); None: no corrector.
        **kwargs: the backbone fields of [`LatentCodeConfig`].

    The config holds values and checks what values alone show (names, sizes, the projections);
    the quantizer's constructor checks its options when the model builds it.
    """

    model_type = "latentcode_vqvae"
    declared_elsewhere = QuantizerLossWeights.names()
    # The loss weights set how the model trains, not what it computes.
    training_only_options = QuantizerLossWeights.names()

    def __init__(
        self,
        codebook_size: int | None = None,
        codebook_dim: int | None = None,
        quantizer: str = "vq",
        num_quantizers: int | None = None,
        num_latent_tokens: int | None = None,
        quantizer_config: dict | None = None,
        source_autoencoder: dict | None = None,
        latent_patch_size: int = 1,
        corrector_config: dict | None = None,
        **kwargs,
    ):
        weights = {name: kwargs.pop(name, None) for name in QuantizerLossWeights.names()}
        quantizer_config = dict(quantizer_config or {})
        options = [key for key in kwargs if key in quantizers.option_defaults(quantizer)]
        _check(
            not options,
            f"{', '.join(options)} {'is an option' if len(options) == 1 else 'are options'} of quantizer="
            f"{quantizer!r}, set in quantizer_config: quantizer_config={{{', '.join(f'{k!r}: {kwargs[k]!r}' for k in options)}}}",
        )
        quantizers.check_options(quantizer, quantizer_config)
        self.quantizer = quantizer
        self.quantizer_config = {**QUANTIZER_CONFIG_DEFAULTS.get(quantizer, {}), **quantizer_config}
        self._set_loss_weights(weights)
        super().__init__(**kwargs)
        sizes = dict(codebook_size=codebook_size, codebook_dim=codebook_dim, num_quantizers=num_quantizers)
        sizes = quantizers.resolve_sizes(quantizer, sizes, self.quantizer_config, self.latent_channels)
        self.codebook_size = sizes["codebook_size"]
        self.codebook_dim = sizes["codebook_dim"]
        self.num_quantizers = sizes.get("num_quantizers")
        self._validate_sizes()
        self.num_latent_tokens = self._resolve_latent_tokens(num_latent_tokens)
        self._validate_projections()
        self._set_source_autoencoder(source_autoencoder, latent_patch_size, corrector_config)

    def _set_source_autoencoder(
        self, source: dict | None, latent_patch_size: int, corrector_config: dict | None
    ) -> None:
        """Store the record of a pretrained source model, its latent patch size and the corrector's options, checked."""
        source = complete_source_autoencoder(source)  # a model saved before a key existed
        check_source_autoencoder(source)
        self.source_autoencoder = None if source is None else dict(source)
        self.corrector_config = check_corrector_config(corrector_config)
        _check(
            source is not None or corrector_config is None,
            "corrector_config refines the latent of a VQ-VAE made from a continuous model; this config has no "
            "source_autoencoder: build the model with VQVAEModel.from_autoencoder(model, corrector_config=...)",
        )
        _check(
            isinstance(latent_patch_size, int) and not isinstance(latent_patch_size, bool) and latent_patch_size >= 1,
            f"latent_patch_size must be a positive int, got {latent_patch_size!r}",
        )
        _check(
            source is not None or latent_patch_size == 1,
            f"latent_patch_size={latent_patch_size} codes patches of the latent grid of a VQ-VAE made from a continuous "
            "model; this config has no source_autoencoder: build the model with "
            f"VQVAEModel.from_autoencoder(model, latent_patch_size={latent_patch_size}), or leave latent_patch_size at 1",
        )
        self.latent_patch_size = latent_patch_size
        if source is not None:
            _check(
                self.use_quant_conv and self.use_post_quant_conv and not get_backbone(self.backbone).vector_latent,
                "a VQ-VAE from a continuous model (source_autoencoder) projects its latent grid to the code and "
                f"back: it needs use_quant_conv=True, use_post_quant_conv=True and a grid backbone, got "
                f"{self.use_quant_conv}, {self.use_post_quant_conv} and backbone={self.backbone!r}",
            )

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """transformers' `from_dict` (under `from_pretrained`), where a `quantizer_config` given as a
        keyword argument updates the saved one key by key, and loss weights given as keyword
        arguments are checked as the saved ones are."""
        given = kwargs.pop("quantizer_config", None)
        weights = {name: kwargs.pop(name) for name in QuantizerLossWeights.names() if name in kwargs}
        if given or weights:
            config_dict = {**config_dict, **weights}
            if given:
                config_dict["quantizer_config"] = {**(config_dict.get("quantizer_config") or {}), **given}
        return super().from_dict(config_dict, **kwargs)

    def _set_loss_weights(self, weights: dict) -> None:
        """Store each loss weight: the given value or the standard one where the quantizer has its
        term, None (with a warning when set to another value) where it has not."""
        applicable = quantizers.loss_weight_names(self.quantizer)
        standard = QuantizerLossWeights()
        for name, value in weights.items():
            if name not in applicable and value is not None and value != getattr(standard, name):
                logger.warning(
                    f"{name}={value!r} does not apply to quantizer={self.quantizer!r}, which has no such term: ignored"
                )
            if name in applicable and value is None:
                value = getattr(standard, name)
            setattr(self, name, value if name in applicable else None)
        QuantizerLossWeights(**{name: getattr(self, name) for name in applicable})  # checks the values

    def _resolve_latent_tokens(self, num_latent_tokens: int | None) -> int | None:
        """`num_latent_tokens` as given, its default on a vector-latent backbone (`latent_channels //
        codebook_dim`), None on a grid backbone; refused where it does not fit."""
        if not get_backbone(self.backbone).vector_latent:
            _check(
                num_latent_tokens is None,
                f"num_latent_tokens={num_latent_tokens!r} sets how many tokens a vector latent is split into, but "
                f"backbone={self.backbone!r} has a latent grid whose positions are the tokens; drop "
                "num_latent_tokens, or use backbone='vector'",
            )
            return None
        if num_latent_tokens is None:
            _check(
                self.latent_channels % self.codebook_dim == 0,
                f"backbone='vector' splits the code vector into num_latent_tokens groups of codebook_dim="
                f"{self.codebook_dim} entries, and latent_channels={self.latent_channels} is not a multiple of "
                f"{self.codebook_dim}: set num_latent_tokens (quant_conv then projects the {self.latent_channels} "
                f"entries to num_latent_tokens * {self.codebook_dim}), or a codebook_dim that divides latent_channels",
            )
            return self.latent_channels // self.codebook_dim
        _check(
            isinstance(num_latent_tokens, int) and not isinstance(num_latent_tokens, bool) and num_latent_tokens >= 1,
            f"num_latent_tokens must be a positive int (tokens per image), got {num_latent_tokens!r}",
        )
        return num_latent_tokens

    @property
    def code_channels(self) -> int:
        """Entries of the quantizer's input and output at one latent position: `codebook_dim` on a
        latent grid; on a vector latent the whole vector, its `num_latent_tokens` tokens side by
        side (`num_latent_tokens * codebook_dim`)."""
        return self.codebook_dim * (self.num_latent_tokens or 1)

    @property
    def downsampling_factor(self) -> int:
        """Ratio of image size to token grid size: the backbone's factor f (`LatentCodeConfig`'s)
        times `latent_patch_size`, the latent positions a token covers per side."""
        return super().downsampling_factor * self.latent_patch_size

    def quantizer_sizes(self) -> dict[str, int]:
        """The quantizer's top-level constructor arguments: `codebook_size`, `codebook_dim`, `num_quantizers`."""
        sizes = dict(codebook_size=self.codebook_size, codebook_dim=self.codebook_dim)
        return sizes if self.num_quantizers is None else {**sizes, "num_quantizers": self.num_quantizers}

    def quantizer_options(self) -> dict:
        """Every other constructor argument of the quantizer: its defaults, then `quantizer_config`."""
        return {**quantizers.option_defaults(self.quantizer), **self.quantizer_config}

    def training_only_quantizer_options(self) -> frozenset[str]:
        """The keys of `quantizer_config` that only change training (the quantizer class says which)."""
        return quantizers.training_only_options(self.quantizer)

    def _validate_sizes(self) -> None:
        """`codebook_size` >= 2, `codebook_dim` >= 1 and `num_quantizers` (when set) >= 1, as ints."""
        for name in ("codebook_size", "codebook_dim"):
            value, low = getattr(self, name), 2 if name == "codebook_size" else 1
            _check(isinstance(value, int) and value >= low, f"{name} must be an int >= {low}, got {value!r}")
        if self.num_quantizers is not None:
            _check(
                isinstance(self.num_quantizers, int) and self.num_quantizers >= 1,
                f"num_quantizers must be a positive int, got {self.num_quantizers!r}",
            )

    def _validate_projections(self) -> None:
        """A code of other width than `latent_channels` needs both projections to map between them."""
        if self.code_channels != self.latent_channels:
            code = "codebook_dim" if self.num_latent_tokens is None else "num_latent_tokens * codebook_dim"
            _check(
                self.use_quant_conv and self.use_post_quant_conv,
                f"{code}={self.code_channels} differs from latent_channels={self.latent_channels}: "
                "use_quant_conv and use_post_quant_conv must be True to project between them",
            )
