"""The latent scaling factor: latent-diffusion multiplies latents by `scaling_factor` so that
the diffusion model sees roughly unit variance, and divides by it before decoding.

Converted models carry the factor over (diffusers' `scaling_factor`, or the latent-diffusion
YAML's `scale_factor`). For a newly trained autoencoder, [`compute_scaling_factor`] estimates
it as `1 / std` of the latents over a dataset, as latent-diffusion does on its first batch.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable, Iterator

import torch
from torch import nn

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@torch.no_grad()
def compute_scaling_factor(
    model: nn.Module, batches: Iterable[torch.Tensor], generator: torch.Generator | None = None
) -> float:
    """`1 / std` of the latents the model gives a diffusion model, pooled over every element of
    every batch.

    The latents are what latent-diffusion diffuses: a posterior sample for a `VAEModel`
    (reproducible with `generator`), the pre-quantisation `.latents` for a `VQVAEModel`, and
    `.latents` for an `AutoencoderModel`.

    Args:
        model: a latentcode model.
        batches: pixel batches `[B, C, H, W]` in [-1, 1].
        generator: for the VAE's posterior samples.
    """
    count, total, total_sq = 0, 0.0, 0.0
    for pixels in batches:
        encoded = model.encode(pixels.to(model.device, model.dtype))
        if hasattr(encoded, "latent_dist"):
            latents = encoded.latent_dist.sample(generator=generator)
        else:
            latents = encoded.latents
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


def image_folder_batches(
    folder: str | os.PathLike, processor, batch_size: int = 8, max_images: int | None = None
) -> Iterator[torch.Tensor]:
    """Images found under `folder` (recursively, sorted) as pixel batches `[B, C, R, R]` in
    [-1, 1], prepared by `processor` (a [`LatentCodeImageProcessor`])."""
    from PIL import Image

    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_SUFFIXES)
    )[:max_images]
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {os.fspath(folder)!r}")
    for start in range(0, len(paths), batch_size):
        images = []
        for path in paths[start : start + batch_size]:
            with Image.open(path) as image:
                image.load()
                images.append(image)
        yield processor(images, return_tensors="pt").pixel_values


def add_scaling_factor_arguments(parser: argparse.ArgumentParser) -> None:
    """The conversion scripts' `--scaling_factor` / `--compute_scaling_factor DATA` flags."""
    group = parser.add_argument_group("scaling factor")
    group.add_argument("--scaling_factor", type=float, default=None, help="set config.scaling_factor to this value")
    group.add_argument(
        "--compute_scaling_factor",
        metavar="DATA",
        default=None,
        help="folder of images: set config.scaling_factor to 1/std of the model's latents over them",
    )
    group.add_argument("--resolution", type=int, default=256, help="image size for --compute_scaling_factor")
    group.add_argument("--max_images", type=int, default=1024, help="images used by --compute_scaling_factor")
    group.add_argument("--batch_size", type=int, default=8)
    group.add_argument("--seed", type=int, default=0, help="seed of the VAE's posterior samples")


def apply_scaling_factor_arguments(model: nn.Module, args: argparse.Namespace) -> None:
    """Set `model.config.scaling_factor` as the flags of [`add_scaling_factor_arguments`] say."""
    if args.scaling_factor is not None and args.compute_scaling_factor is not None:
        raise ValueError("give either --scaling_factor or --compute_scaling_factor, not both")
    if args.scaling_factor is not None:
        model.config.scaling_factor = args.scaling_factor
    elif args.compute_scaling_factor is not None:
        from ..image_processing import LatentCodeImageProcessor

        processor = LatentCodeImageProcessor.from_model_config(model.config, size=args.resolution)
        batches = image_folder_batches(args.compute_scaling_factor, processor, args.batch_size, args.max_images)
        generator = torch.Generator(model.device).manual_seed(args.seed)
        model.config.scaling_factor = compute_scaling_factor(model, batches, generator=generator)


def save_converted_model(model: nn.Module, args: argparse.Namespace) -> None:
    """The import scripts' last step: set the scaling factor as the flags say, then write the model
    and its `LatentCodeImageProcessor` to `args.output_dir`."""
    from ..image_processing import LatentCodeImageProcessor

    apply_scaling_factor_arguments(model, args)
    model.save_pretrained(args.output_dir)
    LatentCodeImageProcessor.from_model_config(model.config).save_pretrained(args.output_dir)
    print(f"wrote {type(model).__name__} (scaling_factor={model.config.scaling_factor}) to {args.output_dir}")
