"""A photo tokenizer from a trained continuous autoencoder: quantise its latent space, train only
the quantiser, the learned projections around it and a small corrector (issue 31; ReVQ,
"Quantize-then-Rectify", 2025), the encoder and decoder frozen (or, with
`--objective.finetune_decoder`, the decoder fine-tuned on the quantised code).

    latentcode-tokenize --pretrained_model_name_or_path taef2 --train_data_dir ../shared/datasets/photos/train \\
        --resolution 320 --flip_copies --output_dir taef2-photo-latents
    python training/train_photo_tokenizer.py --config training/configs/photo_tokenizer/taef2.yaml

(taef2 converted first with conversion/convert_taesd_to_latentcode.py --output_dir taef2; the
preset reads `taef2` and `taef2-photo-latents` and writes `photo-tokenizer-taef2`.)

The source (`--pretrained_model_name_or_path`) is a saved latentcode AutoEncoder or VAE (e.g. taef2
converted with conversion/convert_taesd_to_latentcode.py), made into a VQ-VAE with
`VQVAEModel.from_autoencoder` and the `tokenizer` options; or a VQ-VAE made that way, to train on.
The training data is its continuous latents: read from its `latentcode-tokenize` output
(`--latents_dataset`, encoded once) or encoded on the fly from images through the frozen encoder;
each step trains on random `latent_crop` x `latent_crop` crops of the latent grid. The first step
fits the projections to the batch's principal components and the codebooks by k-means (a resume
keeps what was fitted); the loss is `latent_space_loss`. With `--objective.finetune_decoder` the
decoder (and the source's projection before it) trains too, against a frozen copy of the source's
decoder (`from_autoencoder.start_decoder_finetune`), and the saved model records
`source_autoencoder["decoder_finetuned"]`. Validation: PSNR, SSIM, bits per pixel,
tokens per image and codebook usage on a few photos of `--validation_data_dir` at full size,
through the frozen decoder (evaluation only). `--output_dir` then holds the VQ-VAE
(`VQVAEModel.from_pretrained`), metrics.json and a model card. The task is in
`latentcode.training.photo_tokenizer_task`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

# Light imports only (no torch, transformers): --help and bad options answer at once; the task loads in main.
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
class PhotoTokenizerData(DataOptions):
    """The source's latents the tokenizer trains on (a tokenised dataset, or images encoded on the
    fly), their crops, and the held-out photos of validation."""

    resolution: int = option(
        "images are resized and cropped to this before encoding (a --latents_dataset: the resolution it was "
        "tokenised at)",
        default=256,
    )
    center_crop: bool = option("centre crop of the images (else random crop)", default=False)
    latents_dataset: str | None = option(
        "train on this latentcode-tokenize output of the source model (folder or Hub dataset id) instead of "
        "encoding images on the fly",
        default=None,
    )
    latent_crop: int | None = option(
        "each step trains on random crops of this many latent positions square (default: the whole latent grid)",
        default=None,
    )
    num_validation_images: int = option("held-out rows of the training data for the validation latent loss", default=8)
    validation_data_dir: str | None = option(
        "folder of held-out photos measured at full size through the frozen decoder (PSNR, SSIM, bits per pixel, "
        "codebook usage), e.g. ../shared/datasets/kodak; evaluation only, never trained on",
        default=None,
    )
    num_validation_photos: int = option("photos of validation_data_dir measured (the first, by name)", default=4)

    def __post_init__(self):
        super().__post_init__()
        if self.latent_crop is not None and self.latent_crop < 1:
            raise ValueError(f"latent_crop must be >= 1 (latent positions), got {self.latent_crop}")
        if self.num_validation_photos < 1:
            raise ValueError(f"num_validation_photos must be >= 1, got {self.num_validation_photos}")


@dataclass
class PhotoTokenizerOptimization(OptimizationOptions):
    """How the quantiser, projections and corrector are optimised (train.py's options; the rates
    suit a few small modules on cached latents)."""

    max_train_steps: int = option("optimiser steps (unused with max_train_time)", default=2000)
    train_batch_size: int = option("latent crops per process per micro-batch", default=16)
    learning_rate: float = option("peak learning rate", default=1e-3)


@dataclass
class PhotoTokenizerReporting(ReportingOptions):
    """What the run tells and publishes (train.py's options)."""

    validation_steps: int = option("validate every N steps (0: only at the end)", default=0)


@dataclass
class TokenizerOptions:
    """The VQ-VAE made from the source (`VQVAEModel.from_autoencoder`'s arguments); unused when the
    source already is such a VQ-VAE."""

    quantizer: str = option("the quantiser on the latent grid (vq, residual_vq, fsq, ...)", default="residual_vq")
    codebook_size: int | None = option("codes per codebook", default=256)
    codebook_dim: int | None = option(
        "channels of the code (default: the source's latent channels); fewer: a learned projection", default=None
    )
    num_quantizers: int | None = option("levels of a residual quantiser", default=2)
    latent_patch_size: int = option(
        "latent positions per token side (VQVAEConfig.latent_patch_size): 2 codes each 2x2 patch as one token",
        default=1,
    )
    quantizer_config: dict[str, object] = option(
        "further quantiser options (VQVAEConfig.quantizer_config, e.g. {dead_code_restart: false})",
        default_factory=dict,
    )
    corrector_config: dict[str, int] | None = option(
        "the corrector before the decoder (VQVAEConfig.corrector_config: hidden_channels, num_blocks; null: none)",
        default_factory=lambda: {"hidden_channels": 64, "num_blocks": 2},
    )
    source_licence: str = option(
        "the source autoencoder's licence, stated in the model card (taef2: MIT)", default="not stated"
    )
    fit_projections: bool = option(
        "start the projections at the principal components of the first batch's latents", default=True
    )


@dataclass
class PhotoTokenizerObjective:
    """What the trained parts minimise: the latent loss (the estimate of the source's latent
    against it), the quantiser's terms and, optionally, the error through the decoder (frozen, or
    fine-tuned against the source's)."""

    decoder_loss_weight: float = option(
        "weight of the mean squared error between the decoder's images of the estimate and of the source's latent "
        "(the decoder frozen unless finetune_decoder; 0: latent loss only); costs a decoder forward and backward pass "
        "per step",
        default=0.0,
    )
    decoder_loss_crops: int = option("latent crops per step that go through the decoder", default=2)
    decoder_loss_size: int = option("side, in latent positions, of the part of each crop decoded", default=8)
    finetune_decoder: bool = option(
        "also train the decoder (and the source's projection before it) on the quantised code, by the decoder loss: "
        "its images of the estimate against those of the latent by a frozen copy of the source's decoder; the "
        "encoder stays frozen. Needs decoder_loss_weight > 0",
        default=False,
    )
    decoder_learning_rate: float | None = option(
        "peak learning rate of the fine-tuned decoder (finetune_decoder), on the run's schedule like the other parts' "
        "(default: learning_rate); a pretrained decoder may need a lower one than the parts trained from scratch",
        default=None,
    )

    def __post_init__(self):
        if self.decoder_learning_rate is not None and not self.finetune_decoder:
            raise ValueError(
                f"objective.decoder_learning_rate ({self.decoder_learning_rate:g}) is the rate of a fine-tuned decoder, "
                "and the decoder is frozen in this run; add --objective.finetune_decoder or drop "
                "--objective.decoder_learning_rate"
            )
        if self.decoder_learning_rate is not None and self.decoder_learning_rate <= 0:
            raise ValueError(f"objective.decoder_learning_rate must be > 0, got {self.decoder_learning_rate:g}")
        if self.decoder_loss_weight < 0:
            raise ValueError(f"decoder_loss_weight must be >= 0, got {self.decoder_loss_weight}")
        if self.finetune_decoder and self.decoder_loss_weight == 0:
            raise ValueError(
                "objective.finetune_decoder trains the decoder through the decoder loss, so it needs "
                "objective.decoder_loss_weight > 0, got 0; give --objective.decoder_loss_weight (e.g. 0.1) or drop "
                "--objective.finetune_decoder"
            )
        for name in ("decoder_loss_crops", "decoder_loss_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class PhotoTokenizerConfig(RunConfig):
    """The options of train.py's runs (data, optimiser, checkpoints, trackers) and the tokenizer's."""

    pretrained_model_name_or_path: str | None = option(
        "the source (required): a saved latentcode AutoEncoder or VAE (e.g. taef2 converted), or a VQ-VAE made from "
        "one with VQVAEModel.from_autoencoder, to train on",
        default=None,
    )
    output_dir: str = option("where checkpoints, logs and the tokenizer go", default="latentcode-photo-tokenizer")
    data: PhotoTokenizerData = group(PhotoTokenizerData)
    optimization: PhotoTokenizerOptimization = group(PhotoTokenizerOptimization)
    reporting: PhotoTokenizerReporting = group(PhotoTokenizerReporting)
    tokenizer: TokenizerOptions = group(TokenizerOptions)
    objective: PhotoTokenizerObjective = group(PhotoTokenizerObjective)

    resume_fixed: ClassVar[tuple[str, ...]] = (
        *RunConfig.resume_fixed,
        *("latents_dataset", "latent_crop"),
        *("quantizer", "codebook_size", "codebook_dim", "num_quantizers", "quantizer_config", "corrector_config"),
        "latent_patch_size",
        "fit_projections",
        "finetune_decoder",  # which weights the optimiser holds
    )

    def validate(self) -> None:
        super().validate()
        if self.pretrained_model_name_or_path is None:
            raise ValueError(
                "pretrained_model_name_or_path (the source: a trained AutoEncoder or VAE, e.g. taef2 converted) is "
                "required"
            )


def parse_args(argv: list[str] | None = None) -> PhotoTokenizerConfig:
    return parse_config(argv, PhotoTokenizerConfig, description=__doc__)


@command_line
def main(config: PhotoTokenizerConfig) -> dict:
    """Train the tokenizer and save it; returns the final metrics (main process)."""
    from latentcode.training.engine import Engine
    from latentcode.training.photo_tokenizer_task import PhotoTokenizerTask

    return Engine(config, PhotoTokenizerTask(config)).run().metrics


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    main(parse_args())
