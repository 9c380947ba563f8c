"""`latentcode-eval --pretrained_model_name_or_path MODEL`: evaluate a saved model on a streamed dataset.

    latentcode-eval --pretrained_model_name_or_path ./my-vqvae --dataset_name builtin:digits
    latentcode-eval --pretrained_model_name_or_path ./my-vqvae --train_data_dir ../shared/datasets/cifar10 \\
        --max_images 500 --no_fid   # a quick look at the first 500 test images
    latentcode-eval --pretrained_model_name_or_path org/vqvae-celeba --dataset_name nielsr/CelebA-faces \\
        --split train --resolution 64 --inception_weights ~/pt_inception-2015-12-05-6726825d.pth
    latentcode-eval --pretrained_model_name_or_path ./my-vae --train_data_dir ./val_images --no_fid --no_lpips
    latentcode-eval --pretrained_model_name_or_path ./my-vqvae --train_data_dir ../shared/datasets/kodak \\
        --full_resolution --tile_sample_size 256 --no_fid   # large images at their own size, tiled

The data options are those of `training/train.py`, except that `--split` defaults to the source's
held-out split (`test`, else `validation`, else `train`, which the output then says), all of whose
images are scored unless `--max_images` says fewer. Shows a progress bar over the images the split
holds, then writes `metrics.json`, `metrics.md`, `reconstructions.png`, `psnr_histogram.png`
(and `codebook_usage.png` for a VQ-VAE) into `--output_dir`, prints the markdown table (for a VAE
with the KL and activity of each latent dimension: what each spends, and whether it varies with the
image) and a one-line summary.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

# torch, the data pipeline and the metrics load in the functions that use them: --help is instant.
if TYPE_CHECKING:
    import torch

    from .evaluate import EvaluationImages
from ..errors import command_line
from ..model_loading import add_model_arguments, load_pretrained_model
from ..threads import set_num_threads
from ..tile_size import MIN_DEFAULT_TILE_SIZE, default_tile_size
from ..training.config import (
    DATA_SOURCE_FIELDS,
    ComputeOptions,
    DataOptions,
    DefaultsHelpFormatter,
    add_config_arguments,
)

# Splits that hold images a model was not trained on, in order of preference.
HELD_OUT_SPLITS = ("test", "validation")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentcode-eval",
        description="Reconstruction PSNR/SSIM/LPIPS/rFID, codebook usage and perplexity (VQ-VAE), KL and "
        "bits per dimension (VAE) and throughput of a latentcode model over a streamed dataset.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_model_arguments(parser)
    data = parser.add_argument_group("data (as in training/train.py)")
    add_config_arguments(
        data, DataOptions, [name for name in DATA_SOURCE_FIELDS if name != "split"], keep_defaults=True
    )
    data.add_argument(
        "--split",
        default=None,
        help="dataset split to evaluate on (default: the source's held-out split, test or validation; train "
        "where it has no other)",
    )
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
        help=f"with --full_resolution: tile size in pixels (default: the model's sample_size, at least "
        f"{MIN_DEFAULT_TILE_SIZE})",
    )
    data.add_argument(
        "--max_images",
        type=int,
        default=None,
        help="evaluate on the first N readable images, for a quick look (default: every image of the split)",
    )
    data.add_argument("--batch_size", type=int, default=32, help="images per encode/decode call")
    add_config_arguments(parser, ComputeOptions, ["threads"], keep_defaults=True)
    _add_metric_and_output_arguments(parser)
    return parser


def _add_metric_and_output_arguments(parser: argparse.ArgumentParser) -> None:
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
    output.add_argument(
        "--device",
        default=None,
        help="torch device to run the model on, e.g. cpu, cuda, cuda:1 (default: cuda when available, else cpu)",
    )
    output.add_argument("--seed", type=int, default=0, help="seed of the VAE's posterior samples")


def held_out_split(dataset_name: str | None, dataset_config_name: str | None, train_data_dir: str | None) -> str:
    """The split `latentcode-eval` scores by default: the first of `HELD_OUT_SPLITS` the source has,
    else `"train"`. A source whose splits cannot be listed (a Hub dataset offline) is asked for its
    `"test"` split, and opening it then names the problem."""
    import datasets

    from ..data import BUILTIN_DATASETS

    if train_data_dir is None and (dataset_name is None or dataset_name in BUILTIN_DATASETS):
        return "test"  # the embedded datasets hold out every tenth image as "test"
    try:
        splits = datasets.get_dataset_split_names(train_data_dir or dataset_name, dataset_config_name)
    except Exception:  # no network, or a layout `datasets` cannot list: let the loader say what is wrong
        return "test"
    return next((split for split in HELD_OUT_SPLITS if split in splits), "train")


def _progress(batches: Iterable[torch.Tensor], total: int | None) -> Iterator[torch.Tensor]:
    """`batches` as they come, with a progress bar in images (rate and, with a `total`, time left)."""
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="img", desc="evaluating", dynamic_ncols=True) as bar:
        for pixels in batches:
            yield pixels
            bar.update(len(pixels))
        if bar.total != bar.n:  # unreadable images were skipped: the bar ends full at what was scored
            bar.total = bar.n
            bar.refresh()


def images_in_split(args: argparse.Namespace, stream) -> int | None:
    """How many images `args.split` holds, for the progress bar: the embedded dataset's or a local
    folder's or file's count (file names and parquet footers, no image read), a Hub dataset's from
    its card's split sizes; None where unknown (the bar then shows no time left)."""
    from ..data import BUILTIN_DATASETS, open_source

    if args.dataset_name is not None and args.dataset_name not in BUILTIN_DATASETS and args.train_data_dir is None:
        split_info = (stream.info.splits or {}).get(args.split)
        return split_info.num_examples if split_info is not None and split_info.num_examples else None
    try:
        return len(
            open_source(
                args.split,
                dataset_name=args.dataset_name or (None if args.train_data_dir else "builtin:digits"),
                dataset_config_name=args.dataset_config_name,
                train_data_dir=args.train_data_dir,
                image_column=args.image_column,
                cache_dir=args.cache_dir,
            )
        )
    except (ValueError, OSError):  # a layout only `datasets` reads: the stream still scores it
        return None


