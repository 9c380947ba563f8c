"""Tokenise a dataset once: stream its images through a trained model and write the codes as a
Hugging Face dataset, for second stages (priors, latent diffusion) that train from codes.

    latentcode-tokenize --pretrained_model_name_or_path ./my-vqvae --train_data_dir ../shared/datasets/cifar10 \\
        --image_column img --output_dir cifar10-codes
    accelerate launch --num_processes 2 -m latentcode.tokenize ...      # each process its own shards

    codes = load_codes("cifar10-codes", expected_model=vqvae)          # refuses another model's codes
    datasets.load_dataset("cifar10-codes", split="train")             # plain `datasets` works too
    # (the split is the one tokenised: --split test gives a folder of split "test")

One row per readable image of the split (and with `flip_copies` one more, horizontally flipped):

- `key`: the image's name in its source (a file's path relative to the data folder, a parquet
  row's index in its split, a webdataset sample's `__key__`) and `flipped`;
- the source's label / caption columns, with their features (a `ClassLabel` stays one);
- VQ-VAE: `indices`, the code sequence in raster order with residual levels together
  (`model.encode_to_sequence`), and `latent_shape` (`[h, w]` or `[h, w, depth]`; `[G]` or
  `[G, depth]` on a vector-latent backbone); VAE: `latent_mean` and `latent_std` of the
  posterior, flattened, and `latent_shape` `[C, h, w]` (`[D]`); AutoEncoder: `latents` and
  `latent_shape`. Floats in `latent_dtype` (float32 or float16).

The split is cut into fixed units of `rows_per_shard` consecutive images; unit `u` of `N` becomes
the shard `data/{split}-{u:05d}-of-{N:05d}.parquet` (named by the split tokenised, as `datasets`
names shards, so that `load_dataset` on the folder sees that split), written by process
`u % world_size`. A unit is written to a temporary file and renamed when complete, so a run
killed at any point resumes (same command, which says how many shards and images are done and
how many are left) with the units still missing: no row twice, none missing. Folders written
before shards were named by split (every shard `train-{u:05d}.parquet`, whatever the split)
still load and resume. Units in progress live in the hidden
folder `.parts/` (which `datasets` ignores); the shards move to `data/` and the dataset card
(`README.md`: model, revision, config hash, source, bits per image, row counts, corrupt files)
is written only when every unit is done, so an unfinished folder never loads as a dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from .errors import command_line
from .hub import resolve_pretrained
from .threads import set_num_threads

if TYPE_CHECKING:
    from .data.sources import Source

logger = logging.getLogger(__name__)

INFO_FILE = "latentcode_tokenize.json"
PARTS = ".parts"
LATENT_DTYPES = ("float32", "float16")


# ----------------------------------------------------------------------------------------------
# What identifies the model
# ----------------------------------------------------------------------------------------------


def config_hash(model) -> str:
    """SHA-256 of the model's config (family, backbone, bottleneck), without the fields that
    name where it was loaded from or the library versions."""
    from .configuration import TRANSFORMERS_CONFIG_KEYS  # transformers' model code: not for --help

    config = {k: v for k, v in model.config.to_dict().items() if k not in TRANSFORMERS_CONFIG_KEYS or k == "model_type"}
    config = {k: v for k, v in config.items() if not k.endswith("_version")}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def weights_hash(model) -> str:
    """SHA-256 of the model's weights (names, shapes, float32 values), so that two trainings of
    one config are told apart."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def family_name(model) -> str:
    from .families import family_of

    return family_of(model).name


def _column_dtypes(model, latent_dtype: str) -> dict[str, str]:
    """The stored type of each of the family's `stored_columns`: token ids in the narrowest
    integer type that holds them, continuous codes in `latent_dtype`."""
    return {
        name: ("uint16" if model.config.codebook_size <= 2**16 else "int32") if kind == "index" else latent_dtype
        for name, kind in model.stored_columns.items()
    }


def bits_per_image(model, latent_shape: list[int], latent_dtype: str) -> float:
    """The stored size of one image's code: tokens x log2(K) for token ids (the rate of a VQ-VAE's
    code), numbers x bits of `latent_dtype` for a continuous code (a VAE's mean only)."""
    if model.has_tokens:  # token ids: the rate of the code
        return math.prod(latent_shape) * math.log2(model.config.codebook_size)
    return math.prod(latent_shape) * (16 if latent_dtype == "float16" else 32)


