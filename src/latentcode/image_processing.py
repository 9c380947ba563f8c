"""`LatentCodeImageProcessor`: images in, model pixels out, and back.

The models take float pixels `[B, C, H, W]` in [-1, 1]. The processor turns PIL images, numpy
arrays and torch tensors into that (channel conversion, resize of the shorter side, centre
crop, normalisation) and `postprocess` turns model outputs back into uint8 images. It is a
transformers image processor: `save_pretrained` writes `preprocessor_config.json` beside the
model and `AutoImageProcessor.from_pretrained` loads it (registered as latentcode's models load:
`from latentcode import ...`, `import latentcode.modeling`).

Value ranges follow the dtype, as in torchvision: uint8 inputs are in [0, 255], uint16 inputs
(16-bit PNG / TIFF) in [0, 65535], float inputs in [0, 1]. Layouts follow the library: numpy
arrays are `[H, W, C]` (PIL, skimage, imageio), torch tensors are `[C, H, W]`; 2-D inputs are
grey-scale, and 4-D inputs are batches.
"""

from __future__ import annotations

import logging
from typing import TypedDict

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import PILImageResampling

logger = logging.getLogger(__name__)

# PIL mode of an image with this many channels.
PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
# File suffixes read as images (image folders for training, evaluation and the scaling factor).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# ITU-R 601-2 luma, the weights PIL's RGB -> L conversion uses.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# PIL modes of single-channel (grey-scale) images, with or without alpha.
GREY_PIL_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")

# Resampling filters the processor supports, as torch interpolation modes.
INTERPOLATION_MODES = {
    PILImageResampling.NEAREST: "nearest-exact",
    PILImageResampling.BILINEAR: "bilinear",
    PILImageResampling.BICUBIC: "bicubic",
}

OUTPUT_TYPES = ("pil", "np", "pt")


class LatentCodeImagesKwargs(TypedDict, total=False):
    """The processor's options, which `from_pretrained(..., **overrides)` accepts."""

    do_resize: bool
    size: int
    resample: int
    do_center_crop: bool
    crop_size: int
    num_channels: int


