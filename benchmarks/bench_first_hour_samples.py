"""Do the README's first-hour samples look like digits? (issue 33, item 7)

The README's "first hour" trains, on scikit-learn's 1797 digits (`builtin:digits`, 32x32 grey):
the Quickstart VQ-VAE, the VAE `my-vae`, the autoregressive prior `my-prior` over the VQ-VAE's
codes and the latent diffusion pipeline `my-ldm` on the VAE's latents. This script scores the
images each of the three generators draws (VAE prior samples, prior samples decoded by the
VQ-VAE, LDM samples) with a classifier trained on the real digits:

- the classifier: scikit-learn's `SVC` (RBF kernel, Platt-scaled probabilities) on the real
  training digits as the models see them (the training transform's 32x32 bicubic upscale),
  average-pooled back to 8x8 (the digits' own resolution, so the score does not depend on
  how smooth an upscale is);
- a sample is **recognised** when the classifier gives its most likely digit a probability of
  at least 0.8 (`--confidence`);
- the reference rows: the held-out real test digits (every tenth, which no model trains on;
  their share recognised is the best a generator can expect) and uniform noise (what a
  classifier that calls everything a digit would also recognise).

Each row also counts the digits the recognised samples were called (a generator that draws
only ones would score high with one class), and writes a grid of its first 64 samples.

    # score the folders a README walk made (WORK/my-vae, WORK/my-prior, WORK/my-ldm)
    python benchmarks/bench_first_hour_samples.py --work_dir WORK --tag after
    # run the README's chain first (each missing folder is trained by the README's command), timed
    python benchmarks/bench_first_hour_samples.py --work_dir /tmp/first-hour --train --tag after

Every process runs with `--threads` compute threads (default 2, the README's 2-core machine).
Times are wall and CPU seconds (user + system) per command, with the load average before and
after: on a shared machine the CPU seconds are the comparable figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "first_hour_samples"
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "training/accelerate_config.yaml"]


# ----------------------------------------------------------------------------------------------
# The README's chain
# ----------------------------------------------------------------------------------------------


def chain_commands(work_dir: Path, args) -> list[tuple[str, list[str]]]:
    """The first hour's training commands, as the README writes them, with outputs in `work_dir`."""
    vqvae, vae = str(work_dir / "quickstart-vqvae"), str(work_dir / "my-vae")
    return [
        ("quickstart-vqvae", [*ACCELERATE, "training/train.py", "--config", "training/configs/quickstart.yaml"]),
        ("my-vae", [*ACCELERATE, "training/train.py", "--config", args.vae_config, *shlex.split(args.vae_args)]),
        (
            "my-prior",
            [*ACCELERATE, "training/train_prior.py", "--pretrained_model_name_or_path", vqvae]
            + ["--dataset_name", "builtin:digits", "--max_train_steps", "300", "--learning_rate", "1e-3"]
            + ["--lr_warmup_steps", "30", "--top_k", "16", *shlex.split(args.prior_args)],
        ),
        (
            "my-ldm",
            [*ACCELERATE, "training/train_latent_diffusion.py", "--pretrained_model_name_or_path", vae]
            + ["--dataset_name", "builtin:digits", "--max_train_steps", "1500", "--learning_rate", "1e-3"]
            + ["--lr_warmup_steps", "50", *shlex.split(args.ldm_args)],
        ),
    ]