def _load_model(args: argparse.Namespace):
    return load_pretrained_model(args.pretrained_model_name_or_path, revision=args.revision).to(args.device)


def _metric_networks(args: argparse.Namespace):
    """Inception (rFID) and LPIPS networks, loaded before any data is read so that a missing
    weight file fails fast; LPIPS is skipped with a note when its weights cannot be loaded."""
    from .metrics import InceptionFeatures, build_lpips

    inception = None if args.no_fid else InceptionFeatures(args.inception_weights).to(args.device)
    lpips = None
    if not args.no_lpips:
        try:
            lpips = build_lpips(args.lpips_net, how_to_disable="pass --no_lpips").to(args.device)
        except RuntimeError as error:
            print(f"LPIPS skipped: {error}", file=sys.stderr)
    return inception, lpips


def _evaluation_images(args: argparse.Namespace, model) -> tuple[EvaluationImages, int | str, int | None]:
    """The batches to score, the resolution they come at (`"full"` with `--full_resolution`) and
    how many images they hold (None where unknown)."""
    from ..data import (
        FullResolutionTransform,
        ImageTransform,
        image_only,
        load_image_stream,
        resolve_image_column,
    )
    from .evaluate import EvaluationImages

    if args.full_resolution:
        # Tiles only where an image (or its latent grid) exceeds the tile: smaller images run whole.
        model.enable_tiling(args.tile_sample_size or default_tile_size(model.config.sample_size))
        transform, batch_size = FullResolutionTransform(model.config.in_channels, model.downsampling_factor), 1
        resolution = "full"
    else:
        resolution = args.resolution or model.config.sample_size
        transform, batch_size = ImageTransform(resolution, model.config.in_channels), args.batch_size
    stream = load_image_stream(
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        split=args.split,
        train_data_dir=args.train_data_dir,
        cache_dir=args.cache_dir,
    )
    count = images_in_split(args, stream)
    if count is not None and args.max_images is not None:
        count = min(count, args.max_images)
    stream = image_only(stream, resolve_image_column(stream, args.image_column))
    return EvaluationImages(stream, transform, batch_size, args.max_images), resolution, count


