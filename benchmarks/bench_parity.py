"""Does latentcode's VAE (or VQ-VAE backbone) train worse than diffusers' at identical
architecture and loss? (issue 24)

    # 1. same initial weights, identical batches and posterior noise, both in one process:
    #    the per-step losses must agree to float32 rounding
    python benchmarks/bench_parity.py lockstep --family vae --steps 5
    python benchmarks/bench_parity.py lockstep --family vae --steps 5 --no_winograd --nchw
    python benchmarks/bench_parity.py lockstep --family vqvae --steps 5
    # the default initialisations of both sides, pooled over 100 seeds each
    python benchmarks/bench_parity.py init --family vae
    # 2. seed pairs, one process per side running side by side (one thread each); the
    #    summary pairs the two sides' held-out PSNR per seed: mean difference +- standard error
    python benchmarks/bench_parity.py sweep --family vae --init independent --seeds 0-7 --steps 300 \\
        --output_dir benchmarks/results/parity

Protocol (issue 24): the architecture of `ARCHITECTURE` (diffusers' `AutoencoderKL` /
`VQModel` with `DownEncoderBlock2D` / `UpDecoderBlock2D` levels, one ResNet block per level,
mid-block attention, 32 groups; 4 latent channels for the VAE, 3 for the VQ-VAE), AdamW, CIFAR-10
train images in an order drawn from the seed, the same batches for both sides. VAE loss: MSE
of the reconstruction of a posterior sample (noise from a generator seeded with the seed, so
both sides draw the same noise) + `KL_WEIGHT` x the KL per image (summed over latent elements,
averaged over the batch), computed the same way from each side's outputs. VQ-VAE loss: MSE +
diffusers' `VectorQuantizer` loss (ours: the imported recipe of `VQVAEModel.from_diffusers`,
`||sg(e) - z||^2 + 0.25 ||e - sg(z)||^2`, the same computation). Held-out metric: PSNR of the
reconstruction of the posterior mean (VQ: of the quantised code), clamped to [-1, 1], averaged
over the first `--test_images` CIFAR-10 test images.

`--init shared`: ours is converted from the diffusers model (`from_diffusers`), so both start
from the same weights and differ only in how the training forward / backward rounds.
`--init independent`: each side's own default initialisation from the same `torch.manual_seed`.
`--width`, `--batch_size` and `--crop` scale the protocol down for a busy CPU (a random crop of
`--crop` pixels per image, drawn from the seed, the same for both sides).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, VQModel
from diffusers.utils import logging as diffusers_logging

from latentcode import VAEConfig, VAEModel, VQVAEConfig, VQVAEModel
from latentcode.conversion.imported_vq_recipe import IMPORTED_VQ_LOSS_WEIGHTS, IMPORTED_VQ_TRAINING
from latentcode.evaluation.metrics import psnr
from latentcode.modules.backbones import ldm as backbone

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import load_images, to_pixels  # noqa: E402

# The architecture of issue 24 (`--width` divides the channel counts).
ARCHITECTURE = dict(block_out_channels=(64, 128, 128), layers_per_block=1, norm_num_groups=32)
LATENT_CHANNELS = {"vae": 4, "vqvae": 3}
CODEBOOK_SIZE = 1024
KL_WEIGHT = 1e-6
LEARNING_RATE = 4e-4
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "cifar10"


# ----------------------------------------------------------------------------------------------
# The two sides
# ----------------------------------------------------------------------------------------------


def architecture(width: int = 1) -> dict:
    """`ARCHITECTURE` with every channel count divided by `width` (groups too, so each group keeps
    its channels)."""
    return dict(
        block_out_channels=tuple(c // width for c in ARCHITECTURE["block_out_channels"]),
        layers_per_block=ARCHITECTURE["layers_per_block"],
        norm_num_groups=ARCHITECTURE["norm_num_groups"] // width,
    )


def diffusers_model(family: str, arch: dict, seed: int):
    """diffusers' `AutoencoderKL` / `VQModel` with its default initialisation from `seed`."""
    levels = len(arch["block_out_channels"])
    common = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=LATENT_CHANNELS[family],
        **arch,
    )
    torch.manual_seed(seed)
    if family == "vqvae":
        return VQModel(num_vq_embeddings=CODEBOOK_SIZE, **common)
    return AutoencoderKL(**common)