def load() -> str:
    """The 1-, 5- and 15-minute load averages, as `uptime` prints them."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def timed(command: list[str], log: Path, threads: int) -> dict:
    """Run `command` to completion with `threads` compute threads; its wall and CPU seconds (its
    children included) and the load before and after. Raises with the log's tail when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.update(PYTHONPATH=str(REPO / "src"), CUDA_VISIBLE_DEVICES="")
    before, start, load_before = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter(), load()
    with log.open("w") as output:
        done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({done.returncode}); {log} ends:\n{log.read_text()[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "load_before": load_before,
        "load_after": load(),
    }


def train_chain(work_dir: Path, args) -> dict:
    """Train each of the chain's folders missing from `work_dir`, one command after the other."""
    times = {}
    for name, command in chain_commands(work_dir, args):
        if (work_dir / name / "config.json").exists() or (work_dir / name / "model_index.json").exists():
            continue
        command = [*command, "--output_dir", str(work_dir / name), "--seed", str(args.train_seed)]
        print(f"training {name}: {shlex.join(command)}", flush=True)
        times[name] = {"command": shlex.join(command), **timed(command, work_dir / f"{name}.log", args.threads)}
        print(f"  {times[name]['wall_seconds']} s wall, {times[name]['cpu_seconds']} s CPU", flush=True)
    return times


# ----------------------------------------------------------------------------------------------
# The classifier
# ----------------------------------------------------------------------------------------------


def real_digits() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """All 1797 digits as the models see them: pixels `[N, 1, 32, 32]` in [-1, 1] (the training
    transform), their labels `[N]` and the held-out mask `[N]` (the builtin "test" split)."""
    from sklearn.datasets import load_digits

    from latentcode.data.images import BUILTIN_DATASETS, ImageTransform

    images = BUILTIN_DATASETS["builtin:digits"]()
    transform = ImageTransform(resolution=32, channels=1)
    pixels = torch.stack([transform(image, random.Random(0)) for image in images])
    held_out = np.arange(len(images)) % 10 == 9  # as latentcode.data.images.builtin_split
    return pixels, load_digits().target, held_out


def features(pixels: torch.Tensor) -> np.ndarray:
    """`[N, 1, 32, 32]` pixels in [-1, 1] -> `[N, 64]`: the 8x8 average in [0, 1]."""
    if pixels.ndim != 4 or pixels.shape[1:] != (1, 32, 32):
        raise ValueError(f"expected grey 32x32 samples [N, 1, 32, 32], got {tuple(pixels.shape)}")
    return F.avg_pool2d((pixels.float().clamp(-1, 1) + 1) / 2, 4).flatten(1).numpy()


def fit_classifier(pixels: torch.Tensor, labels: np.ndarray):
    """An RBF `SVC` with probabilities (scikit-learn's internal 5-fold Platt scaling)."""
    from sklearn.svm import SVC

    with warnings.catch_warnings():  # scikit-learn 1.9 deprecates `probability` (removal in 1.11)
        warnings.simplefilter("ignore", FutureWarning)
        return SVC(probability=True, random_state=0).fit(features(pixels), labels)


def score(classifier, pixels: torch.Tensor, confidence: float, labels: np.ndarray | None = None) -> dict:
    """Share of `pixels` recognised (top probability >= `confidence`), the mean top probability,
    the recognised samples' digits, and with `labels` the share recognised as the right digit."""
    probabilities = classifier.predict_proba(features(pixels))
    top, predicted = probabilities.max(axis=1), classifier.classes_[probabilities.argmax(axis=1)]
    recognised = top >= confidence
    row = {
        "samples": len(pixels),
        "recognised": round(float(recognised.mean()), 4),
        "mean_confidence": round(float(top.mean()), 4),
        "digits_recognised": {int(digit): int((predicted[recognised] == digit).sum()) for digit in range(10)},
    }
    if labels is not None:
        row["recognised_correctly"] = round(float((recognised & (predicted == labels)).mean()), 4)
    return row


# ----------------------------------------------------------------------------------------------
# The generators
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def vae_samples(path: Path, count: int, seed: int) -> torch.Tensor:
    """`count` VAE prior samples, as `python -m latentcode.generation` draws them."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path).eval()
    return model.sample(count, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def prior_samples(path: Path, vqvae_path: Path, count: int, seed: int, temperature: float, top_k) -> torch.Tensor:
    """`count` images from the prior's code sequences, decoded by the VQ-VAE (as train_prior.py)."""
    from transformers import AutoModel, AutoModelForCausalLM

    from latentcode.prior import sample_images

    prior = AutoModelForCausalLM.from_pretrained(path).eval()
    vqvae = AutoModel.from_pretrained(vqvae_path).eval()
    return sample_images(prior, vqvae, count, temperature=temperature, top_k=top_k, seed=seed)


@torch.no_grad()
def ldm_samples(path: Path, count: int, seed: int, num_inference_steps: int) -> torch.Tensor:
    """`count` samples of the saved `LDMPipeline` (DDIM, as train_latent_diffusion.py draws them)."""
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(path)
    generator = torch.Generator().manual_seed(seed)
    images = pipeline(
        batch_size=count, generator=generator, num_inference_steps=num_inference_steps, output_type="np"
    ).images
    return torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1


def generators(work_dir: Path, args) -> dict:
    """The generators whose folders exist in `work_dir`, each a function of nothing -> samples."""
    found = {}
    if (work_dir / "my-vae").exists():
        found["VAE prior (my-vae)"] = lambda: vae_samples(work_dir / "my-vae", args.num_samples, args.seed)
    if (work_dir / "my-prior").exists():
        found[f"AR prior (my-prior, temperature {args.temperature}, top_k {args.top_k})"] = lambda: prior_samples(
            work_dir / "my-prior",
            work_dir / "quickstart-vqvae",
            args.num_samples,
            args.seed,
            args.temperature,
            args.top_k,
        )
    if (work_dir / "my-ldm").exists():
        found[f"latent diffusion (my-ldm, {args.num_inference_steps} DDIM steps)"] = lambda: ldm_samples(
            work_dir / "my-ldm", args.num_samples, args.seed, args.num_inference_steps
        )
    return found


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def markdown(rows: dict, confidence: float) -> str:
    lines = [
        f"| images | samples | recognised (p >= {confidence}) | mean top p | digits recognised (0..9) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, row in rows.items():
        digits = " ".join(str(row["digits_recognised"][digit]) for digit in range(10))
        lines.append(
            f"| {name} | {row['samples']} | {100 * row['recognised']:.1f} % | {row['mean_confidence']:.3f} | {digits} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", type=Path, required=True, help="holds quickstart-vqvae, my-vae, my-prior, my-ldm")
    parser.add_argument("--train", action="store_true", help="first train the folders missing, as the README does")
    parser.add_argument("--vae_config", default="training/configs/quickstart_vae.yaml", help="the VAE's preset")
    parser.add_argument("--vae_args", default="", help="extra options of the VAE's training command")
    parser.add_argument(
        "--prior_args", default="", help="extra options of the prior's training command (later options win)"
    )
    parser.add_argument("--ldm_args", default="", help="extra options of the latent diffusion training command")
    parser.add_argument("--train_seed", type=int, default=0, help="training seed (the presets' default: 0)")
    parser.add_argument("--threads", type=int, default=2, help="compute threads of each training process")
    parser.add_argument("--num_samples", type=int, default=256, help="samples scored per generator")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples")
    parser.add_argument("--confidence", type=float, default=0.8, help="top probability that counts as recognised")
    parser.add_argument("--temperature", type=float, default=1.0, help="the AR prior's sampling temperature")
    parser.add_argument("--top_k", type=int, default=None, help="the AR prior's top-k (default: all codes)")
    parser.add_argument("--num_inference_steps", type=int, default=50, help="DDIM steps of the LDM samples")
    parser.add_argument("--tag", default="run", help="names the result files: RESULTS/TAG.json, TAG.md, TAG-*.png")
    parser.add_argument("--output_dir", type=Path, default=RESULTS, help=f"default: {RESULTS.relative_to(REPO)}")
    args = parser.parse_args(argv)

    from latentcode.grids import save_image_grid

    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    times = train_chain(args.work_dir, args) if args.train else {}
    torch.set_num_threads(args.threads)
    pixels, labels, held_out = real_digits()
    classifier = fit_classifier(pixels[~held_out], labels[~held_out])
    noise = torch.rand(args.num_samples, 1, 32, 32, generator=torch.Generator().manual_seed(args.seed)) * 2 - 1
    rows = {
        f"real test digits (held out, {int(held_out.sum())})": score(
            classifier, pixels[held_out], args.confidence, labels[held_out]
        ),
        "uniform noise": score(classifier, noise, args.confidence),
    }
    for index, (name, draw) in enumerate(generators(args.work_dir, args).items()):
        start = time.perf_counter()
        samples = draw()
        rows[name] = {**score(classifier, samples, args.confidence), "sampling_seconds": time.perf_counter() - start}
        save_image_grid(samples[:64], args.output_dir / f"{args.tag}-{index}.png", num_columns=16)
        print(f"{name}: {100 * rows[name]['recognised']:.1f} % recognised", flush=True)
    import sklearn

    result = {
        "settings": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items() if key != "train"
        },
        "scikit_learn": sklearn.__version__,
        "torch": torch.__version__,
        "training": times,
        "rows": rows,
    }
    (args.output_dir / f"{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(rows, args.confidence)
    (args.output_dir / f"{args.tag}.md").write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
