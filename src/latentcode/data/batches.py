"""Training batches: a shuffled, sharded, endless stream of decoded images, decoded in DataLoader
workers, resumable in constant time.

The order of an epoch is a pure function of (seed, epoch) and the source's shard lengths
([`EpochOrder`]): the shards are shuffled, the examples (in that shard order, the held-out
validation examples left out) are cut into windows of about `shuffle_buffer_size`, and each
window is permuted. Windows go to the processes in turn. Position `p` of a process's epoch is
therefore one computed example: resuming at `p` reads one window, whatever `p` is, and the
random crop / flip of each example comes from (seed, epoch, rank, p), not from the worker that
decodes it. The same seed gives the same batches with 0, 1 or any number of workers.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader

from .images import CorruptImageError, CorruptImages, DecodingTransform, ImageTransform
from .sources import Source, dataset_splits, source_of_split

logger = logging.getLogger(__name__)


class EpochOrder:
    """Which example of the source each position of a process's epoch reads.

    `lengths`: the source's shard lengths; the first `skip` examples of the split (in its own
    order) are held out. Window sizes are chosen so that every process gets the same number of
    windows (about `window` examples each) per epoch.
    """

    def __init__(self, lengths: list[int], skip: int, seed: int, window: int, rank: int = 0, world_size: int = 1):
        self.lengths, self.skip, self.seed = list(lengths), skip, seed
        self.rank, self.world_size = rank, world_size
        self.total = max(sum(lengths) - skip, 0)  # examples in an epoch, all processes together
        # Windows: a multiple of world_size of them, sizes `base` or `base + 1` (the first `extra`).
        self.num_windows = world_size * math.ceil(self.total / (world_size * max(window, 1))) if self.total else 0
        self.base, self.extra = divmod(self.total, self.num_windows) if self.num_windows else (0, 0)
        self.window = self.base + (self.extra > 0)  # the largest window
        # This process's windows rank, rank + world_size, ...: the first `big` of them have base + 1.
        self.big = max(math.ceil((self.extra - rank) / world_size), 0)
        self.length = sum(self.window_length(w) for w in range(rank, self.num_windows, world_size))

    def window_length(self, window: int) -> int:
        return self.base + (window < self.extra)

    def window_start(self, window: int) -> int:
        """The sequence position of a window's first example."""
        return window * self.base + min(window, self.extra)

    @functools.lru_cache(maxsize=4)  # noqa: B019 (a few orders live as long as the process)
    def _segments(self, epoch: int) -> tuple[list[int], list[tuple[int, int]]]:
        """The epoch's sequence as `(starts, [(shard, first row)])`: segment i begins at sequence
        position `starts[i]`."""
        shards = list(range(len(self.lengths)))
        random.Random(f"{self.seed}-{epoch}-shards").shuffle(shards)
        starts, segments, offsets, position = [], [], [0], 0
        for length in self.lengths:
            offsets.append(offsets[-1] + length)
        for shard in shards:
            first = max(self.skip - offsets[shard], 0)
            if first < self.lengths[shard]:
                starts.append(position)
                segments.append((shard, first))
                position += self.lengths[shard] - first
        return starts, segments

    @functools.lru_cache(maxsize=4)  # noqa: B019
    def _permutation(self, epoch: int, window: int) -> list[int]:
        order = list(range(self.window_length(window)))
        random.Random(f"{self.seed}-{epoch}-window-{window}").shuffle(order)
        return order

    def window_of(self, position: int) -> tuple[int, int]:
        """`(window, index in the window)` of a position of this process's epoch."""
        large = self.big * (self.base + 1)
        if position < large:
            local, index = divmod(position, self.base + 1)
        else:
            local, index = divmod(position - large, self.base)
            local += self.big
        return local * self.world_size + self.rank, index

    def window_example(self, epoch: int, window: int, index: int) -> int:
        """The sequence position (before the source's shard lookup) of a window's `index`-th example."""
        return self.window_start(window) + self._permutation(epoch, window)[index]

    def locate(self, epoch: int, position: int) -> tuple[int, int]:
        """`(shard, row)` of the source example at `position` of this process's `epoch`."""
        window, index = self.window_of(position)
        start = self.window_example(epoch, window, index)
        shard, row, _ = self.ranges(epoch, start, start + 1)[0]
        return shard, row

    def ranges(self, epoch: int, start: int, stop: int) -> list[tuple[int, int, int]]:
        """The source rows of sequence positions `start` to `stop`: `[(shard, first row, count)]`."""
        starts, segments = self._segments(epoch)
        pieces = []
        while start < stop:
            segment = next(i for i in range(len(starts) - 1, -1, -1) if starts[i] <= start)
            shard, first = segments[segment]
            row = first + start - starts[segment]
            count = min(stop - start, self.lengths[shard] - row)
            pieces.append((shard, row, count))
            start += count
        return pieces


