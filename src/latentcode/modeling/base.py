"""What the three model families share: [`LatentCodePreTrainedModel`].

One design with three bottlenecks; each family's file (`autoencoder.py`, `vae.py`, `vqvae.py`)
holds its outputs, `encode` / `decode` / `forward` and its family answers. This base holds only
what all three share: the backbone (`encoder`, `decoder`) and the projections
`quant_conv` / `post_quant_conv`, the two halves of the pass around the bottleneck, input
checks ([`PixelChecksMixin`]), batch slicing and tiling (`modules/tiling.py`), save / load and the
reconstruction loss.

    pixels --encoder--> quant_conv --> [bottleneck] --> post_quant_conv --decoder--> pixels
"""

from __future__ import annotations

import glob
import logging
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.models import modeling_utils as diffusers_modeling_utils
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ..configuration import LatentCodeConfig, check_reconstruction_loss
from ..conversion import diffusers as diffusers_conversion
from ..families import FAMILIES
from ..hub import check_pretrained_source
from ..modules.backbones import get_backbone
from ..modules.backbones.ldm import set_conv_implementation
from ..modules.tiling import SlicingTilingMixin
from ..modules.winograd import CONV_IMPLEMENTATIONS

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


@dataclass
class DecoderOutput(ModelOutput):
    """`sample`: `[B, out_channels, H, W]` reconstructed pixels, nominally in [-1, 1]."""

    sample: torch.FloatTensor | None = None


def mean_reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    """The reconstruction loss: mean per-value MSE (`name="mse"`) or L1 (`"l1"`) of `[B, C, H, W]`
    images, in fp32, a scalar. The one home of the loss `model(pixels).loss` (at
    `config.reconstruction_loss`) and a training objective (`latentcode.objectives`) use. The
    names it computes are `configuration.RECONSTRUCTION_LOSSES`, which configs and objectives check
    when they are built; another name raises the same error here."""
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"the loss compares the reconstruction with the input, but a reconstruction of shape "
            f"{tuple(reconstruction.shape)} cannot match pixels of shape {tuple(target.shape)} (a model whose "
            "out_channels differs from its in_channels has no reconstruction loss)"
        )
    if name == "mse":
        return F.mse_loss(reconstruction.float(), target.float())
    if name == "l1":
        return F.l1_loss(reconstruction.float(), target.float())
    check_reconstruction_loss(name)  # raises: not one of RECONSTRUCTION_LOSSES
    raise NotImplementedError(f"reconstruction_loss={name!r} is in RECONSTRUCTION_LOSSES but not computed here")


# -- input checks: every bad input is refused naming what was expected, what came and the fix --

# Pixels are nominally in [-1, 1], but reconstructions overshoot and tests, robustness studies
# and diffusers' own model tests feed Gaussian noise. Values beyond this bound say the input is
# in another range ([0, 255] images), where encoding would be silently wrong.
PIXEL_VALUE_LIMIT = 10.0

PROCESSOR_HINT = (
    "the model's image processor (`LatentCodeImageProcessor.from_model_config(model.config)(images).pixel_values`)"
)
# What images of each channel count are called (with their article), and the PIL mode of them.
CHANNEL_NAMES = {1: ("a grey-scale", "L"), 3: ("an RGB", "RGB"), 4: ("an RGBA", "RGBA")}
# Luma of ITU-R 601-2, as PIL's convert("L"); the weights sum to 1, so [-1, 1] stays [-1, 1].
GREY_FROM_RGB = "(pixel_values[:, :3] * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)"


def channel_fix(shape: tuple[int, ...], in_channels: int) -> str:
    """How to fix pixels of `shape` for a model of `in_channels` (empty when there is no advice):
    a batch of other channels (a grey image for an RGB model, or the other way round) is
    converted with PIL or the model's image processor; a single image `[C, H, W]` needs `[None]`."""
    if len(shape) == 3 and shape[0] == in_channels:
        return f"; a single image [C, H, W] needs the batch dimension: pixel_values[None] is [1, {in_channels}, H, W]"
    if len(shape) != 4 or shape[1] not in CHANNEL_NAMES or in_channels not in CHANNEL_NAMES:
        return ""
    (came, _), (wanted, mode) = CHANNEL_NAMES[shape[1]], CHANNEL_NAMES[in_channels]
    tensor_fix = {
        (1, 3): "pixel_values.expand(-1, 3, -1, -1)",
        (1, 4): "torch.cat([pixel_values.expand(-1, 3, -1, -1), torch.ones_like(pixel_values)], 1)",
        (3, 1): GREY_FROM_RGB,
        (4, 1): GREY_FROM_RGB,
        (4, 3): "pixel_values[:, :3]",
        (3, 4): "torch.cat([pixel_values, torch.ones_like(pixel_values[:, :1])], 1)",
    }[(shape[1], in_channels)]
    return (
        f": {came.split()[1]} images ({shape[1]} channel{'s' if shape[1] > 1 else ''}) for {wanted} model. "
        f'Convert each image with PIL\'s `image.convert("{mode}")` before scaling it to [-1, 1], or prepare the '
        f"images with {PROCESSOR_HINT}, which gives any image the model's {in_channels} "
        f"channel{'s' if in_channels > 1 else ''} as PIL converts; pixels already in [-1, 1]: {tensor_fix}"
    )