# ----------------------------------------------------------------------------------------------
# Encoding
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_codes(model, pixels: torch.Tensor, latent_dtype: str = "float32") -> dict[str, np.ndarray]:
    """The family's `stored_columns` of `[B, C, H, W]` pixels in [-1, 1], each `[B, L]`:
    `indices` (VQ-VAE), `latent_mean` / `latent_std` (VAE) or `latents` (AutoEncoder)."""
    pixels = pixels.to(model.device, model.dtype)
    columns = model.stored_code(model.encode(pixels, return_dict=True))
    dtypes = _column_dtypes(model, latent_dtype)
    return {name: values.cpu().numpy().astype(dtypes[name]) for name, values in columns.items()}


def code_shape(model, resolution: int) -> list[int]:
    """`latent_shape` of one image: `[h, w]` / `[h, w, depth]` (tokens; a vector latent's `[G]` /
    `[G, depth]`), `[C, h, w]` or `[D]`; raises when the model cannot code images of `resolution`."""
    return list(model.stored_code_shape(resolution))


# ----------------------------------------------------------------------------------------------
# Output folder: units, settings, the finished dataset
# ----------------------------------------------------------------------------------------------


# A shard's file name: `{split}-{unit:05d}-of-{units:05d}.parquet`, or, as written before shards
# were named by split, `train-{unit:05d}.parquet`. `datasets` reads the split from the prefix.
SHARD_NAME = re.compile(r"(?P<split>\w+(?:\.\w+)*)-(?P<unit>\d{5})(?:-of-\d{5})?\.parquet")


def shard_name(split: str, unit: int, num_units: int) -> str:
    """The file name of unit `unit` of `num_units` of `split`, as `datasets` names shards."""
    return f"{split}-{unit:05d}-of-{num_units:05d}.parquet"


def _shards(folder: Path) -> dict[int, Path]:
    """The shards in `folder` (either naming), by unit."""
    found = {}
    for path in folder.glob("*.parquet"):
        match = SHARD_NAME.fullmatch(path.name)
        if match:
            found[int(match["unit"])] = path
    return found


def _write_atomically(path: Path, write) -> None:
    """`write(temporary path)`, then rename: `path` exists only complete (a kill leaves a
    `.tmp` that the next run overwrites)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(temporary)
    os.replace(temporary, path)


def prepare_output_dir(output_dir: Path) -> None:
    """Create `output_dir/.parts` and check it can be written, before any work."""
    try:
        (output_dir / PARTS).mkdir(parents=True, exist_ok=True)
        probe = output_dir / PARTS / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OSError(
            f"cannot write to --output_dir {str(output_dir)!r} ({type(error).__name__}: {error}); "
            "choose a folder you can write to"
        ) from error


def check_settings(output_dir: Path, settings: dict) -> None:
    """Record the run's settings in `.parts/settings.json`, or check a resumed run has the same."""
    path = output_dir / PARTS / "settings.json"
    if path.exists():
        saved = json.loads(path.read_text())
        changed = sorted(key for key in {*saved, *settings} if saved.get(key) != settings.get(key))
        if changed:
            details = ", ".join(f"{key}: {saved.get(key)!r} -> {settings.get(key)!r}" for key in changed)
            raise ValueError(
                f"--output_dir {str(output_dir)!r} holds an unfinished tokenisation with other settings ({details}); "
                "rerun it with its own arguments to finish it, or choose a new --output_dir"
            )
        return
    _write_atomically(path, lambda temporary: temporary.write_text(json.dumps(settings, indent=2)))


def _done_units(output_dir: Path) -> set[int]:
    return {unit for folder in (PARTS, "data") for unit in _shards(output_dir / folder)}


def unit_table(rows: list[dict], codes: dict[str, np.ndarray], flipped: list[bool], features: datasets.Features):
    """The arrow table of a unit: `rows` (key and source columns), `codes` (code columns and
    `latent_shape`, 2-D arrays with one row per table row), `flipped`."""
    arrays = []
    for name in features:
        arrow_type = features.arrow_schema.field(name).type
        if name in codes:
            flat = pa.array(codes[name].reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, codes[name].shape[1]).cast(arrow_type))
        elif name == "flipped":
            arrays.append(pa.array(flipped, pa.bool_()))
        else:
            arrays.append(pa.array([row.get(name) for row in rows], arrow_type))
    return pa.Table.from_arrays(arrays, schema=features.arrow_schema)


