"""What the demo's tabs compute, without Gradio: a thin layer over the library.

- [`load_model`] / [`load_prior`]: models by folder or Hub id, with their image processors.
- [`open_image`] / [`to_pixels`]: an upload -> model pixels, with a readable [`DemoInputError`]
  for every mistake a user can make (not an image, too large, a size the model cannot take).
- [`reconstruct`]: reconstruction, PSNR / SSIM (`latentcode.evaluation`), the latent grid and
  what the code costs in bits; large images go through the model's tiled encode / decode.
- [`token_grid_image`], [`token_at`], [`code_histogram`], [`change_token`], [`box_token`]: a
  VQ-VAE's tokens (a residual quantiser's levels one at a time).
- [`prior_samples`], [`interpolation_frames`]: new images (`latentcode.generation`, `latentcode.grids`, `latentcode.prior`).
- [`attribute_base`], [`moved_code`], [`decode_code`], [`traversal_grid`]: the Attributes tab's
  sliders over latent dimensions and its traversal grid (`latentcode.traversal`);
  [`make_attribute_vector`], [`add_attribute`]: its attribute vector (images with an attribute
  minus images without it) on a strength slider.

Pixels are `[B, C, H, W]` floats in [-1, 1], as everywhere in latentcode.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageOps
import torch
from transformers import AutoModelForCausalLM

from ..evaluation import psnr, ssim
from ..evaluation.figures import bar_chart
from ..evaluation.metrics import SSIM_WINDOW
from ..generation import interpolate
from ..grids import image_grid
from ..image_processing import PIL_MODES, LatentCodeImageProcessor
from ..model_loading import load_pretrained_model
from ..modeling import LatentCodePreTrainedModel
from ..prior import sample_images, token_mapping
from ..tile_size import default_tile_size
from ..traversal import (
    attribute_vector,
    code_dimensions,
    continuous_codes,
    latent_traversal,
    per_dimension_kl,
    top_dimensions,
)

MODE_NAMES = {"L": "grey-scale", "RGB": "RGB", "RGBA": "RGBA"}
DIFFERENCE_GAIN = 4  # |error| is amplified so that small errors are visible
# Token grids are drawn at least this many pixels wide or high: the page shows them scaled down
# to fit, never up (Gradio maps a click to image pixels assuming that: an image scaled up would
# get the wrong token). A 96x64 grid (a 768x512 Kodak photo at f8) fills it at MIN_GRID_CELL.
MIN_GRID_SIDE = 768
MIN_GRID_CELL = 8  # pixels per token at least: its outline, when picked, stays visible
# A grid latent codes any size: its Attributes tab works at most this large, so that a traversal
# of 16 dimensions x 7 values of a 512-pixel model (taef2) decodes in seconds, not minutes.
MAX_ATTRIBUTE_SIZE = 128


class DemoInputError(ValueError):
    """A mistake the user can fix (wrong file, wrong size, wrong choice); its message is shown in the page."""


@dataclass
class DemoModel:
    """A loaded model, the name it was loaded by and the processor that turns images into its pixels."""

    name: str
    model: LatentCodePreTrainedModel
    processor: LatentCodeImageProcessor

    @property
    def has_tokens(self) -> bool:
        """The model's code is tokens (a VQ-VAE): the Codes tab and a prior apply to it."""
        return self.model.has_tokens

    @property
    def vector_latent(self) -> bool:
        """The code is one vector `[D]` per `sample_size` image (not a grid): no tiles, one size."""
        return len(self.model.latent_code_shape()) == 1

    @property
    def attribute_size(self) -> int:
        """The side of the images the Attributes tab and the page's code cost work at: `sample_size`,
        at most `MAX_ATTRIBUTE_SIZE` for a grid latent (which codes any size)."""
        size = self.model.config.sample_size
        return size if self.vector_latent else min(size, MAX_ATTRIBUTE_SIZE)

    def describe(self) -> str:
        """What the model is: family, backbone, code shape (a VQ-VAE's tokens), downsampling,
        codebook and bits per pixel, tiles."""
        model, config = self.model, self.model.config
        shape = "x".join(str(size) for size in model.latent_code_shape())
        text = f"{model.display_name} on the {config.backbone!r} backbone, {config.in_channels} channels, "
        if self.vector_latent:
            text += f"{shape}-dimensional latent vector per {config.sample_size}x{config.sample_size} image"
        else:
            code = self.token_grid_text() if self.has_tokens else f"latent {shape}"
            text += (
                f"{code} per {config.sample_size}x{config.sample_size} image (downsampling "
                f"x{model.downsampling_factor}, larger images in tiles of {model.tile_sample_size} pixels)"
            )
        if self.has_tokens:
            text += f", {model.codebook_size} codes ({config.quantizer})"
            if self.vector_latent:
                text += f" in {config.num_latent_tokens} tokens (groups of {config.codebook_dim} entries)"
            text += f": {self.bits_per_pixel():.4g} bits per pixel"
        return text

    def token_grid_text(self) -> str:
        """The tokens of one `sample_size` image: `"64x64 tokens"`, or `"64x64 tokens x 2 levels"`
        for a residual quantiser."""
        shape = self.model.latent_shape()
        levels = (self.model.config.num_quantizers or 1) > 1
        spatial = shape[:-1] if levels else shape
        return "x".join(map(str, spatial)) + " tokens" + (f" x {shape[-1]} levels" if levels else "")

    def bits_per_pixel(self) -> float:
        """A VQ-VAE's rate: tokens x log2(K) / pixels of one `sample_size` image (the same at any
        size for a latent grid: its tokens grow with the pixels)."""
        size = self.model.config.sample_size
        return math.prod(self.model.latent_shape()) * math.log2(self.model.codebook_size) / (size * size)

    def source(self) -> str:
        """Where the model came from: its model card's title when the folder has one, and the
        folder or Hub id it was loaded from (`config._name_or_path`)."""
        origin = f"`{self.model.config._name_or_path or self.name}`"
        card = Path(self.name) / "README.md"
        if card.is_file():
            titles = [line[2:].strip() for line in card.read_text().splitlines() if line.startswith("# ")]
            if titles:
                return f"{titles[0]} ({origin})"
        return origin

    @torch.inference_mode()
    def code_cost(self, images: list[PIL.Image.Image]) -> str:
        """The mean cost of the code of `images` (resized to `attribute_size`): `model.code_size`'s
        bits per image and how they are counted (the KL for a VAE, log2 K per token for a VQ-VAE)."""
        if not images:
            return "n/a (no example images)"
        size = self.attribute_size
        pixels = [
            self.processor(image, size=size).pixel_values.to(self.model.device, self.model.dtype) for image in images
        ]
        costs = [self.model.code_size(self.model.encode(one, return_dict=True)) for one in pixels]
        bits = float(torch.cat([cost.bits for cost in costs]).mean())
        return f"{bits:,.1f} bits per {size}x{size} image, {bits / size**2:.4g} bits per pixel ({costs[0].meaning})"