class DecodedChunk(NamedTuple):
    """A decoded chunk of positions: `entries` `[(epoch, position, (source, message) of an
    unreadable image or None)]` in order, and `images` `[n_readable, C, R, R]` (None if none)
    holding the readable ones in the same order."""

    entries: list[tuple]
    images: torch.Tensor | None


class DecodedExamples(torch.utils.data.Dataset):
    """Decodes the examples of a chunk `(epoch, first position, stop position)` of a process's
    epoch, in DataLoader workers or in the main process alike, into a [`DecodedChunk`]."""

    def __init__(self, source: Source, order: EpochOrder, transform: DecodingTransform, seed: int, rank: int):
        self.source, self.order, self.transform = source, order, transform
        self.seed, self.rank = seed, rank
        self._window = (None, None, [])  # (epoch, window, its rows in sequence order) last read

    def _rows(self, epoch: int, window: int) -> list[dict]:
        if self._window[:2] != (epoch, window):
            start = self.order.window_start(window)
            rows = []
            for shard, row, count in self.order.ranges(epoch, start, start + self.order.window_length(window)):
                rows.extend(self.source.read(shard, row, row + count))
            self._window = (epoch, window, rows)
        return self._window[2]

    def __getitem__(self, chunk: tuple[int, int, int]) -> DecodedChunk:
        epoch, start, stop = chunk
        entries, images = [], []
        for position in range(start, stop):
            window, index = self.order.window_of(position)
            rows = self._rows(epoch, window)
            row = rows[self.order.window_example(epoch, window, index) - self.order.window_start(window)]
            rng = random.Random(f"{self.seed}-{epoch}-{self.rank}-{position}")
            try:
                images.append(self.transform.load(row["image"], rng))
                entries.append((epoch, position, None))
            except CorruptImageError as error:
                entries.append((epoch, position, (error.source, str(error))))
        # One tensor per chunk: a worker hands each tensor over through its own shared-memory
        # segment, and per-image segments cost the training thread about as much as decoding.
        return DecodedChunk(entries, torch.stack(images) if images else None)

    def __len__(self) -> int:  # the sampler is endless; DataLoader only needs the method
        raise TypeError("DecodedExamples is indexed by chunks of an endless stream")


class Chunks(torch.utils.data.Sampler):
    """Endless chunks `(epoch, start, stop)` of `chunk_size` positions from `(epoch, position)`;
    a chunk never crosses an epoch's end."""

    def __init__(self, length: int, epoch: int, position: int, chunk_size: int):
        self.length, self.epoch, self.position, self.chunk_size = length, epoch, position, chunk_size

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch, position = self.epoch, self.position
        while True:
            if position >= self.length:
                epoch, position = epoch + 1, 0
            stop = min(position + self.chunk_size, self.length)
            yield epoch, position, stop
            position = stop


def _unchanged(chunk):
    return chunk


