"""The β-VAE family's trade-off: reconstruction against per-dimension KL, per objective and weight.

Each run trains a vector-latent VAE (the Burgess et al. 2018 architecture of the converted
disentangling-vae models: 10 dimensions, Bernoulli likelihood) from scratch through
`training/train.py`'s engine on the 100 real MNIST digits of `../shared/datasets/mnist-samples`
(32x32 grey; 8 held out for the run's validation), with one objective at one weight, then
measures on all 100 digits, through the posterior mean:

- reconstruction: the Bernoulli negative log-likelihood, nats per image (disentangling-vae's
  reconstruction loss) and PSNR;
- KL(q(z|x) || N(0, I)) per dimension, averaged over the images (`latentcode.traversal.
  per_dimension_kl`): its total, the dimensions above 0.1 nats ("active") and the share of the
  total held by the largest one and the largest three;
- the total correlation between the latent dimensions (what FactorVAE and β-TCVAE penalise) and
  the index-code mutual information: β-TCVAE's minibatch stratified estimate
  (`latentcode.disentanglement.decompose_kl`) with the 100 digits as the batch and the dataset
  (N = 100), averaged over `--tc_samples` posterior draws.

Expected: as the pressure on the KL grows (β, smaller capacity C, the TC weight), reconstruction
gets worse and the KL concentrates in fewer dimensions.

    python benchmarks/bench_betavae.py                       # every run of RUNS: 9 x 600 steps, ~30 min on a busy core
    python benchmarks/bench_betavae.py --steps 100 --only beta
    python benchmarks/bench_betavae.py --steps 3000 --runs factor:tc_weight=0,6,40,100 --anneal_fraction 0.027
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from accelerate.state import AcceleratorState, GradientState

from latentcode.disentanglement import decompose_kl, reconstruction_nll, total_correlation_estimate
from latentcode.training import build_engine, load_config
from latentcode.traversal import per_dimension_kl

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mnist-samples"
RESULTS = Path(__file__).resolve().parent / "results" / "betavae"

# (objective, the weight that sets the pressure on the KL, its value): low to high pressure.
RUNS = [
    ("beta", "beta", 1.0),
    ("beta", "beta", 4.0),
    ("beta", "beta", 16.0),
    ("capacity", "capacity_end", 25.0),
    ("capacity", "capacity_end", 5.0),
    ("btcvae", "tc_weight", 1.0),
    ("btcvae", "tc_weight", 10.0),
    ("factor", "tc_weight", 6.0),
    ("factor", "tc_weight", 40.0),
]
OBJECTIVES = ("beta", "capacity", "btcvae", "factor")


def parse_runs(specs: list[str]) -> list[tuple[str, str, float]]:
    """`["factor:tc_weight=0,6", ...]` -> `[("factor", "tc_weight", 0.0), ("factor", "tc_weight", 6.0), ...]`."""
    runs = []
    for spec in specs:
        objective, _, assignment = spec.partition(":")
        weight, _, values = assignment.partition("=")
        try:
            numbers = [float(value) for value in values.split(",")]
        except ValueError:
            numbers = []
        if objective not in OBJECTIVES or not weight or not numbers:
            raise SystemExit(
                f"--runs takes OBJECTIVE:WEIGHT=V1,V2,... with OBJECTIVE one of {OBJECTIVES} and numbers for the "
                f"values (e.g. factor:tc_weight=6,40), got {spec!r}"
            )
        runs.extend((objective, weight, number) for number in numbers)
    return runs


def all_digits() -> torch.Tensor:
    """The 100 digits, `[100, 1, 32, 32]` in [-1, 1], in file order."""
    arrays = [np.asarray(PIL.Image.open(path).convert("L"), dtype=np.float32) for path in sorted(DATA.glob("*.png"))]
    return torch.from_numpy(np.stack(arrays))[:, None] / 127.5 - 1


def train_one(objective: str, weight: str, value: float, seed: int, args: argparse.Namespace, output_dir: Path):
    """Train one model; returns it (unwrapped, eval mode), the seconds the run took and FactorVAE's
    trained TC discriminator (None for the other objectives)."""
    config = load_config(
        output_dir=str(output_dir),
        model_family="vae",
        model=dict(
            backbone="vector", in_channels=1, latent_channels=10, use_quant_conv=False, use_post_quant_conv=False
        ),
        train_data_dir=str(DATA),
        resolution=32,
        train_batch_size=args.batch_size,
        max_train_steps=args.steps,
        learning_rate=args.learning_rate,
        lr_scheduler="constant",
        max_grad_norm=math.inf,  # disentangling-vae does not clip
        num_validation_images=8,
        checkpointing_steps=0,
        validation_steps=0,
        report_to="none",
        seed=seed,
        vae_objective=objective,
        anneal_steps=anneal_steps(args),
        capacity_weight=args.capacity_weight,
        tc_discriminator_learning_rate=args.tc_discriminator_learning_rate,
        **{weight: value},
    )
    start = time.perf_counter()
    engine = build_engine(config)
    engine.run()
    # accelerate's process-wide singletons: the next in-process run starts from scratch.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    discriminator = getattr(engine.task.objective.vae_loss, "discriminator", None)
    return engine.task.unwrapped.eval(), time.perf_counter() - start, discriminator


def anneal_steps(args: argparse.Namespace) -> int:
    """The annealing steps: `--anneal_fraction` of the run."""
    return round(args.steps * args.anneal_fraction)


@torch.no_grad()
def kl_decomposition(model, images: torch.Tensor, samples: int) -> dict:
    """β-TCVAE's decomposition of the KL of `images` `[N, C, H, W]` (the batch and the dataset:
    N = len(images)), each part in nats per image, averaged over `samples` posterior draws
    (seeded: the same draws for every model)."""
    posterior = model.encode(images).latent_dist
    generator = torch.Generator().manual_seed(0)
    parts = [
        decompose_kl(posterior.sample(generator=generator), posterior.mean, posterior.logvar, len(images))
        for _ in range(samples)
    ]
    return {
        "mi": float(np.mean([p.mutual_information.item() for p in parts])),
        "tc": float(np.mean([p.total_correlation.item() for p in parts])),
        "dw_kl": float(np.mean([p.dimension_wise_kl.item() for p in parts])),
    }


@torch.no_grad()
def discriminator_tc(model, discriminator, images: torch.Tensor, samples: int) -> float:
    """FactorVAE's own TC estimate (the term `tc_weight` weighs) on posterior draws of `images`,
    averaged over `samples` draws (the same seeded draws as [`kl_decomposition`])."""
    posterior = model.encode(images).latent_dist
    generator = torch.Generator().manual_seed(0)
    estimates = [
        total_correlation_estimate(discriminator.eval()(posterior.sample(generator=generator))).item()
        for _ in range(samples)
    ]
    return float(np.mean(estimates))


@torch.no_grad()
def measure(model, images: torch.Tensor, tc_samples: int) -> dict:
    reconstruction = model.decode(model.encode(images).latent_dist.mode()).sample
    mse = torch.mean(((reconstruction.clamp(-1, 1) - images) / 2) ** 2).item()
    kl = per_dimension_kl(model, images)
    ordered = torch.sort(kl, descending=True).values
    total = kl.sum().item()
    return {
        "nll": reconstruction_nll(reconstruction, images, "bernoulli").item(),
        "psnr": 10 * math.log10(1 / mse),
        "kl": total,
        "active_dims": int((kl > 0.1).sum()),
        "top1_share": ordered[0].item() / total if total > 0 else float("nan"),
        "top3_share": ordered[:3].sum().item() / total if total > 0 else float("nan"),
        "kl_per_dim": [round(v, 3) for v in kl.tolist()],
        **kl_decomposition(model, images, tc_samples),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| objective | weight | seed | recon NLL (nats/img) | PSNR dB | KL (nats/img) | TC (nats) | MI (nats) | "
        "dims > 0.1 nats | top-1 share | top-3 share | KL per dimension, sorted |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dims = ", ".join(f"{v:.1f}" for v in sorted(r["kl_per_dim"], reverse=True))
        gamma = f", capacity_weight = {r['capacity_weight']:g}" if r["objective"] == "capacity" else ""
        lines.append(
            f"| {r['objective']} | {r['weight']} = {r['value']:g}{gamma} | {r['seed']} | {r['nll']:.1f} | {r['psnr']:.2f} | "
            f"{r['kl']:.2f} | {r['tc']:.2f} | {r['mi']:.2f} | {r['active_dims']} | {r['top1_share']:.2f} | "
            f"{r['top3_share']:.2f} | {dims} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps per run")
    parser.add_argument("--batch_size", type=int, default=32, help="images per step (the published runs: 64)")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="Adam's (the published MNIST runs: 5e-4)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed and weight")
    parser.add_argument("--only", default=None, help="one objective (beta, capacity, btcvae, factor)")
    parser.add_argument(
        "--runs", nargs="+", default=None, help="OBJECTIVE:WEIGHT=V1,V2,... instead of RUNS (factor:tc_weight=6,40)"
    )
    parser.add_argument(
        "--anneal_fraction",
        type=float,
        default=0.25,
        help="the share of the run over which the annealed quantity rises (published MNIST: capacity 100k of 375k "
        "steps = 0.27, the others 10k of 375k = 0.027)",
    )
    parser.add_argument(
        "--capacity_weight",
        type=float,
        default=1000.0,
        help="capacity's γ (disentangling-vae's default; its betaB_mnist: 100)",
    )
    parser.add_argument(
        "--tc_discriminator_learning_rate",
        type=float,
        default=5e-5,
        help="the TC discriminator's learning rate (published MNIST)",
    )
    parser.add_argument("--tc_samples", type=int, default=10, help="posterior draws the TC and MI are averaged over")
    parser.add_argument("--output", default=str(RESULTS / "betavae.jsonl"), help="JSON lines, one per run")
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"needs the real MNIST digits at {DATA} (../shared/datasets/mnist-samples)")
    torch.set_num_threads(1)
    images = all_digits()
    runs = parse_runs(args.runs) if args.runs else [run for run in RUNS if args.only in (None, run[0])]
    settings = dict(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        anneal_steps=anneal_steps(args),
        capacity_weight=args.capacity_weight,
        tc_discriminator_learning_rate=args.tc_discriminator_learning_rate,
    )
    rows = []
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    for objective, weight, value in runs:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as folder:
                model, seconds, discriminator = train_one(objective, weight, value, seed, args, Path(folder) / "run")
            row = dict(objective=objective, weight=weight, value=value, seed=seed, **settings)
            row["seconds"] = round(seconds, 1)
            row.update(measure(model, images, args.tc_samples), load_average=round(os.getloadavg()[0], 1))
            if discriminator is not None:
                row["discriminator_tc"] = discriminator_tc(model, discriminator, images, args.tc_samples)
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(args.output, "a") as file:
                file.write(json.dumps(row) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
