"""Import and export public checkpoints: diffusers `VQModel` / `AutoencoderKL` / `AutoencoderTiny`
(the tiny backbone) both ways, and CompVis (taming-transformers, latent-diffusion, Stable Diffusion
VAE), TAESD and disentangling-vae checkpoints in.

Every conversion is exact (same outputs up to floating-point kernel differences) and strict:
files are read without unpickling code, and every missing or unexpected weight stops it.
"""

from ..latent_diffusion import compute_scaling_factor
from .checkpoints import CheckpointError, load_state_dict_exactly, read_checkpoint
from .compvis import from_compvis
from .diffusers import config_from_diffusers, diffusers_config_from, from_diffusers, to_diffusers
from .diffusers_tiny import autoencoder_tiny_config_from, config_from_autoencoder_tiny

__all__ = [
    "CheckpointError",
    "autoencoder_tiny_config_from",
    "compute_scaling_factor",
    "config_from_autoencoder_tiny",
    "config_from_diffusers",
    "diffusers_config_from",
    "from_compvis",
    "from_diffusers",
    "load_state_dict_exactly",
    "read_checkpoint",
    "to_diffusers",
]