# ours' 3x3 convolutions (`model.set_conv_implementation`): "auto", or "direct" with --no_winograd
CONV_IMPLEMENTATION = "auto"


def our_model(family: str, arch: dict, seed: int, init: str):
    """Ours (convolutions as `CONV_IMPLEMENTATION` says)."""
    model = _our_model(family, arch, seed, init)
    model.set_conv_implementation(CONV_IMPLEMENTATION)
    return model


def _our_model(family: str, arch: dict, seed: int, init: str):
    """Ours: converted from `diffusers_model(family, arch, seed)` (`init="shared"`), or with our
    default initialisation from `seed` (`"independent"`). The VQ-VAE has diffusers' quantiser
    objective either way (`IMPORTED_VQ_TRAINING` and `IMPORTED_VQ_LOSS_WEIGHTS`)."""
    if init == "shared":
        model_class = VQVAEModel if family == "vqvae" else VAEModel
        return model_class.from_diffusers(diffusers_model(family, arch, seed))
    torch.manual_seed(seed)
    latent_channels = LATENT_CHANNELS[family]
    if family == "vqvae":
        config = VQVAEConfig(
            latent_channels=latent_channels,
            codebook_dim=latent_channels,
            codebook_size=CODEBOOK_SIZE,
            quantizer="vq",
            quantizer_config=IMPORTED_VQ_TRAINING,
            **IMPORTED_VQ_LOSS_WEIGHTS,
            **arch,
        )
        return VQVAEModel(config)
    return VAEModel(VAEConfig(latent_channels=latent_channels, **arch))


def training_loss(model, family: str, pixels: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
    """The protocol's loss for either side: MSE + `KL_WEIGHT` x KL per image (VAE, reconstructing
    a posterior sample drawn with `noise`), or MSE + the quantiser's loss (VQ-VAE)."""
    is_ours = isinstance(model, (VAEModel, VQVAEModel))
    if family == "vqvae":
        if is_ours:
            return model(pixels).loss
        output = model(pixels)
        return F.mse_loss(output.sample, pixels) + output.commit_loss.mean()
    if is_ours:
        output = model(pixels, sample_posterior=True, generator=noise)
        return output.reconstruction_loss + KL_WEIGHT * output.kl
    posterior = model.encode(pixels).latent_dist
    sample = model.decode(posterior.sample(generator=noise)).sample
    return F.mse_loss(sample, pixels) + KL_WEIGHT * posterior.kl().mean()


@torch.no_grad()
def held_out_psnr(model, family: str, test_pixels: torch.Tensor, batch_size: int = 250) -> float:
    """Mean PSNR (dB) of the eval-mode reconstruction of the posterior mean (VQ: of the quantised
    code), clamped to [-1, 1]."""
    model.eval()
    values = []
    for pixels in test_pixels.split(batch_size):
        sample = model(pixels).sample if family == "vqvae" else model(pixels, sample_posterior=False).sample
        values.append(psnr(sample.clamp(-1, 1), pixels))
    model.train()
    return float(torch.cat(values).mean())


# ----------------------------------------------------------------------------------------------
# Data: the same batches and crops for both sides
# ----------------------------------------------------------------------------------------------


class Batches:
    """Training batches `[batch_size, 3, crop, crop]` in [-1, 1]: CIFAR-10 train images in an
    order drawn from `seed` (a new permutation per epoch), each randomly cropped to `crop`."""

    def __init__(self, images: torch.Tensor, batch_size: int, crop: int, seed: int):
        self.images, self.batch_size, self.crop = images, batch_size, crop
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)

    def next(self) -> torch.Tensor:
        if self.order.numel() < self.batch_size:
            self.order = torch.cat([self.order, torch.randperm(self.images.shape[0], generator=self.generator)])
        indices, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        pixels = to_pixels(self.images[indices])
        size = pixels.shape[-1]
        if self.crop == size:
            return pixels
        top, left = torch.randint(0, size - self.crop + 1, (2,), generator=self.generator).tolist()
        return pixels[:, :, top : top + self.crop, left : left + self.crop].contiguous()


def load_split(data_dir: Path, split: str, limit: int) -> torch.Tensor:
    """The first `limit` images of a CIFAR-10 split, uint8 `[N, 3, 32, 32]`."""
    return load_images(None, str(data_dir / split), split, "img", limit)


