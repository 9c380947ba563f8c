"""Reading a code dataset back: [`load_codes`], the library API of second stages (priors, latent
diffusion) that train from codes; it refuses codes another model wrote."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets

from .dataset_folder import INFO_FILE, PARTS
from .model_identity import check_same_model, family_name


def _load_info(path: str, revision: str | None, token) -> tuple[dict, str]:
    """The info file of a code dataset (local folder or Hub dataset id) and where the data is."""
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
        from ..model_loading import load_pretrained_model

        expected_model = load_pretrained_model(expected_model)
    if expected_model is not None:
        check_same_model(info, expected_model, os.fspath(path))
    codes = datasets.load_dataset(where, split=split, revision=revision, token=token)
    family = info["family"] if expected_model is None else family_name(expected_model)
    from ..families import get_family

    needed = (*get_family(family).model_class.stored_columns, "key", "latent_shape")
    missing = [name for name in needed if name not in codes.column_names]
    if missing:
        raise ValueError(
            f"{os.fspath(path)!r} lacks the column(s) {missing} that {family} codes need (it has "
            f"{codes.column_names}); tokenise the data again with latentcode-tokenize"
        )
    return codes.with_format("torch")
