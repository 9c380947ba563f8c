"""Latent diffusion over a latentcode autoencoder: the latents a diffusion model sees, their
scaling factor, a diffusers UNet sized for them, the training objective and the pipeline.

- `continuous_latents`: the code `model.decode` takes back (`model.continuous_code`: a posterior
  sample for the VAE, as latent diffusion trains on).
- `compute_scaling_factor`: `1 / std` of those latents over a dataset; latent-diffusion
  multiplies latents by `config.scaling_factor` so that the diffusion model sees roughly unit
  variance, and divides by it before decoding. Converted models carry the factor over
  (diffusers' `scaling_factor`, or the latent-diffusion YAML's `scale_factor`).
- `latent_unet`, `diffusion_loss`, `latent_diffusion_pipeline`: a diffusers `UNet2DModel` for a
  model's latents, the epsilon-prediction objective, and diffusers' `LDMPipeline` with our
  model as its `vqvae`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def continuous_latents(
    model, pixel_values: torch.Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The continuous code that `model.decode` takes back, `[B, D, h, w]`: the family's
    `model.continuous_code` (the AutoEncoder's latents, the VAE posterior's mean or, with
    `sample_posterior`, a sample of it as latent diffusion trains on, the VQ-VAE's latents before
    quantisation), under the name the training scripts import."""
    return model.continuous_code(pixel_values, sample_posterior=sample_posterior, generator=generator)


@torch.no_grad()
def compute_scaling_factor(
    model: nn.Module, batches: Iterable[torch.Tensor], generator: torch.Generator | None = None
) -> float:
    """`1 / std` of the latents the model gives a diffusion model, pooled over every element of
    every batch.

    The latents are what latent-diffusion diffuses: `model.continuous_code(pixels,
    sample_posterior=True)`, a posterior sample for a VAE (reproducible with `generator`), the
    code itself for the deterministic families.

    Args:
        model: a latentcode model.
        batches: pixel batches `[B, C, H, W]` in [-1, 1].
        generator: for the VAE's posterior samples.
    """
    latents = (
        model.continuous_code(pixels.to(model.device, model.dtype), sample_posterior=True, generator=generator)
        for pixels in batches
    )
    return scaling_factor_of(latents)


def scaling_factor_of(latent_batches: Iterable[torch.Tensor]) -> float:
    """`1 / std` of latents (batches of any shape), pooled over every element of every batch: what
    [`compute_scaling_factor`] measures, for latents already encoded (a tokenised dataset)."""
    count, total, total_sq = 0, 0.0, 0.0
    for latents in latent_batches:
        latents = latents.double()
        count += latents.numel()
        total += latents.sum().item()
        total_sq += latents.pow(2).sum().item()
    if count < 2:
        raise ValueError(f"need at least 2 latent values to estimate a standard deviation, got {count}")
    variance = (total_sq - total * total / count) / (count - 1)
    if not variance > 0:
        raise ValueError(f"latents have zero variance over the dataset ({count} values); cannot scale them")
    return 1.0 / math.sqrt(variance)


def latent_unet(
    model_config,
    image_size: int | None = None,
    block_out_channels=(64, 128),
    layers_per_block: int = 1,
    norm_num_groups: int = 32,
):
    """A diffusers `UNet2DModel` on the latents of a model with `model_config`: `latent_channels`
    in and out, `image_size / downsampling_factor` square (`image_size` defaults to
    `config.sample_size`), self-attention on the lowest of the `block_out_channels` levels."""
    from diffusers import UNet2DModel

    levels = len(block_out_channels)
    return UNet2DModel(
        sample_size=(image_size or model_config.sample_size) // model_config.downsampling_factor,
        in_channels=model_config.latent_channels,
        out_channels=model_config.latent_channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
    )


def diffusion_loss(unet, scheduler, latents: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Epsilon-prediction MSE of `unet` on scaled latents `[B, D, h, w]` at uniform random timesteps."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=latents.device
    )
    noisy = scheduler.add_noise(latents, noise, timesteps)
    return F.mse_loss(unet(noisy, timesteps).sample.float(), noise.float())


def latent_diffusion_pipeline(model, unet, scheduler=None):
    """diffusers' `LDMPipeline` with `model` (ours, VAE or VQ-VAE) as `vqvae` and a DDIM scheduler
    (default: `DDIMScheduler(clip_sample=False)`: the latents are not clipped to [-1, 1], as
    latent-diffusion's and Stable Diffusion's schedulers do not; unit-variance latents lie outside).

    The pipeline divides the denoised latents by `model.config.scaling_factor` and calls
    `model.decode(latents).sample`, which both of our families provide.
    """
    from diffusers import DDIMScheduler, LDMPipeline

    return LDMPipeline(vqvae=model, unet=unet, scheduler=scheduler or DDIMScheduler(clip_sample=False))
