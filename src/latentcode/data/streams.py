"""Image datasets as `datasets.IterableDataset` streams, read in order (evaluation, benchmarks).

Training reads through the indexed sources of [`latentcode.data.sources`] instead, which can
start anywhere in constant time; both find a dataset's splits the same way.
"""

from __future__ import annotations

import datasets
import PIL.Image

from .images import BUILTIN_DATASETS, builtin_split
from .sources import dataset_splits, offline_message


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
    [`builtin_split`]); `train_data_dir` a local folder or file, whose splits are found as
    `datasets` finds them (`train/` and `test/` folders, or split names in the file names). With
    neither, `"builtin:digits"` is used. `num_shards` applies to the embedded datasets only.
    """
    if dataset_name is not None and dataset_name not in BUILTIN_DATASETS and train_data_dir is None:
        if dataset_name.startswith("builtin:"):
            dataset_splits(dataset_name)  # raises the unknown-dataset error
        try:
            return datasets.load_dataset(
                dataset_name, dataset_config_name, split=split, streaming=True, cache_dir=cache_dir
            )
        except ConnectionError as error:
            raise ConnectionError(offline_message(dataset_name, error)) from error
    where, kind, splits = dataset_splits(dataset_name, dataset_config_name, train_data_dir, cache_dir)
    if split not in splits:
        raise ValueError(f"{where} has no split {split!r}; its splits are {sorted(splits)} (choose one with --split)")
    if kind == "builtin":
        images = builtin_split(BUILTIN_DATASETS[dataset_name or "builtin:digits"](), split)
        if not isinstance(images, list):  # generated when read (builtin:dsprites): streamed, never all held
            features = datasets.Features({"image": datasets.Image()})
            return datasets.IterableDataset.from_generator(
                _each_image, features=features, gen_kwargs={"images": images}
            )
        table = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
        return table.to_iterable_dataset(num_shards=num_shards)
    return datasets.load_dataset(
        kind, data_files={split: splits[split]}, split=split, streaming=True, cache_dir=cache_dir
    )


def _each_image(images):
    for image in images:
        yield {"image": image}


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
    """Keep only `image_column`, renamed to `"image"`, undecoded (decoding is ours: an unreadable
    file is skipped and counted instead of ending the run)."""
    stream = stream.select_columns([image_column])
    if image_column != "image":
        stream = stream.rename_column(image_column, "image")
    if stream.features is not None and isinstance(stream.features["image"], datasets.Image):
        stream = stream.cast_column("image", datasets.Image(decode=False))
    return stream
