"""AutoencoderModel, VAEModel and VQVAEModel.

One design with three bottlenecks. [`LatentCodePreTrainedModel`] owns everything they share:
the backbone (`encoder`, `decoder`), the 1x1 `quant_conv` / `post_quant_conv`, input checks,
batch slicing, tiling and the reconstruction loss. Each family below it adds only its
bottleneck: how the encoder's output becomes a code, and which regulariser the loss has.

    pixels --encoder--> quant_conv --> [bottleneck] --> post_quant_conv --decoder--> pixels
"""

from __future__ import annotations

import glob
import logging
import math
import os
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.models import modeling_utils as diffusers_modeling_utils
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration import AutoencoderConfig, LatentCodeConfig, VAEConfig, VQVAEConfig
from .conversion import diffusers as diffusers_conversion
from .families import FAMILIES, CodeSize, FamilyBehaviour, refuse_kl_weight, refuse_quantizer_weights, register_family
from .hub import check_pretrained_source
from .model_inputs import PixelChecksMixin
from .modules.backbone import set_conv_implementation
from .modules.backbones import get_backbone
from .modules.distributions import DiagonalGaussianDistribution
from .modules.quantizers import SimVectorQuantizer, VectorQuantizer, build_quantizer
from .modules.quantizers.lookup_free import RETIRED_STEP_BUFFER
from .modules.tiling import SlicingTilingMixin
from .modules.winograd import CONV_IMPLEMENTATIONS
from .tokens import grid_as_vector_code, indices_to_sequence, latent_shape, sequence_to_indices, vector_code_as_grid

# Options that diffusers' pipeline loader passes to `ModelMixin.from_pretrained` only (flashpack
# weight files; reading weights without memory-mapping); off by default.
DIFFUSERS_ONLY_LOADING_OPTIONS = ("use_flashpack", "disable_mmap")


