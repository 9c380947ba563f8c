"""What the conversion scripts share: `--scaling_factor` / `--compute_scaling_factor DATA`
(the estimate is [`latentcode.latent_diffusion.compute_scaling_factor`]), the image-folder batches
that estimate reads, and the final save step."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

import torch
from torch import nn

from ..image_processing import IMAGE_EXTENSIONS, LatentCodeImageProcessor
from ..latent_diffusion import compute_scaling_factor


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
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )[:max_images]
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {os.fspath(folder)!r}")
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
    group.add_argument(
        "--scaling_factor",
        type=float,
        default=None,
        help="set config.scaling_factor to this value (default: the source's, else 0.18215 for KL, 1.0 for VQ)",
    )
    group.add_argument(
        "--compute_scaling_factor",
        metavar="DATA",
        default=None,
        help="folder of images: set config.scaling_factor to 1/std of the model's latents over them",
    )
    group.add_argument(
        "--resolution", type=int, default=256, help="image size for --compute_scaling_factor (default: 256)"
    )
    group.add_argument(
        "--max_images", type=int, default=1024, help="images used by --compute_scaling_factor (default: 1024)"
    )
    group.add_argument(
        "--batch_size", type=int, default=8, help="images per encode call for --compute_scaling_factor (default: 8)"
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the VAE's posterior samples (default: 0)")


def apply_scaling_factor_arguments(model: nn.Module, args: argparse.Namespace) -> None:
    """Set `model.config.scaling_factor` as the flags of [`add_scaling_factor_arguments`] say."""
    if args.scaling_factor is not None and args.compute_scaling_factor is not None:
        raise ValueError("give either --scaling_factor or --compute_scaling_factor, not both")
    if args.scaling_factor is not None:
        model.config.scaling_factor = args.scaling_factor
    elif args.compute_scaling_factor is not None:
        processor = LatentCodeImageProcessor.from_model_config(model.config, size=args.resolution)
        batches = image_folder_batches(args.compute_scaling_factor, processor, args.batch_size, args.max_images)
        generator = torch.Generator(model.device).manual_seed(args.seed)
        model.config.scaling_factor = compute_scaling_factor(model, batches, generator=generator)


def save_converted_model(model: nn.Module, args: argparse.Namespace) -> None:
    """The import scripts' last step: set the scaling factor as the flags say, then write the model
    and its `LatentCodeImageProcessor` to `args.output_dir`."""
    apply_scaling_factor_arguments(model, args)
    model.save_pretrained(args.output_dir)
    LatentCodeImageProcessor.from_model_config(model.config).save_pretrained(args.output_dir)
    print(f"wrote {type(model).__name__} (scaling_factor={model.config.scaling_factor}) to {args.output_dir}")