def load_model(name_or_path: str, device: str | torch.device = "cpu", tile_size: int | None = None) -> DemoModel:
    """A latentcode model (folder or Hub id; offline from the Hugging Face cache with
    `HF_HUB_OFFLINE=1`; [`load_pretrained_model`]) in eval mode, with tiling on for images larger
    than `tile_size` pixels (default: [`default_tile_size`]: `config.sample_size`, at least 256).
    Its saved image processor is used when it has one."""
    model = load_pretrained_model(name_or_path).to(device)
    try:
        processor = LatentCodeImageProcessor.from_pretrained(name_or_path)
    except OSError:  # no preprocessor_config.json: the model config says what the processor needs
        processor = LatentCodeImageProcessor.from_model_config(model.config)
    loaded = DemoModel(name_or_path, model, processor)
    if not loaded.vector_latent:  # a vector latent codes one sample_size image: nothing to tile
        model.enable_tiling(tile_size or default_tile_size(model.config.sample_size))
    return loaded


def load_prior(name_or_path: str, models: list[DemoModel]) -> tuple[torch.nn.Module, DemoModel]:
    """A prior saved by `training/train_prior.py` and the loaded VQ-VAE whose codes it models: the
    one it was trained on (`config.vqvae_name_or_path`) if loaded, else the only VQ-VAE with the
    prior's codebook size and code grid."""
    prior = AutoModelForCausalLM.from_pretrained(name_or_path).eval()
    mapping = token_mapping(prior.config)
    grid = tuple(prior.config.latent_shape)
    matching = [
        loaded
        for loaded in models
        if loaded.has_tokens
        and loaded.model.codebook_size == mapping.codebook_size
        and loaded.model.latent_shape() == grid
    ]
    trained_on = [loaded for loaded in matching if loaded.name == prior.config.vqvae_name_or_path]
    if trained_on or len(matching) == 1:
        vqvae = (trained_on or matching)[0]
        return prior.to(vqvae.model.device), vqvae
    found = "none of the models given" if not matching else f"several: {[loaded.name for loaded in matching]}"
    raise ValueError(
        f"the prior {name_or_path} models {mapping.codebook_size} codes on a {grid} grid (trained on "
        f"{prior.config.vqvae_name_or_path}); expected one loaded VQ-VAE with that codebook size and grid, found {found}"
    )


# ----------------------------------------------------------------------------------------------
# Images in
# ----------------------------------------------------------------------------------------------


