"""Image data for training, evaluation and tokenisation.

Sources: a Hub dataset (`dataset_name="user/name"`, optional `dataset_config_name`, `split`);
local data (`train_data_dir`): an image folder, parquet files or webdataset `.tar` shards, split
into `train/`, `test/`, ... as `datasets` lays them out; the embedded datasets, real images
shipped inside installed packages (`"builtin:digits"`, `"builtin:photos"`, no network), and
`"builtin:dsprites"`, dSprites drawn on demand from its factors ([`dsprites`], also the
disentanglement metrics' factor sampler).

- [`images`]: the embedded datasets, decoding (unreadable files skipped and counted once),
  transforms;
- [`sources`]: every split as shards of known length, readable from any example in constant
  time;
- [`batches`]: training batches, shuffled, per process, decoded in DataLoader workers, with
  exact resume in constant time;
- [`streams`]: a split as a `datasets.IterableDataset` read in order (evaluation).
"""

from .batches import (
    DecodedChunk,
    DecodedExamples,
    EpochOrder,
    ImageBatches,
    ImageChunks,
    build_image_data,
    first_readable,
    image_data_from_config,
    ordered_chunks,
)
from .images import (
    BUILTIN_DATASETS,
    BUILTIN_SPLITS,
    DECODE_OVERSAMPLING,
    CorruptImageError,
    CorruptImages,
    DecodingTransform,
    FullResolutionTransform,
    ImageTransform,
    builtin_split,
    decode_image,
    image_source,
    readable_images,
)
from .sources import OFFLINE_HINT, Source, dataset_splits, open_source
from .streams import image_only, load_image_stream, resolve_image_column

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_SPLITS",
    "DECODE_OVERSAMPLING",
    "OFFLINE_HINT",
    "CorruptImageError",
    "CorruptImages",
    "DecodedChunk",
    "DecodedExamples",
    "DecodingTransform",
    "EpochOrder",
    "FullResolutionTransform",
    "ImageBatches",
    "ImageChunks",
    "ImageTransform",
    "Source",
    "build_image_data",
    "builtin_split",
    "dataset_splits",
    "decode_image",
    "first_readable",
    "image_data_from_config",
    "image_only",
    "image_source",
    "load_image_stream",
    "open_source",
    "ordered_chunks",
    "readable_images",
    "resolve_image_column",
]
