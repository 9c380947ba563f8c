"""Run a model over a stream of images and report every metric of [`latentcode.evaluation.metrics`].

```python
from latentcode.evaluation import evaluate, write_report
result = evaluate(model, batches, lpips=build_lpips(), inception=InceptionFeatures("pt_inception.pth"))
write_report(result, "eval/")   # metrics.json, metrics.md, reconstructions.png, psnr_histogram.png, ...
```

Reconstructions are what a user of each family gets back (`model.reconstruct_encoded`): the
VQ-VAE decodes its token indices, the VAE decodes the posterior mean, the autoencoder its code.
The ELBO of a model with a prior (the VAE) uses one posterior sample per image (a second decode). Training validation runs this same evaluation,
so its numbers and `latentcode-eval`'s agree on the same model and images.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch

from ..data import CorruptImages, ImageTransform, readable_images
from ..grids import reconstruction_grid
from ..modeling import LatentCodePreTrainedModel
from ..reporting import markdown_table, metrics_report, per_dimension_table, write_metrics_json
from ..traversal import ACTIVE_VARIANCE, active_dimensions, activity_of
from .figures import codebook_usage_chart, psnr_histogram
from .metrics import (
    SSIM_WINDOW,
    CodebookHistogram,
    FeatureStatistics,
    decoder_std_from_kl_weight,
    frechet_distance,
    gaussian_bits_per_dim,
    psnr,
    ssim,
)

logger = logging.getLogger(__name__)

# The LPIPS networks downsample 16-32x; below this size their feature maps vanish.
LPIPS_MIN_SIZE = 32


@dataclass
class EvaluationResult:
    """What [`evaluate`] measured.

    Attributes:
        metrics: name -> value (see [`evaluate`] for the names); means are over images.
        per_image_psnr: PSNR of every image in dB (`inf` for a perfect reconstruction).
        originals / reconstructions: `[G, C, H, W]` the first images and their reconstructions.
        codebook_counts: `[L, K]` code histogram (VQ-VAE only).
        per_dimension_kl: mean KL(q(z|x) || N(0, I)) of each latent dimension in nats (a vector
            latent's entries, a latent grid's channels summed over positions), `[latent_channels]`
            values; a model with a prior (the VAE) only. They sum to `metrics["kl"]`.
        per_dimension_activity: the variance over the images of each latent dimension's posterior
            mean (Burda et al. 2016; a grid's channel averages its positions), `[latent_channels]`
            values; a model with a prior only. `metrics["active_dimensions"]` counts those above
            `metrics["active_dimension_threshold"]`.
    """

    metrics: dict[str, float | int | str]
    per_image_psnr: list[float]
    originals: torch.Tensor
    reconstructions: torch.Tensor
    codebook_counts: torch.Tensor | None = None
    per_dimension_kl: list[float] | None = None
    per_dimension_activity: list[float] | None = None
    notes: list[str] = field(default_factory=list)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer:
    """Accumulates wall time of model calls (synchronised on CUDA)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0

    def __enter__(self):
        _synchronize(self.device)
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        _synchronize(self.device)
        self.seconds += time.perf_counter() - self.start


@torch.no_grad()
def evaluate(
    model: LatentCodePreTrainedModel,
    batches: Iterable[torch.Tensor],
    *,
    lpips: torch.nn.Module | None = None,
    inception: torch.nn.Module | None = None,
    decoder_std: float | None = None,
    num_grid_images: int = 8,
    seed: int = 0,
    autocast=nullcontext,
    throughput: bool = True,
) -> EvaluationResult:
    """Evaluate `model` on `batches` of pixels `[B, C, H, W]` in [-1, 1].

    Metrics (keys of `result.metrics`): `num_images`; `psnr` (mean of per-image dB; `inf`
    only if every image is reconstructed perfectly - perfect images are left out of the mean
    otherwise and counted in `perfect_reconstructions`), `psnr_of_mean_mse`, `ssim`, `mse`, `l1`;
    `lpips` if `lpips` is given; `rfid` if `inception` is given (Frechet distance between the
    Inception features of originals and reconstructions); a model with tokens (`has_tokens`,
    the VQ-VAE): `codebook_usage` (fraction of codes used), `perplexity`, `codebook_size`,
    `bits_per_pixel` (mean of `model.code_size(...).bits_per_pixel`: tokens x log2 K / pixels); a model
    with a prior (`can_sample_prior`, the VAE): `kl` (nats per image), `negative_elbo` (nats per image),
    `bits_per_dim` with a discretised Gaussian decoder of std `decoder_std` (default
    `sqrt(kl_weight / 2)`, see [`decoder_std_from_kl_weight`]), `active_dimensions` (latent
    dimensions whose posterior mean varies over the images, Burda et al.'s activity, by more than
    `active_dimension_threshold` = `traversal.ACTIVE_VARIANCE` = 0.01; each one's activity is
    `result.per_dimension_activity`, its KL `result.per_dimension_kl`); and, if `throughput`,
    `encode_images_per_s`, `decode_images_per_s` (timings: the only values that vary between runs). The model runs in eval mode under `autocast()`
    (e.g. `accelerator.autocast`) and is returned to the mode it was in.
    """
    was_training = model.training
    model.eval()
    try:
        result = _evaluate(model, batches, lpips, inception, decoder_std, num_grid_images, seed, autocast)
    finally:
        model.train(was_training)
    if not throughput:
        for name in ("encode_images_per_s", "decode_images_per_s"):
            del result.metrics[name]
    return result


def _evaluate(model, batches, lpips, inception, decoder_std, num_grid_images, seed, autocast) -> EvaluationResult:
    if not isinstance(model, LatentCodePreTrainedModel):
        raise ValueError(f"expected a latentcode AutoencoderModel, VAEModel or VQVAEModel, got {type(model).__name__}")
    if model.can_sample_prior and decoder_std is None:
        decoder_std = decoder_std_from_kl_weight(model.config.kl_weight)
    run = _Evaluation(model, lpips, inception, decoder_std, num_grid_images, seed, autocast)
    for pixels in batches:
        run.add(pixels)
    return run.result()


class _Evaluation:
    """One pass of [`evaluate`]: per-image sums over the batches, then the metrics. What differs
    between families comes from the model: `reconstruct_encoded` (what a user gets back), its
    tokens (`has_tokens`: code usage) and, for a model with a prior (`can_sample_prior`), the
    ELBO whose rate term is `code_size(...).bits`."""

    def __init__(self, model, lpips, inception, decoder_std, num_grid_images, seed, autocast):
        self.model, self.lpips, self.inception, self.autocast = model, lpips, inception, autocast
        self.decoder_std = decoder_std if model.can_sample_prior else None
        self.num_grid_images = num_grid_images
        device = model.device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.encode_timer, self.decode_timer = _Timer(device), _Timer(device)
        self.usage = (
            CodebookHistogram(model.codebook_size, levels=model.config.num_quantizers or 1)
            if model.has_tokens
            else None
        )
        self.real_features, self.fake_features = FeatureStatistics(), FeatureStatistics()
        self.sums: dict[str, float] = {}
        self.kl_sums: torch.Tensor | None = None  # [latent_channels] float64, a model with a prior
        # Sums of the posterior mean and its square over images, [latent_channels, *positions] float64:
        # the variance over images of each dimension (its activity) without keeping every code.
        self.mean_sums: torch.Tensor | None = None
        self.mean_square_sums: torch.Tensor | None = None
        self.per_image_psnr: list[float] = []
        self.originals, self.reconstructions = [], []
        self.num_images = 0

    def _sum(self, name: str, values: torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(values.double().sum())

    def add(self, pixels: torch.Tensor) -> None:
        """Encode and reconstruct one batch `[B, C, H, W]` and add its per-image values."""
        model = self.model
        pixels = pixels.to(device=model.device, dtype=model.dtype)
        with self.encode_timer, self.autocast():
            encoded = model.encode(pixels, return_dict=True)
        with self.decode_timer, self.autocast():
            reconstruction = model.reconstruct_encoded(encoded)
        reconstruction, target = reconstruction.float(), pixels.float()
        self._add_image_metrics(reconstruction, target)
        if self.usage is not None:
            self.usage.update(encoded.indices)
            self._sum("bits_per_pixel", model.code_size(encoded).bits_per_pixel(*pixels.shape[-2:]))
        if self.decoder_std is not None:
            self._add_elbo(encoded, target)
        # The grid holds images of the first image's size (full-resolution sets mix orientations).
        if len(self.originals) < self.num_grid_images and (
            not self.originals or self.originals[0].shape == target.shape[1:]
        ):
            self.originals += list(target[: self.num_grid_images - len(self.originals)].cpu())
            self.reconstructions += list(reconstruction[: len(self.originals) - len(self.reconstructions)].cpu())
        self.num_images += pixels.shape[0]

    def _add_image_metrics(self, reconstruction: torch.Tensor, target: torch.Tensor) -> None:
        self.per_image_psnr += psnr(reconstruction, target).tolist()
        error = (reconstruction.double() - target.double()).flatten(1)
        self._sum("mse", error.pow(2).mean(dim=1))
        self._sum("l1", error.abs().mean(dim=1))
        if min(target.shape[-2:]) >= SSIM_WINDOW:
            self._sum("ssim", ssim(reconstruction, target))
        if self.lpips is not None and min(target.shape[-2:]) >= LPIPS_MIN_SIZE:
            self._sum("lpips", self.lpips(reconstruction, target))
        if self.inception is not None:
            self.real_features.update(self.inception(target))
            self.fake_features.update(self.inception(reconstruction))

    def _add_elbo(self, encoded, target: torch.Tensor) -> None:
        """KL (nats per image), negative ELBO and bits per dimension with one posterior sample."""
        code = self.model.continuous_code_encoded(encoded, sample_posterior=True, generator=self.generator)
        with self.autocast():
            sample_mean = self.model.decode(code, return_dict=True).sample.float()
        kl = self.model.code_size(encoded).bits * math.log(2)
        negative_elbo, bits_per_dim = gaussian_bits_per_dim(target, sample_mean, kl, self.decoder_std)
        per_dimension = encoded.latent_dist.kl_per_channel().double().sum(0).cpu()
        self.kl_sums = per_dimension if self.kl_sums is None else self.kl_sums + per_dimension
        means = encoded.latent_dist.mean.double()
        if self.mean_sums is None:
            self.mean_sums = torch.zeros_like(means[0]).cpu()
            self.mean_square_sums = torch.zeros_like(self.mean_sums)
        self.mean_sums += means.sum(0).cpu()
        self.mean_square_sums += means.pow(2).sum(0).cpu()
        self._sum("kl", kl)
        self._sum("negative_elbo", negative_elbo)
        self._sum("bits_per_dim", bits_per_dim)

    def result(self) -> EvaluationResult:
        if self.num_images == 0:
            raise ValueError("the evaluation stream yielded no images")
        count = self.num_images
        metrics: dict[str, float | int | str] = {"num_images": count}
        finite = [value for value in self.per_image_psnr if math.isfinite(value)]
        metrics["psnr"] = sum(finite) / len(finite) if finite else math.inf
        metrics["perfect_reconstructions"] = count - len(finite)
        metrics.update({name: total / count for name, total in self.sums.items()})
        metrics["psnr_of_mean_mse"] = 10 * math.log10(4.0 / metrics["mse"]) if metrics["mse"] > 0 else math.inf
        notes = self._notes(metrics)
        if self.usage is not None:
            metrics["codebook_usage"] = self.usage.usage()
            metrics["perplexity"] = self.usage.perplexity()
            metrics["codebook_size"] = self.model.codebook_size
        per_dimension_kl = activity = None
        if self.decoder_std is not None:
            metrics["decoder_std"] = self.decoder_std
            per_dimension_kl = self.kl_sums / count
            # population variance E[m^2] - E[m]^2 per position
            activity = activity_of((self.mean_square_sums / count - (self.mean_sums / count).pow(2)).clamp(min=0))
            metrics["active_dimensions"] = active_dimensions(activity)
            metrics["active_dimension_threshold"] = ACTIVE_VARIANCE
        metrics["encode_images_per_s"] = count / max(self.encode_timer.seconds, 1e-12)
        metrics["decode_images_per_s"] = count / max(self.decode_timer.seconds, 1e-12)
        return EvaluationResult(
            metrics=metrics,
            per_image_psnr=self.per_image_psnr,
            originals=torch.stack(self.originals),
            reconstructions=torch.stack(self.reconstructions),
            codebook_counts=self.usage.counts if self.usage is not None else None,
            notes=notes,
            per_dimension_kl=None if per_dimension_kl is None else per_dimension_kl.tolist(),
            per_dimension_activity=None if activity is None else activity.tolist(),
        )

    def _notes(self, metrics: dict) -> list[str]:
        """What was skipped or needs care in reading; adds `rfid` to `metrics` when it can be computed."""
        notes = []
        if "ssim" not in metrics:
            notes.append(f"SSIM skipped: images smaller than its {SSIM_WINDOW}x{SSIM_WINDOW} window")
        if self.lpips is not None and "lpips" not in metrics:
            notes.append(
                f"LPIPS skipped: images smaller than {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE}, too small for its network"
            )
        if self.inception is None:
            return notes
        if self.num_images < 2:
            notes.append("rFID skipped: needs at least 2 images")
            return notes
        real, fake = self.real_features, self.fake_features
        metrics["rfid"] = frechet_distance(real.mean(), real.covariance(), fake.mean(), fake.covariance())
        if self.num_images < 2048:
            notes.append(
                f"rFID from {self.num_images} images: FID is biased upwards for small samples (50k is usual); "
                "compare only numbers computed from the same number of images"
            )
        return notes


# ----------------------------------------------------------------------------------------------
# Evaluation data
# ----------------------------------------------------------------------------------------------


class EvaluationImages:
    """In-order batches `[B, C, R, R]` of the `"image"` column of `stream`, at most `max_images`
    images in all, through `transform` (use a centre crop: evaluation must be deterministic).

    Unreadable images are skipped and recorded in `corrupt` (each file once); `corrupt_images`
    is their number.
    """

    def __init__(
        self,
        stream: datasets.IterableDataset | Iterable[dict],
        transform: ImageTransform,
        batch_size: int,
        max_images: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.stream, self.transform, self.batch_size, self.max_images = stream, transform, batch_size, max_images
        self.corrupt = CorruptImages()

    @property
    def corrupt_images(self) -> int:
        return len(self.corrupt)

    def __iter__(self) -> Iterator[torch.Tensor]:
        rng = random.Random(0)  # the transform takes one; with a centre crop and no flip it is unused
        examples = ((example["image"], rng) for example in self.stream)
        # islice stops before reading the example after the last one wanted.
        readable = itertools.islice(readable_images(examples, self.transform, self.corrupt), self.max_images)
        images = []
        for image in readable:
            images.append(image)
            if len(images) == self.batch_size:
                yield torch.stack(images)
                images = []
        if images:
            yield torch.stack(images)


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

# Cells of the report's reconstruction grid are upscaled (nearest) to at least this many pixels.
REPORT_GRID_MIN_CELL = 64


def per_dimension_values(result: EvaluationResult) -> dict | None:
    """A report's `per_dimension`: name -> one value per latent dimension (`kl`, `activity`), or
    None for a model without a posterior."""
    if result.per_dimension_kl is None:
        return None
    return {"kl": result.per_dimension_kl, "activity": result.per_dimension_activity}


def evaluation_report(result: EvaluationResult, extra: dict | None = None) -> dict:
    """`result` as a `metrics.json` document (`latentcode.reporting`, `kind="evaluation"`): `extra`'s
    `"model"` and `"data"` go to those keys, its other values to `details`."""
    details = dict(extra or {})
    model = details.pop("model", "(not given)")
    data = {**details.pop("data", {}), "num_images": result.metrics["num_images"]}
    return metrics_report(
        kind="evaluation",
        model=model,
        data=data,
        metrics=result.metrics,
        per_image={"psnr": result.per_image_psnr},
        per_dimension=per_dimension_values(result),
        notes=result.notes,
        details=details,
    )


def metrics_markdown(result: EvaluationResult) -> str:
    """`metrics.md` (and a model card's validation section): the metrics table, the KL of each
    latent dimension when the model has a posterior, and the notes."""
    text = markdown_table(result.metrics)
    if result.per_dimension_kl is not None:
        table = per_dimension_table(
            result.per_dimension_kl, result.per_dimension_activity, result.metrics["active_dimension_threshold"]
        )
        text += f"\nKL and activity of each latent dimension:\n\n{table}"
    notes = "".join(f"\n- {note}" for note in result.notes)
    return text + (f"\nNotes:{notes}\n" if notes else "")


def write_report(result: EvaluationResult, output_dir: str | Path, extra: dict | None = None) -> dict[str, Path]:
    """Write `metrics.json` ([`evaluation_report`]: metrics, per-image PSNR, notes and `extra`),
    `metrics.md`, `reconstructions.png`, `psnr_histogram.png` and, for a model with tokens,
    `codebook_usage.png`. Returns name -> path of what was written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        name: output_dir / name for name in ("metrics.json", "metrics.md", "reconstructions.png", "psnr_histogram.png")
    }
    write_metrics_json(evaluation_report(result, extra), paths["metrics.json"])
    paths["metrics.md"].write_text(metrics_markdown(result))
    grid = reconstruction_grid(result.originals, result.reconstructions, min_cell_size=REPORT_GRID_MIN_CELL)
    grid.save(paths["reconstructions.png"])
    psnr_histogram(result.per_image_psnr).save(paths["psnr_histogram.png"])
    if result.codebook_counts is not None:
        paths["codebook_usage.png"] = output_dir / "codebook_usage.png"
        codebook_usage_chart(result.codebook_counts).save(paths["codebook_usage.png"])
    return paths