def output_features(model, source: Source, latent_shape: list[int], latent_dtype: str) -> datasets.Features:
    """`key`, the source's columns, `flipped`, the family's code columns and `latent_shape`."""
    size = math.prod(latent_shape)
    code_columns = {
        name: datasets.List(datasets.Value(dtype), length=size)
        for name, dtype in _column_dtypes(model, latent_dtype).items()
    }
    shape = {"latent_shape": datasets.List(datasets.Value("int32"), length=len(latent_shape))}
    columns = {name: feature for name, feature in source.features.items() if name not in ("key", "flipped")}
    return datasets.Features(
        {"key": datasets.Value("string"), **columns, "flipped": datasets.Value("bool"), **code_columns, **shape}
    )


def write_unit(output_dir: Path, unit: int, table: pa.Table, examples: int, corrupt: list[str], name: str) -> None:
    """Write one unit's shard `name` atomically; its examples read and corrupt files go in its metadata."""
    note = json.dumps({"unit": unit, "examples": examples, "corrupt": sorted(set(corrupt))})
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"latentcode": note.encode()})
    _write_atomically(output_dir / PARTS / name, lambda temporary: pq.write_table(table, temporary))


def _unit_notes(paths: list[Path]) -> list[dict]:
    notes = []
    for path in paths:
        metadata = pq.read_schema(path).metadata
        notes.append({**json.loads(metadata[b"latentcode"]), "rows": pq.read_metadata(path).num_rows})
    return notes


# No `configs:` block: with one, `datasets` keys its cache on the block alone, so two tokenised
# folders of the same name would load each other's cached rows; without, on the files found.
CARD = """---
tags:
- latentcode
- image-tokens
---

# {title}

Made by `latentcode-tokenize`: every readable image of {source} (split `{split}`) through the
{family} `{model}`{revision}, resized and centre-cropped to {resolution}x{resolution}.

| | |
|---|---|
| model | `{model}`{revision} |
| config hash (SHA-256) | `{config_hash}` |
| weights hash (SHA-256) | `{weights_hash}` |
| source | {source}, split `{split}` |
| code per image | {columns}, `latent_shape` {latent_shape} |
| bits per image | {bits_per_image:.1f} |
| rows | {rows:,} ({images:,} images{flips}) |
| examples read | {examples:,} |
| unreadable files skipped | {corrupt} |

```python
from latentcode.tokenize import load_codes
codes = load_codes("{output_name}", expected_model=model)  # refuses codes of another model
```
"""


def finish(output_dir: Path, settings: dict, num_units: int) -> dict:
    """Move the shards to `data/`, then write the info file and the dataset card (last: a folder
    with a card is complete). Returns the info."""
    missing = sorted(set(range(num_units)) - _done_units(output_dir))
    if missing:
        raise RuntimeError(
            f"{len(missing)} of {num_units} shards are missing in {str(output_dir)!r} (first: {missing[:5]}): a "
            "process stopped early; rerun the same command to write them"
        )
    (output_dir / "data").mkdir(exist_ok=True)
    for folder in ("data", PARTS):  # named by split, also the shards an older version began
        for unit, path in _shards(output_dir / folder).items():
            os.replace(path, output_dir / "data" / shard_name(settings["split"], unit, num_units))
    notes = _unit_notes(sorted(_shards(output_dir / "data").values()))
    corrupt = sorted({source for note in notes for source in note["corrupt"]})
    rows = sum(note["rows"] for note in notes)
    info = {
        **settings,
        "rows": rows,
        "images": rows // (2 if settings["flip_copies"] else 1),
        "examples": sum(note["examples"] for note in notes),
        "corrupt_files": len(corrupt),
        "corrupt": corrupt,
        "shards": num_units,
        "dataset_split": settings["split"],  # the split `datasets` sees (absent: older folders, "train")
    }
    _write_atomically(output_dir / INFO_FILE, lambda temporary: temporary.write_text(json.dumps(info, indent=2)))
    _write_atomically(output_dir / "README.md", lambda temporary: temporary.write_text(dataset_card(info, output_dir)))
    return info


def dataset_card(info: dict, output_dir: Path) -> str:
    revision = f" (revision `{info['revision']}`)" if info.get("revision") else ""
    return CARD.format(
        title=f"{info['family']} codes of {info['source']}",
        revision=revision,
        columns=", ".join(f"`{name}`" for name in info["code_columns"]),
        flips=", each also flipped" if info["flip_copies"] else "",
        corrupt=info["corrupt_files"],
        output_name=output_dir.name,
        **{k: v for k, v in info.items() if k not in ("revision", "corrupt")},
    )


