"""Named small model architectures: the fields of a model config, for any family.

- `vqvae_paper_32`: the VQ-VAE paper's CIFAR-10 model (van den Oord et al., 2017): 32x32
  RGB, two stride-2 downsamplings to 8x8, K = 512 codes of dimension 64.
- `mnist`: 28x28 images padded/resized to 32x32 grey-scale, factor 4, a model that trains in
  minutes on a CPU.

`architecture_config("vqvae_paper_32", family="vqvae")` returns a config of the requested family
(an architecture's fields that the family's config has not, e.g. `codebook_size` for a VAE, are
left out); any keyword overrides a field. (A training *preset* is something else: a YAML file of
`training/configs/` with the model and the whole run.)
"""

from __future__ import annotations

from .configuration import LatentCodeConfig
from .families import get_family

ARCHITECTURES: dict[str, dict] = {
    "vqvae_paper_32": dict(
        in_channels=3,
        block_out_channels=(128, 256, 256),
        layers_per_block=2,
        latent_channels=64,
        norm_num_groups=32,
        mid_block_add_attention=False,
        sample_size=32,
        codebook_size=512,
    ),
    "mnist": dict(
        in_channels=1,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        mid_block_add_attention=False,
        sample_size=32,
        codebook_size=256,
    ),
}


def architecture_config(name: str, family: str = "vqvae", **overrides) -> LatentCodeConfig:
    """Config of `family` ("autoencoder", "vae", "vqvae") with architecture `name`'s fields, and overrides."""
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)} (a training preset, a YAML "
            "file of training/configs/, is loaded with latentcode.training.load_config instead)"
        )
    config_class = get_family(family).config_class
    own_fields = set(config_class.field_names())
    fields = {key: value for key, value in ARCHITECTURES[name].items() if key in own_fields}
    fields.update(overrides)  # not filtered: the config names a misspelt or foreign field
    return config_class(**fields)
