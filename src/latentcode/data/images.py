"""Images: the embedded datasets, decoding (unreadable files skipped and counted once) and the
training / evaluation transforms."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import PIL.Image
import torch

from ..image_processing import PIL_MODES, image_to_float_chw, resize_shorter_side
from .dsprites import DSpritesImages

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# Embedded datasets
# ----------------------------------------------------------------------------------------------


def _digits_images() -> list[PIL.Image.Image]:
    """scikit-learn's 1797 handwritten digits as 8x8 grey-scale images (values 0..16 -> 0..255)."""
    from sklearn.datasets import load_digits

    pixels = np.round(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    return [PIL.Image.fromarray(image, mode="L") for image in pixels]


_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


def _photo_patches(patch_size: int = 64) -> list[PIL.Image.Image]:
    """Non-overlapping `patch_size` RGB patches of the photographs shipped with scikit-image."""
    import skimage.data

    patches = []
    for name in _PHOTOS:
        photo = getattr(skimage.data, name)()
        for top in range(0, photo.shape[0] - patch_size + 1, patch_size):
            for left in range(0, photo.shape[1] - patch_size + 1, patch_size):
                patches.append(PIL.Image.fromarray(photo[top : top + patch_size, left : left + patch_size]))
    return patches


def _dsprites_images() -> DSpritesImages:
    """The 737,280 generated dSprites images (`latentcode.data.dsprites`), each drawn when read."""
    return DSpritesImages()


# name -> the images: a list, or a sequence that draws each image when read (never all in memory).
BUILTIN_DATASETS: dict[str, Callable[[], Sequence[PIL.Image.Image]]] = {
    "builtin:digits": _digits_images,
    "builtin:photos": _photo_patches,
    "builtin:dsprites": _dsprites_images,
}

# The embedded datasets have no published split: every tenth image (index 9, 19, ...) is the
# "test" split, the others "train", so a validation_split of "test" holds out images training
# never sees. (Every tenth rather than the last tenth: the photo patches come photo by photo.)
# A generated set's test split comes in a spread order ([`EveryTenth`]).
BUILTIN_SPLITS = ("train", "test")


def builtin_split(images: Sequence, split: str) -> Sequence:
    """The `split` ("train" or "test") of an embedded dataset's images, in order: a list for a
    list, a lazy [`EveryTenth`] view for a generated sequence."""
    if split not in BUILTIN_SPLITS:
        raise ValueError(f"the embedded datasets have the splits {BUILTIN_SPLITS}, got split={split!r}")
    if not isinstance(images, list):
        return EveryTenth(images, test=split == "test")
    return [image for index, image in enumerate(images) if (index % 10 == 9) == (split == "test")]


class EveryTenth(Sequence):
    """The images of `images` with index 9, 19, 29, ... (`test=True`) or all the others, without
    reading any. The train split keeps the stored order: its `k`-th image is `10 (k // 9) + k % 9`.
    The test split holds its `n` images in a fixed shuffled order: its `k`-th is held-out image
    `order[k]` (image `10 order[k] + 9`), `order` = [`spread_order`]`(n)` (the same images, reordered).
    Why: a generated set is stored in factor order (dSprites: shape, scale and orientation vary
    slowest), so its first held-out images would all be one shape at one scale and orientation; a
    run validates on the first `num_validation_images`, and in shuffled order any prefix samples
    every factor."""

    def __init__(self, images: Sequence, test: bool):
        self.images, self.test = images, test
        self.order = spread_order(len(self)) if test else None

    def __len__(self) -> int:
        held_out = len(self.images) // 10
        return held_out if self.test else len(self.images) - held_out

    def __getitem__(self, index: int):
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a split of {len(self)} images")
        index %= len(self)
        if self.test:
            return self.images[10 * int(self.order[index]) + 9]
        return self.images[10 * (index // 9) + index % 9]


def spread_order(count: int) -> np.ndarray:
    """[`EveryTenth`]'s order of `count` held-out images: a permutation of `0..count-1` drawn with
    numpy's `RandomState(0)` (its legacy generator, whose stream numpy keeps fixed across versions)."""
    return np.random.RandomState(0).permutation(count)


# ----------------------------------------------------------------------------------------------
# Decoding and transforms
# ----------------------------------------------------------------------------------------------


class CorruptImageError(ValueError):
    """An image that cannot be decoded, or whose values cannot be converted to pixels.

    `source` names the image: its path, or for images stored as bytes without a path (parquet
    rows, webdataset members) a digest of the bytes, so that each bad file is counted once.
    """

    def __init__(self, message: str, source: str):
        super().__init__(message)
        self.source = source


# What PIL raises on damaged files besides OSError (its truncated-data error) and ValueError:
# broken headers surface as SyntaxError, EOFError or struct.error from its format parsers.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, PIL.Image.DecompressionBombError)


def image_source(value) -> str:
    """A stable name for the image in `value` (path, or byte count and digest of its bytes)."""
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, (str, os.PathLike)) else None
    data = value.get("bytes") if isinstance(value, dict) else value
    if isinstance(data, (bytes, bytearray)):
        digest = hashlib.sha1(data).hexdigest()[:16]
        return f"{path} (bytes sha1 {digest})" if path else f"<{len(data)} bytes, sha1 {digest}>"
    return str(path) if path else f"<{type(value).__name__}>"


def decode_image(value, min_size: int | None = None) -> PIL.Image.Image:
    """A fully decoded PIL image from what a dataset holds: a PIL image, `{"bytes", "path"}`,
    raw bytes or a path. Raises [`CorruptImageError`] when the data is not a readable image.

    `min_size`: the smallest side the caller needs. Formats that can decode at a reduced scale
    (JPEG's 1/2, 1/4, 1/8 DCT scaling, PIL's `draft`) then do so, keeping both sides at least
    `min_size`: a huge photo is never decoded at full size only to be shrunk.
    """
    if isinstance(value, PIL.Image.Image):
        return value
    source = value
    if isinstance(value, dict):
        source = value.get("bytes") or value.get("path")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif not isinstance(source, (str, os.PathLike)):
        raise CorruptImageError(
            f"expected an image (PIL image, bytes or path), got {type(value).__name__}", image_source(value)
        )
    try:
        image = PIL.Image.open(source)
        if min_size is not None:
            image.draft(image.mode, (min_size, min_size))
        image.load()  # PIL decodes lazily; truncated files only fail here
    except _DECODE_ERRORS as error:
        name = image_source(value)
        raise CorruptImageError(f"cannot decode image {name}: {type(error).__name__}: {error}", name) from error
    return image


class CorruptImages:
    """The unreadable images met in a stream: each counted and logged (with its name) once,
    however many epochs meet it again. `len()` is the number of distinct bad files."""

    def __init__(self, what: str = "image", log: bool = True):
        self.what, self.log = what, log
        self.sources: set[str] = set()

    def __len__(self) -> int:
        return len(self.sources)

    def add(self, error: CorruptImageError) -> None:
        if error.source in self.sources:
            return
        self.sources.add(error.source)
        if self.log:
            logger.warning("skipping unreadable %s (%d so far): %s", self.what, len(self.sources), error)

    def state_dict(self) -> list[str]:
        return sorted(self.sources)

    def load_state_dict(self, sources: list[str]) -> None:
        self.sources = set(sources)


class DecodingTransform:
    """A transform of PIL images that can also take what a dataset holds ([`load`])."""

    # The smallest side the transform needs; huge images are decoded / reduced towards it.
    decode_min_size: int | None = None

    def load(self, value, rng: random.Random) -> torch.Tensor:
        """Decode the image a dataset holds (see [`decode_image`]) and transform it. Raises
        [`CorruptImageError`] for an unreadable image and for one whose values cannot be
        converted (a float image outside [0, 1], ...), so callers skip and count both alike."""
        min_size = self.decode_min_size
        image = decode_image(value, min_size=min_size)
        try:
            return self(image if min_size is None else _reduce_large(image, min_size), rng)
        except ValueError as error:
            name = image_source(value)
            raise CorruptImageError(f"cannot convert image {name}: {error}", name) from error


def readable_images(
    examples: Iterable[tuple[object, random.Random]], transform: DecodingTransform, corrupt: CorruptImages
) -> Iterator[torch.Tensor]:
    """The images of `examples` (pairs of what a dataset holds and the `rng` of its random
    crop / flip) through `transform.load`, in order. Unreadable ones are recorded in `corrupt`
    and skipped. Examples are read one at a time, as the images are asked for."""
    for value, rng in examples:
        try:
            image = transform.load(value, rng)
        except CorruptImageError as error:
            corrupt.add(error)
            continue
        yield image


class ImageTransform(DecodingTransform):
    """PIL image -> `[C, resolution, resolution]` float tensor in [-1, 1].

    Resize the shorter side to `resolution` (bicubic, antialiased), crop a square (centre or
    random), flip horizontally with probability 1/2 if `random_flip`, convert to the colour mode
    of `channels` (1 grey, 3 RGB, 4 RGBA). Random choices come from the `rng` passed per image.
    """

    def __init__(self, resolution: int, channels: int, center_crop: bool = True, random_flip: bool = False):
        if channels not in PIL_MODES:
            raise ValueError(f"channels must be one of {sorted(PIL_MODES)}, got {channels}")
        self.resolution = resolution
        self.channels = channels
        self.center_crop = center_crop
        self.random_flip = random_flip

    @property
    def decode_min_size(self) -> int:
        return DECODE_OVERSAMPLING * self.resolution

    def __call__(self, image: PIL.Image.Image, rng: random.Random) -> torch.Tensor:
        # The same conversion and resize as LatentCodeImageProcessor, so a model sees at
        # inference exactly the preprocessing it was trained with.
        pixels = resize_shorter_side(image_to_float_chw(image, self.channels), self.resolution, "bicubic")
        height, width = pixels.shape[1:]
        extra_x, extra_y = width - self.resolution, height - self.resolution
        left, top = (
            (extra_x // 2, extra_y // 2) if self.center_crop else (rng.randint(0, extra_x), rng.randint(0, extra_y))
        )
        pixels = pixels[:, top : top + self.resolution, left : left + self.resolution]
        if self.random_flip and rng.random() < 0.5:
            pixels = pixels.flip(-1)
        return pixels * 2 - 1


class FullResolutionTransform(DecodingTransform):
    """PIL image -> `[C, H', W']` float tensor in [-1, 1] at the image's own size, centre-cropped
    only to the nearest multiple of `multiple` (a model's downsampling factor) per side: for
    evaluation on large images (e.g. Kodak's 768x512 photos) with tiled encode/decode."""

    def __init__(self, channels: int, multiple: int):
        if channels not in PIL_MODES:
            raise ValueError(f"channels must be one of {sorted(PIL_MODES)}, got {channels}")
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple}")
        self.channels = channels
        self.multiple = multiple

    def __call__(self, image: PIL.Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        pixels = image_to_float_chw(image, self.channels)
        height, width = pixels.shape[1:]
        new_height, new_width = height - height % self.multiple, width - width % self.multiple
        if new_height == 0 or new_width == 0:
            raise ValueError(f"a {width}x{height} image is smaller than the downsampling factor {self.multiple}")
        top, left = (height - new_height) // 2, (width - new_width) // 2
        return pixels[:, top : top + new_height, left : left + new_width] * 2 - 1


# Huge images are decoded / box-reduced only down to this many times the training resolution:
# the final antialiased resize still does the filtering, so images up to this size are
# preprocessed exactly as LatentCodeImageProcessor does at inference.
DECODE_OVERSAMPLING = 4


def _reduce_large(image: PIL.Image.Image, min_size: int) -> PIL.Image.Image:
    """Box-downscale (PIL's `reduce`) an image at least twice as large as needed to a shorter
    side of at least `min_size`, so the float conversion and the resize do not work on tens of
    millions of pixels. Modes `reduce` does not support are returned unchanged."""
    factor = min(image.size) // min_size
    if factor < 2:
        return image
    try:
        return image.reduce(factor)
    except ValueError:  # e.g. a palette or 16-bit mode
        return image