def open_image(path: str | Path | None, max_pixels: int) -> PIL.Image.Image:
    """Open an uploaded file as an image (EXIF orientation applied), refusing files that are not
    images and images of more than `max_pixels` pixels before their pixels are decoded."""
    if path is None:
        raise DemoInputError("No image: upload one or pick an example.")
    name = Path(path).name
    try:
        image = PIL.Image.open(path)
    except PIL.Image.DecompressionBombError as error:
        raise DemoInputError(f"{name} is too large to open ({error}).") from error
    except (PIL.UnidentifiedImageError, OSError) as error:
        raise DemoInputError(f"{name} is not an image file (expected PNG, JPEG, WebP, BMP, GIF or TIFF).") from error
    width, height = image.size
    if width * height > max_pixels:
        raise DemoInputError(
            f"{name} is {width}x{height} ({width * height / 1e6:.1f} megapixels); this demo encodes at most "
            f"{max_pixels / 1e6:.1f} megapixels (latentcode-demo --max_megapixels). Downscale the image first."
        )
    try:
        image.load()
    except OSError as error:
        raise DemoInputError(f"{name} could not be decoded: {error}.") from error
    return PIL.ImageOps.exif_transpose(image)


def to_pixels(loaded: DemoModel, image: PIL.Image.Image) -> tuple[torch.Tensor, list[str]]:
    """An image at its own size -> pixels `[1, C, H, W]` for `loaded.model`, and notes on what was
    converted (a grey-scale image for an RGB model is repeated over the channels, as PIL converts).
    A vector-latent model codes one `sample_size` image, so the image is resized and
    centre-cropped to it (and a note says so).

    Raises [`DemoInputError`] when the sides are not multiples of the model's downsampling factor.
    """
    width, height = image.size
    factor = loaded.model.downsampling_factor
    if not loaded.vector_latent and (width % factor or height % factor):
        fitting = f"{width // factor * factor}x{height // factor * factor}" if min(width, height) >= factor else None
        raise DemoInputError(
            f"The image is {width}x{height}; {loaded.name} needs width and height divisible by its downsampling "
            f"factor {factor}"
            + (f" (e.g. {fitting}): crop or resize it." if fitting else f", at least {factor}x{factor}.")
        )
    expected_mode = PIL_MODES[loaded.model.config.in_channels]
    notes = []
    if image.mode != expected_mode:
        notes.append(
            f"{MODE_NAMES.get(image.mode, image.mode)} image converted to {MODE_NAMES[expected_mode]} for this "
            f"{loaded.model.config.in_channels}-channel model."
        )
    size = loaded.model.config.sample_size
    if loaded.vector_latent:
        if image.size != (size, size):
            notes.append(
                f"{width}x{height} image resized and centre-cropped to {size}x{size}, the size this model codes."
            )
        return to_model_size(loaded, image), notes
    pixels = loaded.processor(image, do_resize=False, do_center_crop=False).pixel_values
    return pixels.to(loaded.model.device, loaded.model.dtype), notes


def to_model_size(loaded: DemoModel, image: PIL.Image.Image) -> torch.Tensor:
    """An image resized and centre-cropped by the model's processor to `config.sample_size`: `[1, C, S, S]`."""
    pixels = loaded.processor(image).pixel_values
    return pixels.to(loaded.model.device, loaded.model.dtype)


# ----------------------------------------------------------------------------------------------
# Reconstruction
# ----------------------------------------------------------------------------------------------


@dataclass
class Reconstruction:
    """One image through one model.

    Attributes:
        original / reconstruction: `[1, C, H, W]` in [-1, 1].
        psnr: dB; ssim: `None` for images smaller than SSIM's 11x11 window.
        latent_shape: the code grid: `(h, w)` / `(h, w, depth)` tokens, or `(D, h, w)` floats.
        bits / bits_meaning: what the code costs and how that is counted (`model.code_size`:
            `tokens * log2(K)` for a VQ-VAE; the KL to the prior in bits, its bits-back coding
            cost, for a VAE; the float32 values for an AutoEncoder).
        indices: `[1, h, w]` (or `[1, h, w, depth]`) tokens of a model with tokens, else `None`; a
            vector latent's `[1, G]` tokens as one row `[1, 1, G]` (see [`as_token_grid`]).
    """

    original: torch.Tensor
    reconstruction: torch.Tensor
    psnr: float
    ssim: float | None
    latent_shape: tuple[int, ...]
    bits: float
    bits_meaning: str
    indices: torch.Tensor | None = None

    @property
    def bits_per_pixel(self) -> float:
        return self.bits / (self.original.shape[-2] * self.original.shape[-1])

    @property
    def ssim_text(self) -> str:
        return f"{self.ssim:.4f}" if self.ssim is not None else f"n/a (under {SSIM_WINDOW}x{SSIM_WINDOW})"

    @property
    def grid_text(self) -> str:
        return "x".join(str(size) for size in self.latent_shape)

    @property
    def levels(self) -> int:
        """Tokens per position: a residual quantiser's levels (the last axis of `indices`), else 1."""
        return token_levels(self.indices) if self.indices is not None else 1

    def summary(self) -> str:
        """One Markdown line: PSNR, SSIM, grid, bits per image and per pixel; a VQ-VAE's bits per
        pixel (its rate, what an image codec reports) in bold, next to the PSNR."""
        height, width = self.original.shape[-2:]
        grid = f"latent grid {self.grid_text}"
        if self.levels > 1:
            tokens = "x".join(str(size) for size in self.latent_shape[:-1])
            grid += f" ({tokens} tokens x {self.levels} levels)"
        if self.indices is None:
            return (
                f"**PSNR {self.psnr:.2f} dB** · SSIM {self.ssim_text} · image {width}x{height} · {grid} · "
                f"{self.bits:,.0f} bits per image, {self.bits_per_pixel:.4g} bits per pixel ({self.bits_meaning})"
            )
        return (
            f"**PSNR {self.psnr:.2f} dB** at **{self.bits_per_pixel:.4g} bits per pixel** ({self.bits:,.0f} bits "
            f"per image: {self.bits_meaning}) · SSIM {self.ssim_text} · image {width}x{height} · {grid}"
        )


