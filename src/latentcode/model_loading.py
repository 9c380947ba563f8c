"""Loading a saved latentcode model by folder or Hub id, as every command line and
`load_codes(expected_model=...)` do: the name resolved at once ([`resolve_pretrained`]: a misspelt
folder is named without half a minute of Hub retries), the families registered with `AutoModel`,
and a checkpoint of another library refused."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from .hub import resolve_pretrained

if TYPE_CHECKING:
    from .modeling import LatentCodePreTrainedModel


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`--pretrained_model_name_or_path` (required) and `--revision`: a command's model, as
    [`load_pretrained_model`] takes it."""
    parser.add_argument(
        "--pretrained_model_name_or_path",
        required=True,
        help="the model: a folder written by save_pretrained or a Hub id",
    )
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit of the model (default: main)")


def load_pretrained_model(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> LatentCodePreTrainedModel:
    """The latentcode model (AutoencoderModel, VAEModel or VQVAEModel) saved at `name_or_path`
    (a folder, a Hub id, or a cached Hub id offline), in eval mode on the CPU.

    Raises:
        PretrainedNotFoundError: (an `OSError`) no such folder, and no Hub repo to load instead.
        ValueError: the checkpoint is a model of another library (the message names its class).
    """
    from transformers import AutoModel

    from .modeling import LatentCodePreTrainedModel  # also registers the families with AutoModel

    source = resolve_pretrained(name_or_path, cache_dir=cache_dir, revision=revision)
    options = {"revision": revision} | ({"cache_dir": cache_dir} if cache_dir is not None else {})
    model = AutoModel.from_pretrained(source, **options)
    if not isinstance(model, LatentCodePreTrainedModel):
        raise ValueError(
            f"{os.fspath(name_or_path)!r} holds a {type(model).__name__}, not a latentcode model; give a folder or Hub "
            "id of an AutoencoderModel, VAEModel or VQVAEModel (a diffusers VAE converts with "
            "conversion/convert_diffusers_to_latentcode.py)"
        )
    return model.eval()
