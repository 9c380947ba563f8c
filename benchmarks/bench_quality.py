"""Reconstruction quality on CIFAR-10: latentcode's quantizers against diffusers and
vector-quantize-pytorch, side by side, on one backbone.

    python benchmarks/bench_quality.py --train_data_dir ../shared/datasets/cifar10/train --quick
    python benchmarks/bench_quality.py --train_data_dir ../shared/datasets/cifar10/train \\
        --rows "latentcode default" "diffusers VQModel" --codebook_sizes 512 8192 --max_train_steps 2000
    python benchmarks/bench_quality.py   # the Hub dataset uoft-cs/cifar10 (network or HF cache)

Every row trains the same backbone (the diffusers / taming VQ-VAE encoder and decoder,
`BACKBONE`, 32x32 images -> 8x8 tokens) from the same initial weights on the same images in the
same order, with the same batch, optimiser (Adam) and step budget; only the quantizer differs:

- `diffusers VQModel`: diffusers' `VQModel` with its own `VectorQuantizer` (codebook loss,
  uniform init);
- `diffusers + vqp EMA` / `+ rotation`: that `VQModel` with vector-quantize-pytorch's
  `VectorQuantize` (EMA 0.99, k-means init, dead-code expiry at half the mean count per code:
  `vqp_vector_quantize`; rows measured before 2026-12-07 used an absolute threshold of 2, which
  re-seeded nearly every code every step), rotation trick off / on;
- `diffusers + vqp SimVQ`: that `VQModel` with vector-quantize-pytorch's `SimVQ`;
- `latentcode default`: `VQVAEConfig()` with only the sizes set, and each latentcode recipe
  (`vq` + rotation trick, `simvq`, `fsq`, `lfq`, `bsq`, `residual_vq`) at the same bits per token.

The rows are trained in lockstep, `--eval_steps` steps each in turn, so a busy machine slows
them alike; after each round every row's test PSNR is measured on the first `--curve_images`
test images (the curve), and at the end PSNR, SSIM, codebook usage and perplexity on
`--num_test_images` test images (the test split is never trained on). images/s counts
training steps only. Results go to `--output_dir`: `quality_<steps>steps.json`, the markdown
table `quality_<steps>steps.md` and one plot of test PSNR against steps per codebook size,
rewritten after every round (a run stopped early leaves the table of the steps each row
reached, measured on the curve images).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import latentcode
from latentcode.data import decode_image, image_only, load_image_stream, resolve_image_column
from latentcode.evaluation.figures import line_chart
from latentcode.evaluation.metrics import CodebookHistogram, psnr, ssim
from latentcode.modeling import VAEOutput
from latentcode.objectives import AutoencoderObjective

# The shared backbone: the diffusers / taming blocks, narrow enough for a 2-core CPU.
BACKBONE = dict(
    block_out_channels=(16, 32, 32),
    layers_per_block=1,
    latent_channels=8,
    norm_num_groups=8,
    sample_size=32,
)

# Codebook sizes and the FSQ levels with exactly that many codes.
FSQ_LEVELS = {512: (8, 8, 8), 8192: (8, 8, 8, 4, 4), 65536: (8, 8, 8, 8, 4, 4)}
LARGE_CODEBOOK = 65536


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def load_images(
    dataset_name: str | None, data_dir: str | None, split: str, image_column: str, limit: int
) -> torch.Tensor:
    """The first `limit` images of a split (a Hub dataset's `split`, or all of `data_dir`) as
    uint8 `[N, 3, 32, 32]` (RGB, in dataset order)."""
    # A local folder's splits are named as `datasets` names them (`test-*.parquet` -> "test").
    stream = load_image_stream(dataset_name=dataset_name, split=split, train_data_dir=data_dir)
    stream = image_only(stream, resolve_image_column(stream, image_column))
    images = []
    for example in stream:
        image = decode_image(example["image"]).convert("RGB")
        images.append(torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(32, 32, 3))
        if len(images) == limit:
            break
    if not images:
        raise ValueError(f"no images in split {split!r} of {dataset_name or data_dir}")
    return torch.stack(images).permute(0, 3, 1, 2).contiguous()


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 `[B, 3, H, W]` -> float `[B, 3, H, W]` in [-1, 1]."""
    return images.float() / 127.5 - 1


# ----------------------------------------------------------------------------------------------
# Rows: a model, its training loss and its tokenizer round trip
# ----------------------------------------------------------------------------------------------


class VQPytorchInDiffusers(nn.Module):
    """A vector-quantize-pytorch quantizer in the place of diffusers' `VQModel.quantize`:
    `forward(h [B, D, h, w]) -> (quantized, loss, (None, None, indices [B, h, w]))`."""

    def __init__(self, quantizer: nn.Module):
        super().__init__()
        self.quantizer = quantizer

    def forward(self, latents: torch.Tensor):
        quantized, indices, loss = self.quantizer(latents)
        return quantized, loss.sum(), (None, None, indices)


@dataclass
class Row:
    name: str
    codebook_size: int  # per level
    depth: int  # levels per token
    model: nn.Module
    is_latentcode: bool
    optimizer: torch.optim.Optimizer | None = None
    steps: int = 0
    train_seconds: float = 0.0
    curve: list[tuple[int, float]] = field(default_factory=list)
    # The latest measurement: on the curve images after each round, on the whole test split at
    # the end (`eval_images` and `steps` say which).
    final: dict = field(default_factory=dict)

    @property
    def bits_per_token(self) -> float:
        return self.depth * math.log2(self.codebook_size)

    def loss(self, pixels: torch.Tensor) -> torch.Tensor:
        """The training objective: MSE reconstruction + the quantizer's own losses."""
        if self.is_latentcode:
            return self.model(pixels).loss
        latents = self.model.encode(pixels).latents
        quantized, quantizer_loss, _ = self.model.quantize(latents)
        sample = self.model.decode(quantized, force_not_quantize=True).sample
        return F.mse_loss(sample, pixels) + quantizer_loss.mean()

    @torch.no_grad()
    def reconstruct(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenizer round trip in eval mode: `(reconstruction, indices [B, h, w(, depth)])`."""
        self.model.eval()
        try:
            if self.is_latentcode:
                indices = self.model.encode(pixels).indices
                return self.model.decode_indices(indices).sample, indices
            latents = self.model.encode(pixels).latents
            quantized, _, (_, _, indices) = self.model.quantize(latents)
            sample = self.model.decode(quantized, force_not_quantize=True).sample
            return sample, indices.reshape(latents.shape[0], *latents.shape[2:])
        finally:
            self.model.train()


@dataclass
class VAERow:
    """A VAE row: latentcode's `VAEModel` or diffusers' `AutoencoderKL`, which share the interface
    used here (`encode(x).latent_dist` with `.sample()`, `.mode()`, `.kl()`; `decode(z).sample`),
    trained on latentcode's VAE objective `objective` (what `training/train.py` builds)."""

    name: str
    model: nn.Module
    is_latentcode: bool
    objective: AutoencoderObjective
    steps: int = 0  # optimiser steps taken: the step of the KL warm-up

    def loss(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """`objective` at optimiser step `steps` on pixels `[B, C, H, W]`: MSE of the decoded
        posterior sample + kl_weight * warm-up factor * KL / (C * H * W), the KL in nats per image
        (summed over the latent's values) averaged over the batch, as `VAEModel.forward` computes
        it. `generator`: the posterior noise (default: the global RNG, as in training)."""
        posterior = self.model.encode(pixels).latent_dist
        sample = self.model.decode(posterior.sample(generator=generator)).sample
        output = VAEOutput(sample=sample, kl=posterior.kl().float().mean())  # what the objective reads
        return self.objective(output, pixels, self.steps)[0]

    @torch.no_grad()
    def reconstruct(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode round trip through the posterior mean: `(reconstruction [B, C, H, W], KL [B])`,
        the KL to N(0, I) in nats per image."""
        self.model.eval()
        try:
            posterior = self.model.encode(pixels).latent_dist
            return self.model.decode(posterior.mode()).sample, posterior.kl().float()
        finally:
            self.model.train()

    def latent_shape(self, pixels: torch.Tensor) -> tuple[int, ...]:
        """The latent `(C, h, w)` of one image of `pixels` `[B, C, H, W]`."""
        with torch.no_grad():
            return tuple(self.model.encode(pixels[:1]).latent_dist.mean.shape[1:])


def latentcode_row(level_size: int, depth: int = 1, seed: int = 0, backbone: dict = BACKBONE, **config_options) -> Row:
    """`VQVAEModel(VQVAEConfig(**backbone, **config_options))`, codes of `level_size` per level."""
    torch.manual_seed(seed)
    config = latentcode.VQVAEConfig(**backbone, **config_options)
    return Row("", level_size, depth, latentcode.VQVAEModel(config).train(), is_latentcode=True)


def diffusers_row(
    codebook_size: int, quantizer: nn.Module | None = None, seed: int = 0, backbone: dict = BACKBONE
) -> Row:
    """diffusers' `VQModel` with the backbone weights of the `latentcode default` row (the exact
    export), and its own quantizer or `quantizer` (a vector-quantize-pytorch module)."""
    torch.manual_seed(seed)
    config = latentcode.VQVAEConfig(**backbone, codebook_size=codebook_size)
    model = latentcode.VQVAEModel(config).to_diffusers()
    if quantizer is not None:
        model.quantize = VQPytorchInDiffusers(quantizer)
    return Row("", codebook_size, 1, model.train(), is_latentcode=False)


def diffusers_vae_row(
    backbone: dict = BACKBONE, seed: int = 0, kl_weight: float | None = None, kl_warmup_steps: int = 0
) -> VAERow:
    """diffusers' `AutoencoderKL` with the initial weights of latentcode's
    `VAEModel(VAEConfig(**backbone))` (the exact export), on that model's objective
    (`AutoencoderObjective.for_model`: MSE + KL at the config's or the given `kl_weight`, warmed up
    over `kl_warmup_steps`)."""
    torch.manual_seed(seed)
    ours = latentcode.VAEModel(latentcode.VAEConfig(**backbone))
    objective = AutoencoderObjective.for_model(ours, kl_weight=kl_weight, kl_warmup_steps=kl_warmup_steps)
    return VAERow("", ours.to_diffusers().train(), False, objective)


def vqp_vector_quantize(dim: int, codebook_size: int, tokens_per_step: int, **options):
    """vector-quantize-pytorch's `VectorQuantize` (EMA codebook, k-means init, dead-code expiry)
    configured for `codebook_size` codes and `tokens_per_step` encoder vectors per training step.

    vqp's `threshold_ema_dead_code` is absolute: a code expires when the EMA of its hits *per step*
    falls below it (its source: `cluster_size < threshold_ema_dead_code`, `cluster_size` an EMA of
    the per-step counts). Its README's one example, 2, is for 512 codes and 1,024 vectors per step:
    the mean count per code there (1,024 / 512 = 2). At K = 8,192 and 256-1,024 tokens per step
    the mean count is 0.03-0.125, so a threshold of 2 expires every code every step (up to one
    re-seed per token: the whole codebook in 8-32 steps; measured: benchmarks/README.md). So the
    threshold is scaled to the regime, as a fraction of the mean count: half of it (the README's
    example sits at 1x; half is also latentcode's default relative threshold,
    `dead_code_threshold=0.5`). `decay=0.99`: vqp's default 0.8 averages over ~5 steps, under one
    hit per code in this regime, so the EMA count could not tell a dead code from a live one; 0.99
    averages over ~100 steps (3-12 hits of a mean code). k-means init (10 iterations; vqp's
    README: SoundStream's first-batch k-means) and commitment weight 0.25 (latentcode's; vqp's
    default is 1). Only vqp's public arguments: a re-seeded code starts at the threshold (vqp's
    `reset_cluster_size`, not an argument of `VectorQuantize`)."""
    from vector_quantize_pytorch import VectorQuantize

    mean_count = tokens_per_step / codebook_size
    return VectorQuantize(
        dim=dim,
        codebook_size=codebook_size,
        accept_image_fmap=True,
        commitment_weight=0.25,
        decay=0.99,
        kmeans_init=True,
        kmeans_iters=10,
        threshold_ema_dead_code=0.5 * mean_count,
        **options,
    )


def build_rows(
    codebook_sizes: list[int], names: list[str] | None = None, seed: int = 0, tokens_per_step: int = 16 * 64
) -> list[Row]:
    """Every row of the benchmark for the given codebook sizes (those whose name contains one of
    `names`, if given). The large-codebook size gets the rows built for large codebooks.
    `tokens_per_step`: encoder vectors per training batch (batch x 8 x 8), which scales vqp's
    dead-code threshold (`vqp_vector_quantize`)."""
    from vector_quantize_pytorch import SimVQ

    dim = BACKBONE["latent_channels"]
    builders = []
    for size in codebook_sizes:
        bits = int(math.log2(size))
        if 2**bits != size:
            raise ValueError(f"codebook sizes must be powers of 2 (matched bits per token), got {size}")

        def vqp_ema(rotation: bool, size=size):
            return vqp_vector_quantize(dim, size, tokens_per_step, rotation_trick=rotation)

        suffix = f" K={size}"
        if size != LARGE_CODEBOOK:
            builders.append(("diffusers VQModel" + suffix, lambda size=size: diffusers_row(size, seed=seed)))
            builders.append(
                ("diffusers + vqp EMA" + suffix, lambda size=size: diffusers_row(size, vqp_ema(False, size), seed))
            )
        builders += [
            (
                "diffusers + vqp EMA + rotation" + suffix,
                lambda size=size: diffusers_row(size, vqp_ema(True, size), seed),
            ),
            (
                "diffusers + vqp SimVQ" + suffix,
                lambda size=size: diffusers_row(size, SimVQ(dim=dim, codebook_size=size, channel_first=True), seed),
            ),
            ("latentcode default" + suffix, lambda size=size: latentcode_row(size, codebook_size=size, seed=seed)),
            (
                "latentcode vq + rotation" + suffix,
                lambda size=size: latentcode_row(size, codebook_size=size, gradient_estimator="rotation", seed=seed),
            ),
            (
                "latentcode simvq" + suffix,
                lambda size=size: latentcode_row(size, quantizer="simvq", codebook_size=size, seed=seed),
            ),
            (
                "latentcode fsq" + suffix,
                lambda size=size: latentcode_row(size, quantizer="fsq", fsq_levels=FSQ_LEVELS[size], seed=seed),
            ),
            (
                "latentcode lfq" + suffix,
                lambda size=size: latentcode_row(size, quantizer="lfq", codebook_size=size, seed=seed),
            ),
            (
                "latentcode bsq" + suffix,
                lambda size=size: latentcode_row(size, quantizer="bsq", codebook_size=size, seed=seed),
            ),
        ]
        if size == 512:  # 3 levels of 8 codes: the same 9 bits per token
            builders.append(
                (
                    "latentcode residual_vq 3x8" + suffix,
                    lambda: latentcode_row(
                        8, depth=3, quantizer="residual_vq", codebook_size=8, num_quantizers=3, seed=seed
                    ),
                )
            )
    rows = []
    for name, build in builders:
        if names and not any(wanted in name for wanted in names):
            continue
        row = build()
        row.name = name
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------


def train_steps(row: Row, train_images: torch.Tensor, batch_size: int, num_steps: int) -> None:
    """`num_steps` Adam steps on consecutive batches of `train_images` (cycled), from `row.steps`."""
    for _ in range(num_steps):
        start = (row.steps * batch_size) % train_images.shape[0]
        indices = torch.arange(start, start + batch_size) % train_images.shape[0]
        pixels = to_pixels(train_images[indices])
        began = time.perf_counter()
        loss = row.loss(pixels)
        loss.backward()
        row.optimizer.step()
        row.optimizer.zero_grad(set_to_none=True)
        row.train_seconds += time.perf_counter() - began
        row.steps += 1


@torch.no_grad()
def evaluate(row: Row | VAERow, test_images: torch.Tensor, batch_size: int = 250) -> dict:
    """Test PSNR / SSIM (dB / [0, 1], means over images) of uint8 `[N, 3, H, W]` images, and code
    usage / perplexity (a VQ `Row`) or the mean KL to N(0, I) in nats per image (a `VAERow`,
    reconstructed from the posterior mean)."""
    is_vae = isinstance(row, VAERow)
    usage = None if is_vae else CodebookHistogram(row.codebook_size)
    psnrs, ssims, kls = [], [], []
    for start in range(0, test_images.shape[0], batch_size):
        pixels = to_pixels(test_images[start : start + batch_size])
        reconstruction, code = row.reconstruct(pixels)  # code: indices (VQ), KL per image (VAE)
        reconstruction = reconstruction.clamp(-1, 1)
        psnrs.append(psnr(reconstruction, pixels))
        ssims.append(ssim(reconstruction, pixels))
        if is_vae:
            kls.append(code)
        else:
            usage.update(code)
    metrics = {"psnr": float(torch.cat(psnrs).mean()), "ssim": float(torch.cat(ssims).mean())}
    if is_vae:
        metrics["kl"] = float(torch.cat(kls).mean())
    else:
        metrics.update(usage=usage.usage(), perplexity=usage.perplexity())
    return {**metrics, "eval_images": test_images.shape[0]}


def measurements(row: Row, metrics: dict, batch_size: int) -> dict:
    """`metrics` of `evaluate` with the row's training figures: steps, images/s, bits per token and
    (latentcode rows) the codebook usage over the quantizer's window of recent training tokens."""
    quantizer = getattr(row.model, "quantizer", None) if row.is_latentcode else None
    return {
        **metrics,
        "steps": row.steps,
        "images_per_second": row.steps * batch_size / max(row.train_seconds, 1e-9),
        "bits_per_token": row.bits_per_token,
        "train_seconds": row.train_seconds,
        "train_window_usage": float(quantizer.codebook_usage) if quantizer is not None else None,
    }


def run(
    rows: list[Row],
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    max_train_steps: int,
    batch_size: int,
    learning_rate: float,
    eval_steps: int,
    curve_images: int,
    log=print,
    after_round=None,
) -> None:
    """Train every row in lockstep and fill `row.curve` (none for `curve_images=0`) and `row.final`.

    `after_round()` is called after every round's curve measurement (e.g. to write the partial
    results, so that a run stopped early still leaves a table of the steps each row reached)."""
    for row in rows:
        row.optimizer = torch.optim.Adam([p for p in row.model.parameters() if p.requires_grad], lr=learning_rate)
    curve_set = test_images[:curve_images]
    while rows[0].steps < max_train_steps:
        chunk = min(eval_steps, max_train_steps - rows[0].steps)
        for row in rows:
            train_steps(row, train_images, batch_size, chunk)
            if curve_images > 0:
                row.final = measurements(row, evaluate(row, curve_set), batch_size)
                row.curve.append((row.steps, row.final["psnr"]))
                log(f"step {row.steps:5d}  {row.name:40s} curve PSNR {row.curve[-1][1]:6.2f} dB")
                if after_round is not None:
                    after_round()
    for row in rows:
        row.final = measurements(row, evaluate(row, test_images), batch_size)
        log(f"final {row.name:40s} test PSNR {row.final['psnr']:6.2f} dB on {test_images.shape[0]} images")
        if after_round is not None:
            after_round()


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def markdown(rows: list[Row], steps: int, batch_size: int) -> str:
    reference = {row.codebook_size: row for row in rows if row.name.startswith("diffusers VQModel")}
    lines = [
        f"Budget {steps} steps of batch {batch_size} (`steps`: what the row reached); PSNR / SSIM / usage / "
        "perplexity on the first `test images` of the test split; train usage: codes hit in the quantizer's "
        "window of recent training tokens; speed = images/s of training steps relative to diffusers VQModel "
        "at the same K.",
        "",
        "| row | bits/token | steps | test images | test PSNR (dB) | SSIM | usage | perplexity | train usage "
        "| images/s | speed vs diffusers |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        final = row.final
        if not final:
            continue
        peer = reference.get(row.codebook_size) or reference.get(2 ** int(row.bits_per_token))
        speed = "-"
        if peer is not None and peer.final:
            speed = f"{final['images_per_second'] / peer.final['images_per_second']:.2f}"
        window = final["train_window_usage"]
        window = "-" if window is None else f"{100 * window:.1f}%"
        lines.append(
            f"| {row.name} | {row.bits_per_token:.0f} | {final['steps']} | {final['eval_images']} | "
            f"{final['psnr']:.2f} | {final['ssim']:.3f} | {100 * final['usage']:.1f}% | {final['perplexity']:.0f} | "
            f"{window} | {final['images_per_second']:.0f} | {speed} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[Row], args, output_dir: Path, echo: bool = True) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    sizes = "_".join(str(size) for size in args.codebook_sizes)
    stem = f"quality_{args.max_train_steps}steps_K{sizes}"
    results = {
        "settings": {
            "max_train_steps": args.max_train_steps,
            "eval_steps": args.eval_steps,
            "train_batch_size": args.train_batch_size,
            "learning_rate": args.learning_rate,
            "num_test_images": args.num_test_images,
            "curve_images": args.curve_images,
            "threads": args.threads,
            "backbone": BACKBONE,
        },
        "rows": {row.name: {"curve": row.curve, **row.final} for row in rows if row.final},
    }
    (output_dir / f"{stem}.json").write_text(json.dumps(results, indent=2))
    table = markdown(rows, args.max_train_steps, args.train_batch_size)
    (output_dir / f"{stem}.md").write_text(table)
    if echo:
        print(table)
    for size in sorted({int(row.name.rsplit("K=", 1)[1]) for row in rows}):
        series = {
            row.name.rsplit(" K=", 1)[0]: row.curve for row in rows if row.name.endswith(f"K={size}") and row.curve
        }
        if not series:
            continue
        chart = line_chart(series, f"CIFAR-10 test PSNR, K = {size}", "training steps", "PSNR (dB)")
        chart.save(output_dir / f"{stem}_psnr_K{size}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", default=None, help="Hub id (default uoft-cs/cifar10 without a data dir)")
    parser.add_argument("--train_data_dir", default=None, help="local parquet shards of the train split")
    parser.add_argument("--test_data_dir", default=None, help="defaults to the sibling 'test' of --train_data_dir")
    parser.add_argument("--image_column", default="img")
    parser.add_argument("--codebook_sizes", type=int, nargs="+", default=[512, 8192, LARGE_CODEBOOK])
    parser.add_argument("--rows", nargs="*", default=None, help="only rows whose name contains one of these")
    parser.add_argument("--max_train_steps", type=int, default=2000)
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--eval_steps", type=int, default=250)
    parser.add_argument("--curve_images", type=int, default=1000)
    parser.add_argument("--num_test_images", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="100 steps, 128 curve / 500 test images")
    parser.add_argument("--output_dir", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_train_steps, args.eval_steps, args.curve_images, args.num_test_images = 100, 50, 128, 500
    if args.dataset_name is None and args.train_data_dir is None:
        args.dataset_name = "uoft-cs/cifar10"
    test_dir = args.test_data_dir or (str(Path(args.train_data_dir).parent / "test") if args.train_data_dir else None)
    torch.set_num_threads(args.threads)

    needed = min(50000, args.max_train_steps * args.train_batch_size)
    train_images = load_images(args.dataset_name, args.train_data_dir, "train", args.image_column, needed)
    # A fixed shuffle of the training images: every row sees the same batches in the same order.
    train_images = train_images[torch.randperm(train_images.shape[0], generator=torch.Generator().manual_seed(0))]
    test_images = load_images(args.dataset_name, test_dir, "test", args.image_column, args.num_test_images)
    rows = build_rows(args.codebook_sizes, args.rows, args.seed, tokens_per_step=args.train_batch_size * 64)
    if not rows:
        raise SystemExit(f"no row matches --rows {args.rows}")
    print(f"{len(rows)} rows, {train_images.shape[0]} train / {test_images.shape[0]} test images")
    run(
        rows,
        train_images,
        test_images,
        args.max_train_steps,
        args.train_batch_size,
        args.learning_rate,
        args.eval_steps,
        args.curve_images,
        after_round=lambda: write_outputs(rows, args, Path(args.output_dir), echo=False),
    )
    write_outputs(rows, args, Path(args.output_dir))


if __name__ == "__main__":
    main()