@torch.inference_mode()
def reconstruct(loaded: DemoModel, pixels: torch.Tensor) -> Reconstruction:
    """What a user of each family gets back (`model.reconstruct`, as `latentcode-eval` computes it:
    the VQ-VAE decodes its tokens, the VAE its posterior mean, the AutoEncoder its code) and what
    its code costs (`model.code_size`). `pixels`: `[1, C, H, W]`."""
    model = loaded.model
    encoded = model.encode(pixels, return_dict=True)
    code = model.code_size(encoded)
    reconstruction, original = model.reconstruct_encoded(encoded).float(), pixels.float()
    fits_ssim = min(original.shape[-2:]) >= SSIM_WINDOW
    return Reconstruction(
        original=original,
        reconstruction=reconstruction,
        psnr=float(psnr(reconstruction, original)[0]),
        ssim=float(ssim(reconstruction, original)[0]) if fits_ssim else None,
        latent_shape=code.shape,
        bits=float(code.bits[0]),
        bits_meaning=code.meaning,
        indices=as_token_grid(loaded, encoded.indices) if loaded.has_tokens else None,
    )


def difference_image(original: torch.Tensor, reconstruction: torch.Tensor) -> PIL.Image.Image:
    """`|original - reconstruction|` averaged over channels, times `DIFFERENCE_GAIN`, as a grey
    image (black: equal; white: an error of half the pixel range or more). Inputs `[1, C, H, W]`."""
    error = (original - reconstruction).abs().mean(dim=1)[0]  # [H, W] in [0, 2]
    brightness = (error * DIFFERENCE_GAIN / 2).clamp(0, 1)
    return PIL.Image.fromarray((brightness * 255).round().to(torch.uint8).cpu().numpy())


def to_image(loaded: DemoModel, pixels: torch.Tensor) -> PIL.Image.Image:
    """Pixels `[1, C, H, W]` -> one PIL image, by the model's processor."""
    return loaded.processor.postprocess(pixels)[0]


# ----------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------


def as_token_grid(loaded: DemoModel, indices: torch.Tensor) -> torch.Tensor:
    """A model's token indices as the grid the Codes tab draws and edits: a latent grid's `[1, h, w]`
    (`[1, h, w, depth]`) as it is; a vector latent's `[1, G]` (`[1, G, depth]`) as one row `[1, 1, G]`."""
    return indices.unsqueeze(1) if loaded.vector_latent else indices


def from_token_grid(loaded: DemoModel, grid: torch.Tensor) -> torch.Tensor:
    """The inverse of [`as_token_grid`]: the indices `decode_indices` takes."""
    return grid.squeeze(1) if loaded.vector_latent else grid


def code_colors(codes: torch.Tensor) -> torch.Tensor:
    """A fixed, distinct colour per code: `[...]` integer codes -> `[..., 3]` uint8 RGB.

    Hues step by the golden ratio, so codes with nearby numbers get far-apart colours; saturation
    and brightness cycle with other periods to tell apart codes of similar hue.
    """
    codes = codes.long().cpu()
    golden = (math.sqrt(5) - 1) / 2
    hue = (codes.double() * golden) % 1.0
    saturation = 0.55 + 0.45 * ((codes % 3).double() / 2)
    value = 0.7 + 0.3 * ((codes % 5).double() / 4)
    channels = [(channel * 255).round().to(torch.uint8) for channel in (hue, saturation, value)]
    hsv = [PIL.Image.fromarray(channel.reshape(-1, 1).numpy()) for channel in channels]
    rgb = torch.from_numpy(np.asarray(PIL.Image.merge("HSV", hsv).convert("RGB")).copy())
    return rgb.reshape(*codes.shape, 3)


