"""Indexed image sources: every example has an index, and reading starts at any index in
constant time (no replay of the examples before it).

A [`Source`] is a list of shards whose lengths are known up front: parquet files (row counts
from their metadata, rows read by row group), webdataset `.tar` shards (members indexed from
their headers, read by seek), groups of image files, or the embedded datasets' images held in
memory. `read(shard, start, stop)` gives rows `{"image": ..., "key": ..., **columns}`:

- `image`: what [`decode_image`] takes (`{"bytes", "path"}`, or a PIL image), undecoded;
- `key`: the example's name in its split: a file's path relative to the data folder, a
  parquet row's index in its split, a webdataset sample's `__key__`;
- the source's other columns (labels, captions), with their `datasets` features in `features`.

[`open_source`] resolves a split as `datasets` does: a local folder laid out in splits
(`train/`, `test/`, or file names like `test-00000-of-00001.parquet`) or a Hub dataset's data
files, which are read through fsspec.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import os
import posixpath
import tarfile
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from datasets.data_files import DataFilesDict, get_data_patterns

from ..image_processing import IMAGE_EXTENSIONS
from .images import BUILTIN_DATASETS, BUILTIN_SPLITS, builtin_split

logger = logging.getLogger(__name__)

OFFLINE_HINT = "for a local copy pass --train_data_dir DIR (a folder of the dataset's files, e.g. train/ and test/)"


def offline_message(dataset_name: str, error: Exception) -> str:
    """What to say when the Hub cannot be reached for `dataset_name`."""
    reason = str(error).removeprefix(f"Couldn't reach {dataset_name!r} on the Hub").strip(" ()") or type(error).__name__
    return f"couldn't reach {dataset_name!r} on the Hub ({reason}); {OFFLINE_HINT}"


def _open(path: str):
    """A binary file object for a local path or an fsspec URL (`hf://datasets/...`)."""
    if "://" not in path:
        return open(path, "rb")
    import fsspec

    return fsspec.open(path, "rb").open()


class Source:
    """Shards of examples with known lengths; see the module docstring."""

    def __init__(self, name: str, lengths: list[int], features: datasets.Features):
        self.name = name
        self.lengths = list(lengths)
        self.offsets = [0, *itertools.accumulate(self.lengths)]
        self.features = features  # the columns besides "image" and "key"
        self.with_columns = True  # training reads the image only

    def __len__(self) -> int:
        return self.offsets[-1]

    def read(self, shard: int, start: int, stop: int) -> list[dict]:
        raise NotImplementedError

    def locate(self, index: int) -> tuple[int, int]:
        """`(shard, row)` of the example at `index` of the split."""
        shard = bisect.bisect_right(self.offsets, index) - 1
        return shard, index - self.offsets[shard]

    def read_range(self, start: int, stop: int) -> list[dict]:
        """The rows `start` to `stop` (exclusive) of the split, in order, across shards."""
        rows = []
        while start < stop:
            shard, row = self.locate(start)
            count = min(stop - start, self.lengths[shard] - row)
            rows.extend(self.read(shard, row, row + count))
            start += count
        return rows

    def __getstate__(self) -> dict:
        # Open files and cached row groups stay in the process that opened them.
        return {key: value for key, value in self.__dict__.items() if not key.startswith("_")}


class ParquetSource(Source):
    """Parquet files (a `datasets` Hub layout): rows read by row group, the last group cached."""

    def __init__(self, name: str, files: list[str], image_column: str | None):
        self.files = files
        first = pq.ParquetFile(_open(files[0]))
        all_features = datasets.Features.from_arrow_schema(first.schema_arrow)
        self.image_column = _pick_image_column(all_features, image_column)
        lengths = [first.metadata.num_rows] + [pq.ParquetFile(_open(f)).metadata.num_rows for f in files[1:]]
        features = datasets.Features({k: v for k, v in all_features.items() if k != self.image_column})
        super().__init__(name, lengths, features)

    def _row_group(self, shard: int, group: int):
        cached = getattr(self, "_cache", None)
        if cached is None or cached[0] != (shard, group, self.with_columns):
            file = self._parquet(shard)
            columns = [self.image_column, *self.features] if self.with_columns else [self.image_column]
            cached = self._cache = ((shard, group, self.with_columns), file.read_row_group(group, columns=columns))
        return cached[1]

    def _parquet(self, shard: int) -> pq.ParquetFile:
        # Per process: a DataLoader worker forked from a process with open files would share
        # their file offsets with it, and concurrent reads would interleave.
        if getattr(self, "_pid", None) != os.getpid():
            self._pid, self._files, self._cache = os.getpid(), {}, None
        if shard not in self._files:
            self._files[shard] = pq.ParquetFile(_open(self.files[shard]))
        return self._files[shard]

    def read(self, shard: int, start: int, stop: int) -> list[dict]:
        metadata = self._parquet(shard).metadata
        rows, first = [], 0
        for group in range(metadata.num_row_groups):
            size = metadata.row_group(group).num_rows
            if first < stop and first + size > start:
                low, high = max(start - first, 0), min(stop - first, size)
                rows.extend(self._row_group(shard, group).slice(low, high - low).to_pylist())
            first += size
        offset = self.offsets[shard] + start
        for index, row in enumerate(rows):
            row["image"] = row.pop(self.image_column)
            row["key"] = str(offset + index)
        return rows


def _pick_image_column(features: datasets.Features, image_column: str | None) -> str:
    columns = list(features)
    if image_column is not None:
        if image_column not in columns:
            raise ValueError(f"image_column={image_column!r} is not a column of the dataset; its columns are {columns}")
        return image_column
    images = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    images = images or [name for name, f in features.items() if isinstance(f, dict) and {"bytes", "path"} <= set(f)]
    if not images:
        raise ValueError(f"found no image column among the dataset's columns {columns}; set image_column")
    return images[0]


# Webdataset members other than the image that become columns, with their types.
_TAR_COLUMNS = {"cls": datasets.Value("int64"), "txt": datasets.Value("string"), "json": datasets.Value("string")}


def _tar_samples(path: str) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """The samples of a webdataset shard from its headers: `(__key__, {extension: (offset, size)})`."""
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    with _open(path) as file, tarfile.open(fileobj=file, mode="r:") as archive:
        for member in archive:
            directory, base = posixpath.split(member.name)
            if not member.isfile() or "." not in base:
                continue
            stem, extension = base.split(".", 1)
            samples.setdefault(posixpath.join(directory, stem), {})[extension.lower()] = (
                member.offset_data,
                member.size,
            )
    return list(samples.items())


class TarSource(Source):
    """Webdataset `.tar` shards: each shard's members indexed once from the headers (no image
    data read), then any sample read by seeking to it."""

    def __init__(self, name: str, files: list[str], image_column: str | None):
        self.files = files
        self.samples = [_tar_samples(file) for file in files]
        extensions = {extension for shard in self.samples for _, members in shard[:100] for extension in members}
        known = [extension.lstrip(".") for extension in IMAGE_EXTENSIONS if extension.lstrip(".") in extensions]
        if image_column is not None and image_column not in extensions:
            raise ValueError(
                f"image_column={image_column!r} is not a member extension of the webdataset shards; "
                f"they hold {sorted(extensions)}"
            )
        if image_column is None and not known:
            raise ValueError(f"found no image member among the webdataset extensions {sorted(extensions)}")
        self.image_column = image_column or known[0]
        features = datasets.Features({ext: kind for ext, kind in _TAR_COLUMNS.items() if ext in extensions})
        super().__init__(name, [len(shard) for shard in self.samples], features)

    def read(self, shard: int, start: int, stop: int) -> list[dict]:
        rows = []
        with _open(self.files[shard]) as file:
            for key, members in self.samples[shard][start:stop]:
                row = {"key": key}
                columns = [self.image_column, *self.features] if self.with_columns else [self.image_column]
                for column in columns:
                    data = None
                    if column in members:
                        offset, size = members[column]
                        file.seek(offset)
                        data = file.read(size)
                    row[column] = data
                path = f"{self.files[shard]}/{key}.{self.image_column}"
                row["image"] = {"bytes": row.pop(self.image_column), "path": path}
                for column in self.features if self.with_columns else ():
                    row[column] = _tar_value(column, row[column])
                rows.append(row)
        return rows


def _tar_value(extension: str, data: bytes | None):
    if data is None:
        return None
    text = data.decode("utf-8").strip()
    return int(text) if extension == "cls" else json.dumps(json.loads(text)) if extension == "json" else text


# Image files per shard of a folder (shards only matter for the per-epoch shard order).
FOLDER_SHARD_SIZE = 1024


class FolderSource(Source):
    """Image files under a folder, sorted by path; a `label` column (class names = the files'
    folder names, as `datasets`' imagefolder gives) when they sit in several sub-folders."""

    def __init__(self, name: str, files: list[str], base: str):
        self.files, self.base = files, base
        parents = {posixpath.basename(posixpath.dirname(_relative(f, base))) for f in files}
        self.classes = sorted(parents) if len(parents) > 1 and "" not in parents else None
        features = datasets.Features({"label": datasets.ClassLabel(names=self.classes)} if self.classes else {})
        count = len(files)
        lengths = [min(FOLDER_SHARD_SIZE, count - start) for start in range(0, count, FOLDER_SHARD_SIZE)]
        super().__init__(name, lengths, features)

    def read(self, shard: int, start: int, stop: int) -> list[dict]:
        rows = []
        for path in self.files[self.offsets[shard] + start : self.offsets[shard] + stop]:
            key = _relative(path, self.base)
            image = {"path": path, "bytes": None}
            if "://" in path:  # remote: PIL cannot open a URL
                with _open(path) as file:
                    image["bytes"] = file.read()
            row = {"image": image, "key": key}
            if self.classes and self.with_columns:
                row["label"] = self.classes.index(posixpath.basename(posixpath.dirname(key)))
            rows.append(row)
        return rows


def _relative(path: str, base: str) -> str:
    return posixpath.relpath(path, base) if "://" not in path else path.split(base.rstrip("/") + "/", 1)[-1]


class MemorySource(Source):
    """Images held in memory (the embedded datasets), in `num_shards` shards."""

    def __init__(self, name: str, images: list, num_shards: int = 8):
        self.images = images
        size = max(-(-len(images) // num_shards), 1)
        super().__init__(name, [min(size, len(images) - s) for s in range(0, len(images), size)], datasets.Features())

    def read(self, shard: int, start: int, stop: int) -> list[dict]:
        first = self.offsets[shard]
        return [{"image": self.images[first + i], "key": str(first + i)} for i in range(start, stop)]


# ----------------------------------------------------------------------------------------------
# Resolving a dataset's splits
# ----------------------------------------------------------------------------------------------

_KIND_SUFFIXES = {"parquet": (".parquet",), "webdataset": (".tar",), "imagefolder": IMAGE_EXTENSIONS}


def _kind_of(files: list[str]) -> str | None:
    suffixes = {posixpath.splitext(f)[1].lower() for f in files}
    return next((kind for kind, known in _KIND_SUFFIXES.items() if suffixes & set(known)), None)


def local_splits(train_data_dir: str) -> tuple[str, dict[str, list[str]]]:
    """`(kind, {split: files})` of a local folder or file, the splits found as `datasets` finds
    them (folders `train/`, `test/`, ... or split names in the file names; else one `train`)."""
    path = Path(train_data_dir)
    if not path.exists():
        raise ValueError(f"train_data_dir={train_data_dir!r} does not exist")
    if path.is_file():
        found = {"train": [str(path)]}
    else:
        try:
            patterns = get_data_patterns(str(path))
        except datasets.exceptions.EmptyDatasetError:
            patterns = {}
        found = {str(split): list(files) for split, files in DataFilesDict.from_patterns(patterns, str(path)).items()}
    kind = _kind_of([file for files in found.values() for file in files])
    if kind is None:
        suffixes = sorted({p.suffix.lower() for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()})
        raise ValueError(
            f"train_data_dir={train_data_dir!r} holds no images ({sorted(IMAGE_EXTENSIONS)}), parquet files or "
            f".tar webdataset shards; found suffixes {suffixes or 'none'}"
        )
    keep = _KIND_SUFFIXES[kind]
    return kind, {split: sorted(f for f in files if f.lower().endswith(keep)) for split, files in found.items()}


def hub_splits(dataset_name: str, dataset_config_name: str | None, cache_dir: str | None):
    """`(kind, {split: file URLs})` of a Hub dataset stored as parquet, webdataset or image files."""
    try:
        builder = datasets.load_dataset_builder(dataset_name, dataset_config_name, cache_dir=cache_dir)
    except ConnectionError as error:
        raise ConnectionError(offline_message(dataset_name, error)) from error
    data_files = builder.config.data_files
    if builder.name not in _KIND_SUFFIXES or not data_files:
        raise ValueError(
            f"the Hub dataset {dataset_name!r} is stored as {builder.name!r}, not as parquet, webdataset or image "
            f"files; convert it (datasets' `push_to_hub` writes parquet) or {OFFLINE_HINT}"
        )
    return builder.name, {str(split): list(files) for split, files in data_files.items()}


def dataset_splits(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    cache_dir: str | None = None,
) -> tuple[str, str, dict[str, list]]:
    """`(where, kind, {split: files})` for a source: `kind` is builtin, parquet, webdataset or
    imagefolder; `where` names the source in messages."""
    if dataset_name is not None and train_data_dir is not None:
        raise ValueError(f"give dataset_name or train_data_dir, not both (got {dataset_name!r} and {train_data_dir!r})")
    if dataset_name is None and train_data_dir is None:
        dataset_name = "builtin:digits"
    if dataset_name in BUILTIN_DATASETS:
        return dataset_name, "builtin", {split: [] for split in BUILTIN_SPLITS}
    if dataset_name is not None and dataset_name.startswith("builtin:"):
        raise ValueError(f"unknown embedded dataset {dataset_name!r}; expected one of {sorted(BUILTIN_DATASETS)}")
    if train_data_dir is not None:
        return f"train_data_dir={train_data_dir!r}", *local_splits(train_data_dir)
    return f"the Hub dataset {dataset_name!r}", *hub_splits(dataset_name, dataset_config_name, cache_dir)


def open_source(
    split: str = "train",
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    image_column: str | None = None,
    cache_dir: str | None = None,
) -> Source:
    """The [`Source`] of one split of a dataset (arguments as [`dataset_splits`])."""
    where, kind, splits = dataset_splits(dataset_name, dataset_config_name, train_data_dir, cache_dir)
    return source_of_split(where, kind, splits, split, image_column, dataset_name=dataset_name, base=train_data_dir)


def source_of_split(
    where: str, kind: str, splits: dict, split: str, image_column: str | None, dataset_name=None, base=None
) -> Source:
    if split not in splits:
        raise ValueError(f"{where} has no split {split!r}; its splits are {sorted(splits)} (choose one with --split)")
    name = f"{where}, split {split!r}"
    if kind == "builtin":
        if image_column not in (None, "image"):
            raise ValueError(f"image_column={image_column!r} is not a column of the dataset; its columns are ['image']")
        return MemorySource(name, builtin_split(BUILTIN_DATASETS[dataset_name](), split))
    files = splits[split]
    if not files:
        raise ValueError(f"{where} holds no files in its split {split!r}")
    if kind == "parquet":
        return ParquetSource(name, files, image_column)
    if kind == "webdataset":
        return TarSource(name, files, image_column)
    return FolderSource(name, files, base if base is not None and Path(base).is_dir() else posixpath.dirname(files[0]))