def summary_line(metrics: dict, source: str, split: str, seconds: float) -> str:
    """One line: what was scored, how long it took and the headline numbers."""
    parts = [f"scored {metrics['num_images']} images of split {split!r} of {source} in {seconds:.1f} s"]
    for name, label, digits in (("psnr", "PSNR", 2), ("ssim", "SSIM", 4), ("lpips", "LPIPS", 4), ("rfid", "rFID", 2)):
        if name in metrics and isinstance(metrics[name], float):
            unit = " dB" if name == "psnr" else ""
            parts.append(f"{label} {metrics[name]:.{digits}f}{unit}")
    if "codebook_usage" in metrics:
        parts.append(f"codebook usage {metrics['codebook_usage']:.1%}")
    if "bits_per_pixel" in metrics:
        parts.append(f"{metrics['bits_per_pixel']:.4f} bits per pixel")
    if "active_dimensions" in metrics:
        parts.append(
            f"{metrics['active_dimensions']} active latent dimensions (posterior mean varying over the images: "
            f"variance > {metrics['active_dimension_threshold']})"
        )
    return ", ".join(parts)


@command_line
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_num_threads(args.threads)
    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .evaluate import evaluate, metrics_markdown, write_report

    if args.full_resolution and args.resolution is not None:
        raise ValueError(
            f"--full_resolution evaluates images at their own size; got --resolution {args.resolution} too: "
            "drop one of them"
        )
    if args.tile_sample_size is not None and not args.full_resolution:
        raise ValueError("--tile_sample_size applies with --full_resolution only: add it, or drop --tile_sample_size")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = _load_model(args)
    inception, lpips = _metric_networks(args)
    if args.split is None:
        args.split = held_out_split(args.dataset_name, args.dataset_config_name, args.train_data_dir)
    source = args.train_data_dir or args.dataset_name or "builtin:digits"
    print(f"evaluating {args.pretrained_model_name_or_path} on split {args.split!r} of {source}", file=sys.stderr)
    images, resolution, num_images = _evaluation_images(args, model)
    start = time.perf_counter()
    with logging_redirect_tqdm():  # a warning (a corrupt image) is printed above the bar, not inside it
        result = evaluate(
            model,
            _progress(images, num_images),
            lpips=lpips,
            inception=inception,
            decoder_std=args.decoder_std,
            num_grid_images=args.num_grid_images,
            seed=args.seed,
        )
    seconds = time.perf_counter() - start
    if lpips is None and not args.no_lpips:
        result.notes.append("LPIPS skipped: its backbone weights could not be loaded")
    if images.corrupt_images:
        result.notes.append(f"{images.corrupt_images} unreadable images skipped")
    extra = {
        "model": args.pretrained_model_name_or_path,
        "model_type": model.config.model_type,
        "data": {key: getattr(args, key) for key in ("dataset_name", "dataset_config_name", "split", "train_data_dir")}
        | {"max_images": args.max_images},
        "resolution": resolution,
        "tile_sample_size": model.tile_sample_size if args.full_resolution else None,
        "inception_weights": None if inception is None else str(inception.weights_path),
        "device": args.device,
        "threads": torch.get_num_threads(),  # --threads, else torch's default
    }
    paths = write_report(result, args.output_dir, extra)
    print(metrics_markdown(result))
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    print(summary_line(result.metrics, source, args.split, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
