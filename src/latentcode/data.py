"""Streamed image data for training.

Every source becomes a `datasets.IterableDataset` (`streaming=True`) and goes through one
pipeline: pick the image column, hold out a validation set, shuffle with a buffer, give each
process its own part (`split_dataset_by_node`), decode and transform one image at a time.

Sources:

- a Hub dataset (`dataset_name="user/name"`, optional `dataset_config_name`, `split`);
- local data (`train_data_dir`): an image folder, parquet files or webdataset `.tar` shards;
- the embedded datasets, real images shipped inside installed packages, no network needed:
  `"builtin:digits"` (the 1797 8x8 handwritten digits of scikit-learn, grey-scale) and
  `"builtin:photos"` (64x64 patches cut from the RGB photographs of scikit-image).

Images are decoded by this module, not by `datasets` (the column is cast to
`Image(decode=False)`), so that an unreadable file is skipped and counted instead of ending
the run, and so that skipping already-seen examples on resume costs no decoding.

Exact resume: [`ImageBatches`] reads its stream strictly in order and records its position
(epoch, examples read in the epoch). The shuffle buffer and the random crops/flips are seeded
from (seed, epoch) and (seed, epoch, rank, position), so replaying the stream up to the saved
position reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import random
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import torch
from datasets.distributed import split_dataset_by_node

from .image_processing import IMAGE_EXTENSIONS, PIL_MODES, image_to_float_chw, resize_shorter_side

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


BUILTIN_DATASETS: dict[str, Callable[[], list[PIL.Image.Image]]] = {
    "builtin:digits": _digits_images,
    "builtin:photos": _photo_patches,
}

# The embedded datasets have no published split: every tenth image (index 9, 19, ...) is the
# "test" split, the others "train", so a validation_split of "test" holds out images training
# never sees. (Every tenth rather than the last tenth: the photo patches come photo by photo.)
BUILTIN_SPLITS = ("train", "test")


def builtin_split(images: list, split: str) -> list:
    """The `split` ("train" or "test") of an embedded dataset's images, in order."""
    if split not in BUILTIN_SPLITS:
        raise ValueError(f"the embedded datasets have the splits {BUILTIN_SPLITS}, got split={split!r}")
    return [image for index, image in enumerate(images) if (index % 10 == 9) == (split == "test")]


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