class LatentCodeImageProcessor(BaseImageProcessor):
    r"""Image processor of latentcode's AutoEncoder, VAE and VQ-VAE models.

    Args:
        do_resize (`bool`, defaults to `True`): resize so that the shorter side is `size`.
        size (`int`, defaults to 256): length of the shorter side after resizing (aspect ratio kept).
        resample (`PILImageResampling`, defaults to `BICUBIC`): `NEAREST`, `BILINEAR` or `BICUBIC`;
            downsampling is antialiased, as PIL's resize is.
        do_center_crop (`bool`, defaults to `True`): crop the centre `crop_size x crop_size`.
        crop_size (`int`, *optional*): side of the square crop; defaults to `size` (also when
            `size` is overridden).
        num_channels (`int`, defaults to 3): channels the model expects, 1 (grey-scale), 3 (RGB) or
            4 (RGBA). Inputs with another channel count are converted as PIL converts modes:
            RGB -> grey by ITU-R 601-2 luma, grey -> RGB by repetition, RGBA -> RGB by dropping
            alpha, and an opaque alpha is added where one is missing.

    `processor(images).pixel_values` is a float32 tensor `[B, num_channels, crop, crop]`
    in [-1, 1]; `processor.postprocess(pixel_values)` returns PIL images.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = LatentCodeImagesKwargs

    def __init__(
        self,
        do_resize: bool = True,
        size: int = 256,
        resample: PILImageResampling | int = PILImageResampling.BICUBIC,
        do_center_crop: bool = True,
        crop_size: int | None = None,
        num_channels: int = 3,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.do_resize = do_resize
        self.size = size
        self.resample = PILImageResampling(resample)
        self.do_center_crop = do_center_crop
        self.crop_size = crop_size
        self.num_channels = num_channels
        self._check_options(self.size, self.crop_size or size, self.resample, self.num_channels)
        # A grey-scale input for a colour model is converted, and said once per processor.
        self._grey_input_logged = False

    def to_dict(self) -> dict:
        """The processor's settings (`preprocessor_config.json`), without its run-time state."""
        output = super().to_dict()
        output.pop("_grey_input_logged", None)
        return output

    @classmethod
    def from_model_config(cls, config, **kwargs) -> LatentCodeImageProcessor:
        """The processor matching a model config: `size` = `config.sample_size`, `num_channels` =
        `config.in_channels`; keyword arguments override."""
        kwargs.setdefault("size", config.sample_size)
        kwargs.setdefault("num_channels", config.in_channels)
        return cls(**kwargs)

    @staticmethod
    def _check_options(size, crop_size, resample, num_channels) -> None:
        for name, value in (("size", size), ("crop_size", crop_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int (pixels), got {value!r}")
        if resample not in INTERPOLATION_MODES:
            names = [mode.name for mode in INTERPOLATION_MODES]
            raise ValueError(f"resample must be one of {names}, got {PILImageResampling(resample).name}")
        if num_channels not in PIL_MODES:
            raise ValueError(f"num_channels must be one of {sorted(PIL_MODES)}, got {num_channels!r}")

    def preprocess(
        self,
        images,
        do_resize: bool | None = None,
        size: int | None = None,
        resample: PILImageResampling | int | None = None,
        do_center_crop: bool | None = None,
        crop_size: int | None = None,
        num_channels: int | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Images -> `BatchFeature` with `pixel_values` `[B, C, H, W]` float32 in [-1, 1].

        Args:
            images: a PIL image, numpy array (`[H, W]`, `[H, W, C]` or a batch `[B, H, W, C]`),
                torch tensor (`[H, W]`, `[C, H, W]` or `[B, C, H, W]`), or a list of them.
                uint8 values are in [0, 255], uint16 values (16-bit PNG / TIFF) in [0, 65535],
                float values in [0, 1]; anything else raises a ValueError.
            return_tensors: `"pt"` (default) or `"np"`.
            The other arguments override the processor's settings for this call.
        """
        do_resize = self.do_resize if do_resize is None else do_resize
        size = self.size if size is None else size
        resample = self.resample if resample is None else PILImageResampling(resample)
        do_center_crop = self.do_center_crop if do_center_crop is None else do_center_crop
        crop_size = crop_size or self.crop_size or size
        num_channels = self.num_channels if num_channels is None else num_channels
        self._check_options(size, crop_size, resample, num_channels)

        processed = []
        for image in _as_image_list(images):
            if num_channels > 1 and not self._grey_input_logged and _is_grey(image):
                self._grey_input_logged = True
                logger.warning(
                    "a grey-scale image was converted to %s (its channel repeated) for a %d-channel model; pass "
                    "colour images (PIL: image.convert(%r)) to avoid this, or a 1-channel model for grey-scale data. "
                    "Logged once per processor.",
                    PIL_MODES[num_channels],
                    num_channels,
                    PIL_MODES[num_channels],
                )
            pixels = image_to_float_chw(image, num_channels)
            if do_resize:
                pixels = resize_shorter_side(pixels, size, INTERPOLATION_MODES[resample])
            if do_center_crop:
                pixels = _center_crop(pixels, crop_size)
            processed.append(pixels * 2 - 1)
        shapes = {tuple(p.shape) for p in processed}
        if len(shapes) > 1:
            raise ValueError(
                f"images of different sizes cannot form one batch, got shapes {sorted(shapes)}; "
                "enable do_center_crop or pass images of one size"
            )
        return BatchFeature(data={"pixel_values": torch.stack(processed)}, tensor_type=return_tensors)

    def postprocess(self, pixels: torch.Tensor | np.ndarray, output_type: str = "pil"):
        """Model pixels in [-1, 1] -> uint8 images.

        Args:
            pixels: `[B, C, H, W]` or `[C, H, W]` float tensor or array with C in (1, 3, 4); values
                outside [-1, 1] are clipped.
            output_type: `"pil"`: a list of B PIL images (mode L, RGB or RGBA); `"np"`: a uint8
                array `[B, H, W, C]`; `"pt"`: a uint8 tensor `[B, C, H, W]`.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        pixels = torch.as_tensor(pixels)
        if pixels.dim() == 3:
            pixels = pixels.unsqueeze(0)
        if pixels.dim() != 4 or pixels.shape[1] not in PIL_MODES or not pixels.is_floating_point():
            raise ValueError(
                f"expected float pixels [B, C, H, W] with C in {sorted(PIL_MODES)}, got shape "
                f"{tuple(pixels.shape)} and dtype {pixels.dtype}"
            )
        images = pixels_to_uint8(pixels)
        if output_type == "pt":
            return images
        images = images.permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return images
        return [PIL.Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image) for image in images]


def pixels_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Float pixels in [-1, 1] (clipped) -> uint8 in [0, 255] on the CPU, same shape."""
    return ((pixels.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _is_grey(image) -> bool:
    """Whether one image (PIL, `[H, W(, C)]` array or `[(C,) H, W]` tensor) has a single colour channel."""
    if isinstance(image, PIL.Image.Image):
        return image.mode in GREY_PIL_MODES
    if isinstance(image, np.ndarray):
        return image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1)
    if isinstance(image, torch.Tensor):
        return image.dim() == 2 or (image.dim() == 3 and image.shape[0] == 1)
    return False


def _as_image_list(images) -> list:
    """One image, a list of images, or a 4-D batch -> a list of single images."""
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in _as_image_list(item)]
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return list(images)
    return [images]


# PIL modes holding more than 8 bits per value. PIL's `convert` to L / RGB clips them to 0..255
# instead of scaling (a 16-bit ramp would become almost all white), so they are read as arrays
# and scaled by their bit depth below. Mode "I" (32-bit int) is how PIL opens some 16-bit PNG
# and TIFF files: it is read as 16-bit and refused when its values do not fit.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def image_to_float_chw(image, num_channels: int) -> torch.Tensor:
    """A PIL image, `[H, W(, C)]` array or `[(C,) H, W]` tensor -> `[num_channels, H, W]` float32 in [0, 1].

    Values are scaled by their bit depth: uint8 by 255, uint16 (16-bit PNG / TIFF, PIL modes
    `I;16` and `I`) by 65535; float values (PIL mode `F`, float arrays) must already be in
    [0, 1]. Anything else (other integer types, NaN/inf, out-of-range values) raises a ValueError.
    """
    if isinstance(image, PIL.Image.Image):
        if image.mode in HIGH_BIT_DEPTH_MODES:
            array = np.asarray(image)
            array = array.astype(array.dtype.newbyteorder("="))  # I;16B is big-endian
            if image.mode == "I":
                low, high = int(array.min()), int(array.max())
                if low < 0 or high > 65535:
                    raise ValueError(
                        f"cannot convert a 32-bit integer image (PIL mode I) with values in [{low}, {high}]: "
                        "expected 16-bit values in [0, 65535]"
                    )
                array = array.astype(np.uint16)
        else:
            # PIL knows how to convert its own modes (palette, LA, CMYK, ...) to L / RGB / RGBA.
            array = np.asarray(image.convert(PIL_MODES[num_channels]))
        pixels = torch.from_numpy(array.copy()).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1)
    elif isinstance(image, np.ndarray):
        array = image.astype(image.dtype.newbyteorder("=")) if image.dtype.byteorder == ">" else image
        pixels = torch.from_numpy(np.ascontiguousarray(array))
        pixels = pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1) if pixels.dim() == 3 else None
    elif isinstance(image, torch.Tensor):
        pixels = image.detach().cpu()
        pixels = pixels.unsqueeze(0) if pixels.dim() == 2 else pixels if pixels.dim() == 3 else None
    else:
        raise ValueError(f"expected PIL images, numpy arrays or torch tensors, got {type(image).__name__}")
    if pixels is None:
        raise ValueError(f"expected a 2-D or 3-D image (or a 4-D batch), got {image.ndim} dimensions")
    if pixels.shape[0] not in PIL_MODES:
        layout = "[H, W, C]" if isinstance(image, np.ndarray) else "[C, H, W]"
        raise ValueError(
            f"expected {layout} with C in {sorted(PIL_MODES)} for a {type(image).__name__}, got shape "
            f"{tuple(image.shape)}"
        )
    if pixels.dtype == torch.uint8:
        pixels = pixels.float() / 255
    elif pixels.dtype == torch.uint16:
        pixels = pixels.float() / 65535
    elif pixels.is_floating_point():
        pixels = pixels.float()
        if not torch.isfinite(pixels).all():
            raise ValueError("float images must be finite, got NaN or inf values")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0 or high > 1:
            raise ValueError(
                f"float images must be in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
                "for model pixels in [-1, 1] pass (x + 1) / 2"
            )
    else:
        raise ValueError(
            f"expected uint8 images in [0, 255], uint16 images in [0, 65535] or float images in [0, 1], "
            f"got dtype {pixels.dtype}"
        )
    return _convert_channels(pixels, num_channels)


def _convert_channels(pixels: torch.Tensor, num_channels: int) -> torch.Tensor:
    """`[C, H, W]` in [0, 1] with C in (1, 3, 4) -> `[num_channels, H, W]`, as PIL converts modes."""
    channels = pixels.shape[0]
    if channels == num_channels:
        return pixels
    color = pixels[:3] if channels >= 3 else pixels[:1].expand(3, -1, -1)
    if num_channels == 1:
        weights = torch.tensor(LUMA_WEIGHTS).view(3, 1, 1)
        return (color * weights).sum(dim=0, keepdim=True)
    if num_channels == 3:
        return color.contiguous()
    opaque = torch.ones_like(pixels[:1])
    return torch.cat([color, opaque])


def resize_shorter_side(pixels: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """`[C, H, W]` -> `[C, H', W']` with `min(H', W') == size` and the aspect ratio kept."""
    height, width = pixels.shape[1:]
    scale = size / min(height, width)
    new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if new_size == (height, width):
        return pixels
    antialias = mode in ("bilinear", "bicubic")
    resized = F.interpolate(pixels.unsqueeze(0), size=new_size, mode=mode, antialias=antialias)
    # Bicubic overshoots at edges; clip back to the input range.
    return resized.squeeze(0).clamp(0, 1)


def _center_crop(pixels: torch.Tensor, crop_size: int) -> torch.Tensor:
    """`[C, H, W]` -> the centre `[C, crop_size, crop_size]`."""
    height, width = pixels.shape[1:]
    if height < crop_size or width < crop_size:
        raise ValueError(
            f"cannot crop {crop_size}x{crop_size} from a {height}x{width} image; enable do_resize with "
            f"size >= crop_size"
        )
    top, left = (height - crop_size) // 2, (width - crop_size) // 2
    return pixels[:, top : top + crop_size, left : left + crop_size]
