"""Soak check: many encode / decode calls in one process, resident memory sampled.

A leak (a growing cache, tensors kept alive by a closure, an autograd graph held across
calls) shows as resident memory that keeps rising after the first calls have warmed up the
allocator. For each family, `--calls` calls alternate `encode` and `decode` (the VQ-VAE also
`decode_indices`) on a small model under `torch.inference_mode`, with a fresh random batch
per call; RSS (Linux `/proc/self/statm`) is sampled every `--sample_every` calls.

    python benchmarks/bench_soak.py                  # 10,000 calls per family
    python benchmarks/bench_soak.py --calls 2000     # a quicker look

The table reports RSS after warm-up (the first 10 % of calls), at the end, and the growth
between them, in total and per 1,000 calls. Flat (within a few MiB of allocator noise) is
the target; this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import torch

from latentcode import AutoencoderConfig, AutoencoderModel, VAEConfig, VAEModel, VQVAEConfig, VQVAEModel

FAMILIES = {
    "autoencoder": (AutoencoderModel, AutoencoderConfig),
    "vae": (VAEModel, VAEConfig),
    "vqvae": (VQVAEModel, VQVAEConfig),
}
SMALL = dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32)


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(family: str, calls: int, sample_every: int, batch: int, size: int) -> dict:
    model_class, config_class = FAMILIES[family]
    torch.manual_seed(0)
    model = model_class(config_class(**SMALL)).eval()
    generator = torch.Generator().manual_seed(0)
    samples = []
    start = time.perf_counter()
    with torch.inference_mode():
        for call in range(calls):
            pixels = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
            if call % 2 == 0:
                output = model.encode(pixels)
                kept = output.latents if family != "vae" else output.latent_dist.mode()
            else:
                if family == "vqvae" and call % 4 == 1:
                    model.decode_indices(model.encode(pixels).indices)
                else:
                    model.decode(kept)
            if (call + 1) % sample_every == 0:
                samples.append((call + 1, rss_mib()))
    seconds = time.perf_counter() - start
    warm = next(rss for done, rss in samples if done >= calls // 10)
    end = samples[-1][1]
    del model
    gc.collect()
    return {
        "family": family,
        "calls": calls,
        "seconds": seconds,
        "rss_warm": warm,
        "rss_end": end,
        "growth": end - warm,
        "growth_per_1000": (end - warm) / max(1, (calls - calls // 10)) * 1000,
        "peak": max(rss for _, rss in samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000, help="encode / decode calls per family")
    parser.add_argument("--sample_every", type=int, default=250)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch_size}x3x{args.image_size}x{args.image_size}"
    )
    print(
        "| family | calls | seconds | RSS after warm-up (MiB) | RSS at end (MiB) | growth (MiB) | per 1,000 calls (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for family in args.families:
        r = soak(family, args.calls, args.sample_every, args.batch_size, args.image_size)
        print(
            f"| {r['family']} | {r['calls']} | {r['seconds']:.0f} | {r['rss_warm']:.1f} | {r['rss_end']:.1f} | "
            f"{r['growth']:+.1f} | {r['growth_per_1000']:+.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