def is_complete(output_dir: Path) -> bool:
    return (output_dir / INFO_FILE).exists() and (output_dir / "README.md").exists()


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


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
    """Encode every readable image of a split with `model` and write the dataset (see the module
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
    latent_shape = code_shape(model, resolution)  # checks the resolution against the model
    prepare_output_dir(output_dir)
    if is_complete(output_dir):
        logger.warning("%s already holds a finished tokenisation; nothing to do", output_dir)
        return json.loads((output_dir / INFO_FILE).read_text()) if rank == 0 else None
    from .data import open_source

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
        "bits_per_image": bits_per_image(model, latent_shape, latent_dtype),
        "rows_per_shard": rows_per_shard,
        "source_examples": len(source),
    }
    check_settings(output_dir, settings)
    num_units = math.ceil(len(source) / rows_per_shard)
    done = _done_units(output_dir)
    if rank == 0 and done:
        _say(resume_message(output_dir, done, num_units, rows_per_shard, len(source)), progress)
    mine = {u: shard_name(split, u, num_units) for u in range(rank, num_units, world_size) if u not in done}
    encoder = UnitEncoder(model, source, features, resolution, latent_shape, latent_dtype, flip_copies)
    encoder.run(output_dir, mine, rows_per_shard, batch_size, num_workers, progress and rank == 0)
    if barrier is not None:
        barrier()
    return finish(output_dir, settings, num_units) if rank == 0 else None


def resume_message(output_dir: Path, done: set[int], num_units: int, rows_per_shard: int, examples: int) -> str:
    """What a resumed run says: the shards and source images done, and those left."""
    done_examples = sum(min(rows_per_shard, examples - unit * rows_per_shard) for unit in done)
    left = num_units - len(done)
    return (
        f"resuming the unfinished tokenisation in {str(output_dir)!r}: {len(done)} of {num_units} shards "
        f"({done_examples:,} of {examples:,} images) are written; "
        + (f"encoding the other {left} ({examples - done_examples:,} images)" if left else "finishing the dataset")
    )


def _say(message: str, progress: bool) -> None:
    """A message for whoever runs the tokenisation: on stderr beside the progress bar, else logged."""
    if progress:
        tqdm.write(message, file=sys.stderr)
    else:
        logger.info(message)


class UnitEncoder:
    """Encodes units of a source and writes their shards (one process's share of a run)."""

    def __init__(self, model, source: Source, features, resolution: int, latent_shape, latent_dtype, flip_copies):
        self.model, self.source, self.features = model, source, features
        self.latent_shape, self.latent_dtype, self.flip_copies = latent_shape, latent_dtype, flip_copies
        from .data import ImageTransform

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
        from .data import ordered_chunks

        loader = ordered_chunks(self.source, self.transform, [chunk[1:] for chunk in chunks], num_workers)
        images = sum(stop - start for _, start, stop in chunks)
        bar = tqdm(total=images, unit="img", desc="tokenize", disable=not progress, dynamic_ncols=True)
        pending: dict[str, list] = {"rows": [], "codes": [], "corrupt": [], "examples": 0}
        for (unit, start, stop), decoded in zip(chunks, loader):
            self._add(pending, decoded, stop - start)
            bar.update(stop - start)
            bar.set_postfix(unreadable=len(self.corrupt), refresh=False)
            if stop == min((unit + 1) * rows_per_shard, total):  # the unit's last chunk
                self._write(output_dir, unit, pending, units[unit])
                pending = {"rows": [], "codes": [], "corrupt": [], "examples": 0}
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
        codes = encode_codes(self.model, pixels, self.latent_dtype)
        codes["latent_shape"] = np.tile(np.asarray(self.latent_shape, np.int32), (len(rows), 1))
        pending["rows"] += [{**row, "flipped": flip} for row, flip in zip(rows, flipped)]
        pending["codes"].append(codes)

    def _write(self, output_dir: Path, unit: int, pending: dict, name: str) -> None:
        if pending["codes"]:
            codes = {name: np.concatenate([c[name] for c in pending["codes"]]) for name in pending["codes"][0]}
            flipped = [row["flipped"] for row in pending["rows"]]
            table = unit_table(pending["rows"], codes, flipped, self.features)
        else:  # every image of the unit was unreadable
            table = self.features.arrow_schema.empty_table()
        write_unit(output_dir, unit, table, pending["examples"], pending["corrupt"], name)


# ----------------------------------------------------------------------------------------------
# Reading the codes back; the Hub
# ----------------------------------------------------------------------------------------------


def _load_info(path: str, revision: str | None, token) -> tuple[dict, str]:
    """The info file of a tokenised dataset (local folder or Hub dataset id) and where the data is."""
    folder = Path(path)
    if folder.is_dir():
        if not (folder / INFO_FILE).exists():
            unfinished = (folder / PARTS).is_dir()
            raise ValueError(
                f"{path!r} is an unfinished latentcode-tokenize output: rerun the same latentcode-tokenize command "
                "to finish it"
                if unfinished
                else f"{path!r} is not a latentcode-tokenize output (it has no {INFO_FILE})"
            )
        return json.loads((folder / INFO_FILE).read_text()), str(folder)
    from huggingface_hub import hf_hub_download

    try:
        local = hf_hub_download(path, INFO_FILE, repo_type="dataset", revision=revision, token=token)
    except Exception as error:  # not found, offline, not a tokenised dataset
        raise ValueError(
            f"no folder {path!r} here, and no Hub dataset {path!r} with a {INFO_FILE} could be read ({error})"
        ) from error
    return json.loads(Path(local).read_text()), path


def load_codes(
    path: str | os.PathLike,
    expected_model=None,
    split: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
) -> datasets.Dataset:
    """A dataset written by [`tokenize`] (local folder or Hub dataset id), in torch format.

    `expected_model` (a model, or a folder / Hub id to load one from): refuse codes written by a
    model with another config (config hash) or other weights, and check the family's columns
    are there. `split`: the split that was tokenised (default), also under the name `datasets`
    gives it (`"train"` in folders written before shards were named by split). Code columns are
    flat: `indices` `[N, L]` reshapes to `[N, *latent_shape]` (VQ-VAE: `sequence_to_indices`),
    latents to `[N, C, h, w]`.
    """
    info, where = _load_info(os.fspath(path), revision, token)
    stored = info.get("dataset_split", "train")  # older folders named every shard train-*
    if split not in (None, info["split"], stored):
        raise ValueError(
            f"{os.fspath(path)!r} holds the codes of split {info['split']!r} only, not {split!r}; load_codes(path) "
            f"reads them, or tokenise split {split!r} into another folder (latentcode-tokenize --split {split})"
        )
    split = stored
    if isinstance(expected_model, (str, os.PathLike)):
        from transformers import AutoModel

        from . import modeling  # noqa: F401  (registers the families with AutoModel)

        expected_model = AutoModel.from_pretrained(expected_model)
    if expected_model is not None:
        check_same_model(info, expected_model, os.fspath(path))
    codes = datasets.load_dataset(where, split=split, revision=revision, token=token)
    family = info["family"] if expected_model is None else family_name(expected_model)
    from .families import get_family

    needed = (*get_family(family).model_class.stored_columns, "key", "latent_shape")
    missing = [name for name in needed if name not in codes.column_names]
    if missing:
        raise ValueError(
            f"{os.fspath(path)!r} lacks the column(s) {missing} that {family} codes need (it has "
            f"{codes.column_names}); tokenise the data again with latentcode-tokenize"
        )
    return codes.with_format("torch")


def check_same_model(info: dict, model, path: str) -> None:
    """Raise a ValueError when the tokenised dataset `info` was made by another model than `model`."""
    made_by = f"{info['family']} {info['model']!r}"
    if info["config_hash"] != config_hash(model):
        raise ValueError(
            f"{path!r} holds codes of another model: {made_by}, config hash {info['config_hash'][:12]}, but the "
            f"expected model's config hash is {config_hash(model)[:12]}; tokenise the data with this model "
            "(latentcode-tokenize --pretrained_model_name_or_path ...)"
        )
    if info["weights_hash"] != weights_hash(model):
        raise ValueError(
            f"{path!r} holds codes of {made_by}: same config as the expected model, other weights (weights hash "
            f"{info['weights_hash'][:12]} vs {weights_hash(model)[:12]}); tokenise the data with this model"
        )


def push_to_hub(output_dir: Path, repo_id: str, token: str | None = None) -> None:
    """Upload a finished tokenised dataset as one Hub commit (all or nothing)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
        api.upload_folder(
            folder_path=str(output_dir), repo_id=repo_id, repo_type="dataset", ignore_patterns=[f"{PARTS}/*"]
        )
    except Exception as error:
        raise RuntimeError(
            f"uploading {str(output_dir)!r} to the Hub dataset {repo_id!r} failed ({type(error).__name__}: {error}). "
            "The local dataset is complete; a Hub commit is all or nothing, so the Hub holds either the previous "
            "version or none. Rerun the same command with --push_to_hub to upload it (the encoding is not redone)"
        ) from error


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def default_num_workers() -> int:
    """Decoding workers when not given: the cores but one for the model, at most 8."""
    return max(min((os.cpu_count() or 1) - 1, 8), 0)


def build_parser():

    from .training.config import DATA_SOURCE_FIELDS, DefaultsHelpFormatter, RunConfig, add_config_arguments

    parser = argparse.ArgumentParser(
        prog="latentcode-tokenize",
        description="Encode every readable image of a dataset with a trained latentcode model and write the codes "
        "as a Hugging Face dataset (parquet shards + dataset card). Resumable; multi-process with accelerate launch.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="the model: a saved folder or a Hub id")
    parser.add_argument(
        "--revision", default=None, help="Hub revision (branch, tag or commit) of the model (default: main)"
    )
    data = parser.add_argument_group("data (as in training/train.py)")
    add_config_arguments(data, RunConfig, DATA_SOURCE_FIELDS, keep_defaults=True)
    add_config_arguments(parser, RunConfig, ["threads"], keep_defaults=True)
    data.add_argument("--resolution", type=int, default=None, help="image size (default: the model's sample_size)")
    data.add_argument("--batch_size", type=int, default=64, help="images per encode call")
    data.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=default_num_workers(),
        help=f"decoding workers (default: the CPU cores but one, at most 8: {default_num_workers()} here)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--output_dir", required=True, help="the dataset folder to write (or to resume)")
    out.add_argument("--flip_copies", action="store_true", help="also encode each image flipped horizontally")
    out.add_argument("--latent_dtype", default="float32", choices=LATENT_DTYPES, help="VAE / AutoEncoder latents")
    out.add_argument("--rows_per_shard", type=int, default=5000, help="source images per parquet shard")
    out.add_argument("--device", default=None, help="default: the process's accelerator device, else cpu")
    out.add_argument("--push_to_hub", action="store_true", help="upload the finished dataset to --hub_dataset_id")
    out.add_argument("--hub_dataset_id", default=None, help="Hub dataset repository, org/name")
    out.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in one)")
    return parser


@command_line
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from accelerate import PartialState
    from transformers import AutoModel

    from . import modeling  # noqa: F401  (registers the families with AutoModel)

    set_num_threads(args.threads)
    if args.push_to_hub and not args.hub_dataset_id:
        raise SystemExit("--push_to_hub needs --hub_dataset_id org/name")
    state = PartialState()
    source = resolve_pretrained(args.pretrained_model_name_or_path, cache_dir=args.cache_dir, revision=args.revision)
    model = AutoModel.from_pretrained(source, revision=args.revision)
    model = model.to(args.device or state.device).eval()
    start = time.perf_counter()
    info = tokenize(
        model,
        args.output_dir,
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        split=args.split,
        train_data_dir=args.train_data_dir,
        image_column=args.image_column,
        cache_dir=args.cache_dir,
        resolution=args.resolution,
        batch_size=args.batch_size,
        num_workers=args.dataloader_num_workers,
        rows_per_shard=args.rows_per_shard,
        flip_copies=args.flip_copies,
        latent_dtype=args.latent_dtype,
        model_name_or_path=args.pretrained_model_name_or_path,
        revision=args.revision,
        rank=state.process_index,
        world_size=state.num_processes,
        barrier=state.wait_for_everyone if state.num_processes > 1 else None,
    )
    if info is not None:
        seconds = time.perf_counter() - start
        print(
            f"{args.output_dir}: {info['rows']:,} rows ({info['images']:,} images, {info['corrupt_files']} unreadable "
            f"skipped), {info['bits_per_image']:.0f} bits per image, in {seconds:.1f} s"
        )
        if args.push_to_hub:
            push_to_hub(Path(args.output_dir), args.hub_dataset_id, args.hub_token)
    # Several processes: end the process group before the interpreter exits, as train.py's engine
    # does; left to exit, gloo's threads can be torn down joinable and abort the process.
    state.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