class ImageBatches:
    """An endless, resumable stream of `[batch_size, C, R, R]` batches for one process.

    Images are decoded and transformed by `num_workers` DataLoader worker processes (0: in this
    process); the batches do not depend on the number. Unreadable images are skipped and
    recorded in `corrupt` (each file counted and logged once, see [`CorruptImages`]);
    `corrupt_images` is their number. `held_out_corrupt` holds those met while filling the
    validation set. `state_dict()` records the position (epoch, examples consumed in it);
    `load_state_dict()` makes the next batch the one an uninterrupted run would get, reading
    from that position directly (constant time).
    """

    def __init__(
        self,
        source: Source,
        transform: DecodingTransform,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        skip: int = 0,
        shuffle_buffer_size: int = 1000,
        num_workers: int = 0,
    ):
        if num_workers < 0:
            raise ValueError(f"dataloader_num_workers must be >= 0, got {num_workers}")
        source.with_columns = False
        self.order = EpochOrder(source.lengths, skip, seed, shuffle_buffer_size, rank, world_size)
        self.examples = DecodedExamples(source, self.order, transform, seed, rank)
        self.batch_size, self.seed, self.rank, self.num_workers = batch_size, seed, rank, num_workers
        self.epoch = 0
        self.position = 0  # examples consumed in this epoch, unreadable ones included
        self.corrupt = CorruptImages(f"training image on rank {rank}")
        self.held_out_corrupt = CorruptImages("validation image", log=False)
        self._pending: list[tuple] = []
        self._chunks = None
        self._readable_in_epoch = 0

    @property
    def corrupt_images(self) -> int:
        """Distinct unreadable training files this process has met."""
        return len(self.corrupt)

    def _no_images(self) -> ValueError:
        return ValueError(
            "the training stream holds no readable images for this process "
            f"(rank {self.rank}; {self.order.length} examples per epoch, {self.corrupt_images} unreadable images "
            "skipped); give it more images, or fewer processes"
        )

    def _start(self) -> None:
        if self.order.length == 0:
            raise self._no_images()
        sampler = Chunks(self.order.length, self.epoch, self.position, self.batch_size)
        loader = DataLoader(
            self.examples,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_unchanged,
            generator=_own_generator(),
        )
        self._chunks = iter(loader)
        # Positions consumed before this start count as readable: they were, or were counted.
        self._readable_in_epoch = self.position

    def _next_example(self) -> tuple[int, int, torch.Tensor | None, tuple | None]:
        if self._chunks is None:
            self._start()
        if not self._pending:
            chunk = next(self._chunks)
            images = iter(chunk.images if chunk.images is not None else ())
            examples = [(e, p, None if bad else next(images), bad) for e, p, bad in chunk.entries]
            self._pending = list(reversed(examples))
        return self._pending.pop()

    def next_batch(self) -> torch.Tensor:
        images = []
        while len(images) < self.batch_size:
            epoch, position, image, unreadable = self._next_example()
            if epoch != self.epoch:
                if self._readable_in_epoch == 0:
                    raise self._no_images()
                self.epoch, self._readable_in_epoch = epoch, 0
            self.position = position + 1
            if image is None:
                self.corrupt.add(CorruptImageError(unreadable[1], unreadable[0]))
                continue
            self._readable_in_epoch += 1
            images.append(image)
        return torch.stack(images)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "corrupt_images": self.corrupt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.corrupt.load_state_dict(state["corrupt_images"])
        self._chunks, self._pending = None, []


class ImageChunks(torch.utils.data.Dataset):
    """Decodes chunks `(start, stop)` of a source in its own order (in DataLoader workers), the
    transform's random choices seeded alike for every image (use a centre-cropping, unflipped
    one): `{"rows": [rows without their image], "pixels": [n, C, R, R], "corrupt": [(source,
    message)]}`, unreadable images left out of `rows` and `pixels`."""

    def __init__(self, source: Source, transform: ImageTransform):
        self.source, self.transform = source, transform

    def __getitem__(self, chunk: tuple[int, int]) -> dict:
        rows, images, corrupt = [], [], []
        for row in self.source.read_range(*chunk):
            try:
                images.append(self.transform.load(row.pop("image"), random.Random(0)))
            except CorruptImageError as error:
                corrupt.append((error.source, str(error)))
                continue
            rows.append(row)
        empty = torch.empty(0, self.transform.channels, self.transform.resolution, self.transform.resolution)
        return {"rows": rows, "pixels": torch.stack(images) if images else empty, "corrupt": corrupt}

    def __len__(self) -> int:
        raise TypeError("ImageChunks is indexed by chunks")


def ordered_chunks(
    source: Source, transform: DecodingTransform, chunks: list[tuple[int, int]], num_workers: int = 0
) -> Iterator[dict]:
    """The [`ImageChunks`] of `chunks` (`(start, stop)` ranges of the source), in order, decoded by
    `num_workers` DataLoader workers (0: here): for tokenising or evaluating a split in order."""
    examples = ImageChunks(source, transform)
    loader = DataLoader(
        examples,
        sampler=chunks,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_unchanged,
        generator=_own_generator(),
    )
    return iter(loader)


def _own_generator() -> torch.Generator:
    """A DataLoader's own generator: starting an iterator draws its workers' base seed from it, which
    would otherwise advance torch's global generator, so that a resumed run (which starts one more
    iterator) would draw other dropout, posterior and codebook-restart noise than an uninterrupted
    one. Nothing else uses it: every random crop and flip comes from the example's position."""
    return torch.Generator().manual_seed(0)


def first_readable(
    source: Source, count: int, transform: DecodingTransform, corrupt: CorruptImages, read_size: int = 64
) -> tuple[list[torch.Tensor], int]:
    """The first `count` readable images of `source` in its own order, and how many examples
    were read to find them (unreadable ones recorded in `corrupt`)."""
    images, consumed = [], 0
    while len(images) < count and consumed < len(source):
        for row in source.read_range(consumed, min(consumed + read_size, len(source))):
            consumed += 1
            try:
                images.append(transform.load(row["image"], random.Random(0)))
            except CorruptImageError as error:
                corrupt.add(error)
            if len(images) == count:
                break
    return images, consumed


