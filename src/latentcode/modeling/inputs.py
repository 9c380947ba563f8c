"""Input checks of the models: every bad input is refused naming what was expected, what came
and how to fix it (mixed into `LatentCodePreTrainedModel`)."""

from __future__ import annotations

import math

import torch

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
            f"(2 ** (len(block_out_channels) - 1)), got {height}x{width}: crop or resize the images to a "
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