# ----------------------------------------------------------------------------------------------
# lockstep: both sides from the same weights, step by step
# ----------------------------------------------------------------------------------------------


def lockstep(args) -> list[dict]:
    """Train diffusers' model and ours, converted from it, on identical batches and noise; per
    step, the two losses and their relative difference, and the largest relative difference of
    any parameter tensor after the step (`||ours - diffusers|| / ||diffusers||`)."""
    arch = architecture(args.width)
    peer = diffusers_model(args.family, arch, args.seed).train()
    ours = our_model(args.family, arch, args.seed, "shared").train()
    optimizers = [torch.optim.AdamW(m.parameters(), lr=LEARNING_RATE) for m in (peer, ours)]
    batches = Batches(
        load_split(args.data_dir, "train", args.steps * args.batch_size), args.batch_size, args.crop, args.seed
    )
    peer_keys = peer.state_dict().keys()
    rows = []
    for step in range(args.steps):
        pixels = batches.next()
        losses = []
        for model, optimizer in zip((peer, ours), optimizers):
            loss = training_loss(model, args.family, pixels, torch.Generator().manual_seed(args.seed * 100_003 + step))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        converted = ours.to_diffusers().state_dict()
        weights = peer.state_dict()
        drift = max(
            float((converted[k] - weights[k]).norm() / weights[k].norm().clamp_min(1e-30))
            for k in peer_keys
            if weights[k].is_floating_point()
        )
        rows.append(
            {
                "step": step,
                "diffusers": losses[0],
                "ours": losses[1],
                "relative": abs(losses[1] - losses[0]) / losses[0],
                "weights": drift,
            }
        )
        print(
            f"step {step}: diffusers {losses[0]:.9g}  ours {losses[1]:.9g}  relative {rows[-1]['relative']:.2e}  "
            f"weights {drift:.2e}",
            flush=True,
        )
    return rows


# ----------------------------------------------------------------------------------------------
# init: the two default initialisations, pooled over seeds
# ----------------------------------------------------------------------------------------------

INIT_PARAMETERS = (
    "decoder.conv_out.bias",
    "quant_conv.bias",
    "post_quant_conv.weight",
    "post_quant_conv.bias",
    "encoder.conv_out.bias",
)


def compare_inits(args) -> None:
    """Per parameter of `INIT_PARAMETERS`, the values of `--init_samples` default initialisations
    of each side (diffusers from seeds 0.., ours from seeds 10,000..), pooled: their standard
    deviations and a two-sample Kolmogorov-Smirnov test's p-value."""
    from scipy.stats import ks_2samp

    arch = architecture(args.width)
    pooled = {name: ([], []) for name in INIT_PARAMETERS}
    for seed in range(args.init_samples):
        ours = our_model(args.family, arch, 10_000 + seed, "independent").state_dict()
        peer = our_model(args.family, arch, seed, "shared").state_dict()  # diffusers' init, our names
        for name, (mine, theirs) in pooled.items():
            mine.append(ours[name].flatten())
            theirs.append(peer[name].flatten())
    for name, (mine, theirs) in pooled.items():
        mine, theirs = torch.cat(mine), torch.cat(theirs)
        p_value = ks_2samp(mine.numpy(), theirs.numpy()).pvalue
        print(
            f"{name}: {mine.numel()} values, std ours {mine.std():.4f} diffusers {theirs.std():.4f}, KS p {p_value:.2f}"
        )


# ----------------------------------------------------------------------------------------------
# run / sweep: one side per process, seed after seed
# ----------------------------------------------------------------------------------------------


