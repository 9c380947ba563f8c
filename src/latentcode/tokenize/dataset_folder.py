"""The folder a tokenisation writes: units in progress in `.parts/`, the finished shards in
`data/`, the info file and the dataset card (see the package docstring for the layout).

Everything here is about files: what is done, writing a unit atomically, checking that a resumed
run has the same settings, and finishing the folder once every unit is written.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

# The dataset's info file (settings, model hashes, row counts), written with the card when finished.
INFO_FILE = "latentcode_tokenize.json"
# The hidden folder of units in progress (`datasets` ignores it).
PARTS = ".parts"
# The types a VAE's or an AutoEncoder's continuous code can be stored in (`--latent_dtype`).
LATENT_DTYPES = ("float32", "float16")

# A shard's file name: `{split}-{unit:05d}-of-{units:05d}.parquet`, or, as written before shards
# were named by split, `train-{unit:05d}.parquet`. `datasets` reads the split from the prefix.
SHARD_NAME = re.compile(r"(?P<split>\w+(?:\.\w+)*)-(?P<unit>\d{5})(?:-of-\d{5})?\.parquet")


def shard_name(split: str, unit: int, num_units: int) -> str:
    """The file name of unit `unit` of `num_units` of `split`, as `datasets` names shards."""
    return f"{split}-{unit:05d}-of-{num_units:05d}.parquet"


def shards_in(folder: Path) -> dict[int, Path]:
    """The shards in `folder` (either naming), by unit."""
    found = {}
    for path in folder.glob("*.parquet"):
        match = SHARD_NAME.fullmatch(path.name)
        if match:
            found[int(match["unit"])] = path
    return found


def done_units(output_dir: Path) -> set[int]:
    """The units written so far, in progress (`.parts/`) or finished (`data/`)."""
    return {unit for folder in (PARTS, "data") for unit in shards_in(output_dir / folder)}


def write_atomically(path: Path, write) -> None:
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
    write_atomically(path, lambda temporary: temporary.write_text(json.dumps(settings, indent=2)))


def resume_message(output_dir: Path, done: set[int], num_units: int, rows_per_shard: int, examples: int) -> str:
    """What a resumed run says: the shards and source images done, and those left."""
    done_examples = sum(min(rows_per_shard, examples - unit * rows_per_shard) for unit in done)
    left = num_units - len(done)
    return (
        f"resuming the unfinished tokenisation in {str(output_dir)!r}: {len(done)} of {num_units} shards "
        f"({done_examples:,} of {examples:,} images) are written; "
        + (f"encoding the other {left} ({examples - done_examples:,} images)" if left else "finishing the dataset")
    )


def write_unit(output_dir: Path, name: str, table: pa.Table, note: dict) -> None:
    """Write one unit's shard `name` atomically, with `note` in its metadata: `unit`, `examples`
    (source examples read), `corrupt` (unreadable files), `code_bits` (the sum of its rows'
    `model.code_size(...).bits`) and `code_bits_meaning` (how they are counted; None when empty)."""
    import pyarrow.parquet as pq  # here, not above: `latentcode-tokenize --help` reads this module's names

    text = json.dumps({**note, "corrupt": sorted(set(note["corrupt"]))})
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"latentcode": text.encode()})
    write_atomically(output_dir / PARTS / name, lambda temporary: pq.write_table(table, temporary))


def unit_notes(paths: list[Path]) -> list[dict]:
    """The notes `write_unit` left in each shard, with its row count."""
    import pyarrow.parquet as pq

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
| bits per image | {bits_per_image:.1f} ({bits_meaning}) |
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
    missing = sorted(set(range(num_units)) - done_units(output_dir))
    if missing:
        raise RuntimeError(
            f"{len(missing)} of {num_units} shards are missing in {str(output_dir)!r} (first: {missing[:5]}): a "
            "process stopped early; rerun the same command to write them"
        )
    (output_dir / "data").mkdir(exist_ok=True)
    for folder in ("data", PARTS):  # named by split, also the shards an older version began
        for unit, path in shards_in(output_dir / folder).items():
            os.replace(path, output_dir / "data" / shard_name(settings["split"], unit, num_units))
    notes = unit_notes(sorted(shards_in(output_dir / "data").values()))
    corrupt = sorted({source for note in notes for source in note["corrupt"]})
    rows = sum(note["rows"] for note in notes)
    info = {
        **settings,
        "rows": rows,
        "images": rows // (2 if settings["flip_copies"] else 1),
        "examples": sum(note["examples"] for note in notes),
        "corrupt_files": len(corrupt),
        "corrupt": corrupt,
        # The model's own cost of a code (`code_size`), averaged over the rows.
        "bits_per_image": sum(note["code_bits"] for note in notes) / rows if rows else 0.0,
        "bits_meaning": next((note["code_bits_meaning"] for note in notes if note["code_bits_meaning"]), "no rows"),
        "shards": num_units,
        "dataset_split": settings["split"],  # the split `datasets` sees (absent: older folders, "train")
    }
    write_atomically(output_dir / INFO_FILE, lambda temporary: temporary.write_text(json.dumps(info, indent=2)))
    write_atomically(output_dir / "README.md", lambda temporary: temporary.write_text(dataset_card(info, output_dir)))
    return info


def dataset_card(info: dict, output_dir: Path) -> str:
    """The dataset card (`README.md`) of the finished folder `output_dir` with info `info`."""
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
    """Whether `output_dir` holds a finished tokenisation (its info file and card)."""
    return (output_dir / INFO_FILE).exists() and (output_dir / "README.md").exists()