def grid_cell_size(indices: torch.Tensor) -> int:
    """Pixels per token in [`token_grid_image`]: the grid is drawn at least `MIN_GRID_SIDE` pixels
    on its longer side, each token at least `MIN_GRID_CELL` pixels (a 96x64 grid: 768x512 pixels)."""
    return max(MIN_GRID_CELL, math.ceil(MIN_GRID_SIDE / max(indices.shape[1], indices.shape[2])))


def token_levels(indices: torch.Tensor) -> int:
    """Tokens per position of `indices` `[1, h, w]` (1) or `[1, h, w, depth]` (a residual quantiser's depth)."""
    return indices.shape[3] if indices.dim() == 4 else 1


def check_level(indices: torch.Tensor, level: int) -> None:
    """Raise [`DemoInputError`] unless `level` is one of the levels of `indices`."""
    depth = token_levels(indices)
    if not 0 <= level < depth:
        raise DemoInputError(
            f"The level must be in [0, {depth - 1}] for these tokens ({depth} level{'s' * (depth > 1)}), got {level}."
        )


def token_code(indices: torch.Tensor, row: int, col: int, level: int = 0) -> int:
    """The code of the token at `(row, col)` and `level` of `indices` `[1, h, w]` / `[1, h, w, depth]`."""
    check_level(indices, level)
    return int(indices[0, row, col] if indices.dim() == 3 else indices[0, row, col, level])


