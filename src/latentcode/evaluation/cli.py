"""`latentcode-eval --pretrained_model_name_or_path MODEL`: evaluate a saved model on a streamed dataset.

    latentcode-eval --pretrained_model_name_or_path ./my-vqvae --dataset_name builtin:digits --max_images 500
    latentcode-eval --pretrained_model_name_or_path org/vqvae-celeba --dataset_name nielsr/CelebA-faces \\
        --split train --resolution 64 --inception_weights ~/pt_inception-2015-12-05-6726825d.pth
    latentcode-eval --pretrained_model_name_or_path ./my-vae --train_data_dir ./val_images --no_fid --no_lpips
    latentcode-eval --pretrained_model_name_or_path ./my-vqvae --train_data_dir ../shared/datasets/kodak \
        --full_resolution --tile_sample_size 256 --no_fid   # large images at their own size, tiled

The data options are those of `training/train.py`. Writes `metrics.json`, `metrics.md`,
`reconstructions.png`, `psnr_histogram.png` (and `codebook_usage.png` for a VQ-VAE) into
`--output_dir` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import sys

import torch
from transformers import AutoModel

from ..data import FullResolutionTransform, ImageTransform, image_only, load_image_stream, resolve_image_column
from ..training.config import DATA_SOURCE_FIELDS, RunConfig, add_config_arguments
from .evaluate import EvaluationImages, evaluate, markdown_table, write_report
from .metrics import InceptionFeatures, build_lpips


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" except where the help text already explains its default."""

    def _get_help_string(self, action):
        return action.help if "default" in (action.help or "") else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentcode-eval",
        description="Reconstruction PSNR/SSIM/LPIPS/rFID, codebook usage and perplexity (VQ-VAE), KL and "
        "bits per dimension (VAE) and throughput of a latentcode model over a streamed dataset.",
        formatter_class=_DefaultsHelpFormatter,
    )
    parser.add_argument(
        "--pretrained_model_name_or_path",
        required=True,
        help="saved model: a folder written by save_pretrained or a Hub id",
    )
    data = parser.add_argument_group("data (as in training/train.py)")
    add_config_arguments(data, RunConfig, DATA_SOURCE_FIELDS, keep_defaults=True)
    data.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="images are resized and centre-cropped to this (default: the model's sample_size)",
    )
    data.add_argument(
        "--full_resolution",
        action="store_true",
        help="evaluate every image at its own size (cropped to a multiple of the downsampling factor), one "
        "image per batch, with tiled encode/decode where it exceeds --tile_sample_size",
    )
    data.add_argument(
        "--tile_sample_size",
        type=int,
        default=None,
        help="with --full_resolution: tile size in pixels (default: the model's sample_size)",
    )
    data.add_argument("--max_images", type=int, default=1000, help="evaluate on the first N readable images")
    data.add_argument("--batch_size", type=int, default=32)
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument(
        "--inception_weights",
        default=None,
        help="Inception-v3 weight file for rFID: pytorch-fid's pt_inception-2015-12-05-6726825d.pth or torchvision's "
        "inception_v3_google-0cc3c7bd.pth (default: $LATENTCODE_INCEPTION_WEIGHTS, else torch's hub cache)",
    )
    metrics.add_argument("--no_fid", action="store_true", help="skip rFID")
    metrics.add_argument("--no_lpips", action="store_true", help="skip LPIPS")
    metrics.add_argument("--lpips_net", default="alex", choices=["alex", "vgg", "squeeze"], help="LPIPS backbone")
    metrics.add_argument(
        "--decoder_std",
        type=float,
        default=None,
        help="VAE: std of the Gaussian decoder for bits/dim, in [-1, 1] units (default sqrt(kl_weight / 2))",
    )
    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", default="latentcode-eval", help="where the report goes")
    output.add_argument("--num_grid_images", type=int, default=8, help="images in the reconstruction grid")
    output.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    output.add_argument("--seed", type=int, default=0, help="seed of the VAE's posterior samples")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = AutoModel.from_pretrained(args.pretrained_model_name_or_path).to(args.device).eval()
    if args.full_resolution and args.resolution is not None:
        raise ValueError(
            f"--full_resolution evaluates images at their own size; got --resolution {args.resolution} too"
        )
    if args.tile_sample_size is not None and not args.full_resolution:
        raise ValueError("--tile_sample_size applies with --full_resolution only")
    resolution = None if args.full_resolution else args.resolution or model.config.sample_size
    if args.full_resolution:
        # Tiles only where an image (or its latent grid) exceeds the tile: smaller images run whole.
        model.enable_tiling(args.tile_sample_size)
        transform, batch_size = FullResolutionTransform(model.config.in_channels, model.downsampling_factor), 1
    else:
        transform, batch_size = ImageTransform(resolution, model.config.in_channels), args.batch_size

    # Metric networks are loaded before any data is read, so a missing weight file fails fast.
    inception = None if args.no_fid else InceptionFeatures(args.inception_weights).to(args.device)
    lpips = None
    if not args.no_lpips:
        try:
            lpips = build_lpips(args.lpips_net, how_to_disable="pass --no_lpips").to(args.device)
        except RuntimeError as error:
            print(f"LPIPS skipped: {error}", file=sys.stderr)

    stream = load_image_stream(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        split=args.split,
        train_data_dir=args.train_data_dir,
        cache_dir=args.cache_dir,
    )
    stream = image_only(stream, resolve_image_column(stream, args.image_column))
    images = EvaluationImages(stream, transform, batch_size, args.max_images)
    result = evaluate(
        model,
        images,
        lpips=lpips,
        inception=inception,
        decoder_std=args.decoder_std,
        num_grid_images=args.num_grid_images,
        seed=args.seed,
    )
    if lpips is None and not args.no_lpips:
        result.notes.append("LPIPS skipped: its backbone weights could not be loaded")
    if images.corrupt_images:
        result.notes.append(f"{images.corrupt_images} unreadable images skipped")
    extra = {
        "model": args.pretrained_model_name_or_path,
        "model_type": model.config.model_type,
        "data": {
            key: getattr(args, key)
            for key in ("dataset_name", "dataset_config_name", "split", "train_data_dir", "max_images")
        },
        "resolution": resolution or "full",
        "tile_sample_size": model.tile_sample_size if args.full_resolution else None,
        "inception_weights": None if inception is None else str(inception.weights_path),
        "device": args.device,
    }
    paths = write_report(result, args.output_dir, extra)
    print(markdown_table(result.metrics))
    for note in result.notes:
        print(f"note: {note}")
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
