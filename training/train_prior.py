"""Train an autoregressive prior over the codes of a trained VQ-VAE, then sample new images.

    accelerate launch training/train_prior.py --pretrained_model_name_or_path runs/vqvae-digits \\
        --dataset_name builtin:digits --output_dir runs/prior-digits --max_train_steps 2000

Images are streamed (`latentcode.data`), encoded to code sequences by the frozen VQ-VAE on the
fly, or, with `--codes_dataset`, read from the VQ-VAE's `latentcode-tokenize` output (encoded
once; the same batches for a one-shard source, see `latentcode.training.codes`), and a
transformers causal LM (`--architecture gpt2` or `llama`) learns them. Every
`--validation_steps` and at the end: the held-out negative log-likelihood and a PNG grid of
sampled images. The prior is written to `--output_dir` with `save_pretrained`, with its model
card (`model_cards/prior.md`) and `samples.png`. The library side is `latentcode.prior`; the task is `latentcode.training.prior_task`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

# Light imports only (no torch): --help and bad options answer at once; the task loads in main.
from latentcode.errors import command_line
from latentcode.training.config import DataOptions, OptimizationOptions, RunConfig, group, option
from latentcode.training.config import parse_args as parse_config

# `latentcode.prior.PRIOR_ARCHITECTURES`, for the help text without importing transformers (a test
# keeps them equal; build_prior checks against the original).
PRIOR_ARCHITECTURE_NAMES = ("gpt2", "llama")


@dataclass
class PriorData(DataOptions):
    """Which images the prior learns the codes of (or the tokenized codes it reads instead),
    their resizing, and the held-out images of the validation NLL."""

    resolution: int | None = option(
        "images are resized and cropped to this (default: the VQ-VAE's sample_size)", default=None
    )
    num_validation_images: int = option("held-out images for the validation NLL", default=64)
    codes_dataset: str | None = option(
        "train from this latentcode-tokenize output of the VQ-VAE (folder or Hub dataset id) instead of "
        "encoding images on the fly; the data options are then unused",
        default=None,
    )


@dataclass
class PriorOptimization(OptimizationOptions):
    """How the prior is optimised (train.py's options; the step count, batch and rates suit a prior)."""

    max_train_steps: int = option("optimiser steps (unused with max_train_time)", default=2000)
    train_batch_size: int = option("images per process per micro-batch", default=32)
    learning_rate: float = option("peak learning rate", default=3e-4)
    adam_weight_decay: float = option("AdamW weight decay", default=0.01)
    lr_warmup_steps: int = option("linear learning-rate warm-up steps", default=100)


@dataclass
class PriorModelOptions:
    """The prior: a transformers causal LM over the code sequences."""

    architecture: str = option(f"one of {PRIOR_ARCHITECTURE_NAMES}", default="gpt2")
    hidden_size: int = option("width of the prior", default=256)
    num_layers: int = option("transformer layers", default=4)
    num_heads: int = option("attention heads", default=4)
    dropout: float = option("dropout of the prior", default=0.0)

    def __post_init__(self):
        if self.architecture not in PRIOR_ARCHITECTURE_NAMES:
            raise ValueError(f"architecture must be one of {PRIOR_ARCHITECTURE_NAMES}, got {self.architecture!r}")


@dataclass
class PriorSamplingOptions:
    """The images sampled from the prior at each validation and at the end."""

    num_samples: int = option("images sampled at each validation and at the end", default=16)
    temperature: float = option("sampling temperature", default=1.0)
    top_k: int | None = option("sample from the k most likely codes only (None: all)", default=None)


@dataclass
class PriorConfig(RunConfig):
    """The options of train_prior.py: the run's groups (data, optimiser) and the prior's."""

    pretrained_model_name_or_path: str | None = option("the trained latentcode VQ-VAE (required)", default=None)
    output_dir: str = option("where checkpoints, logs and the prior (save_pretrained) go", default="latentcode-prior")
    data: PriorData = group(PriorData)
    optimization: PriorOptimization = group(PriorOptimization)
    prior: PriorModelOptions = group(PriorModelOptions)
    sampling: PriorSamplingOptions = group(PriorSamplingOptions)

    resume_fixed: ClassVar[tuple[str, ...]] = (
        *RunConfig.resume_fixed,
        *("architecture", "hidden_size", "num_layers", "num_heads", "dropout", "codes_dataset"),
    )

    def validate(self) -> None:
        super().validate()
        if self.pretrained_model_name_or_path is None:
            raise ValueError("pretrained_model_name_or_path (the trained VQ-VAE) is required")


def parse_args(argv: list[str] | None = None) -> PriorConfig:
    return parse_config(argv, PriorConfig, description=__doc__)


@command_line
def main(config: PriorConfig) -> dict:
    """Train the prior; returns the final metrics (main process)."""
    from latentcode.training.engine import Engine
    from latentcode.training.prior_task import PriorTask

    return Engine(config, PriorTask(config)).run().metrics


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    main(parse_args())
