"""Photo tokenizers (issue 31) on the 24 Kodak photos at full resolution, against JPEG in the same run.

    PYTHONPATH=src python benchmarks/bench_photo_tokenizer.py \\
        --model "taef2 tokenizer, 0.25 bpp=photo-tokenizer-taef2-s0,photo-tokenizer-taef2-s1" \\
        --model "taef2 (continuous, the ceiling)=taef2" --jpeg_quality 10 2 --jpeg_match 0.25 0.094 \\
        --output benchmarks/results/photo_tokenizer/kodak.json

Each `--model NAME=PATH[,PATH...]` is one row: a saved model, or several (seeds) whose mean and
standard error the row gives. A discrete model (a VQ-VAE) is scored on its tokens: encode ->
indices -> `decode_indices`, with bits per pixel (tokens x log2 K / pixels), tokens per image and
codebook usage (the fraction of each codebook's codes the 24 photos' tokens use, averaged over
residual levels); a continuous one on encode -> decode. Photos are cropped at the bottom / right to
a multiple of the model's downsampling (768x512 stays whole at f8).

JPEG rows (Pillow, `optimize=True`, 4:2:0, the photo as stored): `--jpeg_quality Q` at one quality
for every photo; `--jpeg_match R`, per photo the highest quality whose file is at most R bits per
pixel (the rate a tokenizer spends on every photo). PSNR of JPEG is of its 8-bit decoded pixels;
of the models, of their float output clamped to [-1, 1]; both in dB over RGB, averaged over the
photos. The machine's load is recorded with the rows.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from recipes_over_seeds import mean_and_standard_error  # benchmarks/, the script's folder

from latentcode.evaluation.metrics import psnr, ssim
from latentcode.model_loading import load_pretrained_model
from latentcode.training.photo_tokenizer_task import load_photos, photo_metrics

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "datasets" / "kodak"


@torch.no_grad()
def continuous_metrics(model, photos: list[torch.Tensor]) -> dict:
    """Mean PSNR and SSIM of encode -> decode of a continuous model (a VAE: its posterior mean)."""
    scores = {"psnr": 0.0, "ssim": 0.0}
    for pixels in photos:
        reconstruction = model.reconstruct_encoded(model.encode(pixels)).clamp(-1, 1)
        scores["psnr"] += psnr(reconstruction, pixels).item()
        scores["ssim"] += ssim(reconstruction, pixels).item()
    return {name: value / len(photos) for name, value in scores.items()}


def model_row(name: str, paths: list[str], photos_folder: Path) -> dict:
    """One row: each saved model in `paths` scored on the photos; mean and standard error over them."""
    runs = []
    for path in paths:
        metrics = recorded_photo_metrics(Path(path), photos_folder)
        if metrics is None:
            model = load_pretrained_model(path).eval()
            photos = load_photos(str(photos_folder), 24, model.downsampling_factor, model.config.in_channels)
            started = time.perf_counter()
            metrics = photo_metrics(model, photos) if model.has_tokens else continuous_metrics(model, photos)
            metrics["seconds"] = time.perf_counter() - started
        metrics["path"] = path
        metrics.update(training_time(Path(path)))
        runs.append(metrics)
        print(f"  {name} [{path}]: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    row = {"name": name, "runs": runs}
    for key in ("psnr", "ssim", "bits_per_pixel", "tokens_per_image", "codebook_usage"):
        if key in runs[0]:
            row[key], row[f"{key}_error"] = mean_and_standard_error([run[key] for run in runs])
    return row


def recorded_photo_metrics(folder: Path, photos_folder: Path) -> dict | None:
    """The final validation of a `train_photo_tokenizer.py` run (its metrics.json) when it measured
    all 24 photos of `photos_folder` (the same `photo_metrics` this script computes), else None."""
    report = folder / "metrics.json"
    if not report.is_file():
        return None
    recorded = json.loads(report.read_text())
    data = recorded.get("data", {})
    measured_here = Path(str(data.get("source", ""))).resolve() == photos_folder.resolve()
    if recorded.get("kind") != "photo-tokenizer" or not measured_here or data.get("num_images") != 24:
        return None
    metrics = dict(recorded["metrics"])
    metrics["measured_by"] = "the run's final validation (photo_metrics)"
    return metrics


def training_time(folder: Path) -> dict:
    """Steps, wall-clock and CPU seconds a training run recorded (its metrics.json), if any."""
    report = folder / "metrics.json"
    if not report.is_file():
        return {}
    details = json.loads(report.read_text()).get("details", {})
    keys = ("global_step", "train_seconds", "train_cpu_seconds_this_session", "threads")
    return {key: details[key] for key in keys if key in details}


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def jpeg_scores(image: Image.Image, encoded: bytes) -> tuple[float, float, float]:
    """(PSNR, SSIM, bits per pixel) of a JPEG file of `image`."""
    original = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    decoded = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"), dtype=np.float32)
    decoded = torch.from_numpy(decoded).permute(2, 0, 1)[None] / 127.5 - 1
    bits_per_pixel = len(encoded) * 8 / (image.width * image.height)
    return psnr(decoded, original).item(), ssim(decoded, original).item(), bits_per_pixel


def jpeg_row(name: str, photos: list[Image.Image], choose_quality) -> dict:
    """A JPEG row: each photo at the quality `choose_quality(image)` picks; means over the photos."""
    totals = {"psnr": 0.0, "ssim": 0.0, "bits_per_pixel": 0.0}
    qualities = []
    for image in photos:
        quality = choose_quality(image)
        scores = jpeg_scores(image, jpeg_bytes(image, quality))
        for key, value in zip(totals, scores):
            totals[key] += value
        qualities.append(quality)
    row = {"name": name, **{key: value / len(photos) for key, value in totals.items()}, "qualities": qualities}
    print(f"  {name}: psnr={row['psnr']:.2f} ssim={row['ssim']:.4f} bpp={row['bits_per_pixel']:.4f}")
    return row


def highest_quality_under(rate: float):
    """Per photo, the highest JPEG quality (1..95) whose file is at most `rate` bits per pixel."""

    def choose(image: Image.Image) -> int:
        fitting = [q for q in range(1, 96) if len(jpeg_bytes(image, q)) * 8 <= rate * image.width * image.height]
        return max(fitting) if fitting else 1

    return choose


def table_cell(row: dict, key: str, digits: int) -> str:
    """`mean ± standard error` of a row's `key` (the mean alone for one run; "-" where absent)."""
    if key not in row:
        return "-"
    error = row.get(f"{key}_error")
    shown = bool(error) and not math.isnan(error)  # one run: no standard error (nan); zero spread not shown
    return f"{row[key]:.{digits}f}" + (f" ± {error:.{digits}f}" if shown else "")


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| row | seeds | bits per pixel | PSNR (dB) | SSIM | codebook usage | tokens per image |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        seeds = len(row.get("runs", [])) or "-"
        cell = functools.partial(table_cell, row)
        lines.append(
            f"| {row['name']} | {seeds} | {cell('bits_per_pixel', 3)} | {cell('psnr', 2)} | {cell('ssim', 3)} | "
            f"{cell('codebook_usage', 3)} | {cell('tokens_per_image', 0)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH[,PATH...] (several: seeds)")
    parser.add_argument("--jpeg_quality", type=int, nargs="*", default=[10, 2])
    parser.add_argument("--jpeg_match", type=float, nargs="*", default=[])
    parser.add_argument("--photos", default=str(KODAK))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", required=True, help="JSON file; the markdown table goes beside it (.md)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.photos)
    rows = []
    for spec in args.model:
        name, _, paths = spec.rpartition("=")
        if not name:
            raise SystemExit(f"--model takes NAME=PATH[,PATH...], got {spec!r}")
        rows.append(model_row(name, paths.split(","), folder))
    images = [Image.open(path).convert("RGB") for path in sorted(folder.glob("*.png"))][:24]
    for quality in args.jpeg_quality:
        rows.append(jpeg_row(f"JPEG quality {quality}", images, lambda image, q=quality: q))
    for rate in args.jpeg_match:
        rows.append(jpeg_row(f"JPEG at most {rate} bpp per photo", images, highest_quality_under(rate)))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "photos": str(folder),
        "num_photos": len(images),
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "rows": rows,
    }
    output.write_text(json.dumps(record, indent=2))
    table = markdown_table(rows)
    output.with_suffix(".md").write_text(table + f"\n\nload average at the end: {os.getloadavg()}\n")
    print(table)


if __name__ == "__main__":
    main()
