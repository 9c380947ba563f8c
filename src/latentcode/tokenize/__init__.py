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
is written only when every unit is done, so an unfinished folder never loads as a dataset. Bits
per image are the model's own cost of a code (`model.code_size`: tokens x log2 K for a VQ-VAE,
the KL to the prior for a VAE, float32 values for an AutoEncoder), averaged over the rows.

The modules: `writer` (a split through a model, unit by unit: [`tokenize`]), `dataset_folder`
(the files: shards, resume bookkeeping, info file and card), `reader` ([`load_codes`]),
`model_identity` (the config and weights hashes that tie codes to their model) and `cli`
(`latentcode-tokenize`). Lazy (`latentcode.lazy`): `latentcode-tokenize --help` loads no torch.
"""

import typing as _typing

from ..lazy import lazy_attributes as _lazy_attributes

# Public name -> the submodule that defines it.
_PUBLIC_NAMES = {
    "INFO_FILE": "dataset_folder",
    "LATENT_DTYPES": "dataset_folder",
    "PARTS": "dataset_folder",
    "main": "cli",
    "push_codes_to_hub": "cli",
    "check_same_model": "model_identity",
    "config_hash": "model_identity",
    "weights_hash": "model_identity",
    "load_codes": "reader",
    "tokenize": "writer",
}

__all__ = [  # a literal list: what IDEs and type checkers read
    "INFO_FILE",
    "LATENT_DTYPES",
    "PARTS",
    "check_same_model",
    "config_hash",
    "load_codes",
    "main",
    "push_codes_to_hub",
    "tokenize",
    "weights_hash",
]

if _typing.TYPE_CHECKING:
    from .cli import main, push_codes_to_hub
    from .dataset_folder import INFO_FILE, LATENT_DTYPES, PARTS
    from .model_identity import check_same_model, config_hash, weights_hash
    from .reader import load_codes
    from .writer import tokenize

__getattr__, __dir__ = _lazy_attributes(__name__, _PUBLIC_NAMES)
