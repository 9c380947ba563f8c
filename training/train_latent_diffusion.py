"""Latent diffusion in miniature: train a small diffusers `UNet2DModel` on the latents of a
trained latentcode autoencoder (VAE, VQ-VAE or AutoEncoder) and save the result as a diffusers
`LDMPipeline`.

    accelerate launch training/train_latent_diffusion.py --pretrained_model_name_or_path runs/vae-digits \\
        --dataset_name builtin:digits --output_dir runs/ldm-digits --max_train_steps 5000

Images are streamed (`latentcode.data`) and encoded on the fly by the frozen autoencoder: VAE
posterior samples, or VQ-VAE latents before quantisation (the pipeline's `decode` quantises), as
latent-diffusion does; or, with `--latents_dataset`, read from the autoencoder's
`latentcode-tokenize` output (VAE: the posterior's mean and std, sampled here as on the fly;
AutoEncoder: its code; see `latentcode.training.codes`). Latents are multiplied by `scaling_factor` (measured as 1 / std on the
first batch unless given, and stored in the autoencoder's config) so the UNet sees unit variance.
`--output_dir` then holds a pipeline that `DiffusionPipeline.from_pretrained` loads after
`import latentcode.modeling`, plus `samples.png`. The pieces are in `latentcode.latent_diffusion`, the task in
`latentcode.training.latent_diffusion_task`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

# Light imports only (no torch, diffusers): --help and bad options answer at once; the task loads in main.
from latentcode.errors import command_line
from latentcode.training.config import (
    DataOptions,
    OptimizationOptions,
    ReportingOptions,
    RunConfig,
    group,
    option,
)
from latentcode.training.config import parse_args as parse_config


@dataclass
class LatentDiffusionData(DataOptions):
    """Which images the UNet learns the latents of (or the tokenized latents it reads instead),
    their resizing, and the held-out images of the validation loss."""

    resolution: int | None = option(
        "images are resized and cropped to this (default: the autoencoder's sample_size)", default=None
    )
    num_validation_images: int = option("held-out images for the validation loss", default=64)
    latents_dataset: str | None = option(
        "train from this latentcode-tokenize output of the autoencoder (folder or Hub dataset id) instead of "
        "encoding images on the fly (a VAE or an AutoEncoder: a VQ-VAE's tokens hold no latents)",
        default=None,
    )


@dataclass
class LatentDiffusionOptimization(OptimizationOptions):
    """How the UNet is optimised (train.py's options; the step count, batch and rates suit a UNet)."""

    max_train_steps: int = option("optimiser steps (unused with max_train_time)", default=5000)
    train_batch_size: int = option("images per process per micro-batch", default=64)
    learning_rate: float = option("peak learning rate", default=2e-4)
    lr_warmup_steps: int = option("linear learning-rate warm-up steps", default=200)


@dataclass
class LatentDiffusionReporting(ReportingOptions):
    """What the run tells and publishes (train.py's options, with a UNet's validation cadence)."""

    validation_steps: int = option("validation loss and samples every N steps (0: only at the end)", default=1000)


@dataclass
class UNetOptions:
    """The denoising UNet over the autoencoder's latents and its DDPM noise schedule."""

    block_out_channels: list[int] = option("UNet channels per level", default_factory=lambda: [64, 128])
    layers_per_block: int = option("UNet ResNet blocks per level", default=1)
    norm_num_groups: int = option("UNet GroupNorm groups", default=32)
    num_train_timesteps: int = option("DDPM noise-schedule steps", default=1000)
    scaling_factor: float | None = option("latent scale (default: 1 / std of the first batch)", default=None)


@dataclass
class DiffusionSamplingOptions:
    """The images sampled by the pipeline at each validation."""

    num_samples: int = option("images sampled at each validation", default=16)
    num_inference_steps: int = option("DDIM steps when sampling", default=50)


@dataclass
class LatentDiffusionConfig(RunConfig):
    """The options of train_latent_diffusion.py: the run's groups (data, optimiser, reporting) and the UNet's."""

    pretrained_model_name_or_path: str | None = option("the trained latentcode VAE or VQ-VAE (required)", default=None)
    output_dir: str = option("where checkpoints, logs and the pipeline go", default="latentcode-ldm")
    data: LatentDiffusionData = group(LatentDiffusionData)
    optimization: LatentDiffusionOptimization = group(LatentDiffusionOptimization)
    reporting: LatentDiffusionReporting = group(LatentDiffusionReporting)
    unet: UNetOptions = group(UNetOptions)
    sampling: DiffusionSamplingOptions = group(DiffusionSamplingOptions)

    resume_fixed: ClassVar[tuple[str, ...]] = (
        *RunConfig.resume_fixed,
        *("block_out_channels", "layers_per_block", "norm_num_groups", "num_train_timesteps", "scaling_factor"),
        "latents_dataset",
    )

    def validate(self) -> None:
        super().validate()
        if self.pretrained_model_name_or_path is None:
            raise ValueError("pretrained_model_name_or_path (the trained VAE or VQ-VAE) is required")


def parse_args(argv: list[str] | None = None) -> LatentDiffusionConfig:
    return parse_config(argv, LatentDiffusionConfig, description=__doc__)


@command_line
def main(config: LatentDiffusionConfig) -> dict:
    """Train the UNet and save the pipeline; returns the final metrics (main process)."""
    from latentcode.training.engine import Engine
    from latentcode.training.latent_diffusion_task import LatentDiffusionTask

    return Engine(config, LatentDiffusionTask(config)).run().metrics


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    main(parse_args())
