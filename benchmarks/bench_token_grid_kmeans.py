"""Does a coarser token grid code taef2's latent better at the same rate? Untrained residual k-means.

A photo tokenizer from taef2 (`VQVAEModel.from_autoencoder`) gives each latent position (8x8
pixels) its own token of 16 bits (residual VQ, 2 levels of 256 codes: 0.25 bits per pixel). A
token for a block of b x b positions with 16 b^2 bits (residual VQ, 2 b^2 levels of 256 codes on
the block's b^2 x 32 values) has the same rate and can share its bits between the positions,
which are correlated. This measures the two codes before any training: residual k-means fitted on
taef2's cached latents of the training photos, scored on Kodak photos decoded by taef2's decoder.

    python benchmarks/bench_token_grid_kmeans.py --source taef2 --latents_dataset taef2-photo-latents \
        --kodak ../shared/datasets/kodak --blocks 1 2 4 --output benchmarks/results/photo_tokenizer/token_grid_kmeans.jsonl

One JSON row per block size: latent mean squared error and PSNR (decoded, clamped to [-1, 1],
against the photo) on the Kodak photos, seconds to fit. Deterministic for a `--seed`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from latentcode.evaluation.metrics import psnr
from latentcode.modeling.autoencoder import AutoencoderModel
from latentcode.modules.quantizers.maintenance import kmeans
from latentcode.training.photo_tokenizer_task import load_photos

CODES_PER_LEVEL = 256
LEVELS_PER_POSITION = 2  # 2 x log2(256) = 16 bits per 8x8 pixels: 0.25 bits per pixel


def training_latents(dataset: Path) -> torch.Tensor:
    """The cached latents of `latentcode-tokenize` (`--latents_dataset`): `[N, C, h, w]`."""
    table = pq.read_table(sorted(dataset.glob("data/*.parquet")))
    shape = table.column("latent_shape")[0].as_py()
    rows = table.column("latents").to_numpy(zero_copy_only=False)
    return torch.tensor(np.stack(rows).astype(np.float32)).reshape(-1, *shape)


def as_block_vectors(latents: torch.Tensor, block: int) -> torch.Tensor:
    """`[N, C, h, w]` -> `[N * h/b * w/b, C * b * b]`: one vector per b x b block of positions."""
    vectors = F.pixel_unshuffle(latents, block)
    return vectors.permute(0, 2, 3, 1).reshape(-1, vectors.shape[1])


def from_block_vectors(vectors: torch.Tensor, shape: torch.Size, block: int) -> torch.Tensor:
    """The inverse of [`as_block_vectors`] for latents of `shape`."""
    n, c, h, w = shape
    grid = vectors.reshape(n, h // block, w // block, c * block * block).permute(0, 3, 1, 2)
    return F.pixel_shuffle(grid, block)


def fit_residual_codebooks(vectors, levels, k, iterations) -> list[torch.Tensor]:
    """Residual k-means (the quantisers' own k-means): each level's codebook is fitted to what the
    levels before it left."""
    codebooks, residual = [], vectors.clone()
    for _ in range(levels):
        codes, _ = kmeans(residual, k, iterations)
        residual = residual - codes[torch.cdist(residual, codes).argmin(1)]
        codebooks.append(codes)
    return codebooks


def quantize(vectors: torch.Tensor, codebooks: list[torch.Tensor]) -> torch.Tensor:
    """Greedy residual quantisation of `vectors` `[M, D]` by `codebooks`: the sum of the chosen codes."""
    quantized, residual = torch.zeros_like(vectors), vectors.clone()
    for codes in codebooks:
        chosen = codes[torch.cdist(residual, codes).argmin(1)]
        quantized, residual = quantized + chosen, residual - chosen
    return quantized


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="taef2 converted (conversion/convert_taesd_to_latentcode.py)")
    parser.add_argument(
        "--latents_dataset", type=Path, required=True, help="latentcode-tokenize's output of the photos"
    )
    parser.add_argument("--kodak", type=Path, required=True, help="folder of the held-out photos")
    parser.add_argument("--photos", type=int, default=24, help="how many of the held-out photos, in name order")
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 2], help="token block sizes b (b x b positions)")
    parser.add_argument("--train_vectors", type=int, default=60000, help="block vectors k-means is fitted on")
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True, help="JSON lines, one row per block size")
    args = parser.parse_args()

    model = AutoencoderModel.from_pretrained(args.source).eval()
    latents = training_latents(args.latents_dataset)
    with torch.inference_mode():
        photos = load_photos(str(args.kodak), args.photos, model.downsampling_factor)
        held_out = [(pixels, model.encode(pixels).latents) for pixels in photos]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w") as rows:
        for block in args.blocks:
            torch.manual_seed(args.seed)
            start = time.perf_counter()
            vectors = as_block_vectors(latents, block)
            vectors = vectors[torch.randperm(len(vectors))[: args.train_vectors]]
            levels = LEVELS_PER_POSITION * block * block
            codebooks = fit_residual_codebooks(vectors, levels, CODES_PER_LEVEL, args.iterations)
            fit_seconds = time.perf_counter() - start
            errors, psnrs = [], []
            with torch.inference_mode():
                for pixels, code in held_out:
                    estimate = from_block_vectors(quantize(as_block_vectors(code, block), codebooks), code.shape, block)
                    errors.append(float(((estimate - code) ** 2).mean()))
                    psnrs.append(float(psnr(model.decode(estimate).sample.clamp(-1, 1), pixels)))
            row = {
                "block": block,
                "token": f"{block}x{block} latent positions ({8 * block}x{8 * block} pixels)",
                "levels": levels,
                "codes_per_level": CODES_PER_LEVEL,
                "bits_per_pixel": levels * np.log2(CODES_PER_LEVEL) / (64 * block * block),
                "photos": len(held_out),
                "latent_mse": float(np.mean(errors)),
                "psnr": float(np.mean(psnrs)),
                "psnr_per_photo": psnrs,
                "train_vectors": len(vectors),
                "fit_seconds": round(fit_seconds, 1),
                "seed": args.seed,
            }
            rows.write(json.dumps(row) + "\n")
            rows.flush()
            print(f"b={block}: {levels} x {CODES_PER_LEVEL} codes, latent MSE {row['latent_mse']:.4f}, "
                  f"PSNR {row['psnr']:.2f} dB on {len(held_out)} photos ({fit_seconds:.0f} s to fit)")  # fmt: skip


if __name__ == "__main__":
    main()