def _local_builder(path: Path) -> tuple[str, dict]:
    """The `datasets` builder and its arguments for a local folder or file."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    suffixes = {p.suffix.lower() for p in files}
    if ".parquet" in suffixes:
        return "parquet", {"data_files": [str(p) for p in files if p.suffix.lower() == ".parquet"]}
    if ".tar" in suffixes:
        return "webdataset", {"data_files": [str(p) for p in files if p.suffix.lower() == ".tar"]}
    if suffixes & set(IMAGE_EXTENSIONS):
        return "imagefolder", {"data_dir": str(path)}
    raise ValueError(
        f"train_data_dir={str(path)!r} holds no images ({sorted(IMAGE_EXTENSIONS)}), parquet files or "
        f".tar webdataset shards; found suffixes {sorted(suffixes) or 'none'}"
    )


def load_image_stream(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    split: str = "train",
    train_data_dir: str | None = None,
    cache_dir: str | None = None,
    num_shards: int = 8,
) -> datasets.IterableDataset:
    """Open one split of an image dataset as a stream.

    `dataset_name` is a Hub id or a name from `BUILTIN_DATASETS` (splits "train" and "test", see
    [`builtin_split`]); `train_data_dir` a local folder or file. With neither, `"builtin:digits"` is used. `num_shards` applies to the embedded
    datasets only (shards are what `split_dataset_by_node` distributes between processes).
    """
    if dataset_name is not None and train_data_dir is not None:
        raise ValueError(f"give dataset_name or train_data_dir, not both (got {dataset_name!r} and {train_data_dir!r})")
    if dataset_name is None and train_data_dir is None:
        dataset_name = "builtin:digits"
    if dataset_name in BUILTIN_DATASETS:
        images = builtin_split(BUILTIN_DATASETS[dataset_name](), split)
        table = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
        return table.to_iterable_dataset(num_shards=num_shards)
    if dataset_name is not None and dataset_name.startswith("builtin:"):
        raise ValueError(f"unknown embedded dataset {dataset_name!r}; expected one of {sorted(BUILTIN_DATASETS)}")
    if train_data_dir is not None:
        path = Path(train_data_dir)
        if not path.exists():
            raise ValueError(f"train_data_dir={train_data_dir!r} does not exist")
        builder, kwargs = _local_builder(path)
        return datasets.load_dataset(builder, split=split, streaming=True, cache_dir=cache_dir, **kwargs)
    return datasets.load_dataset(dataset_name, dataset_config_name, split=split, streaming=True, cache_dir=cache_dir)


def _looks_like_image(value) -> bool:
    if isinstance(value, PIL.Image.Image):
        return True
    return isinstance(value, dict) and ("bytes" in value or "path" in value)


def resolve_image_column(stream: datasets.IterableDataset, image_column: str | None = None) -> str:
    """The name of the image column: `image_column` if given (checked), else the first column
    with an `Image` feature, else (features unknown) the first column of the first example
    holding an image."""
    if stream.features is not None:
        columns = list(stream.features)
        image_columns = [name for name, feature in stream.features.items() if isinstance(feature, datasets.Image)]
    else:
        first = next(iter(stream), None)
        if first is None:
            raise ValueError("the dataset is empty: it yielded no examples")
        columns = list(first)
        image_columns = [name for name, value in first.items() if _looks_like_image(value)]
    if image_column is not None:
        if image_column not in columns:
            raise ValueError(f"image_column={image_column!r} is not a column of the dataset; its columns are {columns}")
        return image_column
    if not image_columns:
        raise ValueError(f"found no image column among the dataset's columns {columns}; set image_column")
    return image_columns[0]


def image_only(stream: datasets.IterableDataset, image_column: str) -> datasets.IterableDataset:
    """Keep only `image_column`, renamed to `"image"`, undecoded (decoding is ours, see module doc)."""
    stream = stream.select_columns([image_column])
    if image_column != "image":
        stream = stream.rename_column(image_column, "image")
    if stream.features is not None and isinstance(stream.features["image"], datasets.Image):
        stream = stream.cast_column("image", datasets.Image(decode=False))
    return stream


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


# ----------------------------------------------------------------------------------------------
# Training batches
# ----------------------------------------------------------------------------------------------


class ImageBatches:
    """An endless, resumable stream of `[batch_size, C, R, R]` batches for one process.

    When the stream ends, the next epoch starts (`set_epoch` reseeds the shuffle). Unreadable
    images are skipped and recorded in `corrupt` (each file counted and logged once, see
    [`CorruptImages`]); `corrupt_images` is their number. `held_out_corrupt` holds those met
    while filling the validation set. `state_dict()` records the position; `load_state_dict()`
    makes the next batch the one an uninterrupted run would get.
    """

    def __init__(
        self,
        stream: datasets.IterableDataset,
        transform: ImageTransform,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
    ):
        self.stream = stream
        self.transform = transform
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.position = 0  # examples read in this epoch, corrupt ones included
        self.corrupt = CorruptImages(f"training image on rank {rank}")
        self.held_out_corrupt = CorruptImages("validation image", log=False)
        self._iterator = None
        self._readable_in_epoch = 0

    @property
    def corrupt_images(self) -> int:
        """Distinct unreadable training files this process has met."""
        return len(self.corrupt)

    def _start_epoch(self, skip: int) -> None:
        self.stream.set_epoch(self.epoch)
        self._iterator = iter(self.stream)
        for _ in range(skip):  # replay up to the saved position; undecoded, so cheap
            next(self._iterator)
        # Tells an unreadable stream from a finished epoch. Replayed examples count as readable
        # (they are not decoded); a stream with none would fail in its next full epoch.
        self._readable_in_epoch = skip

    def _next_example(self):
        if self._iterator is None:
            self._start_epoch(self.position)
        for example in self._iterator:
            self.position += 1
            return example, self.position - 1
        if self._readable_in_epoch == 0:
            raise ValueError(
                "the training stream holds no readable images for this process "
                f"(rank {self.rank}; {self.corrupt_images} unreadable images skipped)"
            )
        self.epoch, self.position = self.epoch + 1, 0
        self._start_epoch(0)
        return self._next_example()

    def _examples(self) -> Iterator[tuple[object, random.Random]]:
        while True:
            example, index = self._next_example()
            yield example["image"], random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{index}")

    def next_batch(self) -> torch.Tensor:
        images = []
        for image in readable_images(self._examples(), self.transform, self.corrupt):
            # Counted before the next example is read: an epoch that ends now had readable images.
            self._readable_in_epoch += 1
            images.append(image)
            if len(images) == self.batch_size:
                break
        return torch.stack(images)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "corrupt_images": self.corrupt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.corrupt.load_state_dict(state["corrupt_images"])
        self._iterator = None


def build_image_data(
    *,
    transform: ImageTransform,
    batch_size: int,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    split: str = "train",
    validation_split: str | None = None,
    train_data_dir: str | None = None,
    image_column: str | None = None,
    num_validation_images: int = 16,
    shuffle_buffer_size: int = 1000,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    cache_dir: str | None = None,
) -> tuple[ImageBatches, torch.Tensor]:
    """Training batches for process `rank` of `world_size`, and the validation images.

    The validation images are the first `num_validation_images` readable images of
    `validation_split`, or, without a validation split, of the training split, which are then
    held out of training (together with the unreadable ones met on the way). Unreadable
    validation images are skipped and recorded in `batches.held_out_corrupt`. Every process
    gets the same validation images.

    Returns:
        `(batches, validation)` with `validation` `[V, C, R, R]` in [-1, 1] (centre-cropped,
        never flipped).
    """
    source = dict(dataset_name=dataset_name, dataset_config_name=dataset_config_name, cache_dir=cache_dir)
    train = load_image_stream(split=split, train_data_dir=train_data_dir, **source)
    column = resolve_image_column(train, image_column)
    train = image_only(train, column)
    if validation_split is not None:
        held_out = load_image_stream(split=validation_split, train_data_dir=train_data_dir, **source)
        held_out = image_only(held_out, resolve_image_column(held_out, column))
    else:
        held_out = train

    evaluation = ImageTransform(transform.resolution, transform.channels, center_crop=True, random_flip=False)
    held_out_corrupt = CorruptImages("validation image", log=rank == 0)  # the same on every process
    consumed = 0

    def held_out_examples():
        nonlocal consumed
        for example in held_out:
            consumed += 1
            yield example["image"], random.Random(0)

    readable = readable_images(held_out_examples(), evaluation, held_out_corrupt)
    validation = list(itertools.islice(readable, max(num_validation_images, 0)))  # reads none past the last
    if num_validation_images > 0 and not validation:
        raise ValueError(
            f"the dataset has no readable image: split {validation_split or split!r} gave {consumed} examples, "
            f"all unreadable, while filling {num_validation_images} validation images"
        )
    if validation_split is None:
        train = train.skip(consumed)

    train = train.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
    train = split_dataset_by_node(train, rank=rank, world_size=world_size)
    batches = ImageBatches(train, transform, batch_size, seed=seed, rank=rank)
    batches.held_out_corrupt = held_out_corrupt
    empty = torch.empty(0, transform.channels, transform.resolution, transform.resolution)
    return batches, torch.stack(validation) if validation else empty


def image_data_from_config(
    config, channels: int, resolution: int, rank: int = 0, world_size: int = 1
) -> tuple[ImageBatches, torch.Tensor]:
    """[`build_image_data`] from the data options of a training script's config (the fields of
    `latentcode.training.config.RunConfig`), for process `rank` of `world_size`."""
    transform = ImageTransform(resolution, channels, config.center_crop, config.random_flip)
    return build_image_data(
        transform=transform,
        batch_size=config.train_batch_size,
        dataset_name=config.dataset_name,
        dataset_config_name=config.dataset_config_name,
        split=config.split,
        validation_split=config.validation_split,
        train_data_dir=config.train_data_dir,
        image_column=config.image_column,
        num_validation_images=config.num_validation_images,
        shuffle_buffer_size=config.shuffle_buffer_size,
        seed=config.seed,
        rank=rank,
        world_size=world_size,
        cache_dir=config.cache_dir,
    )