def token_grid_image(indices: torch.Tensor, marked: tuple[int, int] | None = None, level: int = 0) -> PIL.Image.Image:
    """The tokens `[1, h, w]` (level `level` of `[1, h, w, depth]`) as an image, each code a colour
    (`code_colors`) in a square of `grid_cell_size(indices)` pixels; `marked = (row, col)` is
    outlined in white inside its square and in black around it, each a quarter of a cell thick
    (visible on any colour, among 96x64 small squares too)."""
    check_level(indices, level)
    codes = indices[0] if indices.dim() == 3 else indices[0, ..., level]
    cell = grid_cell_size(indices)
    colors = code_colors(codes).repeat_interleave(cell, 0).repeat_interleave(cell, 1)  # [h * cell, w * cell, 3]
    image = PIL.Image.fromarray(colors.numpy())
    if marked is not None:
        row, col = marked
        border = max(1, cell // 4)
        draw = PIL.ImageDraw.Draw(image)
        left, top, right, bottom = col * cell, row * cell, (col + 1) * cell - 1, (row + 1) * cell - 1
        draw.rectangle((left - border, top - border, right + border, bottom + border), outline=(0, 0, 0), width=border)
        draw.rectangle((left, top, right, bottom), outline=(255, 255, 255), width=border)
    return image


def token_at(indices: torch.Tensor, position: tuple[float, float]) -> tuple[int, int]:
    """The token `(row, col)` of `indices` `[1, h, w(, depth)]` at a click `position = (x, y)` in
    pixels of the token grid's image ([`token_grid_image`]); [`DemoInputError`] for a click outside."""
    cell = grid_cell_size(indices)
    col, row = (int(coordinate) // cell for coordinate in position)
    if not (0 <= row < indices.shape[1] and 0 <= col < indices.shape[2]):
        raise DemoInputError("Click inside the token grid.")
    return row, col


def code_histogram(indices: torch.Tensor, codebook_size: int) -> PIL.Image.Image:
    """How often the image uses each code it uses (bars in code order; all levels of a residual VQ)."""
    counts = torch.bincount(indices.flatten().long().cpu(), minlength=codebook_size)
    used = counts.nonzero().flatten()
    title = f"{len(used)} of {codebook_size} codes used by {indices.numel()} tokens"
    labels = (f"code {int(used[0])}", f"code {int(used[-1])}")
    return bar_chart(counts[used].tolist(), title, labels, "tokens")


BOX_MARGIN_TOKENS = 4  # the box around a changed token: most of the change lies within 4 tokens of it
BOX_COLOR = (255, 96, 0)


def box_token(image: PIL.Image.Image, row: int, col: int, factor: int) -> PIL.Image.Image:
    """An RGB copy of `image` (a decoded image or its |change|) with a box around the pixels of
    the latent grid's token `(row, col)` (`factor` x `factor` pixels each), `BOX_MARGIN_TOKENS`
    tokens out from them so that it covers none of the token's pixels and little of the change
    around them; its line is a 256th of the image's longer side thick (3 pixels on a 768x512
    photo), at least 1."""
    boxed = image.convert("RGB")
    width = max(1, round(max(boxed.size) / 256))
    margin = BOX_MARGIN_TOKENS * factor + width
    left, top = col * factor - margin, row * factor - margin
    right, bottom = (col + 1) * factor - 1 + margin, (row + 1) * factor - 1 + margin
    PIL.ImageDraw.Draw(boxed).rectangle((left, top, right, bottom), outline=BOX_COLOR, width=width)
    return boxed


@torch.inference_mode()
def change_token(
    loaded: DemoModel, indices: torch.Tensor, row: int, col: int, code: int, level: int = 0
) -> torch.Tensor:
    """Decode `indices` `[1, h, w]` (or `[1, h, w, depth]`; [`as_token_grid`]'s for a vector latent)
    with the token at `(row, col)` (and `level`) replaced by `code`. Returns pixels `[1, C, H, W]`."""
    height, width = indices.shape[1:3]
    size = loaded.model.codebook_size
    if not (0 <= row < height and 0 <= col < width):
        raise DemoInputError(f"Token ({row}, {col}) is outside the {height}x{width} grid: click a cell of the grid.")
    if not 0 <= code < size:
        raise DemoInputError(f"The code must be in [0, {size - 1}] for this {size}-code model, got {code}.")
    check_level(indices, level)
    edited = indices.clone()
    if indices.dim() == 4:
        edited[0, row, col, level] = code
    else:
        edited[0, row, col] = code
    return loaded.model.decode_indices(from_token_grid(loaded, edited), return_dict=True).sample.float()


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------


@torch.inference_mode()
def prior_samples(
    loaded: DemoModel, num_samples: int, seed: int, prior=None, temperature: float = 1.0, top_k: int | None = None
) -> torch.Tensor:
    """`num_samples` new images `[N, C, H, W]`: draws from the model's own prior (a VAE's N(0, I)),
    or codes sampled by `prior` (an autoregressive prior over a VQ-VAE's tokens, `latentcode.prior`)
    and decoded."""
    if loaded.model.can_sample_prior:
        generator = torch.Generator(loaded.model.device).manual_seed(seed)
        return loaded.model.sample(num_samples, generator=generator).float()
    if prior is not None and loaded.has_tokens:
        return sample_images(prior, loaded.model, num_samples, seed=seed, temperature=temperature, top_k=top_k).float()
    reason = (
        f"a {loaded.model.display_name} samples only with a prior: start the demo with --prior PATH"
        if loaded.has_tokens
        else f"an {loaded.model.display_name} has no prior to sample from"
    )
    raise DemoInputError(f"{loaded.name} cannot sample: {reason}.")


@torch.inference_mode()
def interpolation_frames(
    loaded: DemoModel, start: PIL.Image.Image, end: PIL.Image.Image, num_steps: int
) -> tuple[list[PIL.Image.Image], PIL.Image.Image]:
    """Decode `num_steps` points between the latents of two images (resized and cropped to the
    model's `sample_size`; slerp for a VAE, see `latentcode.generation.interpolate`). Returns the
    frames and the strip of all frames in one row."""
    frames = interpolate(loaded.model, to_model_size(loaded, start), to_model_size(loaded, end), num_steps).float()
    return loaded.processor.postprocess(frames), image_grid(frames, num_columns=num_steps)


# ----------------------------------------------------------------------------------------------
# Attributes: sliders over latent dimensions
# ----------------------------------------------------------------------------------------------

MAX_SLIDERS = 16  # a grid latent (or a long vector) gets sliders for its top dimensions by KL only
SLIDER_SPAN = 3.0  # sliders move a dimension by up to 3 prior standard deviations either way
TRAVERSAL_STEPS = 7
TRAVERSAL_SPAN = 2.0


@dataclass
class AttributeBase:
    """The code the Attributes tab's sliders start from.

    Attributes:
        pixels: `[1, C, S, S]` the image coded (see [`attribute_base`]), or `None` for the prior mean.
        code: `[*model.latent_code_shape()]`, the image's continuous code (`traversal.continuous_codes`) or 0.
        dims: the latent dimensions the sliders move, in slider order (a grid's whole channels).
        kl: `[latent_channels]` KL of each dimension for this image in nats (VAEs), else `None`.
    """

    pixels: torch.Tensor | None
    code: torch.Tensor
    dims: list[int]
    kl: torch.Tensor | None

    def slider_label(self, position: int) -> str:
        dim = self.dims[position]
        return f"dimension {dim}" + (f" (KL {float(self.kl[dim]):.2f} nats)" if self.kl is not None else "")


@torch.inference_mode()
def attribute_base(loaded: DemoModel, image: PIL.Image.Image | None) -> AttributeBase:
    """The code of `image` (resized and centre-cropped to the model's size, at most
    `MAX_ATTRIBUTE_SIZE` for a grid latent) or, with `None`, the
    prior mean 0 (models that sample a prior only), and the dimensions to put on sliders: every
    dimension when there are at most `MAX_SLIDERS`, else the `MAX_SLIDERS` of largest KL for this
    image (`traversal.per_dimension_kl`; the first ones for a model without a posterior or a
    prior-mean base). A VQ-VAE's dimensions are those of its code before quantisation: `decode`
    quantises the moved code, so the image changes where a token changes."""
    model = loaded.model
    channels = code_dimensions(model)
    if image is None:
        if not model.can_sample_prior:
            raise DemoInputError(
                f"{loaded.name} is an {model.display_name}: it has no prior mean to start from. Pick an image."
            )
        code = torch.zeros(model.latent_code_shape(), device=model.device, dtype=model.dtype)
        return AttributeBase(None, code, list(range(min(channels, MAX_SLIDERS))), None)
    pixels = loaded.processor(image, size=loaded.attribute_size).pixel_values.to(model.device, model.dtype)
    kl = per_dimension_kl(model, pixels).float().cpu() if model.can_sample_prior else None
    if channels <= MAX_SLIDERS:
        dims = list(range(channels))
    else:
        dims = top_dimensions(kl, MAX_SLIDERS) if kl is not None else list(range(MAX_SLIDERS))
    return AttributeBase(pixels, continuous_codes(model, pixels)[0], dims, kl)


def moved_code(base: AttributeBase, offsets: list[float]) -> torch.Tensor:
    """The base code with dimension `base.dims[i]` (a grid's whole channel) moved by `offsets[i]`: `[*code_shape]`."""
    if len(offsets) != len(base.dims):
        raise DemoInputError(f"expected {len(base.dims)} slider values (one per dimension), got {len(offsets)}")
    code = base.code.clone()
    for dim, offset in zip(base.dims, offsets):
        code[dim] += float(offset)
    return code


@torch.inference_mode()
def decode_code(loaded: DemoModel, code: torch.Tensor) -> torch.Tensor:
    """One code `[*code_shape]` -> its decoded image `[1, C, H, W]` (`model.decode`)."""
    return loaded.model.decode(code[None], return_dict=True).sample.float()


def traversal_values() -> torch.Tensor:
    """The offsets of the traversal grid's columns: `TRAVERSAL_STEPS` values in [-span, span]."""
    return torch.linspace(-TRAVERSAL_SPAN, TRAVERSAL_SPAN, TRAVERSAL_STEPS)


@torch.inference_mode()
def traversal_grid(loaded: DemoModel, base: AttributeBase) -> PIL.Image.Image:
    """The traversal grid around the base (`traversal.latent_traversal`): one row per slider's
    dimension, one column per value of [`traversal_values`]. Decoded a row at a time to bound memory."""
    rows = [latent_traversal(loaded.model, base.pixels, [dim], traversal_values()) for dim in base.dims]
    frames = torch.cat(rows)
    return image_grid(frames.float(), num_columns=TRAVERSAL_STEPS)


MAX_ATTRIBUTE_IMAGES = 64  # per image set of an attribute vector: its codes are computed in one batch


@dataclass
class AttributeVector:
    """An attribute vector made in the Attributes tab (`traversal.attribute_vector`).

    Attributes:
        model: the name of the model whose codes it moves.
        vector: `[*code_shape]`, the mean code of the images with the attribute minus that of those without.
        with_count / without_count: how many images each set had.
    """

    model: str
    vector: torch.Tensor
    with_count: int
    without_count: int

    def summary(self) -> str:
        """One Markdown line: what the vector is and how large."""
        return (
            f"Attribute vector of `{self.model}`: mean code of {self.with_count} images with the attribute minus "
            f"{self.without_count} without (norm {float(self.vector.float().norm()):.2f}). The strength slider "
            "adds it to the code the sliders show: 1 moves the code by the difference of the two sets' means."
        )


@torch.inference_mode()
def make_attribute_vector(
    loaded: DemoModel, with_images: list[PIL.Image.Image], without_images: list[PIL.Image.Image]
) -> AttributeVector:
    """The mean code of `with_images` minus that of `without_images` (`traversal.attribute_vector`),
    each image resized and centre-cropped to the Attributes tab's size (`loaded.attribute_size`)."""
    for images, which in ((with_images, "with"), (without_images, "without")):
        if not images:
            raise DemoInputError(f"Upload at least one image {which} the attribute.")
        if len(images) > MAX_ATTRIBUTE_IMAGES:
            raise DemoInputError(
                f"{len(images)} images {which} the attribute; the demo takes at most {MAX_ATTRIBUTE_IMAGES} per set."
            )
    model = loaded.model

    def pixels(images):
        prepared = loaded.processor(images, size=loaded.attribute_size).pixel_values
        return prepared.to(model.device, model.dtype)

    vector = attribute_vector(model, pixels(with_images), pixels(without_images))
    return AttributeVector(loaded.name, vector, len(with_images), len(without_images))


def add_attribute(code: torch.Tensor, vector: torch.Tensor, strength: float) -> torch.Tensor:
    """`code + strength * vector` for codes `[*code_shape]`. A grid latent's vector made at another
    size (the prior mean's grid is the model's `sample_size`) is resized to the code's grid first."""
    if vector.shape != code.shape:
        if vector.dim() != 3 or vector.shape[0] != code.shape[0]:
            raise DemoInputError(
                f"The attribute vector has shape {tuple(vector.shape)}, the code {tuple(code.shape)}: make it again "
                "with this model."
            )
        vector = torch.nn.functional.interpolate(vector[None].float(), size=code.shape[1:], mode="bilinear")[0]
    return code + strength * vector.to(code)


# ----------------------------------------------------------------------------------------------
# Example images
# ----------------------------------------------------------------------------------------------

KODAK_EXAMPLES = ("kodim23.png", "kodim05.png", "kodim15.png")
ATTRIBUTE_EXAMPLES = {"celeba-samples": ("000.png", "003.png", "007.png", "012.png"), "mnist-samples": ("001.png",)}
# Hair colour in ../shared/datasets/celeba-samples, labelled by eye (the samples come without
# CelebA's attribute labels): the blond faces and the dark-haired (black or dark brown) ones.
BLOND_FACES = (9, 23, 25, 33, 39, 45, 46, 50, 62, 64, 70, 79, 89, 93)
DARK_HAIRED_FACES = (1, 6, 19, 22, 29, 31, 37, 40, 61, 67, 73, 76, 77, 83, 98)
CIFAR10_EXAMPLES = 2
SKIMAGE_EXAMPLES = ("astronaut", "coffee", "camera")


def example_images(datasets_dir: str | Path | None, output_dir: str | Path, multiple_of: int = 16) -> list[Path]:
    """Example files for the page, written to `output_dir`: a few Kodak photos and CIFAR-10 test images
    from `datasets_dir` (laid out as this project's `../shared/datasets`) when present, else photos
    shipped with scikit-image. Photos are cropped to sides divisible by `multiple_of`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datasets_dir = Path(datasets_dir) if datasets_dir is not None else None
    images: dict[str, PIL.Image.Image] = {}
    if datasets_dir is not None and (datasets_dir / "kodak").is_dir():
        for name in KODAK_EXAMPLES:
            if (datasets_dir / "kodak" / name).is_file():
                shutil.copy(datasets_dir / "kodak" / name, output_dir / name)
        shards = sorted((datasets_dir / "cifar10" / "test").glob("*.parquet"))
        if shards:
            import io

            import pyarrow.parquet

            table = pyarrow.parquet.read_table(shards[0], columns=["img"]).slice(0, CIFAR10_EXAMPLES)
            for number, cell in enumerate(table.column("img").to_pylist()):
                images[f"cifar10-test-{number}.png"] = PIL.Image.open(io.BytesIO(cell["bytes"]))
    paths = [output_dir / name for name in KODAK_EXAMPLES if (output_dir / name).is_file()]
    if not paths and not images:
        try:
            from skimage import data
        except ImportError:
            return []
        images = {f"{name}.png": PIL.Image.fromarray(getattr(data, name)()) for name in SKIMAGE_EXAMPLES}
    for name, image in images.items():
        width, height = image.width // multiple_of * multiple_of, image.height // multiple_of * multiple_of
        if width and height:
            image.crop((0, 0, width, height)).save(output_dir / name)
            paths.append(output_dir / name)
    return paths


def attribute_examples(datasets_dir: str | Path | None, output_dir: str | Path) -> list[Path]:
    """A few real CelebA faces and an MNIST digit from `datasets_dir` (`celeba-samples/`,
    `mnist-samples/`: what the disentangling-vae β-VAEs were trained on), copied to `output_dir`
    as `celeba-000.png`, ...; none when the folders are absent."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for folder, names in ATTRIBUTE_EXAMPLES.items():
        for name in names:
            source = Path(datasets_dir or "") / folder / name
            if datasets_dir is not None and source.is_file():
                paths.append(Path(shutil.copy(source, output_dir / f"{folder.split('-')[0]}-{name}")))
    return paths


def hair_colour_examples(datasets_dir: str | Path | None, output_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """The Attributes tab's example image sets: the blond CelebA faces ([`BLOND_FACES`]) and the
    dark-haired ones ([`DARK_HAIRED_FACES`]) of `datasets_dir/celeba-samples`, copied to
    `output_dir` as `blond-009.png`, ..., `dark-001.png`, ...; two empty lists when that folder is absent."""
    folder = Path(datasets_dir or "") / "celeba-samples"
    if datasets_dir is None or not folder.is_dir():
        return [], []
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return tuple(
        [Path(shutil.copy(folder / f"{number:03d}.png", output_dir / f"{name}-{number:03d}.png")) for number in numbers]
        for name, numbers in (("blond", BLOND_FACES), ("dark", DARK_HAIRED_FACES))
    )