class PixelChecksMixin:
    """Checks of pixels and codes against a model's `config`, `downsampling_factor`, `dtype` and
    `backbone_spec` (a vector-latent backbone takes images of one size and codes `[B, C]`)."""

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        """Raise a ValueError naming what was expected and what came: a float tensor
        `[B >= 1, in_channels, H, W]` of the model's dtype, H and W divisible by the downsampling
        factor, finite values nominally in [-1, 1] (refused beyond +-`PIXEL_VALUE_LIMIT`)."""
        expected = f"[B, {self.config.in_channels}, H, W] float pixels"
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(
                f"expected {expected} as a torch.Tensor, got {type(pixel_values).__name__}; {PROCESSOR_HINT} "
                "converts images (PIL, numpy) to them"
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"expected {expected} in [-1, 1], got dtype {pixel_values.dtype}; convert uint8 images "
                "with LatentCodeImageProcessor or `x.float() / 127.5 - 1`"
            )
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected {expected} (in_channels={self.config.in_channels}), got shape {tuple(pixel_values.shape)}"
                f"{channel_fix(tuple(pixel_values.shape), self.config.in_channels)}"
            )
        if pixel_values.shape[0] == 0:
            raise ValueError(f"expected {expected} with at least one image, got an empty batch (B = 0)")
        height, width = pixel_values.shape[2:]
        size = self.config.sample_size
        if self.backbone_spec.vector_latent and (height, width) != (size, size):
            raise ValueError(
                f"backbone={self.config.backbone!r} takes images of exactly config.sample_size = {size}x{size} "
                f"pixels (one latent vector per image), got {height}x{width}; resize the images first"
            )
        self._check_size(height, width)
        self._check_dtype(pixel_values, "pixel_values")
        if pixel_values.device.type == "meta" or torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return  # no values to look at (or a traced graph, which must not branch on them)
        low, high = (float(v) for v in torch.aminmax(pixel_values.detach()))
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"expected finite {expected}, got NaN or inf values")
        if low < -PIXEL_VALUE_LIMIT or high > PIXEL_VALUE_LIMIT:
            raise ValueError(
                f"expected {expected} in [-1, 1], got values in [{low:.4g}, {high:.4g}]; images in [0, 255] "
                "or [0, 1] go through LatentCodeImageProcessor (or `x / 127.5 - 1` for [0, 255])"
            )

    def _check_size(self, height: int, width: int) -> None:
        """Sides divisible by the downsampling factor f; else say how to get there: crop or resize
        to the nearest multiples of f below or above, or pad up to them."""
        factor = self.downsampling_factor
        if height % factor == 0 and width % factor == 0:
            return
        below = f"{height // factor * factor}x{width // factor * factor}"
        above = f"{-(-height // factor) * factor}x{-(-width // factor) * factor}"
        raise ValueError(
            f"image height and width must be divisible by the downsampling factor {factor} "
            f"(config.downsampling_factor), got {height}x{width}: crop or resize the images to a "
            f"multiple of {factor} (the nearest are {below} and {above}), or pad them to {above} "
            f"(e.g. torch.nn.functional.pad(pixels, (0, {-width % factor}, 0, {-height % factor}), mode='replicate'))"
        )

    def _check_dtype(self, tensor: torch.Tensor, name: str) -> None:
        # Under autocast the weights stay float32 and inputs may be half precision; that is fine.
        if tensor.dtype != self.dtype and not torch.is_autocast_enabled(tensor.device.type):
            raise ValueError(
                f"{name} are {tensor.dtype} but the model's weights are {self.dtype}; pass "
                f"{name}.to(model.dtype), or convert the model with model.to({tensor.dtype})"
            )

    def _check_code(self, code: torch.Tensor, channels: int, name: str = "latents") -> None:
        vector = self.backbone_spec.vector_latent
        expected = f"[B, {channels}]" if vector else f"[B, {channels}, h, w]"
        if not isinstance(code, torch.Tensor) or not code.is_floating_point():
            kind = code.dtype if isinstance(code, torch.Tensor) else type(code).__name__
            raise ValueError(f"expected {name} as a float tensor {expected}, got {kind}")
        if code.dim() != (2 if vector else 4) or code.shape[1] != channels:
            raise ValueError(f"expected {name} of shape {expected}, got shape {tuple(code.shape)}")
        if code.shape[0] == 0:
            raise ValueError(f"expected {name} {expected} with B >= 1, got an empty batch (B = 0)")
        self._check_dtype(code, name)


