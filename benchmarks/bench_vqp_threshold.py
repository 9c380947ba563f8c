"""How often vector-quantize-pytorch's `VectorQuantize` re-seeds codes at the recipe peer's regime
(K = 8,192, batch 16 of 8x8 tokens: 1,024 tokens per step), for a few `threshold_ema_dead_code`
values: the absolute 2 the recipe rows used before 2026-12-07, the mean EMA count per code
(tokens / K, the ratio of vqp's README example) and half of it (`bench_quality.vqp_vector_quantize`).

    python benchmarks/bench_vqp_threshold.py --steps 300 --settings old half \
        --output benchmarks/results/vqp_threshold/vqp_threshold.jsonl

Each setting trains the recipe peer (diffusers' `VQModel` with the one-core preset's backbone and
vqp's `VectorQuantize` with the rotation trick, `bench_recipes.peer_row`'s loop at the preset's
learning rate) for `--steps` steps on CIFAR-10 train, one thread, and counts the codes vqp's
`replace` re-seeds at each step (and how many distinct codes over the last 50 steps); then scores codebook usage and PSNR on `--test_images` held-out
test images (eval mode: no re-seeding). One JSON row per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_recipes  # noqa: E402
from bench_quality import diffusers_row, evaluate, load_images  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def record_reseeds(quantizer, reseeded: list[torch.Tensor], step: list[int]) -> None:
    """Wrap vqp's `replace` so that each call records which codes it re-seeds at `step[0]` (vqp
    re-seeds at most one code per token of the batch: a random subset of the expired ones)."""
    codebook = quantizer._codebook
    original = codebook.replace

    def replace(batch_samples, batch_mask, seq_mask=None):
        before = codebook.embed.detach().clone()
        original(batch_samples, batch_mask, seq_mask)
        changed = (codebook.embed.detach() != before).any(-1)[0].nonzero().squeeze(1)
        reseeded.append((step[0], changed))

    codebook.replace = replace


def run(threshold: float, label: str, args, train_images, test_images) -> dict:
    values = bench_recipes.preset(bench_recipes.CONFIGS / "vqvae_cifar10_cpu.yaml")
    tokens = bench_recipes.tokens_per_step(values)
    backbone = bench_recipes.peer_backbone(values)
    from vector_quantize_pytorch import VectorQuantize

    quantizer = VectorQuantize(
        dim=backbone["latent_channels"], codebook_size=bench_recipes.CODEBOOK_SIZE, accept_image_fmap=True,
        commitment_weight=0.25, decay=0.99, kmeans_init=True, kmeans_iters=10,
        threshold_ema_dead_code=threshold, rotation_trick=True,
    )  # fmt: skip
    reseeded: list = []
    step = [0]
    record_reseeds(quantizer, reseeded, step)
    row = diffusers_row(bench_recipes.CODEBOOK_SIZE, quantizer, args.seed, backbone)
    batches = bench_recipes.peer_batches(train_images, values["train_batch_size"], args.seed)

    class StepCounter:  # train_peer's curve hook: called after every step
        def maybe_copy(self, steps, state_dict):
            step[0] = steps

    start = time.perf_counter()
    bench_recipes.train_peer(row, values, batches, steps=args.steps, curve=StepCounter())
    seconds = time.perf_counter() - start
    held_out = evaluate(row, test_images)
    last = [codes for at, codes in reseeded if at >= args.steps - 50]
    distinct = torch.unique(torch.cat(last)).numel() if last else 0
    return {
        "setting": label,
        "threshold_ema_dead_code": threshold,
        "tokens_per_step": tokens,
        "mean_count_per_code": tokens / bench_recipes.CODEBOOK_SIZE,
        "steps": args.steps,
        "reseeded_per_step_last_50": sum(codes.numel() for codes in last) / min(50, args.steps),
        "distinct_codes_reseeded_last_50": distinct,
        "reseeded_total": sum(codes.numel() for _, codes in reseeded),
        "held_out_usage": held_out.get("usage"),
        "held_out_psnr": held_out["psnr"],
        "held_out_images": held_out["eval_images"],
        "train_seconds": seconds,
        "load_average": os.getloadavg(),
        "seed": args.seed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--test_images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared/datasets/cifar10"))
    parser.add_argument("--output", default="vqp_threshold.jsonl")
    parser.add_argument("--settings", nargs="+", default=["old", "mean", "half"], choices=["old", "mean", "half"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = Path(args.data_dir)
    train_images = load_images(None, str(data / "train"), "train", "img", min(50000, 16 * args.steps))
    test_images = load_images(None, str(data / "test"), "test", "img", args.test_images)
    mean = 16 * 64 / bench_recipes.CODEBOOK_SIZE
    settings = {
        "old": (2.0, "absolute 2 (rows before 2026-12-07)"),
        "mean": (mean, "the mean count (the ratio of vqp's README example)"),
        "half": (0.5 * mean, "half the mean count (now)"),
    }
    settings = [settings[name] for name in args.settings]
    with open(args.output, "w") as out:
        for threshold, label in settings:
            result = run(threshold, label, args, train_images, test_images)
            print(json.dumps(result), flush=True)
            out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
