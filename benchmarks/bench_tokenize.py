"""latentcode-tokenize throughput against the model's own encode throughput, on CIFAR-10.

The model is the CIFAR-10 VQ-VAE preset's architecture (`training/configs/vqvae_cifar10.yaml`:
channels 128/256/256, 8 latent channels, K = 8,192; untrained: throughput does not depend on
the weights). "Encode" is `model.encode_to_sequence` on batches already decoded into memory;
"tokenize" is the whole `tokenize()` on the CIFAR-10 test split (10,000 JPEG-encoded images in
parquet; `--images N`: its first N): reading, decoding in workers, encoding, writing shards and card.

    python benchmarks/bench_tokenize.py --threads 1 --workers 1     # this 2-core machine
    python benchmarks/bench_tokenize.py --device cuda --workers 8    # a GPU machine
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

import latentcode.tokenize.writer as tokenize_writer
from latentcode import VQVAEConfig, VQVAEModel
from latentcode.data import ImageTransform
from latentcode.tokenize import tokenize

CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"

sys.path.insert(0, str(Path(__file__).parent))
from bench_prior_codes import write_subset  # noqa: E402

PRESET = dict(
    in_channels=3,
    block_out_channels=(128, 256, 256),
    layers_per_block=2,
    norm_num_groups=32,
    mid_block_add_attention=False,
    latent_channels=8,
    codebook_size=8192,
    sample_size=32,
)


def encode_rate(model, batch_size: int, images: int) -> float:
    table = pq.read_table(CIFAR10 / "test" / "test-00000-of-00001.parquet", columns=["img"]).slice(0, images)
    transform = ImageTransform(32, 3)
    pixels = torch.stack([transform.load(row["img"], random.Random(0)) for row in table.to_pylist()])
    batches = [pixels[i : i + batch_size].to(model.device) for i in range(0, images, batch_size)]
    model.encode_to_sequence(batches[0])  # warm-up
    _sync(model)
    start = time.perf_counter()
    for batch in batches:
        model.encode_to_sequence(batch)
    _sync(model)
    return images / (time.perf_counter() - start)


def timed_encode(model, seconds: list[float]):
    """`encode_stored_code` that adds its wall time to `seconds`: the model's share of a tokenize run,
    measured in the same run (on a shared machine, two separate runs see different loads)."""
    encode_stored_code = tokenize_writer.encode_stored_code

    def timed(*args, **kwargs):
        start = time.perf_counter()
        codes = encode_stored_code(*args, **kwargs)
        _sync(model)
        seconds.append(time.perf_counter() - start)
        return codes

    return timed


def _sync(model) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch compute threads of the main process")
    parser.add_argument("--workers", type=int, default=1, help="decoding workers of tokenize")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--width", type=float, default=1.0, help="scale the preset's channel widths")
    parser.add_argument("--images", type=int, default=10_000, help="tokenize the first N test images (<= 10,000)")
    parser.add_argument("--encode_images", type=int, default=2048, help="images timed for the encode-only rate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    widths = [round(width * args.width) for width in PRESET["block_out_channels"]]
    model = VQVAEModel(VQVAEConfig(**{**PRESET, "block_out_channels": widths})).to(args.device).eval()
    encode_seconds: list[float] = []
    tokenize_writer.encode_stored_code = timed_encode(model, encode_seconds)
    encode = encode_rate(model, args.batch_size, args.encode_images)
    with tempfile.TemporaryDirectory() as folder:
        source = CIFAR10 if args.images >= 10_000 else Path(folder) / "subset"
        if args.images < 10_000:  # the first images of the test split, as a parquet folder of their own
            write_subset(source, "test", args.images)
        start = time.perf_counter()
        info = tokenize(
            model,
            Path(folder) / "codes",
            train_data_dir=str(source),
            split="test",
            image_column="img",
            batch_size=args.batch_size,
            num_workers=args.workers,
            progress=False,
        )
        seconds = time.perf_counter() - start
    rate = info["images"] / seconds
    print(
        f"device {args.device}, {args.threads} thread(s), {args.workers} worker(s), batch {args.batch_size}, {widths}"
    )
    print("| | images/s |\n|---|---|")
    print(f"| model.encode_to_sequence, decoded images in memory | {encode:.1f} |")
    print(
        f"| tokenize (CIFAR-10 test, {info['images']:,} images, {seconds:.1f} s) | {rate:.1f} ({rate / encode:.0%}) |"
    )
    share = sum(encode_seconds) / seconds
    print(f"model encode inside that tokenize run: {sum(encode_seconds):.1f} s of {seconds:.1f} s ({share:.0%})")


if __name__ == "__main__":
    main()
