"""dSprites, generated: 64x64 binary images of one white shape drawn from five known factors.

The published dSprites (Matthey et al. 2017, github.com/deepmind/dsprites-dataset) holds every
combination of these factor values exactly once, 737,280 images, and so does [`DSprites`]:

    factor        values                                  index
    shape         square, ellipse, heart                  0..2
    scale         6 values linearly spaced in [0.5, 1]    0..5
    orientation   40 values in [0, 2 pi] (both ends)      0..39
    position_x    32 values in [0, 1]                     0..31
    position_y    32 values in [0, 1]                     0..31

Images are produced on demand from the factor indices (never stored), by the same arithmetic on
every call: the same factors give the same pixels. Image `i` of the dataset has the factors of
the published order (position_y varies fastest, then position_x, orientation, scale, shape).

How it differs from the published files (which cannot be fetched here), so that numbers are
compared knowingly:

- the pixels are not the published ones: the outlines are drawn here (a square, an ellipse with
  axes 2:1, the heart curve (x^2 + y^2 - 1)^3 = x^2 y^3), filled where a pixel's centre lies
  inside; at scale 1 the square is 20 pixels wide (2 * SPRITE_RADIUS) and the other shapes are
  as wide; the published sprites have their own sizes and outlines;
- position index k puts the shape's centre at pixel coordinate 16.5 + k (columns for x, rows for
  y, rows counting downwards), so one position step is exactly one pixel and no shape leaves the
  64 x 64 frame at any rotation; the published range of the centres differs;
- orientation turns the shape anticlockwise as displayed. As in the published set, the grid
  holds both 0 and 2 pi (identical images), and the square's 4-fold and the ellipse's 2-fold
  symmetry make several orientations give one image: orientation is not identifiable from the
  image alone, which bounds every metric's orientation term below its maximum;
- the published files have a sixth factor, colour, with one value (white); it is left out here,
  as disentanglement_lib's `dsprites_full` leaves it out of the factors;
- sines and cosines come from the platform's maths library: on another platform a pixel whose
  centre lies within rounding of an outline may differ.

[`DSprites`] is also a factor sampler for the disentanglement metrics
(`latentcode.evaluation.disentanglement_metrics`): it has the methods of disentanglement_lib's
`GroundTruthData` (`num_factors`, `factors_num_values`, `sample_factors`,
`sample_observations_from_factors`, `sample`, `sample_observations`), drawing factors with
`random_state.randint(size, size=num)` per factor in order as disentanglement_lib's dSprites
does (whose one-value colour factor draws nothing), so a seed gives the same factors there and
here. Observations are `[N, 1, 64, 64]` float32 in {0, 1} (disentanglement_lib's are
`[N, 64, 64, 1]`). As a training set it is `builtin:dsprites` (`latentcode.data.images`).

[`read_factors`] is the inverse of [`render`]: the factors of a (decoded) image read back from
its pixels, which `latentcode.evaluation.attribute_effects` uses to measure attribute vectors.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import PIL.Image

IMAGE_SIZE = 64
SHAPES = ("square", "ellipse", "heart")
FACTOR_NAMES = ("shape", "scale", "orientation", "position_x", "position_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
NUM_IMAGES = int(np.prod(FACTOR_SIZES))  # 737,280
# The published factor values (dSprites' `latents_possible_values`; shape is stored as 1, 2, 3).
FACTOR_VALUES = {
    "shape": np.array([1.0, 2.0, 3.0]),
    "scale": np.linspace(0.5, 1.0, 6),
    "orientation": np.linspace(0.0, 2 * np.pi, 40),
    "position_x": np.linspace(0.0, 1.0, 32),
    "position_y": np.linspace(0.0, 1.0, 32),
}
SPRITE_RADIUS = 10.0  # pixels from the centre to the square's side at scale 1
FIRST_CENTRE = 16.5  # pixel coordinate of the centre at position index 0 (pixel centres are integers)
# The heart curve spans x in [-1.139, 1.139] and y in [-1, 1.236]: scaled to the square's width
# and centred vertically.
_HEART_HALF_WIDTH, _HEART_MIDDLE = 1.139, 0.118


def _inside_square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0


def _inside_ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + 4.0 * v * v <= 1.0  # axes 1 and 1/2


def _inside_heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = u * _HEART_HALF_WIDTH, v * _HEART_HALF_WIDTH + _HEART_MIDDLE
    x2, y2 = x * x, y * y
    ring = x2 + y2 - 1.0
    return ring * ring * ring <= x2 * y2 * y  # products, not powers: np.power is slow


_INSIDE = (_inside_square, _inside_ellipse, _inside_heart)


def check_factors(factors) -> np.ndarray:
    """`factors` as an int64 array `[N, 5]` of factor indices, or a clear error."""
    array = np.asarray(factors)
    if array.ndim != 2 or array.shape[1] != len(FACTOR_SIZES) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"expected factor indices as integers of shape [N, {len(FACTOR_SIZES)}] ({', '.join(FACTOR_NAMES)}), "
            f"got {array.dtype} of shape {tuple(array.shape)}"
        )
    too_large = (array < 0) | (array >= np.array(FACTOR_SIZES))
    if too_large.any():
        row, column = np.argwhere(too_large)[0]
        raise ValueError(
            f"factor {FACTOR_NAMES[column]!r} takes the indices 0..{FACTOR_SIZES[column] - 1}, "
            f"got {array[row, column]} (row {row})"
        )
    return array.astype(np.int64)


def draw(factors) -> np.ndarray:
    """The images of `factors` (`[N, 5]` factor indices) computed pixel by pixel: bool
    `[N, 64, 64]`, True where the pixel's centre lies inside the shape. [`render`] gives the
    same images faster."""
    factors = check_factors(factors)
    shape, scale, orientation, x, y = factors.T
    pixels = np.arange(IMAGE_SIZE, dtype=np.float64)
    radius = (FACTOR_VALUES["scale"][scale] * SPRITE_RADIUS)[:, None, None]
    angle = FACTOR_VALUES["orientation"][orientation][:, None, None]
    right = pixels[None, None, :] - (FIRST_CENTRE + x)[:, None, None]  # [N, 1, 64]
    up = (FIRST_CENTRE + y)[:, None, None] - pixels[None, :, None]  # [N, 64, 1]: rows count downwards
    # The pixel's offset turned back by the orientation, in units of the sprite's size.
    cos, sin = np.cos(angle) / radius, np.sin(angle) / radius
    u = cos * right + sin * up
    v = cos * up - sin * right
    images = np.zeros((len(factors), IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for shape_index, inside in enumerate(_INSIDE):
        chosen = shape == shape_index
        if chosen.any():
            images[chosen] = inside(u[chosen], v[chosen])
    return images


@functools.cache
def _sprites_at_origin() -> np.ndarray:
    """bool `[3, 6, 40, 64, 64]`: every shape, scale and orientation [`draw`]n at position (0, 0)."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in FACTOR_SIZES[:3]), indexing="ij"), axis=-1).reshape(-1, 3)
    origin = np.concatenate([grid, np.zeros((len(grid), 2), dtype=np.int64)], axis=1)
    return draw(origin).reshape(*FACTOR_SIZES[:3], IMAGE_SIZE, IMAGE_SIZE)


