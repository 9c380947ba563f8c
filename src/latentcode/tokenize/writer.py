"""Writing a code dataset: stream a split's images through a model and write its codes, unit by
unit, into the folder [`dataset_folder`] lays out (the format: the package docstring)."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from .dataset_folder import (
    INFO_FILE,
    LATENT_DTYPES,
    check_settings,
    done_units,
    finish,
    is_complete,
    prepare_output_dir,
    resume_message,
    shard_name,
    write_unit,
)
from .model_identity import config_hash, family_name, weights_hash

if TYPE_CHECKING:
    from ..data.sources import Source
    from ..families import CodeSize

logger = logging.getLogger(__name__)


def column_dtypes(model, latent_dtype: str) -> dict[str, str]:
    """The stored type of each of the family's `stored_columns`: token ids in the narrowest
    integer type that holds them, continuous codes in `latent_dtype`."""
    return {
        name: ("uint16" if model.config.codebook_size <= 2**16 else "int32") if kind == "index" else latent_dtype
        for name, kind in model.stored_columns.items()
    }


@torch.no_grad()
def encode_stored_code(
    model, pixels: torch.Tensor, latent_dtype: str = "float32"
) -> tuple[dict[str, np.ndarray], CodeSize]:
    """The code of `[B, C, H, W]` pixels in [-1, 1] as it is stored, and what it costs.

    Returns the family's `stored_columns`, each `[B, L]` (`indices` (VQ-VAE), `latent_mean` /
    `latent_std` (VAE) or `latents` (AutoEncoder)), and the model's `code_size` of the batch
    (`bits` `[B]`, `meaning`)."""
    pixels = pixels.to(model.device, model.dtype)
    encoded = model.encode(pixels, return_dict=True)
    dtypes = column_dtypes(model, latent_dtype)
    columns = {name: values.cpu().numpy().astype(dtypes[name]) for name, values in model.stored_code(encoded).items()}
    return columns, model.code_size(encoded)


def unit_table(rows: list[dict], codes: dict[str, np.ndarray], features: datasets.Features) -> pa.Table:
    """The arrow table of a unit: `rows` (key, source columns and `flipped`), `codes` (code columns
    and `latent_shape`, 2-D arrays with one row per table row)."""
    arrays = []
    for name in features:
        arrow_type = features.arrow_schema.field(name).type
        if name in codes:
            flat = pa.array(codes[name].reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, codes[name].shape[1]).cast(arrow_type))
        else:
            arrays.append(pa.array([row.get(name) for row in rows], arrow_type))
    return pa.Table.from_arrays(arrays, schema=features.arrow_schema)


def output_features(model, source: Source, latent_shape: list[int], latent_dtype: str) -> datasets.Features:
    """`key`, the source's columns, `flipped`, the family's code columns and `latent_shape`."""
    size = math.prod(latent_shape)
    code_columns = {
        name: datasets.List(datasets.Value(dtype), length=size)
        for name, dtype in column_dtypes(model, latent_dtype).items()
    }
    shape = {"latent_shape": datasets.List(datasets.Value("int32"), length=len(latent_shape))}
    columns = {name: feature for name, feature in source.features.items() if name not in ("key", "flipped")}
    return datasets.Features(
        {"key": datasets.Value("string"), **columns, "flipped": datasets.Value("bool"), **code_columns, **shape}
    )


def _say(message: str, progress: bool) -> None:
    """A message for whoever runs the tokenisation: on stderr beside the progress bar, else logged."""
    if progress:
        tqdm.write(message, file=sys.stderr)
    else:
        logger.info(message)


def tokenize(
    model,
    output_dir: str | os.PathLike,
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    split: str = "train",
    train_data_dir: str | None = None,
    image_column: str | None = None,
    cache_dir: str | None = None,
    resolution: int | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    rows_per_shard: int = 5000,
    flip_copies: bool = False,
    latent_dtype: str = "float32",
    model_name_or_path: str | None = None,
    revision: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier=None,
    progress: bool = True,
) -> dict | None:
    """Encode every readable image of a split with `model` and write the dataset (see the package
    docstring). Process `rank` of `world_size` encodes units `rank`, `rank + world_size`, ...;
    `barrier()` (e.g. accelerate's `wait_for_everyone`) is called before rank 0 finishes the
    folder. Images are decoded in `num_workers` DataLoader workers. Rerunning the same call
    resumes a killed run. Returns the dataset's info (rank 0), else None.
    """
    output_dir = Path(output_dir)
    if latent_dtype not in LATENT_DTYPES:
        raise ValueError(f"latent_dtype must be one of {LATENT_DTYPES}, got {latent_dtype!r}")
    if rows_per_shard < 1 or batch_size < 1:
        raise ValueError(f"rows_per_shard and batch_size must be >= 1, got {rows_per_shard} and {batch_size}")
    resolution = resolution or model.config.sample_size
    latent_shape = list(model.stored_code_shape(resolution))  # raises for a resolution the model cannot code
    prepare_output_dir(output_dir)
    if is_complete(output_dir):
        logger.warning("%s already holds a finished tokenisation; nothing to do", output_dir)
        return json.loads((output_dir / INFO_FILE).read_text()) if rank == 0 else None
    from ..data import open_source

    source = open_source(split, dataset_name, dataset_config_name, train_data_dir, image_column, cache_dir)
    features = output_features(model, source, latent_shape, latent_dtype)
    settings = {
        "model": model_name_or_path or getattr(model.config, "_name_or_path", "") or "(in memory)",
        "revision": revision or getattr(model.config, "_commit_hash", None),
        "family": family_name(model),
        "config_hash": config_hash(model),
        "weights_hash": weights_hash(model),
        "source": f"train_data_dir {train_data_dir}" if train_data_dir else dataset_name or "builtin:digits",
        "dataset_config_name": dataset_config_name,
        "split": split,
        "image_column": image_column,
        "resolution": resolution,
        "flip_copies": flip_copies,
        "latent_dtype": latent_dtype,
        "latent_shape": latent_shape,
        "code_columns": [name for name in features if name not in ("key", "flipped", "latent_shape", *source.features)],
        "rows_per_shard": rows_per_shard,
        "source_examples": len(source),
    }
    check_settings(output_dir, settings)
    num_units = math.ceil(len(source) / rows_per_shard)
    done = done_units(output_dir)
    if rank == 0 and done:
        _say(resume_message(output_dir, done, num_units, rows_per_shard, len(source)), progress)
    mine = {u: shard_name(split, u, num_units) for u in range(rank, num_units, world_size) if u not in done}
    encoder = UnitEncoder(model, source, features, resolution, latent_shape, latent_dtype, flip_copies)
    encoder.run(output_dir, mine, rows_per_shard, batch_size, num_workers, progress and rank == 0)
    if barrier is not None:
        barrier()
    return finish(output_dir, settings, num_units) if rank == 0 else None


def _empty_unit() -> dict:
    """What a unit gathers until it is written."""
    return {"rows": [], "codes": [], "corrupt": [], "examples": 0, "code_bits": 0.0, "code_bits_meaning": None}


class UnitEncoder:
    """Encodes units of a source and writes their shards (one process's share of a run)."""

    def __init__(self, model, source: Source, features, resolution: int, latent_shape, latent_dtype, flip_copies):
        self.model, self.source, self.features = model, source, features
        self.latent_shape, self.latent_dtype, self.flip_copies = latent_shape, latent_dtype, flip_copies
        from ..data import ImageTransform

        # Centre crop, no flip: the model's own preprocessing (LatentCodeImageProcessor).
        self.transform = ImageTransform(resolution, model.config.in_channels)
        self.corrupt = set()

    def run(self, output_dir, units: dict[int, str], rows_per_shard, batch_size, num_workers, progress) -> None:
        """Encode the `units` (unit -> shard file name) and write their shards."""
        total = len(self.source)
        chunks = [
            (unit, start, min(start + batch_size, (unit + 1) * rows_per_shard, total))
            for unit in units
            for start in range(unit * rows_per_shard, min((unit + 1) * rows_per_shard, total), batch_size)
        ]
        from ..data import ordered_chunks

        loader = ordered_chunks(self.source, self.transform, [chunk[1:] for chunk in chunks], num_workers)
        images = sum(stop - start for _, start, stop in chunks)
        bar = tqdm(total=images, unit="img", desc="tokenize", disable=not progress, dynamic_ncols=True)
        pending = _empty_unit()
        for (unit, start, stop), decoded in zip(chunks, loader):
            self._add(pending, decoded, stop - start)
            bar.update(stop - start)
            bar.set_postfix(unreadable=len(self.corrupt), refresh=False)
            if stop == min((unit + 1) * rows_per_shard, total):  # the unit's last chunk
                self._write(output_dir, unit, pending, units[unit])
                pending = _empty_unit()
        bar.close()

    def _add(self, pending: dict, decoded: dict, examples: int) -> None:
        pixels, rows = decoded["pixels"], decoded["rows"]
        for source, message in decoded["corrupt"]:
            if source not in self.corrupt:
                self.corrupt.add(source)
                tqdm.write(f"skipping unreadable image ({len(self.corrupt)} so far): {message}", file=sys.stderr)
        pending["corrupt"] += [source for source, _ in decoded["corrupt"]]
        pending["examples"] += examples
        if not rows:
            return
        flipped = [False] * len(rows)
        if self.flip_copies:
            pixels, rows, flipped = torch.cat([pixels, pixels.flip(-1)]), rows + rows, flipped + [True] * len(rows)
        codes, size = encode_stored_code(self.model, pixels, self.latent_dtype)
        codes["latent_shape"] = np.tile(np.asarray(self.latent_shape, np.int32), (len(rows), 1))
        pending["rows"] += [{**row, "flipped": flip} for row, flip in zip(rows, flipped)]
        pending["codes"].append(codes)
        pending["code_bits"] += size.bits.sum().item()
        pending["code_bits_meaning"] = size.meaning

    def _write(self, output_dir: Path, unit: int, pending: dict, name: str) -> None:
        if pending["codes"]:
            codes = {name: np.concatenate([c[name] for c in pending["codes"]]) for name in pending["codes"][0]}
            table = unit_table(pending["rows"], codes, self.features)
        else:  # every image of the unit was unreadable
            table = self.features.arrow_schema.empty_table()
        note = {
            "unit": unit,
            **{key: pending[key] for key in ("examples", "corrupt", "code_bits", "code_bits_meaning")},
        }
        write_unit(output_dir, name, table, note)
