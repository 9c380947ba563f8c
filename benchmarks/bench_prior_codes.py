"""A prior trained from `latentcode-tokenize` output against one encoding images on the fly
(issue 21), on real CIFAR-10, through the real commands a user runs.

1. A VQ-VAE: `training/train.py` with the one-core preset `training/configs/vqvae_cifar10_cpu.yaml`
   for `--vqvae_steps` steps on CIFAR-10 train (so the codes are not random), or `--vqvae PATH`.
2. The first `--train_images` images of CIFAR-10 train and the first `--test_images` of test are
   written as one parquet shard each (a one-shard source: both prior runs then read the very same
   images, batch for batch, see `latentcode.training.codes`), and both are tokenised with
   `python -m latentcode.tokenize` (= `latentcode-tokenize`), timed.
3. `training/train_prior.py` twice, one process after the other, same seed and settings, for
   `--epochs` epochs over the training subset: with `--codes_dataset` (codes) and with the image
   source (on the fly, the VQ-VAE encoding every batch).
4. Each saved prior's negative log-likelihood on the tokenised test subset, computed here the same
   way for both (`latentcode.prior.prior_loss`, nats per code).

Every process runs with one compute thread (OMP_NUM_THREADS=1) and decodes in-process
(`--dataloader_num_workers 0`). Times per epoch are the training loop's (metrics.json:
`train_seconds_this_session`, `train_cpu_seconds_this_session`) divided by the epochs it read;
the process totals (start-up, validation, sampling, saving included) are reported beside them.
The load average (`os.getloadavg`) is noted before and after each run.

    python benchmarks/bench_prior_codes.py --work_dir /tmp/prior-codes       # keeps the VQ-VAE for reruns
    python benchmarks/bench_prior_codes.py --vqvae runs/vqvae --train_images 1000 --epochs 1   # a short pass
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = REPO.parent / "shared" / "datasets" / "cifar10"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "PYTHONPATH": str(REPO / "src"),
    "TOKENIZERS_PARALLELISM": "false",
}


def load() -> str:
    """The 1-, 5- and 15-minute load averages, as `uptime` prints them."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def timed(command: list[str], log: Path) -> dict:
    """Run `command` (one process, one compute thread) to completion; its wall and CPU seconds
    (user + system, its children included) and the load before and after. Raises with the log's
    tail when it fails."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    load_before = load()
    with log.open("w") as output:
        done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=ENV, cwd=REPO)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}); its log {log} ends:\n" + log.read_text()[-3000:]
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "load_before": load_before, "load_after": load()}


def write_subset(folder: Path, split: str, images: int) -> Path:
    """The first `images` rows of CIFAR-10's `split` (its shards in order) as the one parquet shard
    `folder/{split}-00000-of-00001.parquet`."""
    tables, rows = [], 0
    for shard in sorted((CIFAR10 / split).glob("*.parquet")):
        if rows >= images:
            break
        table = pq.read_table(shard).slice(0, images - rows)
        tables.append(table)
        rows += len(table)
    if rows < images:
        raise ValueError(f"CIFAR-10 {split} has {rows} images, fewer than the {images} asked for")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}-00000-of-00001.parquet"
    pq.write_table(pa.concat_tables(tables), path)
    return path


def train_vqvae(output_dir: Path, steps: int) -> dict:
    """The one-core CIFAR-10 preset for `steps` steps on all of CIFAR-10 train."""
    command = [sys.executable, "training/train.py", "--config", "training/configs/vqvae_cifar10_cpu.yaml"]
    command += ["--dataset_name", "none", "--train_data_dir", str(CIFAR10 / "train"), "--validation_split", "none"]
    command += ["--max_train_steps", str(steps), "--output_dir", str(output_dir), "--report_to", "none"]
    command += ["--checkpointing_steps", "0", "--validation_steps", "0", "--lr_warmup_steps", str(min(100, steps // 3))]
    return timed(command, output_dir.parent / "vqvae.log")


def tokenize(vqvae: Path, source: Path, split: str, output_dir: Path, batch_size: int) -> dict:
    """`latentcode-tokenize` of one split of the subset folder (one process, decoding in it)."""
    command = [sys.executable, "-m", "latentcode.tokenize", "--pretrained_model_name_or_path", str(vqvae)]
    command += ["--train_data_dir", str(source), "--split", split, "--image_column", "img"]
    command += ["--output_dir", str(output_dir), "--dataloader_num_workers", "0", "--batch_size", str(batch_size)]
    command += ["--device", "cpu"]
    return timed(command, output_dir.parent / f"tokenize-{split}.log")


def train_prior(args, vqvae: Path, data: list[str], output_dir: Path, steps: int) -> dict:
    """`training/train_prior.py` on `data` (`--codes_dataset DIR` or the image source) for
    `steps` steps; its timing and metrics.json."""
    command = [sys.executable, "training/train_prior.py", "--pretrained_model_name_or_path", str(vqvae), *data]
    command += ["--output_dir", str(output_dir), "--max_train_steps", str(steps), "--seed", str(args.seed)]
    command += ["--train_batch_size", str(args.batch_size), "--num_validation_images", str(args.validation_images)]
    command += ["--hidden_size", str(args.hidden_size), "--num_layers", str(args.num_layers)]
    command += ["--no_random_flip", "--center_crop", "--dataloader_num_workers", "0", "--report_to", "none"]
    command += ["--checkpointing_steps", "0", "--validation_steps", "0", "--num_samples", "4"]
    timing = timed(command, output_dir.parent / f"{output_dir.name}.log")
    return {**timing, "metrics": json.loads((output_dir / "metrics.json").read_text())}


@torch.no_grad()
def held_out_nll(prior_dir: Path, test_codes: Path, vqvae: Path, chunk: int = 250) -> float:
    """Mean negative log-likelihood (nats per code) of the saved prior on every test sequence."""
    from transformers import AutoModel, AutoModelForCausalLM

    import latentcode.modeling  # noqa: F401  (registers the models with AutoModel)
    from latentcode.prior import prior_loss, token_mapping
    from latentcode.tokenize import load_codes

    prior = AutoModelForCausalLM.from_pretrained(prior_dir).eval()
    codes = load_codes(test_codes, expected_model=AutoModel.from_pretrained(vqvae))
    sequences = codes.select_columns(["indices"])[:]["indices"].long()
    mapping = token_mapping(prior.config)
    total = sum(prior_loss(prior, part, mapping).item() * len(part) for part in sequences.split(chunk))
    return total / len(sequences)


def codebook_use(test_codes: Path) -> tuple[int, int]:
    """(distinct codes, positions per image) of the tokenised test subset."""
    from latentcode.tokenize import load_codes

    indices = load_codes(test_codes).select_columns(["indices"])[:]["indices"]
    return len(torch.unique(indices)), indices.shape[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vqvae", type=Path, default=None, help="a trained VQ-VAE folder (default: train one)")
    parser.add_argument("--vqvae_steps", type=int, default=300, help="steps of the preset when training one")
    parser.add_argument("--train_images", type=int, default=5000, help="first N images of CIFAR-10 train")
    parser.add_argument("--test_images", type=int, default=2000, help="first N images of CIFAR-10 test")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs of each prior run over the training rows")
    parser.add_argument("--batch_size", type=int, default=32, help="prior batch (train_prior.py's default)")
    parser.add_argument("--hidden_size", type=int, default=256, help="prior width (train_prior.py's default)")
    parser.add_argument("--num_layers", type=int, default=4, help="prior layers (train_prior.py's default)")
    parser.add_argument("--validation_images", type=int, default=64, help="train images held out by both runs")
    parser.add_argument("--tokenize_batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", default="fly,codes", help="the order of the two prior runs")
    parser.add_argument("--work_dir", type=Path, default=None, help="keep everything here (default: a temp dir)")
    return parser.parse_args(argv)


def run(args, work: Path) -> dict:
    """Every step of the module docstring in `work`; the measurements."""
    results = {"setting": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    vqvae = args.vqvae
    if vqvae is None:
        vqvae = work / "vqvae"
        if not (vqvae / "config.json").exists():  # a kept work_dir reuses its VQ-VAE
            results["vqvae_training"] = train_vqvae(vqvae, args.vqvae_steps)
    subset = work / "cifar10-subset"
    write_subset(subset, "train", args.train_images)
    write_subset(subset, "test", args.test_images)
    codes = {split: work / f"codes-{split}" for split in ("train", "test")}
    for split, folder in codes.items():
        if folder.exists():
            raise FileExistsError(f"{folder} exists from an earlier run: remove it (its codes may be another model's)")
        results[f"tokenize_{split}"] = tokenize(vqvae, subset, split, folder, args.tokenize_batch_size)
    results["codebook_use"] = codebook_use(codes["test"])
    train_rows = args.train_images - args.validation_images
    steps = math.ceil(args.epochs * train_rows / args.batch_size)
    data = {
        "codes": ["--codes_dataset", str(codes["train"])],
        "fly": ["--train_data_dir", str(subset), "--split", "train", "--image_column", "img"],
    }
    for name in args.order.split(","):
        output_dir = work / f"prior-{name}"
        report = train_prior(args, vqvae, data[name], output_dir, steps)
        report["test_nll"] = held_out_nll(output_dir, codes["test"], vqvae)
        report["epochs"] = report["metrics"]["details"]["images_seen"] / train_rows
        results[name] = report
        print(f"{name}: {json.dumps({k: v for k, v in report.items() if k != 'metrics'})}", flush=True)
    return results


def table(results: dict) -> str:
    """The markdown table of one benchmark run."""
    lines = [
        "| run | loop s/epoch (wall) | loop s/epoch (CPU) | process wall / CPU (s) | first-step loss "
        "| test NLL (nats/code) | bits/image | load before -> after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    codes_per_image = results["codebook_use"][1]
    for name, label in (("fly", "on the fly (images -> VQ-VAE)"), ("codes", "from codes (`--codes_dataset`)")):
        run, details = results[name], results[name]["metrics"]["details"]
        wall = details["train_seconds_this_session"] / run["epochs"]
        cpu = details["train_cpu_seconds_this_session"] / run["epochs"]
        bits = run["test_nll"] * codes_per_image / math.log(2)
        lines.append(
            f"| {label} | {wall:.1f} | {cpu:.1f} | {run['wall']:.0f} / {run['cpu']:.0f} | "
            f"{details['first_train_loss']:.4f} | {run['test_nll']:.4f} | {bits:.1f} | "
            f"{run['load_before']} -> {run['load_after']} |"
        )
    return "\n".join(lines)


def summary(results: dict) -> str:
    fly, codes = (results[name]["metrics"]["details"] for name in ("fly", "codes"))
    epochs = results["fly"]["epochs"]
    ratios = {
        kind: codes[key] / fly[key]
        for kind, key in (("wall", "train_seconds_this_session"), ("CPU", "train_cpu_seconds_this_session"))
    }
    saved_cpu = (fly["train_cpu_seconds_this_session"] - codes["train_cpu_seconds_this_session"]) / epochs
    tokenize_cpu = results["tokenize_train"]["cpu"]
    lines = [
        f"time per epoch, from codes / on the fly: {ratios['wall']:.3f} (wall), {ratios['CPU']:.3f} (CPU)",
        f"test NLL difference (codes - fly): {results['codes']['test_nll'] - results['fly']['test_nll']:+.5f} nats/code",
        f"tokenising the train subset: {results['tokenize_train']['wall']:.1f} s wall, {tokenize_cpu:.1f} s CPU "
        f"(test subset: {results['tokenize_test']['wall']:.1f} s wall); CPU saved per epoch {saved_cpu:.1f} s: "
        f"break-even after {tokenize_cpu / saved_cpu:.2f} epochs"
        if saved_cpu > 0
        else "no CPU saved per epoch",
        f"codebook use on the test subset: {results['codebook_use'][0]} distinct codes, "
        f"{results['codebook_use'][1]} per image",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        results = run(args, args.work_dir)
    else:
        with tempfile.TemporaryDirectory() as folder:
            results = run(args, Path(folder))
    if args.work_dir is not None:
        (args.work_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    print(summary(results))


if __name__ == "__main__":
    main()