def render(factors) -> np.ndarray:
    """The images of `factors` (`[N, 5]` factor indices): bool `[N, 64, 64]`, True on the shape.

    One position step is exactly one pixel, so the image at position (x, y) is the sprite drawn
    at (0, 0) moved x columns right and y rows down; the pixel offsets are exact half-integers
    either way, so the pixels equal [`draw`]'s (tests/test_dsprites.py checks it). The 720
    sprites are drawn once per process (about a second)."""
    factors = check_factors(factors)
    sprites = _sprites_at_origin()
    images = np.zeros((len(factors), IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    # The sprite at the origin lies in rows and columns 3..30 and moves at most 31: what the
    # move pushes past the last row or column is empty.
    for i, (s, k, o, dx, dy) in enumerate(factors.tolist()):
        images[i, dy:, dx:] = sprites[s, k, o, : IMAGE_SIZE - dy, : IMAGE_SIZE - dx]
    return images


# Orientation steps after which each shape looks the same again (its rotational symmetry: the
# square's quarter turn, the ellipse's half turn, the heart's full turn), in grid steps of 2 pi / 39.
SYMMETRY_STEPS = {"square": 39 / 4, "ellipse": 39 / 2, "heart": 39.0}


@functools.cache
def _templates() -> tuple[np.ndarray, int, int, np.ndarray, np.ndarray, np.ndarray]:
    """The 720 sprites at position (0, 0) as templates: `(boxes bool [720, h, w]` (the box every
    sprite lies in, from row `top` and column `left`), `top`, `left`, areas `[720]` (pixels), and
    centroids `[720]` (row, column))`; template `t` is shape `t // 240`, scale `t // 40 % 6`,
    orientation `t % 40`."""
    sprites = _sprites_at_origin().reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    rows, columns = np.nonzero(sprites.any(axis=0))
    top, left = int(rows.min()), int(columns.min())
    boxes = sprites[:, top : rows.max() + 1, left : columns.max() + 1]
    area = sprites.sum(axis=(1, 2)).astype(np.float64)
    pixels = np.arange(IMAGE_SIZE, dtype=np.float64)
    centroid_row = (sprites.sum(axis=2) * pixels).sum(axis=1) / area
    centroid_column = (sprites.sum(axis=1) * pixels).sum(axis=1) / area
    return boxes, top, left, area, centroid_row, centroid_column


def _template_mismatch(binary: np.ndarray, centroid_row: np.ndarray, centroid_column: np.ndarray) -> np.ndarray:
    """Pixels that differ between each image (bool `[N, 64, 64]`) and each template moved by the
    whole pixels that put its centroid nearest the image's: int `[N, 720]`."""
    boxes, top, left, area, template_row, template_column = _templates()
    height, width = boxes.shape[1:]
    pad = IMAGE_SIZE  # moves of up to a frame either way stay inside the padded image
    shift_row = np.clip(np.rint(centroid_row[:, None] - template_row[None]), -pad, pad).astype(np.int64)
    shift_column = np.clip(np.rint(centroid_column[:, None] - template_column[None]), -pad, pad).astype(np.int64)
    mismatch = np.empty((len(binary), len(boxes)), dtype=np.int64)
    for start in range(0, len(binary), 16):  # [16, 720, h, w] windows at a time: about 9 MB
        chunk = slice(start, start + 16)
        padded = np.pad(binary[chunk], ((0, 0), (pad, pad), (pad, pad)))
        rows = pad + top + shift_row[chunk, :, None] + np.arange(height)  # [n, 720, h]
        columns = pad + left + shift_column[chunk, :, None] + np.arange(width)  # [n, 720, w]
        image_index = np.arange(len(padded))[:, None, None, None]
        windows = padded[image_index, rows[:, :, :, None], columns[:, :, None, :]]  # [n, 720, h, w]
        overlap = (windows & boxes[None]).sum(axis=(2, 3))
        mismatch[chunk] = binary[chunk].sum(axis=(1, 2))[:, None] + area[None].astype(np.int64) - 2 * overlap
    return mismatch


class FactorReading(NamedTuple):
    """What [`read_factors`] reads from images: `factors` float `[N, 5]` in index units (NaN for
    an empty image) and `mismatched_pixels` int `[N]` (pixels that differ from the nearest render)."""

    factors: np.ndarray
    mismatched_pixels: np.ndarray


def read_factors(images, threshold: float = 0.5) -> FactorReading:
    """The factors of dSprites-like images, read back from their pixels: the inverse of [`render`].

    `images` are `[N, 64, 64]` or `[N, C, 64, 64]` (channels averaged) with values in [0, 1] (a
    factor sampler's observations, or a decoder's pixels mapped `y -> (y + 1) / 2`); a pixel is
    on above `threshold` (a Bernoulli decoder's probability 1/2). Each image is compared with the
    720 sprites (shape x scale x orientation) moved so that the centroids meet to the nearest
    whole pixel; the sprite with the fewest differing pixels gives the shape and orientation (the
    first in grid order among ties: sprites that render the same pixels, by symmetry or for a few
    small sprites at neighbouring orientations, e.g. the ellipse at scale index 1 at orientations
    1 and 2, read as the lowest orientation).
    The others are continuous, in index units of the factor grid:

    - position x / y: the image's centroid minus that sprite's centroid at position 0 (pixels:
      one position step is one pixel; the heart's centroid is not its centre, hence the sprite's);
    - scale: the sprite's scale times sqrt(image area / sprite area), in steps of 0.1 from 0.5.

    On rendered images the sprite matches with no differing pixel and x, y and scale are the
    rendered ones exactly (tests/test_attribute_effects.py). Returns a [`FactorReading`].
    """
    binary = _binary_images(images, threshold)
    area = binary.sum(axis=(1, 2)).astype(np.float64)
    pixels = np.arange(IMAGE_SIZE, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty image has no centroid: NaN
        centroid_row = (binary.sum(axis=2) * pixels).sum(axis=1) / area
        centroid_column = (binary.sum(axis=1) * pixels).sum(axis=1) / area
    empty = area == 0
    mismatch = _template_mismatch(binary, np.nan_to_num(centroid_row), np.nan_to_num(centroid_column))
    best = mismatch.argmin(axis=1)
    _, _, _, template_area, template_row, template_column = _templates()
    shape, scale, orientation = np.unravel_index(best, FACTOR_SIZES[:3])
    scales = FACTOR_VALUES["scale"]
    with np.errstate(invalid="ignore"):
        scale_value = scales[scale] * np.sqrt(area / template_area[best])
    factors = np.stack(
        [
            shape.astype(np.float64),
            (scale_value - scales[0]) / (scales[1] - scales[0]),
            orientation.astype(np.float64),
            centroid_column - template_column[best],
            centroid_row - template_row[best],
        ],
        axis=1,
    )
    factors[empty] = np.nan
    return FactorReading(factors, mismatch[np.arange(len(best)), best])


def _binary_images(images, threshold: float) -> np.ndarray:
    """`images` `[N, 64, 64]` or `[N, C, 64, 64]` in [0, 1] -> bool `[N, 64, 64]`, on above `threshold`."""
    array = np.asarray(images, dtype=np.float64)
    if array.ndim == 4:
        array = array.mean(axis=1)
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"expected dSprites-like images [N, {IMAGE_SIZE}, {IMAGE_SIZE}] or [N, C, {IMAGE_SIZE}, {IMAGE_SIZE}] "
            f"in [0, 1], got shape {tuple(array.shape)}: decode at 64 x 64 and map [-1, 1] pixels with (y + 1) / 2"
        )
    return array > threshold


def index_to_factors(indices) -> np.ndarray:
    """Factor indices `[N, 5]` of images `indices` of the dataset, in the published order."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= NUM_IMAGES):
        raise IndexError(f"dSprites has the images 0..{NUM_IMAGES - 1}, got {indices.min()}..{indices.max()}")
    return np.stack(np.unravel_index(indices.reshape(-1), FACTOR_SIZES), axis=1).astype(np.int64)


def factors_to_index(factors) -> np.ndarray:
    """The dataset indices `[N]` of images with `factors` (`[N, 5]` factor indices)."""
    return np.ravel_multi_index(tuple(check_factors(factors).T), FACTOR_SIZES).astype(np.int64)


class DSprites:
    """The generated dSprites as a factor sampler (the module docstring says what it is)."""

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES
    observation_shape = (1, IMAGE_SIZE, IMAGE_SIZE)

    @property
    def num_factors(self) -> int:
        return len(FACTOR_SIZES)

    @property
    def factors_num_values(self) -> list[int]:
        return list(FACTOR_SIZES)

    def __len__(self) -> int:
        return NUM_IMAGES

    def sample_factors(self, num: int, random_state: np.random.RandomState) -> np.ndarray:
        """`num` factor draws `[num, 5]`, uniform and independent, one `randint` per factor in order."""
        factors = np.zeros((num, self.num_factors), dtype=np.int64)
        for column, size in enumerate(FACTOR_SIZES):
            factors[:, column] = random_state.randint(size, size=num)
        return factors

    def sample_observations_from_factors(self, factors, random_state=None) -> np.ndarray:
        """Images of `factors`: float32 `[N, 1, 64, 64]` in {0, 1}; `random_state` is unused
        (each factor combination has one image)."""
        return render(factors)[:, None].astype(np.float32)

    def sample(self, num: int, random_state: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        """`(factors [num, 5], images [num, 1, 64, 64])`."""
        factors = self.sample_factors(num, random_state)
        return factors, self.sample_observations_from_factors(factors, random_state)

    def sample_observations(self, num: int, random_state: np.random.RandomState) -> np.ndarray:
        return self.sample(num, random_state)[1]


class DSpritesImages(Sequence):
    """The 737,280 images as a sequence of grey-scale PIL images (0 or 255), each drawn when read:
    the embedded dataset `builtin:dsprites`."""

    def __len__(self) -> int:
        return NUM_IMAGES

    def __getitem__(self, index: int) -> PIL.Image.Image:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"dSprites images are read one integer index at a time, got {type(index).__name__}")
        if index < 0:
            index += NUM_IMAGES
        pixels = render(index_to_factors([index]))[0]
        return PIL.Image.fromarray(pixels.astype(np.uint8) * 255)  # 2-D uint8: mode "L"