def run(args) -> None:
    """Train one side (`--side`) for each seed of `--seeds`; append one JSON line per seed
    (held-out PSNR at every `--eval_every` steps and at the end) to `--output`."""
    torch.set_num_threads(args.threads)
    arch = architecture(args.width)
    train_images = load_split(args.data_dir, "train", min(args.steps * args.batch_size, 50_000))
    test_pixels = to_pixels(load_split(args.data_dir, "test", args.test_images))
    for seed in args.seeds:
        if args.side == "ours":
            model = our_model(args.family, arch, seed, args.init)
        else:
            model = diffusers_model(args.family, arch, seed)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
        batches = Batches(train_images, args.batch_size, args.crop, seed)
        noise = torch.Generator().manual_seed(seed)
        curve, began = [], time.perf_counter()
        for step in range(1, args.steps + 1):
            loss = training_loss(model, args.family, batches.next(), noise)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step % args.eval_every == 0 or step == args.steps:
                curve.append((step, loss.item(), held_out_psnr(model, args.family, test_pixels)))
        record = {
            **{k: getattr(args, k) for k in ("family", "side", "init", "steps", "batch_size", "crop", "width")},
            "seed": seed,
            "threads": args.threads,
            "winograd": CONV_IMPLEMENTATION == "auto",
            "psnr": curve[-1][2],
            "curve": curve,
            "seconds": time.perf_counter() - began,
        }
        with open(args.output, "a") as file:
            file.write(json.dumps(record) + "\n")
        print(f"{args.side} seed {seed}: {record['psnr']:.3f} dB in {record['seconds']:.0f} s", flush=True)


def summarize(path: Path) -> str:
    """A markdown table: per (family, init, steps, scale), the paired PSNR difference ours -
    diffusers over the seeds both sides finished, mean +- standard error."""
    groups: dict[tuple, dict[int, dict[str, float]]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        key = (record["family"], record["init"], record["steps"], record["batch_size"], record["crop"], record["width"])
        groups.setdefault(key, {}).setdefault(record["seed"], {})[record["side"]] = record["psnr"]
    lines = [
        "| family | init | steps | batch | crop | width | pairs | diffusers dB | ours dB | ours - diffusers dB | per seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, seeds in sorted(groups.items()):
        pairs = {s: v for s, v in sorted(seeds.items()) if len(v) == 2}
        if not pairs:
            continue
        differences = [v["ours"] - v["diffusers"] for v in pairs.values()]
        mean = statistics.mean(differences)
        error = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else float("nan")
        family, init, steps, batch, crop, width = key
        lines.append(
            f"| {family} | {init} | {steps} | {batch} | {crop} | 1/{width} | {len(pairs)} "
            f"| {statistics.mean(v['diffusers'] for v in pairs.values()):.2f} "
            f"| {statistics.mean(v['ours'] for v in pairs.values()):.2f} | {mean:+.2f} +- {error:.2f} "
            f"| {', '.join(f'{d:+.2f}' for d in differences)} |"
        )
    return "\n".join(lines)


def sweep(args) -> None:
    """`run` for both sides at once, one process per side (one thread each), then `summarize`."""
    args.output_dir.mkdir(parents=True, exist_ok=True)
    output = args.output_dir / "parity.jsonl"
    passed = [a for a in sys.argv[2:]]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "run", "--side", side, "--output", str(output), *passed], env=environment
        )
        for side in ("diffusers", "ours")
    ]
    if any(process.wait() for process in processes):
        raise SystemExit("a side failed; see its output above")
    print(summarize(output))


def parse_seeds(text: str) -> list[int]:
    """`"0-7"` -> [0, ..., 7]; `"0,3,5"` -> [0, 3, 5]."""
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(s) for s in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("lockstep", "init", "run", "sweep", "summarize"))
    parser.add_argument("--family", choices=("vae", "vqvae"), default="vae")
    parser.add_argument("--init", choices=("shared", "independent"), default="independent")
    parser.add_argument("--side", choices=("ours", "diffusers"))
    parser.add_argument("--seed", type=int, default=0, help="lockstep's seed")
    parser.add_argument("--seeds", type=parse_seeds, default=[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--width", type=int, default=1, help="divide every channel count by this")
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--test_images", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--init_samples", type=int, default=100, help="init: models per side")
    parser.add_argument("--no_winograd", action="store_true", help="ours with direct convolutions")
    parser.add_argument("--nchw", action="store_true", help="ours' activations in NCHW instead of channels_last")
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--output", type=Path, help="run / summarize: the JSON-lines file")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results/parity"))
    args = parser.parse_args(argv)
    diffusers_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    global CONV_IMPLEMENTATION
    CONV_IMPLEMENTATION = "direct" if args.no_winograd else "auto"
    if args.nchw:
        backbone.activation_memory_format = lambda x: torch.preserve_format
    if args.command == "lockstep":
        lockstep(args)
    elif args.command == "init":
        compare_inits(args)
    elif args.command == "run":
        run(args)
    elif args.command == "sweep":
        sweep(args)
    else:
        print(summarize(args.output))


if __name__ == "__main__":
    main()