class _EmptyFloat32ListFilter(logging.Filter):
    """diffusers' `ModelMixin.to()` warns "... should be kept in float32: [] ..." at every dtype
    cast of any model, with an empty list too (its `self._keep_in_fp32_modules or []` is never
    None): drop that warning when the list is empty; a model that lists modules still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger(diffusers_modeling_utils.__name__).addFilter(_EmptyFloat32ListFilter())

# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


@dataclass
class DecoderOutput(ModelOutput):
    """`sample`: `[B, out_channels, H, W]` reconstructed pixels, nominally in [-1, 1]."""

    sample: torch.FloatTensor | None = None


@dataclass
class AutoencoderEncoderOutput(ModelOutput):
    """`latents`: `[B, latent_channels, H/f, W/f]`."""

    latents: torch.FloatTensor | None = None


@dataclass
class VAEEncoderOutput(ModelOutput):
    """`latent_dist`: the posterior q(z|x), a [`DiagonalGaussianDistribution`] over
    `[B, latent_channels, H/f, W/f]` (named as in diffusers' `AutoencoderKLOutput`)."""

    latent_dist: DiagonalGaussianDistribution | None = None


@dataclass
class VQVAEEncoderOutput(ModelOutput):
    """`latents`: `[B, D, H/f, W/f]` before quantisation; `quantized`: the same shape after,
    with the straight-through gradient; `indices`: `[B, H/f, W/f]` int64 codes. On a
    vector-latent backbone `[B, G * D]`, `[B, G * D]` and `[B, G]` (G = `num_latent_tokens`)."""

    latents: torch.FloatTensor | None = None
    quantized: torch.FloatTensor | None = None
    indices: torch.LongTensor | None = None


@dataclass
class AutoencoderOutput(ModelOutput):
    """`loss` = `reconstruction_loss`; `sample`: reconstruction; `latents`: the code.
    `hidden_states` (with `output_hidden_states`): the encoder's feature maps, see `forward`."""

    loss: torch.FloatTensor | None = None
    sample: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None

    def regularizer(self, objective, step: int) -> tuple[float, dict]:
        """The bottleneck term of a training `objective` for this output: none for an AutoEncoder."""
        return 0.0, {}


@dataclass
class VAEOutput(ModelOutput):
    """`loss` = `reconstruction_loss + kl_weight * kl / (C*H*W)`; `kl`: KL(q(z|x) || N(0, I))
    summed over latent elements, averaged over the batch (nats per image). `latents`: the code
    that was decoded (a posterior sample or its mean), `latent_mean` / `latent_logvar`: the
    posterior's parameters, each `[B, latent_channels, H/f, W/f]`. Plain tensors, not the
    distribution object `encode` returns, so that the forward pass can be traced and exported.
    `hidden_states` (with `output_hidden_states`): the encoder's feature maps, see `forward`."""

    loss: torch.FloatTensor | None = None
    sample: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    latent_mean: torch.FloatTensor | None = None
    latent_logvar: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    kl: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None

    def regularizer(self, objective, step: int) -> tuple[torch.Tensor, dict]:
        """The bottleneck term of a training `objective` for this output: its KL term."""
        return objective.kl_term(self, step)


@dataclass
class VQVAEOutput(ModelOutput):
    """`loss` = `reconstruction_loss + quantizer_loss`, the quantizer's terms weighted by the
    config's loss weights (e.g. `codebook_weight * codebook + commitment_weight * commitment`,
    `config.loss_weights()`); `quantizer_terms`: those terms unweighted, by name (what a
    training objective weighs with its own weights); `perplexity`: exp(entropy) of the batch's
    code histogram. `hidden_states` (with `output_hidden_states`): the encoder's feature maps,
    see `forward`."""

    loss: torch.FloatTensor | None = None
    sample: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    quantized: torch.FloatTensor | None = None
    indices: torch.LongTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    quantizer_loss: torch.FloatTensor | None = None
    quantizer_terms: dict[str, torch.FloatTensor] | None = None

    def regularizer(self, objective, step: int) -> tuple[torch.Tensor, dict]:
        """The bottleneck term of a training `objective` for this output: its quantizer's terms."""
        return objective.quantizer_term(self, step)


def _weights_file(source, subfolder: str | None) -> str:
    """The safetensors file(s) `from_pretrained(source)` reads, as a user would name them."""
    folder = os.path.join(os.fspath(source), subfolder or "")
    if os.path.isdir(folder):
        files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
        return " or ".join(files) if files else os.path.join(folder, "model.safetensors")
    return f"model.safetensors of {source!r} in the Hugging Face cache"


def _as_tuple(hidden_states: list[torch.Tensor] | None) -> tuple[torch.Tensor, ...] | None:
    return None if hidden_states is None else tuple(hidden_states)


# ----------------------------------------------------------------------------------------------
# Shared base
# ----------------------------------------------------------------------------------------------


class LatentCodePreTrainedModel(PixelChecksMixin, SlicingTilingMixin, PreTrainedModel, ModelMixin):
    """Backbone, projections and plumbing shared by the three families.

    A transformers `PreTrainedModel` (its save / load, Auto classes and Hub I/O are the ones
    used) that is also a diffusers `ModelMixin`, so that diffusers accepts it wherever it takes
    its own autoencoders: as a component passed to `DiffusionPipeline.from_pretrained(path,
    vae=model)`, and in the pipeline utilities that look for `ModelMixin` components.

    A family subclass states its channel counts in [`bottleneck_channels`] (encoder output,
    bottleneck input after `quant_conv`, bottleneck output before `post_quant_conv`), builds its
    bottleneck's modules in `_build_bottleneck` (the VQ-VAE's `quantizer`), and implements
    `encode`, `decode` and `forward` on top of `_bottleneck_input` / `_decode_code`. Input
    checks come from [`PixelChecksMixin`], batch slicing and tiling from [`SlicingTilingMixin`].
    """

    config_class = LatentCodeConfig
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_gradient_checkpointing = True  # diffusers' name: enable_gradient_checkpointing() works too

    def __init__(self, config: LatentCodeConfig):
        super().__init__(config)
        self._build_backbone(config)
        self._build_bottleneck(config)
        self.post_init()

    def _build_backbone(self, config: LatentCodeConfig) -> None:
        """`encoder`, `decoder` and the projections `quant_conv` / `post_quant_conv` (1x1
        convolutions on a latent grid, linear maps on a vector latent), from the backbone that
        `config.backbone` names (`latentcode.modules.backbones`)."""
        family = next(f.name for f in FAMILIES.values() if isinstance(self, f.model_class))
        self.backbone_spec.check_family(family)
        encoder_out, moments, code = self.bottleneck_channels(config)
        self.encoder = self.backbone_spec.build_encoder(config, encoder_out)
        self.decoder = self.backbone_spec.build_decoder(config, config.latent_channels)
        self.quant_conv = self.backbone_spec.projection(encoder_out, moments) if config.use_quant_conv else None
        self.post_quant_conv = (
            self.backbone_spec.projection(code, config.latent_channels) if config.use_post_quant_conv else None
        )

    @property
    def backbone_spec(self):
        """The [`Backbone`] that `config.backbone` names: builders, downsampling factor, latent shape.
        (Looked up, not stored: the model stays picklable.)"""
        return get_backbone(self.config.backbone)

    def latent_code_shape(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, ...]:
        """Shape of one image's latent code (what `decode` takes, without the batch axis): `(C,)` on
        a vector-latent backbone, else `(C, H/f, W/f)` for `image_size` (`H` or `(H, W)`, default
        `config.sample_size`), where C is the bottleneck's output channels (`latent_channels`; a
        VQ-VAE's `config.code_channels`)."""
        code_channels = self.bottleneck_channels(self.config)[2]
        return self.backbone_spec.latent_shape(self.config, code_channels, image_size)

    def _build_bottleneck(self, config: LatentCodeConfig) -> None:
        """Create the bottleneck's own modules (the quantizer); none by default."""

    @staticmethod
    def bottleneck_channels(config: LatentCodeConfig) -> tuple[int, int, int]:
        """(encoder output, bottleneck input, bottleneck output) channel counts."""
        raise NotImplementedError

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's own initialisation (Kaiming-uniform convolutions), which the
        # taming / latent-diffusion / diffusers autoencoders are trained from.
        if isinstance(module, VectorQuantizer):
            module.initialize_unloaded_state()
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.GroupNorm, SimVectorQuantizer)):
            module.reset_parameters()

    # -- convenience ----------------------------------------------------------------------------

    @property
    def downsampling_factor(self) -> int:
        """Image size / latent size."""
        return self.config.downsampling_factor

    def enable_tiling(self, tile_sample_size: int | None = None, tile_overlap_factor: float = 0.25) -> None:
        """[`SlicingTilingMixin.enable_tiling`], refused on a vector-latent backbone (no tiles)."""
        if self.backbone_spec.vector_latent:
            raise ValueError(
                f"backbone={self.config.backbone!r} encodes a whole {self.config.sample_size}x"
                f"{self.config.sample_size} image into one latent vector: there are no tiles to blend; "
                "resize the image to config.sample_size instead"
            )
        super().enable_tiling(tile_sample_size, tile_overlap_factor)

    def compile(self, *args, **kwargs) -> None:
        """`torch.compile` the encoder and the decoder in place; arguments as `torch.compile`'s.

        Like `nn.Module.compile` (which would compile `forward` only), but `encode`, `decode`,
        `decode_indices` and `forward` all run the compiled backbone, where inductor fuses each
        GroupNorm with its SiLU and the residual adds into the convolutions' neighbours. The
        bottleneck stays eager: the codebook search and its training-time maintenance are
        data-dependent Python that would only break the graph. State-dict keys do not change,
        so checkpoints load into compiled and eager models alike.
        """
        for module in (self.encoder, self.decoder):
            module.compile(*args, **kwargs)

    def set_conv_implementation(self, implementation: str) -> None:
        """How the backbone runs its 3x3 convolutions (a choice of this model object, not saved):
        `"auto"` (the default: Winograd's algorithm in CPU float32 with one intra-op thread where it
        was measured faster, oneDNN otherwise, so results differ with the thread count within
        ~1e-5 relative), `"winograd"` (wherever it computes the convolution, whatever the thread
        count) or `"direct"` (always `nn.Conv2d`). See `latentcode.modules.winograd`."""
        set_conv_implementation(self, implementation)
        self._conv_implementation = implementation

    @property
    def conv_implementation(self) -> str:
        """The choice of [`set_conv_implementation`]."""
        return getattr(self, "_conv_implementation", CONV_IMPLEMENTATIONS[0])

    def _return(self, output: ModelOutput, return_dict: bool | None):
        """`output`, or its tuple of set fields when `return_dict` is False; `None` follows
        `config.return_dict`, as transformers' models do."""
        if return_dict is None:
            return_dict = self.config.return_dict
        return output if return_dict else output.to_tuple()

    # -- shared encode / decode paths -----------------------------------------------------------

    def _hidden_states_list(self, output_hidden_states: bool | None) -> list[torch.Tensor] | None:
        """An empty list for `_bottleneck_input` to fill when hidden states are asked for (the
        argument, else `config.output_hidden_states`, as in transformers' models), else None."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return [] if output_hidden_states else None

    def _bottleneck_input(
        self, pixel_values: torch.Tensor, hidden_states: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Pixels `[B, C, H, W]` -> encoder -> `quant_conv` -> the bottleneck's input `[B, moment_channels,
        H/f, W/f]` (every family's first half). With a `hidden_states` list, fills it with the
        encoder's feature maps of the whole batch."""
        self._check_pixels(pixel_values)
        if hidden_states is not None and self._is_tiled(pixel_values):
            raise ValueError(
                "output_hidden_states needs the whole image in one pass, but tiled encoding would split this "
                f"{tuple(pixel_values.shape[2:])} image into {self.tile_sample_size}-pixel tiles; call "
                "model.disable_tiling() first"
            )
        per_slice = [] if hidden_states is not None else None

        def encode_tile(x: torch.Tensor) -> torch.Tensor:
            h = self.encoder(x, per_slice)
            return self.quant_conv(h) if self.quant_conv is not None else h

        moments = self._split_batch(lambda x: self._map_tiles(encode_tile, x, decoding=False), pixel_values)
        if hidden_states is not None:
            maps = self.backbone_spec.num_hidden_states(self.config)
            if len(per_slice) == maps:
                hidden_states.extend(per_slice)
            else:  # sliced: each slice appended its maps in turn; join each map over the batch
                hidden_states.extend(torch.cat(per_slice[i::maps]) for i in range(maps))
        return moments

    def _decode_code(self, code: torch.Tensor) -> torch.Tensor:
        """Bottleneck output `[B, code_channels, h, w]` -> pixels `[B, out_channels, h*f, w*f]`."""

        def decode_tile(z: torch.Tensor) -> torch.Tensor:
            if self.post_quant_conv is not None:
                z = self.post_quant_conv(z)
            return self.decoder(z)

        return self._split_batch(lambda z: self._map_tiles(decode_tile, z, decoding=True), code)

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, *args, allow_missing_weights: bool = False, **kwargs):
        """transformers' `from_pretrained`, except that weights missing from the checkpoint (or of
        the wrong shape with `ignore_mismatched_sizes=True`) are an error: an autoencoder with a
        freshly initialised layer gives garbage. `allow_missing_weights=True` keeps transformers'
        lenient behaviour (random weights, reported in the load report). Keys a module derives on
        load (a VQ codebook's EMA statistics: `_keys_to_ignore_on_load_missing`) do not count as missing.

        It also fails at once, naming the path, when there is no such folder and no Hub repo to
        look for, and takes the loading options diffusers' pipeline loader passes to every
        `ModelMixin` component."""
        for option in DIFFUSERS_ONLY_LOADING_OPTIONS:
            if kwargs.pop(option, False):
                raise ValueError(f"{option}=True is a diffusers loading option that {cls.__name__} does not support")
        source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        check_pretrained_source(
            source,
            cache_dir=kwargs.get("cache_dir"),
            revision=kwargs.get("revision"),
            local_files_only=kwargs.get("local_files_only", False),
            token=kwargs.get("token"),
        )
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        except SafetensorError as error:
            raise OSError(
                f"cannot read the weights of {source}: {_weights_file(source, kwargs.get('subfolder'))} is truncated "
                f"or corrupt ({error}). Download it again (from_pretrained(..., force_download=True)), or write it "
                "again with save_pretrained from the model it came from."
            ) from error
        absent = sorted(set(info["missing_keys"]) | {str(key) for key in info["mismatched_keys"]})
        if absent and not allow_missing_weights:
            raise ValueError(
                f"{source} does not hold every weight of {cls.__name__}; missing or of another shape "
                f"({len(absent)}): "
                f"{', '.join(absent[:12])}{' ...' if len(absent) > 12 else ''}. They would be random. Pass "
                "allow_missing_weights=True to load anyway, e.g. to fine-tune a changed architecture."
            )
        return (model, info) if wants_info else model

    # -- conversion (implemented in latentcode.conversion.diffusers) -----------------------------

    @classmethod
    def from_diffusers(cls, model_or_path, **kwargs):
        """Build this model from a diffusers `VQModel` / `AutoencoderKL` / `AutoencoderTiny` (instance,
        folder or Hub id), with identical outputs; on `LatentCodePreTrainedModel` the family follows
        the diffusers class (`AutoencoderTiny`: an AutoEncoder on the tiny backbone)."""
        return diffusers_conversion.from_diffusers(cls, model_or_path, **kwargs)

    def to_diffusers(self):
        """The equivalent diffusers `VQModel` / `AutoencoderKL` (or `AutoencoderTiny` for a 4-channel
        TAESD-layout AutoEncoder), with bit-identical weights."""
        return diffusers_conversion.to_diffusers(self)

    def reconstruction_loss(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean per-element MSE or L1, as `config.reconstruction_loss` says."""
        if reconstruction.shape != target.shape:
            raise ValueError(
                f"the loss compares the reconstruction with the input, but a reconstruction of shape "
                f"{tuple(reconstruction.shape)} cannot match pixels of shape {tuple(target.shape)} "
                f"(out_channels={self.config.out_channels}, in_channels={self.config.in_channels})"
            )
        if self.config.reconstruction_loss == "l1":
            return F.l1_loss(reconstruction.float(), target.float())
        return F.mse_loss(reconstruction.float(), target.float())


# ----------------------------------------------------------------------------------------------
# The three bottlenecks
# ----------------------------------------------------------------------------------------------


@register_family("autoencoder")
class AutoencoderModel(LatentCodePreTrainedModel, FamilyBehaviour):
    """Deterministic autoencoder: the code is the encoder's output.

    ```python
    model = AutoencoderModel(AutoencoderConfig(block_out_channels=(64, 128)))
    latents = model.encode(pixels).latents          # [B, 4, H/2, W/2]
    reconstruction = model.decode(latents).sample   # [B, 3, H, W]
    ```
    """

    config_class = AutoencoderConfig

    @staticmethod
    def bottleneck_channels(config):
        return config.latent_channels, config.latent_channels, config.latent_channels

    def encode(self, pixel_values: torch.Tensor, return_dict: bool | None = None):
        """`[B, C, H, W]` pixels in [-1, 1] -> `.latents` `[B, latent_channels, H/f, W/f]`."""
        latents = self._bottleneck_input(pixel_values)
        return self._return(AutoencoderEncoderOutput(latents=latents), return_dict)

    def decode(self, latents: torch.Tensor, return_dict: bool | None = None, generator=None):
        """`[B, latent_channels, h, w]` -> `.sample` `[B, out_channels, h*f, w*f]`.

        The signature is diffusers' `AutoencoderKL.decode`: pipelines pass their `generator`,
        which a deterministic decoder does not use.
        """
        self._check_code(latents, self.config.latent_channels)
        return self._return(DecoderOutput(sample=self._decode_code(latents)), return_dict)

    def forward(
        self, pixel_values: torch.Tensor, return_dict: bool | None = None, *, output_hidden_states: bool | None = None
    ):
        """Reconstruct `[B, C, H, W]` pixels; `output_hidden_states` (default
        `config.output_hidden_states`) adds the encoder's feature maps as `.hidden_states`: after
        `conv_in` (`[B, block_out_channels[0], H, W]`), after each resolution level `l` (`[B,
        block_out_channels[l], H/2^(l+1), W/2^(l+1)]`; the last level does not downsample: `H/f`)
        and after the mid block (`[B, block_out_channels[-1], H/f, W/f]`)."""
        hidden_states = self._hidden_states_list(output_hidden_states)
        latents = self._bottleneck_input(pixel_values, hidden_states)
        sample = self._decode_code(latents)
        reconstruction_loss = self.reconstruction_loss(sample, pixel_values)
        output = AutoencoderOutput(
            loss=reconstruction_loss,
            sample=sample,
            latents=latents,
            reconstruction_loss=reconstruction_loss,
            hidden_states=_as_tuple(hidden_states),
        )
        return self._return(output, return_dict)

    # -- family behaviour (latentcode.families.FamilyBehaviour) ---------------------------------

    display_name = "AutoEncoder"
    stored_columns = {"latents": "latent"}

    def reconstruct_encoded(self, encoded: AutoencoderEncoderOutput) -> torch.Tensor:
        """The decoded code `[B, out_channels, H, W]`."""
        return self.decode(encoded.latents, return_dict=True).sample

    def continuous_code_encoded(self, encoded: AutoencoderEncoderOutput, sample_posterior=False, generator=None):
        """The code itself, `[B, latent_channels, h, w]` (deterministic: no posterior to sample)."""
        return encoded.latents

    def code_size(self, encoded: AutoencoderEncoderOutput) -> CodeSize:
        """The code as it is stored: 32 bits per latent value (no entropy model bounds it)."""
        latents = encoded.latents
        values = latents[0].numel()
        bits = torch.full((latents.shape[0],), 32.0 * values, dtype=torch.float64, device=latents.device)
        return CodeSize(tuple(latents.shape[1:]), bits, f"{values} float32 values, uncompressed")

    def stored_code(self, encoded: AutoencoderEncoderOutput) -> dict[str, torch.Tensor]:
        """`latents` `[B, C*h*w]` (or `[B, D]` for a vector latent)."""
        return {"latents": encoded.latents.flatten(1)}

    def regularizer_description(self, objective=None) -> None:
        return None

    def objective_weights(self, kl_weight: float | None = None, quantizer_weights: dict | None = None) -> dict:
        refuse_kl_weight(self, kl_weight)
        refuse_quantizer_weights(self, quantizer_weights)
        return {}


@register_family("vae", diffusers_class_name="AutoencoderKL")
class VAEModel(LatentCodePreTrainedModel, FamilyBehaviour):
    """Variational autoencoder with a diagonal Gaussian posterior, like diffusers' `AutoencoderKL`.

    ```python
    posterior = model.encode(pixels).latent_dist           # DiagonalGaussianDistribution
    z = posterior.sample(generator=torch.Generator().manual_seed(0))
    images = model.decode(z).sample
    new_images = model.sample(4, generator=torch.Generator().manual_seed(0))
    ```
    """

    config_class = VAEConfig

    @staticmethod
    def bottleneck_channels(config):
        return 2 * config.latent_channels, 2 * config.latent_channels, config.latent_channels

    def encode(self, pixel_values: torch.Tensor, return_dict: bool | None = None):
        """`[B, C, H, W]` -> `.latent_dist`, a Gaussian over `[B, latent_channels, H/f, W/f]`."""
        posterior = DiagonalGaussianDistribution(self._bottleneck_input(pixel_values))
        return self._return(VAEEncoderOutput(latent_dist=posterior), return_dict)

    def decode(self, latents: torch.Tensor, return_dict: bool | None = None, generator=None):
        """`[B, latent_channels, h, w]` -> `.sample` `[B, out_channels, h*f, w*f]`.

        The signature is diffusers' `AutoencoderKL.decode`: pipelines pass their `generator`,
        which the deterministic decoder does not use.
        """
        self._check_code(latents, self.config.latent_channels)
        return self._return(DecoderOutput(sample=self._decode_code(latents)), return_dict)

    def forward(
        self,
        pixel_values: torch.Tensor,
        sample_posterior: bool | None = None,
        return_dict: bool | None = None,
        generator: torch.Generator | None = None,
        *,
        output_hidden_states: bool | None = None,
    ):
        """Reconstruct through a posterior sample (default in training) or its mean (in eval).

        Arguments are in the order of diffusers' `AutoencoderKL.forward`; `output_hidden_states`
        adds the encoder's feature maps, as [`AutoencoderModel.forward`] describes.
        """
        if sample_posterior is None:
            sample_posterior = self.training
        hidden_states = self._hidden_states_list(output_hidden_states)
        posterior = DiagonalGaussianDistribution(self._bottleneck_input(pixel_values, hidden_states))
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        sample = self._decode_code(z)
        reconstruction_loss = self.reconstruction_loss(sample, pixel_values)
        kl = posterior.kl().float().mean()
        values_per_image = sample[0].numel()
        loss = reconstruction_loss + self.config.kl_weight * kl / values_per_image
        output = VAEOutput(
            loss=loss,
            sample=sample,
            latents=z,
            latent_mean=posterior.mean,
            latent_logvar=posterior.logvar,
            reconstruction_loss=reconstruction_loss,
            kl=kl,
            hidden_states=_as_tuple(hidden_states),
        )
        return self._return(output, return_dict)

    @torch.no_grad()
    def sample(
        self, num_samples: int, generator: torch.Generator | None = None, latent_size: int | None = None
    ) -> torch.Tensor:
        """Decode `num_samples` draws from the prior N(0, I).

        `latent_size` defaults to `config.sample_size / f`. Returns `[num_samples, out_channels,
        latent_size*f, latent_size*f]` (`config.sample_size` on a vector-latent backbone, whose
        code is one `[latent_channels]` vector per image and takes no `latent_size`).
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if latent_size is not None and self.backbone_spec.vector_latent:
            raise ValueError(
                f"latent_size={latent_size} sets a latent grid, but backbone={self.config.backbone!r} has one "
                f"latent vector per {self.config.sample_size}x{self.config.sample_size} image; leave it None"
            )
        image_size = None if latent_size is None else latent_size * self.downsampling_factor
        shape = (num_samples, *self.latent_code_shape(image_size))
        device = generator.device if generator is not None else self.device
        z = torch.randn(shape, generator=generator, device=device).to(self.device, self.dtype)
        return self.decode(z, return_dict=True).sample

    # -- family behaviour (latentcode.families.FamilyBehaviour) ---------------------------------

    display_name = "VAE"
    can_sample_prior = True
    stored_columns = {"latent_mean": "latent", "latent_std": "latent"}

    def reconstruct_encoded(self, encoded: VAEEncoderOutput) -> torch.Tensor:
        """The decoded posterior mean `[B, out_channels, H, W]`."""
        return self.decode(encoded.latent_dist.mode(), return_dict=True).sample

    def continuous_code_encoded(
        self, encoded: VAEEncoderOutput, sample_posterior: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The posterior mean `[B, latent_channels, h, w]`, or a sample of the posterior (drawn with
        `generator`) with `sample_posterior`, as latent diffusion trains on."""
        posterior = encoded.latent_dist
        return posterior.sample(generator=generator) if sample_posterior else posterior.mode()

    def code_size(self, encoded: VAEEncoderOutput) -> CodeSize:
        """KL(q(z|x) || N(0, I)) in bits per image: the cost of the code with bits-back coding."""
        posterior = encoded.latent_dist
        bits = posterior.kl().double() / math.log(2)
        return CodeSize(tuple(posterior.mean.shape[1:]), bits, "KL to the prior N(0, I)")

    def stored_code(self, encoded: VAEEncoderOutput) -> dict[str, torch.Tensor]:
        """The posterior's `latent_mean` and `latent_std`, each `[B, C*h*w]` (`[B, D]` for a vector)."""
        posterior = encoded.latent_dist
        return {"latent_mean": posterior.mean.flatten(1), "latent_std": posterior.std.flatten(1)}

    def regularizer_description(self, objective=None) -> str:
        weight = self.config.kl_weight if objective is None else objective.kl_weight
        return f"KL to N(0, I) (weight {weight})"

    def objective_weights(self, kl_weight: float | None = None, quantizer_weights: dict | None = None) -> dict:
        refuse_quantizer_weights(self, quantizer_weights)
        return {"kl_weight": self.config.kl_weight if kl_weight is None else kl_weight}


@register_family("vqvae", diffusers_class_name="VQModel")
class VQVAEModel(LatentCodePreTrainedModel, FamilyBehaviour):
    """VQ-VAE: the code is the nearest of `codebook_size` learned vectors (or an FSQ / LFQ /
    residual-VQ code, as `config.quantizer` says; see `latentcode.modules.quantizers`).

    ```python
    encoded = model.encode(pixels)          # .latents, .quantized, .indices [B, H/f, W/f]
    images = model.decode_indices(encoded.indices).sample
    ```
    `decode(latents)` quantises continuous latents first, as diffusers' `VQModel.decode` does.
    On the `"vector"` backbone the code is one vector `[B, G * D]` per image, quantised as
    G = `config.num_latent_tokens` tokens of D = `codebook_dim` entries: indices `[B, G]`.
    """

    config_class = VQVAEConfig
    # The codebook's training state is derived from the codebook when a checkpoint lacks it
    # (VectorQuantizer.initialize_unloaded_state): not worth a "missing keys" report.
    _keys_to_ignore_on_load_missing = [r"quantizer\.(.+\.)?(initialized|ema_cluster_size|ema_codebook_sum)$"]
    # LFQ / BSQ models of latentcode 0.1.0 with entropy annealing saved its step count; the
    # schedule is the training objective's now (LookupFreeQuantizer drops it on load_state_dict).
    _keys_to_ignore_on_load_unexpected = [rf"quantizer\.{RETIRED_STEP_BUFFER}$"]

    def _build_bottleneck(self, config: VQVAEConfig) -> None:
        self.quantizer = build_quantizer(config.quantizer, config.quantizer_sizes(), config.quantizer_config)

    @staticmethod
    def bottleneck_channels(config):
        return config.latent_channels, config.code_channels, config.code_channels

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def encode(self, pixel_values: torch.Tensor, return_dict: bool | None = None):
        """`[B, C, H, W]` -> `.latents` / `.quantized` `[B, D, H/f, W/f]`, `.indices` `[B, H/f, W/f]`
        (`[B, H/f, W/f, num_quantizers]` for `"residual_vq"`); on a vector-latent backbone
        `[B, G * D]` and `[B, G]` (`[B, G, num_quantizers]`)."""
        latents = self._bottleneck_input(pixel_values)
        quantized = self._quantize(latents, update_codebook=False)
        output = VQVAEEncoderOutput(latents=latents, quantized=quantized.quantized, indices=quantized.indices)
        return self._return(output, return_dict)

    def decode(
        self,
        latents: torch.Tensor,
        force_not_quantize: bool = False,
        return_dict: bool | None = None,
        shape: tuple[int, ...] | None = None,
    ):
        """`[B, D, h, w]` continuous latents (a vector latent's `[B, G * D]`) -> quantise -> `.sample`
        `[B, out_channels, h*f, w*f]`.

        The signature is diffusers' `VQModel.decode`. `force_not_quantize=True` decodes the
        latents as they are (they are then taken to be codebook vectors already). With `shape`
        `(B, h, w, D)` as well, `latents` are token indices (any shape with `B * h * w` entries,
        e.g. aMUSEd's `[B, h*w]`) that are looked up in the codebook, as `VQModel` does with
        `lookup_from_codebook`.
        """
        if shape is not None:
            return self._decode_looked_up_indices(latents, force_not_quantize, shape, return_dict)
        self._check_code(latents, self.config.code_channels)
        code = latents if force_not_quantize else self._quantize(latents, update_codebook=False).quantized
        sample = self._decode_code(code.to(latents.dtype))
        return self._return(DecoderOutput(sample=sample), return_dict)

    def _decode_looked_up_indices(self, indices, force_not_quantize, shape, return_dict):
        """diffusers' `decode(indices, force_not_quantize=True, shape=(B, h, w, D))`."""
        if self.backbone_spec.vector_latent:
            raise ValueError(
                "decode(..., shape=(B, h, w, D)) looks up a grid of token indices, as diffusers' VQModel does; this "
                f"model's tokens are the num_latent_tokens={self.config.num_latent_tokens} groups of a vector latent "
                "(backbone='vector'): decode them with decode_indices(indices [B, num_latent_tokens])"
            )
        if not force_not_quantize:
            raise ValueError(
                "decode(..., shape=...) looks token indices up in the codebook and needs force_not_quantize=True, "
                "as diffusers' VQModel.decode does; without shape, decode quantises continuous latents"
            )
        if len(shape) != 4 or shape[3] != self.config.codebook_dim:
            raise ValueError(f"expected shape (B, h, w, codebook_dim={self.config.codebook_dim}), got {tuple(shape)}")
        grid = tuple(shape[:3]) + ((self.config.num_quantizers,) if self.config.num_quantizers else ())
        if not isinstance(indices, torch.Tensor) or indices.numel() != math.prod(grid):
            got = tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise ValueError(f"expected {math.prod(grid)} token indices for shape {tuple(shape)}, got {got}")
        return self.decode_indices(indices.reshape(grid), return_dict)

    def decode_indices(self, indices: torch.Tensor, return_dict: bool | None = None):
        """Token indices `[B, h, w]` in `[0, codebook_size)` (`[B, h, w, num_quantizers]` for
        `"residual_vq"`; a vector latent's `[B, G]` / `[B, G, num_quantizers]`) -> `.sample`
        `[B, out_channels, h*f, w*f]`."""
        code = self._indices_to_code(indices.to(self.device)).to(self.dtype)
        return self._return(DecoderOutput(sample=self._decode_code(code)), return_dict)

    def forward(
        self, pixel_values: torch.Tensor, return_dict: bool | None = None, *, output_hidden_states: bool | None = None
    ):
        """Reconstruct through the quantiser (which, in training, also updates an EMA codebook);
        `output_hidden_states` adds the encoder's feature maps, as [`AutoencoderModel.forward`]
        describes. The loss weighs the quantizer's terms with `config.loss_weights()` (no
        optimiser step here: the entropy weight without its annealing)."""
        hidden_states = self._hidden_states_list(output_hidden_states)
        latents = self._bottleneck_input(pixel_values, hidden_states)
        quantized = self._quantize(latents)
        sample = self._decode_code(quantized.quantized.to(latents.dtype))
        reconstruction_loss = self.reconstruction_loss(sample, pixel_values)
        quantizer_loss, _ = self.config.loss_weights()(quantized.terms)
        output = VQVAEOutput(
            loss=reconstruction_loss + quantizer_loss,
            sample=sample,
            latents=latents,
            quantized=quantized.quantized,
            indices=quantized.indices,
            reconstruction_loss=reconstruction_loss,
            codebook_loss=quantized.codebook_loss,
            commitment_loss=quantized.commitment_loss,
            perplexity=quantized.perplexity,
            hidden_states=_as_tuple(hidden_states),
            quantizer_loss=quantizer_loss,
            quantizer_terms=quantized.terms,
        )
        return self._return(output, return_dict)

    # -- the token layout: a latent grid's positions, or a vector latent's groups --------------

    def _quantize(self, latents: torch.Tensor, update_codebook: bool | None = None):
        """The quantizer's [`QuantizerOutput`] for the bottleneck input: a latent grid `[B, D, h, w]`
        as it is; a vector `[B, G * D]` as its G tokens (`tokens.vector_code_as_grid`), with
        `quantized` back in the vector's layout and `indices` `[B, G]` (`[B, G, depth]`)."""
        if not self.backbone_spec.vector_latent:
            return self.quantizer(latents, update_codebook=update_codebook)
        grid = vector_code_as_grid(latents, self.config.num_latent_tokens)
        output = self.quantizer(grid, update_codebook=update_codebook)
        return replace(output, quantized=grid_as_vector_code(output.quantized), indices=output.indices.squeeze(1))

    def _indices_to_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Token indices -> the quantized code `_decode_code` takes (the inverse of `_quantize`'s)."""
        if not self.backbone_spec.vector_latent:
            return self.quantizer.indices_to_codes(indices)
        expected = self.latent_shape()
        if tuple(indices.shape[1:]) != expected:
            raise ValueError(
                f"expected token indices [B, {', '.join(map(str, expected))}] (num_latent_tokens="
                f"{self.config.num_latent_tokens} tokens of a vector latent), got shape {tuple(indices.shape)}"
            )
        return grid_as_vector_code(self.quantizer.indices_to_codes(indices.unsqueeze(1)))

    # -- token API for sequence models (latentcode.tokens) --------------------------------------

    def latent_shape(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, ...]:
        """Code grid of one image of `image_size` (`H` or `(H, W)`, default `config.sample_size`):
        `(h, w)`, or `(h, w, depth)` for a quantiser with `config.num_quantizers > 1` levels; on a
        vector-latent backbone `(G,)` or `(G, depth)`, G = `config.num_latent_tokens`."""
        size = self.config.sample_size if image_size is None else image_size
        return latent_shape(self.config, size, depth=getattr(self.config, "num_quantizers", None) or 1)

    @torch.no_grad()
    def encode_to_sequence(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[B, C, H, W]` pixels -> code sequence `[B, L]` int64 in raster order, `L = h * w (* depth)`
        (`G (* depth)` on a vector-latent backbone)."""
        return indices_to_sequence(self.encode(pixel_values, return_dict=True).indices)

    def decode_sequence(
        self,
        sequence: torch.Tensor,
        image_size: int | tuple[int, int] | None = None,
        return_dict: bool | None = None,
    ):
        """Code sequence `[B, L]` of images of `image_size` (default `config.sample_size`) ->
        `.sample` `[B, out_channels, H, W]`."""
        return self.decode_indices(sequence_to_indices(sequence, self.latent_shape(image_size)), return_dict)

    # -- family behaviour (latentcode.families.FamilyBehaviour) ---------------------------------

    display_name = "VQ-VAE"
    has_tokens = True
    stored_columns = {"indices": "index"}

    def reconstruct_encoded(self, encoded: VQVAEEncoderOutput) -> torch.Tensor:
        """The decoded tokens `[B, out_channels, H, W]`."""
        return self.decode_indices(encoded.indices, return_dict=True).sample

    def continuous_code_encoded(self, encoded: VQVAEEncoderOutput, sample_posterior=False, generator=None):
        """The latents before quantisation `[B, codebook_dim, h, w]` (a vector latent's `[B, G *
        codebook_dim]`; `decode` quantises them)."""
        return encoded.latents

    def code_size(self, encoded: VQVAEEncoderOutput) -> CodeSize:
        """`log2(codebook_size)` bits per token, every level of a residual quantiser included."""
        indices = encoded.indices
        tokens = indices[0].numel()
        bits = torch.full(
            (indices.shape[0],), tokens * math.log2(self.codebook_size), dtype=torch.float64, device=indices.device
        )
        return CodeSize(tuple(indices.shape[1:]), bits, f"{tokens} tokens x log2({self.codebook_size})")

    def stored_code(self, encoded: VQVAEEncoderOutput) -> dict[str, torch.Tensor]:
        """`indices` `[B, L]` in raster order, residual levels of a position together."""
        return {"indices": indices_to_sequence(encoded.indices)}

    def stored_code_shape(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, ...]:
        """The token grid `(h, w)` or `(h, w, depth)` of `latent_shape` (`(G,)` / `(G, depth)`)."""
        return self.latent_shape(image_size)

    def regularizer_description(self, objective=None) -> str:
        weights = self.config.loss_weights() if objective is None else objective.quantizer_weights
        terms = weights.describe(self.quantizer.loss_terms)
        return f"the {self.config.quantizer!r} quantizer's terms: {terms}"

    def objective_weights(self, kl_weight: float | None = None, quantizer_weights: dict | None = None) -> dict:
        refuse_kl_weight(self, kl_weight)
        return {"quantizer_weights": self.config.loss_weights(**(quantizer_weights or {}))}


def _register_with_auto_classes() -> None:
    """Every family's config, model and image processor with transformers' Auto classes, so that
    `AutoConfig` / `AutoModel` / `AutoImageProcessor.from_pretrained` load saved latentcode models.
    Done here, when the models are defined: `import latentcode` alone is lazy and loads no model."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    from .image_processing import LatentCodeImageProcessor

    for family in FAMILIES.values():
        AutoConfig.register(family.config_class.model_type, family.config_class, exist_ok=True)
        AutoModel.register(family.config_class, family.model_class, exist_ok=True)
        # One torch implementation serves both of transformers' backends ("pil" and "torchvision" in
        # transformers 5, "slow" and "fast" in 4.x), so neither choice warns; these keywords exist in both.
        AutoImageProcessor.register(
            family.config_class,
            slow_image_processor_class=LatentCodeImageProcessor,
            fast_image_processor_class=LatentCodeImageProcessor,
            exist_ok=True,
        )


_register_with_auto_classes()