def held_out_message(where: str, split: str, splits, held_out: int, consumed: int) -> str:
    """What training says when it holds validation images out of the training split: how many,
    of which source and split, and how to give a validation split instead."""
    others = sorted(name for name in splits if name != split)
    instead = (
        f"To validate on images training never sees: --validation_split {others[0]} (the source's other splits: "
        f"{others})"
        if others
        else "To validate on images of a split of their own, give --validation_split NAME of a source that has one "
        "(a --train_data_dir whose train/ and test/ folders hold the splits, as `datasets` lays them out)"
    )
    unreadable = f", {consumed - held_out} unreadable skipped" if consumed > held_out else ""
    return (
        f"no validation split given: holding {held_out} images out of training for validation, the first readable "
        f"ones of {where}, split {split!r} ({consumed} examples read{unreadable}); training reads the rest. {instead}"
    )


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
    num_workers: int = 0,
) -> tuple[ImageBatches, torch.Tensor]:
    """Training batches for process `rank` of `world_size`, and the validation images.

    The validation images are the first `num_validation_images` readable images of
    `validation_split`, or, without a validation split (none given, or none of that name in the
    source: either said in a log line), of the training split, which are then held out of training
    (together with the unreadable ones met on the way). Unreadable validation images are skipped
    and recorded in `batches.held_out_corrupt`. Every process gets the same validation images.

    Returns:
        `(batches, validation)` with `validation` `[V, C, R, R]` in [-1, 1] (centre-cropped,
        never flipped).
    """
    where, kind, splits = dataset_splits(dataset_name, dataset_config_name, train_data_dir, cache_dir)
    open_split = functools.partial(source_of_split, where, kind, splits, dataset_name=dataset_name, base=train_data_dir)
    train = open_split(split, image_column)
    missing_split_said = validation_split is not None and validation_split not in splits
    if missing_split_said:
        if rank == 0:
            logger.warning(
                "%s has no %r split (its splits: %s): holding out the first %d readable images of the %r split "
                "for validation instead",
                where,
                validation_split,
                sorted(splits),
                num_validation_images,
                split,
            )
        validation_split = None
    held_out = train if validation_split is None else open_split(validation_split, getattr(train, "image_column", None))

    evaluation = ImageTransform(transform.resolution, transform.channels, center_crop=True, random_flip=False)
    held_out_corrupt = CorruptImages("validation image", log=rank == 0)  # the same on every process
    validation, consumed = first_readable(held_out, max(num_validation_images, 0), evaluation, held_out_corrupt)
    if num_validation_images > 0 and not validation:
        raise ValueError(
            f"the dataset has no readable image: split {validation_split or split!r} gave {consumed} examples, "
            f"all unreadable, while filling {num_validation_images} validation images"
        )
    skip = consumed if validation_split is None else 0
    if rank == 0 and held_out is train and validation and not missing_split_said:
        logger.info(held_out_message(where, split, splits, len(validation), consumed))
    batches = ImageBatches(train, transform, batch_size, seed, rank, world_size, skip, shuffle_buffer_size, num_workers)
    batches.held_out_corrupt = held_out_corrupt
    empty = torch.empty(0, transform.channels, transform.resolution, transform.resolution)
    return batches, torch.stack(validation) if validation else empty


def image_data_from_config(
    config, channels: int, resolution: int, rank: int = 0, world_size: int = 1
) -> tuple[ImageBatches, torch.Tensor]:
    """[`build_image_data`] from a training script's config (`latentcode.training.config.RunConfig`):
    its `data` options and `optimization.train_batch_size`, for process `rank` of `world_size`."""
    transform = ImageTransform(resolution, channels, config.data.center_crop, config.data.random_flip)
    return build_image_data(
        transform=transform,
        batch_size=config.optimization.train_batch_size,
        dataset_name=config.data.dataset_name,
        dataset_config_name=config.data.dataset_config_name,
        split=config.data.split,
        validation_split=config.data.validation_split,
        train_data_dir=config.data.train_data_dir,
        image_column=config.data.image_column,
        num_validation_images=config.data.num_validation_images,
        shuffle_buffer_size=config.data.shuffle_buffer_size,
        seed=config.seed,
        rank=rank,
        world_size=world_size,
        cache_dir=config.data.cache_dir,
        num_workers=config.data.dataloader_num_workers,
    )