def _weights_file(source, subfolder: str | None) -> str:
    """The safetensors file(s) `from_pretrained(source)` reads, as a user would name them."""
    folder = os.path.join(os.fspath(source), subfolder or "")
    if os.path.isdir(folder):
        files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
        return " or ".join(files) if files else os.path.join(folder, "model.safetensors")
    return f"model.safetensors of {source!r} in the Hugging Face cache"


def _as_tuple(hidden_states: list[torch.Tensor] | None) -> tuple[torch.Tensor, ...] | None:
    return None if hidden_states is None else tuple(hidden_states)


class LatentCodePreTrainedModel(PixelChecksMixin, SlicingTilingMixin, PreTrainedModel, ModelMixin):
    """What the three families share: the backbone around the bottleneck, input checks, tiling, loading.

    A transformers `PreTrainedModel` (its save / load, Auto classes and Hub I/O are the ones
    used) that is also a diffusers `ModelMixin`, so that diffusers accepts it wherever it takes
    its own autoencoders: as a component passed to `DiffusionPipeline.from_pretrained(path,
    vae=model)`, and in the pipeline utilities that look for `ModelMixin` components.

    A family subclass states its channel counts in [`bottleneck_channels`] (encoder output,
    bottleneck input after `quant_conv`, bottleneck output before `post_quant_conv`), builds its
    bottleneck's modules in `_build_bottleneck` (the VQ-VAE's `quantizer`), and implements
    `encode`, `decode` and `forward` on top of the two halves here: `_bottleneck_input` (pixels
    -> encoder -> `quant_conv`) and `_decode_code` (`post_quant_conv` -> decoder -> pixels). Input
    checks come from [`PixelChecksMixin`] (above), batch slicing and tiling from
    [`SlicingTilingMixin`] (`modules/tiling.py`).
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
        `config.backbone` names (`latentcode.modules.backbones`). The [`Backbone`] is looked up once,
        here, as `backbone_spec` (builders, latent shape); `downsampling_factor` is the config's
        (image size / code grid size: the encoder's factor, times a VQ-VAE's `latent_patch_size`)."""
        self.backbone_spec = get_backbone(config.backbone)
        self.downsampling_factor = config.downsampling_factor
        family = next(f.name for f in FAMILIES.values() if isinstance(self, f.model_class))
        self.backbone_spec.check_family(family)
        encoder_out, bottleneck_in, code = self.bottleneck_channels(config)
        self.encoder = self.backbone_spec.build_encoder(config, encoder_out)
        self.decoder = self.backbone_spec.build_decoder(config, config.latent_channels)
        self.quant_conv = self.backbone_spec.projection(encoder_out, bottleneck_in) if config.use_quant_conv else None
        self.post_quant_conv = (
            self.backbone_spec.projection(code, config.latent_channels) if config.use_post_quant_conv else None
        )

    def latent_code_shape(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, ...]:
        """Shape of one image's continuous latent code (what `decode` takes, without the batch axis;
        the one name of this shape; a VQ-VAE's token grid is `latent_shape`): `(C,)` on
        a vector-latent backbone, else `(C, H/f, W/f)` for `image_size` (`H` or `(H, W)`, default
        `config.sample_size`), where C is the bottleneck's output channels (`latent_channels`; a
        VQ-VAE's `config.code_channels`)."""
        code_channels = self.bottleneck_channels(self.config)[2]
        return self.backbone_spec.latent_code_shape(self.config, code_channels, image_size)

    def _build_bottleneck(self, config: LatentCodeConfig) -> None:
        """Create the bottleneck's own modules (the quantizer); none by default."""

    @staticmethod
    def bottleneck_channels(config: LatentCodeConfig) -> tuple[int, int, int]:
        """(encoder output, bottleneck input, bottleneck output) channel counts."""
        raise NotImplementedError

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's own initialisation (Kaiming-uniform convolutions), which the
        # taming / latent-diffusion / diffusers autoencoders are trained from.
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.GroupNorm)):
            module.reset_parameters()

    # -- convenience ----------------------------------------------------------------------------

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
        """Pixels `[B, C, H, W]` -> encoder -> `quant_conv` -> the bottleneck's input `[B, bottleneck_in,
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

        latents = self._split_batch(lambda x: self._map_tiles(encode_tile, x, decoding=False), pixel_values)
        if hidden_states is not None:
            maps = self.backbone_spec.num_hidden_states(self.config)
            if len(per_slice) == maps:
                hidden_states.extend(per_slice)
            else:  # sliced: each slice appended its maps in turn; join each map over the batch
                hidden_states.extend(torch.cat(per_slice[i::maps]) for i in range(maps))
        return latents

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
