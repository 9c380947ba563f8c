"""Training configuration: options in groups, filled from defaults < YAML file < command line.

A config is a few run-wide options (`output_dir`, `seed`, `pretrained_model_name_or_path`) and
groups of options, each a dataclass that says what it holds: `data`, `optimization`,
`compute`, `ema`, `checkpoints`, `reporting` (every script) and `objective`, `adversarial`
(`training/train.py`). A YAML file nests by group (`optimization: {learning_rate: 1e-4}`); the
command line takes `--group.option` for every option (`--optimization.learning_rate 1e-4`) and
diffusers' flat flag names for the common ones (`--learning_rate`, `--max_train_steps`, ...,
`FLAT_FLAGS`). Option names are unique across groups, so a name alone says which option it is
(resume checks, tracker logs, `load_config(learning_rate=...)`).

The `model` section is passed unchanged to the family's config class (`VQVAEConfig(**model)`
...), so every model option, present or future, is available without touching this file; on
the command line it is reached as `--model.KEY VALUE` (VALUE parsed as YAML: `--model.
block_out_channels "[32, 64]"`). Likewise `quantizer_loss_weights` (`--quantizer_loss_weights.KEY
VALUE`) overrides the model's quantizer loss weights for a run, any field of `QuantizerLossWeights`,
their one declaration.

This module imports no torch, transformers or model code (the families are looked up when a
config is validated), so that every script answers `--help` at once.
"""

import argparse
import dataclasses
import difflib
import sys
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from ..threads import THREADS_HELP, check_threads
from .schedule import LR_SCHEDULERS, parse_duration

MIXED_PRECISION = ("no", "fp16", "bf16")
# `latentcode.disentanglement`'s VAE_OBJECTIVES and RECONSTRUCTION_DISTRIBUTIONS, for the help texts
# without importing torch (validation checks against the originals; a test keeps them equal).
VAE_OBJECTIVE_NAMES = ("kl", "beta", "capacity", "btcvae", "factor")
RECONSTRUCTION_DISTRIBUTION_NAMES = ("bernoulli", "gaussian", "laplace")


def option(text: str, **kwargs):
    """A config field with its `--help` text."""
    return field(metadata={"help": text}, **kwargs)


def group(options_class: type):
    """A config field holding a group of options (a dataclass whose docstring says what it holds)."""
    return field(default_factory=options_class, metadata={"group": True})


def _check_choices(options, choices: dict[str, tuple]) -> None:
    for key, allowed in choices.items():
        if getattr(options, key) not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {getattr(options, key)!r}")


def _check_positive(options, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = getattr(options, key)
        if value is not None and value < 1:  # a None resolution means the model's sample_size
            raise ValueError(f"{key} must be >= 1, got {value}")


@dataclass
class DataOptions:
    """Which images the run reads and how it prepares them: the source (Hub dataset, embedded
    dataset or local files), its splits, resizing and augmentation, loader workers and the
    held-out validation images. `latentcode-eval` and `latentcode-tokenize` share the source's
    options (`DATA_SOURCE_FIELDS`)."""

    dataset_name: str | None = option(
        "Hub dataset id, or builtin:digits / builtin:photos (real images shipped with scikit-learn / "
        "scikit-image, no network); default builtin:digits when train_data_dir is not set either",
        default=None,
    )
    dataset_config_name: str | None = option("configuration of the Hub dataset", default=None)
    split: str = option(
        "dataset split to read: the split training trains on, or latentcode-tokenize encodes",
        default="train",
    )
    validation_split: str | None = option(
        "split for validation; without one, the first num_validation_images of the training split are held out",
        default=None,
    )
    train_data_dir: str | None = option("local image folder, parquet files or webdataset .tar shards", default=None)
    image_column: str | None = option("image column; found automatically when unset", default=None)
    cache_dir: str | None = option("datasets cache directory", default=None)
    resolution: int = option("training images are resized and cropped to resolution x resolution", default=32)
    center_crop: bool = option("centre crop (else random crop)", default=True)
    random_flip: bool = option("random horizontal flips", default=False)
    shuffle_buffer_size: int = option("size of the streaming shuffle buffer", default=1000)
    dataloader_num_workers: int = option(
        "DataLoader worker processes that decode and augment images (0: the training process, as in "
        "diffusers' training examples); the batches are identical for any number",
        default=0,
    )
    num_validation_images: int = option("validation images for metrics and the reconstruction grid", default=16)

    def __post_init__(self):
        _check_positive(self, ("resolution",))


@dataclass
class OptimizationOptions:
    """How the weights are optimised: batch size and accumulation, run length (steps or a time
    budget), the AdamW optimiser, the learning-rate schedule and warm-up, gradient clipping and
    the guard against non-finite steps."""

    train_batch_size: int = option("images per process per micro-batch", default=16)
    max_train_steps: int = option("optimiser steps (unused with max_train_time)", default=1000)
    max_train_time: str | float | None = option(
        "wall-clock training budget instead of max_train_steps: seconds (900) or 90s / 15m / 2h. The step count "
        "is fitted over the first 5 %% of the budget and fitted again after every further 5 %% (the machine's "
        "speed changes), keeping the learning rate continuous; the run stops at the budget at the latest. The "
        "fits are saved: a resume follows the same schedule. The final validation and save come after it",
        default=None,
    )
    gradient_accumulation_steps: int = option("micro-batches per optimiser step", default=1)
    learning_rate: float = option("peak learning rate", default=1e-4)
    lr_scheduler: str = option(f"one of {LR_SCHEDULERS}", default="cosine")
    lr_warmup_steps: int = option("linear learning-rate warm-up steps", default=0)
    adam_beta1: float = option("AdamW beta1", default=0.9)
    adam_beta2: float = option("AdamW beta2", default=0.999)
    adam_weight_decay: float = option("AdamW weight decay", default=0.0)
    adam_epsilon: float = option("AdamW epsilon", default=1e-8)
    max_grad_norm: float = option("gradient clipping norm (inf: no clipping, norm still logged)", default=1.0)
    max_consecutive_nonfinite_steps: int = option(
        "a NaN/inf loss or gradient skips the step; this many in a row stop the run", default=20
    )

    def __post_init__(self):
        _check_choices(self, {"lr_scheduler": LR_SCHEDULERS})
        _check_positive(self, ("train_batch_size", "max_train_steps", "gradient_accumulation_steps"))
        self.max_train_time = parse_duration(self.max_train_time)


@dataclass
class ComputeOptions:
    """How the run uses the machine: numeric precision, CPU threads, and how long a process
    waits for the others in multi-process training."""

    mixed_precision: str = option(
        f"one of {MIXED_PRECISION}; fp16 needs a CUDA GPU; quantizers always run in fp32. On a CPU, where bf16 "
        "autocast is several times slower than fp32, a --config file's bf16 / fp16 falls back to 'no' with a "
        "warning; this flag's value is used as given",
        default="no",
    )
    threads: int | None = option(THREADS_HELP, default=None)
    ddp_timeout: int = option(
        "seconds a process waits in a collective (gradient sync, barrier) for the others before the run "
        "stops with an error naming them (a killed or frozen process); as transformers' Trainer",
        default=1800,
    )

    def __post_init__(self):
        _check_choices(self, {"mixed_precision": MIXED_PRECISION})
        _check_positive(self, ("ddp_timeout",))
        check_threads(self.threads)


@dataclass
class EMAOptions:
    """An exponential moving average of the trained model's weights, saved in place of them."""

    use_ema: bool = option(
        "keep an EMA of the main model's weights (the one saved); the saved model is the EMA", default=False
    )
    ema_decay: float = option("EMA decay (with the usual (1+n)/(10+n) warm-up)", default=0.999)


@dataclass
class CheckpointOptions:
    """Resumable checkpoints in output_dir: how often, how many are kept, and which one a run
    resumes from."""

    checkpointing_steps: int = option("save a resumable checkpoint every N steps (0: never)", default=500)
    checkpoints_total_limit: int | None = option("keep only the last M checkpoints", default=None)
    resume_from_checkpoint: str | None = option(
        "'latest' or a checkpoint folder. Settings that shape the run's trajectory (resume_fixed: "
        "seed, data, batch size, model, ...) must not change; the others (learning rate, schedule, loss "
        "weights, max_train_steps, ...) take their new values, logged; a time budget's fitted step count is kept",
        default=None,
    )


@dataclass
class ReportingOptions:
    """What the run tells and publishes: validation (metrics, images) cadence, the trackers and
    their logs, and the upload of the final model to the Hugging Face Hub."""

    validation_steps: int = option("validate (metrics, images) every N steps (0: only at the end)", default=500)
    report_to: str = option("accelerate tracker: tensorboard, wandb, all or none", default="tensorboard")
    logging_dir: str = option("tracker logs, relative to output_dir", default="logs")
    tracker_project_name: str = option("project name given to the trackers", default="latentcode")
    push_to_hub: bool = option("upload output_dir to the Hub after the local save", default=False)
    hub_model_id: str | None = option("Hub repository, org/name", default=None)
    hub_token: str | None = option("Hub token (default: the logged-in one)", default=None)

    def __post_init__(self):
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (org/name)")


@dataclass
class RunConfig:
    """The options every training script shares (`training/train.py`, `train_prior.py`,
    `train_latent_diffusion.py`): the run's output folder, seed and starting model, then the
    groups. Each script's config subclasses it with its own groups, and its own defaults
    through subclasses of the shared groups."""

    output_dir: str = option(
        "where checkpoints, logs and the final model (save_pretrained) go", default="latentcode-model"
    )
    seed: int = option("seed of model initialisation, shuffling, augmentation and sampling", default=0)
    pretrained_model_name_or_path: str | None = option("the saved model (folder or Hub id) to start from", default=None)

    data: DataOptions = group(DataOptions)
    optimization: OptimizationOptions = group(OptimizationOptions)
    compute: ComputeOptions = group(ComputeOptions)
    ema: EMAOptions = group(EMAOptions)
    checkpoints: CheckpointOptions = group(CheckpointOptions)
    reporting: ReportingOptions = group(ReportingOptions)

    # Settings that decide which images each step sees, in which order, through which model:
    # changing one on resume would silently break the run (the saved data position, RNG streams
    # and weights belong to the old values), so a resume refuses it. Every other setting may
    # change on resume and takes its new value (learning rate, schedule, loss weights, ...).
    # Option names, unique across groups (`option_values`).
    resume_fixed: ClassVar[tuple[str, ...]] = (
        "seed",
        "pretrained_model_name_or_path",
        *("dataset_name", "dataset_config_name", "split", "validation_split", "train_data_dir", "image_column"),
        *("resolution", "center_crop", "random_flip", "shuffle_buffer_size", "num_validation_images"),
        *("train_batch_size", "gradient_accumulation_steps", "mixed_precision", "use_ema"),
    )

    # The option names whose values came from the `--config` YAML file rather than the command
    # line or the caller (set by `load_config`). A GPU preset's bf16 is a default, not a choice, on a CPU.
    file_keys: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check what spans groups or needs the model code (each group checks its own values when
        built); raise ValueError naming the option."""
        for name, options_class in group_classes(type(self)).items():
            given = getattr(self, name)
            if not isinstance(given, options_class):
                raise ValueError(
                    f"{name} must be a {options_class.__name__}, got {type(given).__name__}; "
                    f"load_config builds it from a mapping ({name}={{...}})"
                )

    def to_dict(self) -> dict:
        """The config as nested mappings, one per group (YAML's form)."""
        return dataclasses.asdict(self)

    def option_values(self) -> dict:
        """Every option by its name (unique across groups), the `model` and other sections included."""
        values = {name: getattr(self, name) for name in _top_level_fields(type(self))}
        for name in group_classes(type(self)):
            values.update(dataclasses.asdict(getattr(self, name)))
        return values


@dataclass
class AutoencoderOptimization(OptimizationOptions):
    """How the weights are optimised: batch size and accumulation, run length (steps or a time
    budget), the AdamW optimiser, the learning-rate schedule and warm-up, gradient clipping, the
    guard against non-finite steps, and the final decoder-only phase."""

    decoder_finetune_fraction: float = option(
        "the last fraction of the run's steps (of max_train_steps, or of the step count fitted to "
        "max_train_time) trains only the decoder side (decoder, post_quant_conv): the encoder, quant_conv and "
        "quantizer are frozen (with use_ema, at their averaged weights) and the codebook stops updating, so the "
        "codes and the rate stay as they are. With max_train_time the phase begins at the fraction of the step "
        "count fitted then; its cheaper steps raise the count's later fits, so it runs longer than the fraction. "
        "0: off",
        default=0.0,
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.decoder_finetune_fraction < 1.0:
            raise ValueError(
                f"decoder_finetune_fraction must be in [0, 1) (the share of the run that trains only the decoder; "
                f"0 = off), got {self.decoder_finetune_fraction}"
            )


@dataclass
class AutoencoderCompute(ComputeOptions):
    """How the run uses the machine: numeric precision, CPU threads, how long a process waits for
    the others in multi-process training, activation recomputation and torch.compile."""

    gradient_checkpointing: bool = option("recompute activations in the backward pass to save memory", default=False)
    torch_compile: bool = option(
        "torch.compile the encoder and decoder (model.compile(); the quantizer stays eager)", default=False
    )
    torch_compile_backend: str = option("torch.compile backend of --torch_compile", default="inductor")


@dataclass
class ObjectiveOptions:
    """What the autoencoder's loss weighs besides the quantizer's terms (`quantizer_loss_weights`):
    the VAE's KL weight and warm-up, and the β-VAE family's objectives (disentangling-vae's, with
    readable option names)."""

    kl_weight: float | None = option(
        "VAE (vae_objective kl): weight of the KL per latent value (default: the model config's kl_weight)",
        default=None,
    )
    kl_warmup_steps: int = option("VAE: the KL weight rises linearly from 0 over these steps", default=0)
    vae_objective: str = option(
        f"VAE: one of {VAE_OBJECTIVE_NAMES}. kl: the model config's kl_weight per value (latentcode's default); "
        "beta: recon + β KL; capacity: recon + γ |KL - C|, C annealed; btcvae: β-TCVAE's decomposed KL; "
        "factor: FactorVAE's discriminator TC. These four are in nats per image, as disentangling-vae's --loss",
        default="kl",
    )
    reconstruction_distribution: str = option(
        f"reconstruction likelihood of beta / capacity / btcvae / factor: one of {RECONSTRUCTION_DISTRIBUTION_NAMES} "
        "(bernoulli needs backbone 'vector', whose decoder ends in a sigmoid)",
        default="bernoulli",
    )
    anneal_steps: int = option(
        "optimiser steps over which beta's β KL, btcvae's dimension-wise KL and factor's TC rise from 0, and "
        "capacity's C from capacity_start to capacity_end (the published models: 10000)",
        default=0,
    )
    beta: float = option("beta: β, the KL weight (1: the plain VAE)", default=4.0)
    capacity_start: float = option("capacity: capacity C at step 0, nats", default=0.0)
    capacity_end: float = option("capacity: capacity C after anneal_steps steps, nats", default=25.0)
    capacity_weight: float = option("capacity: γ, the weight of |KL - C|", default=1000.0)
    mutual_information_weight: float = option("btcvae: α, weight of the index-code mutual information", default=1.0)
    tc_weight: float = option(
        "btcvae and factor: weight of the total correlation (β-TCVAE's β, FactorVAE's γ)", default=6.0
    )
    dimension_kl_weight: float = option("btcvae: γ, weight of the dimension-wise KL", default=1.0)
    tc_dataset_size: int | None = option(
        "btcvae: the number of training images N of minibatch stratified sampling (default: the training split's)",
        default=None,
    )
    tc_discriminator_learning_rate: float = option(
        "factor: learning rate of the TC discriminator's Adam (betas 0.5, 0.9), constant", default=5e-5
    )
    tc_discriminator_hidden_units: int = option("factor: width of the discriminator's 6 linear layers", default=1000)

    def validate(self) -> None:
        """Check the objective's names and weights against `latentcode.disentanglement` (loaded here,
        not for --help)."""
        from ..disentanglement import RECONSTRUCTION_DISTRIBUTIONS, VAE_OBJECTIVES

        _check_choices(
            self, {"vae_objective": VAE_OBJECTIVES, "reconstruction_distribution": RECONSTRUCTION_DISTRIBUTIONS}
        )
        if self.vae_objective == "kl":
            return
        if self.kl_weight is not None:
            raise ValueError(
                f"kl_weight weighs the kl objective's KL; vae_objective={self.vae_objective!r} has its own weights "
                "(beta, capacity_weight, tc_weight): set those, not kl_weight"
            )
        if self.kl_warmup_steps:
            raise ValueError(
                f"kl_warmup_steps warms up the kl objective's weight; vae_objective={self.vae_objective!r} anneals "
                "over anneal_steps steps instead (disentangling-vae's --reg-anneal): set anneal_steps, not kl_warmup_steps"
            )
        non_negative = (
            *("anneal_steps", "beta", "capacity_start", "capacity_weight"),
            *("mutual_information_weight", "tc_weight", "dimension_kl_weight"),
        )
        for key in non_negative:
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("tc_discriminator_learning_rate", "tc_discriminator_hidden_units"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")


@dataclass
class AdversarialOptions:
    """The perceptual (LPIPS) loss and the PatchGAN discriminator of VQGAN-style training."""

    perceptual_weight: float = option("weight of the LPIPS loss (0: off)", default=0.0)
    perceptual_net: str = option("LPIPS backbone: vgg, alex or squeeze", default="vgg")
    perceptual_pretrained: bool = option(
        "ImageNet LPIPS backbone; false = random weights, for tests only", default=True
    )
    disc_weight: float = option("weight of the adversarial loss (0: no discriminator)", default=0.0)
    disc_start: int = option("optimiser step at which the discriminator starts", default=0)
    disc_loss: str = option("hinge or non_saturating", default="hinge")
    disc_adaptive_weight: bool = option("scale the adversarial loss by VQGAN's gradient-norm ratio", default=True)
    disc_learning_rate: float | None = option("discriminator learning rate (default: learning_rate)", default=None)
    disc_channels: int = option("width of the PatchGAN's first layer", default=64)
    disc_num_layers: int = option("stride-2 layers of the PatchGAN", default=3)
    disc_norm: str = option("PatchGAN normalisation: batch or none", default="batch")

    def __post_init__(self):
        _check_choices(self, {"disc_loss": ("hinge", "non_saturating"), "disc_norm": ("batch", "none")})


@dataclass
class TrainingConfig(RunConfig):
    """Every option of `training/train.py`; see `--help` or each field's help text."""

    pretrained_model_name_or_path: str | None = option(
        "start from a saved model (folder or Hub id) instead of a new one; `model` must then be empty", default=None
    )
    model_family: str = option("autoencoder, vae or vqvae", default="vqvae")
    model: dict = option(
        "keyword arguments of the family's config class (AutoencoderConfig / VAEConfig / VQVAEConfig); "
        "sample_size defaults to resolution",
        default_factory=dict,
    )
    quantizer_loss_weights: dict = option(
        "VQ-VAE: this run's weights of the quantizer's terms, overriding the model config's: any field of "
        "QuantizerLossWeights (commitment_weight, codebook_weight, entropy_weight, ...: docs/quantizers.md); "
        "--quantizer_loss_weights.KEY VALUE",
        default_factory=dict,
    )

    optimization: AutoencoderOptimization = group(AutoencoderOptimization)
    compute: AutoencoderCompute = group(AutoencoderCompute)
    objective: ObjectiveOptions = group(ObjectiveOptions)
    adversarial: AdversarialOptions = group(AdversarialOptions)

    def validate(self) -> None:
        from ..families import FAMILIES, get_family  # loads the model classes: not needed for --help

        super().validate()
        _check_choices(self, {"model_family": tuple(FAMILIES)})
        if not isinstance(self.model, dict):
            raise ValueError(f"model must be a mapping of config fields, got {type(self.model).__name__}")
        if self.pretrained_model_name_or_path is None:
            check_model_keys(self.model_family, self.model)
        elif self.model:
            raise ValueError(
                f"model={self.model} and pretrained_model_name_or_path={self.pretrained_model_name_or_path!r}: "
                "a pretrained model brings its own config; leave model empty"
            )
        check_quantizer_loss_weights(self.quantizer_loss_weights)
        self.objective.validate()
        # a β-VAE objective trains a Gaussian code with a N(0, I) prior
        if self.objective.vae_objective != "kl" and not get_family(self.model_family).model_class.can_sample_prior:
            gaussian = [name for name, family in FAMILIES.items() if family.model_class.can_sample_prior]
            raise ValueError(
                f"vae_objective={self.objective.vae_objective!r} trains a Gaussian code (model_family one of "
                f"{gaussian}), but model_family={self.model_family!r}; use model_family vae (or vae_objective kl)"
            )

    resume_fixed: ClassVar[tuple[str, ...]] = (
        *RunConfig.resume_fixed,
        *("model_family", "model", "disc_channels", "disc_num_layers", "disc_norm"),
        *("vae_objective", "tc_discriminator_hidden_units"),  # which modules train, and their shapes
    )


def model_config_keys(family: str) -> list[str]:
    """The keyword arguments the family's config class accepts (its own and its bases')."""
    from ..families import get_family

    return get_family(family).config_class.field_names()


def _unknown_key_error(kind: str, key: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; known keys: {', '.join(known)}"
    return ValueError(f"unknown {kind} key {key!r}{hint}")


def check_model_keys(family: str, model: dict) -> None:
    from ..families import get_family

    known = model_config_keys(family)
    for key in model:
        if key not in known:
            raise _unknown_key_error(f"model ({get_family(family).config_class.__name__})", key, known)


def check_quantizer_loss_weights(weights: dict) -> None:
    """Each key of a run's `quantizer_loss_weights` must be a field of `QuantizerLossWeights`,
    the one declaration of the quantizer's loss weights (its fields' help texts say what each does)."""
    from ..modules.quantizers import QuantizerLossWeights

    if not isinstance(weights, dict):
        raise ValueError(f"quantizer_loss_weights must be a mapping of weights, got {type(weights).__name__}")
    fields = {field.name: field for field in dataclasses.fields(QuantizerLossWeights)}
    for key in weights:
        if key not in fields:
            described = "; ".join(
                f"{name}: {field.metadata.get('help', 'see its docstring')}" for name, field in fields.items()
            )
            raise ValueError(
                f"{_unknown_key_error('quantizer_loss_weights', key, list(fields))}. The weights: {described}"
            )


# Where the images come from is one choice: a dataset (Hub or embedded) or a local folder.
# Setting one source as an override drops the YAML file's keys of the other (all in `data`).
DATA_SOURCES = {"dataset_name": ("train_data_dir",), "train_data_dir": ("dataset_name", "dataset_config_name")}
# The fields of `DataOptions` that name the images to read: latentcode-eval's data flags are these.
DATA_SOURCE_FIELDS = ("dataset_name", "dataset_config_name", "split", "train_data_dir", "image_column", "cache_dir")


# The options that are mappings, passed on key by key (`--model.KEY VALUE`, VALUE parsed as YAML).
MAPPING_SECTIONS = ("model", "quantizer_loss_weights")

# diffusers' flat flag names, kept beside `--group.option` for the common options and for every flat
# flag the README, the docs, the benchmarks and the tests use: `--learning_rate` is
# `--optimization.learning_rate`. The other options answer to `--group.option` only.
FLAT_FLAGS = frozenset(
    {
        *("dataset_name", "dataset_config_name", "train_data_dir", "resolution", "validation_split", "split"),
        *("image_column", "cache_dir", "center_crop", "random_flip", "shuffle_buffer_size"),
        *("dataloader_num_workers", "num_validation_images", "codes_dataset", "latents_dataset"),
        *("train_batch_size", "max_train_steps", "max_train_time", "gradient_accumulation_steps"),
        *("learning_rate", "lr_scheduler", "lr_warmup_steps", "adam_beta1", "adam_beta2", "adam_weight_decay"),
        *("max_grad_norm", "max_consecutive_nonfinite_steps", "decoder_finetune_fraction"),
        *("mixed_precision", "threads", "ddp_timeout", "gradient_checkpointing", "torch_compile"),
        *("torch_compile_backend", "use_ema", "ema_decay"),
        *("checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint"),
        *("validation_steps", "report_to", "push_to_hub", "hub_model_id", "hub_token"),
        *("kl_weight", "vae_objective", "reconstruction_distribution", "anneal_steps", "beta", "capacity_start"),
        *("capacity_end", "capacity_weight", "mutual_information_weight", "tc_weight", "dimension_kl_weight"),
        *("tc_discriminator_learning_rate", "tc_discriminator_hidden_units"),
        *("perceptual_weight", "perceptual_net", "disc_weight", "disc_start"),
        *("architecture", "hidden_size", "num_layers", "num_heads", "num_samples", "temperature", "top_k"),
        *("block_out_channels", "norm_num_groups", "scaling_factor", "num_inference_steps"),
    }
)


def group_classes(config_class: type[RunConfig]) -> dict[str, type]:
    """The config's groups: field name -> the dataclass of its options."""
    hints = typing.get_type_hints(config_class)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_class) if f.metadata.get("group")}


def _top_level_fields(config_class: type[RunConfig]) -> list[str]:
    return [f.name for f in dataclasses.fields(config_class) if not f.metadata.get("group")]


def option_groups(config_class: type[RunConfig] = TrainingConfig) -> dict[str, str | None]:
    """Every option name -> its group (None: a run-wide option or a mapping section). Raises if
    two groups declare one name: names are unique, so a name alone says which option it is."""
    owners = {name: None for name in _top_level_fields(config_class)}
    for group_name, options_class in group_classes(config_class).items():
        for spec in dataclasses.fields(options_class):
            if spec.name in owners or spec.name in group_classes(config_class):
                where = owners.get(spec.name) or "the run-wide options"
                raise TypeError(
                    f"option {spec.name!r} of {group_name} is declared in {where} too; names must be unique"
                )
            owners[spec.name] = group_name
    return owners


def _nest(values: dict, config_class: type[RunConfig], origin: str, flat_names: bool) -> dict:
    """`values` (run-wide options, group mappings and, with `flat_names`, options by their name)
    as {run-wide option: value, group: {option: value}}; unknown keys raise a ValueError."""
    owners, groups = option_groups(config_class), group_classes(config_class)
    nested = {}
    for key, value in values.items():
        if key in groups:
            value = {} if value is None else value  # a YAML group whose options are all commented out
            if not isinstance(value, dict):
                raise ValueError(f"{origin}: {key} must be a mapping of its options, got {value!r}")
            known = [spec.name for spec in dataclasses.fields(groups[key])]
            for name in value:
                if name not in known:
                    raise ValueError(f"{origin}: {_unknown_key_error(f'{key} option', name, known)}")
            nested.setdefault(key, {}).update(value)
        elif key in owners and owners[key] is None:
            nested[key] = value
        elif key in owners and flat_names:
            nested.setdefault(owners[key], {})[key] = value
        elif key in owners:
            raise ValueError(
                f"{origin}: {key} is an option of the {owners[key]} group; nest it: {owners[key]}: {{{key}: {value!r}}}"
            )
        else:
            raise ValueError(f"{origin}: {_unknown_key_error('training config', key, [*owners, *groups])}")
    return nested


def load_config(path: str | Path | None = None, config_class: type[RunConfig] = TrainingConfig, **overrides):
    """A `config_class` (default [`TrainingConfig`]) from a YAML file (optional, nested by group:
    `optimization: {learning_rate: 1e-4}`) with `overrides` on top. An override is a run-wide
    option, a group mapping (`optimization={"learning_rate": 1e-4}`) or an option by its name
    (`learning_rate=1e-4`: names are unique across groups); groups and the `model` section are
    merged key by key into the file's. Unknown keys raise a ValueError."""
    values = {}
    if path is not None:
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of options, got {type(values).__name__}")
    values = _nest(values, config_class, str(path), flat_names=False)
    overrides = _nest(overrides, config_class, "load_config", flat_names=True)
    data = overrides.get("data", {})
    # The data source is one choice: an override of one source replaces the file's other one
    # (a preset's dataset_name must not clash with --train_data_dir, and vice versa).
    for chosen, replaced in DATA_SOURCES.items():
        if data.get(chosen) is not None:
            for key in replaced:
                if key not in data:
                    values.get("data", {}).pop(key, None)
    groups = group_classes(config_class)
    # The options (by name) whose values come from the file: no override replaced them.
    file_keys = {key for key in values if key not in groups and key not in overrides}
    file_keys |= {name for group in groups for name in values.get(group, {}) if name not in overrides.get(group, {})}
    arguments = {**values, **overrides}
    for name, options_class in groups.items():
        arguments[name] = options_class(**{**values.get(name, {}), **overrides.get(name, {})})
    for section in MAPPING_SECTIONS:  # merged key by key: an override of one key keeps the file's others
        if section in option_groups(config_class):
            arguments[section] = {**(values.get(section) or {}), **(overrides.get(section) or {})}
    config = config_class(**arguments)
    config.file_keys = frozenset(file_keys)
    return config


def _optional(convert):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else convert(text)

    return parse


TRAIN_DESCRIPTION = (
    "Train an AutoEncoder, VAE or VQ-VAE (latentcode). Options come from the dataclass defaults, then --config "
    "YAML (nested by group: 'optimization: {learning_rate: 1e-4}'), then these flags: --GROUP.OPTION for every "
    "option, and diffusers' flat names (--learning_rate, ...) for the common ones. Model options: --model.KEY "
    "VALUE for any field of the family's config class (e.g. --model.codebook_size 512, --model.block_out_channels "
    "'[64, 128]'). This run's quantizer loss weights: --quantizer_loss_weights.KEY VALUE for any field of "
    "QuantizerLossWeights (e.g. --quantizer_loss_weights.entropy_weight 0.2)."
)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` that states each default once: "(default: X)" is appended unless the help text
    states its default already (as every flag of `add_config_arguments` does) or the flag is
    required."""

    def _get_help_string(self, action):
        text = action.help or ""
        return text if "default" in text or action.required else super()._get_help_string(action)


def _add_option(parser, flags: list[str], dest: str, spec: dataclasses.Field, hint, keep_defaults: bool) -> None:
    """One option's flag (`flags`: its spellings; a bool also gets `--no_...`), with the field's
    help text and its default stated. Left out, it is absent from the parsed namespace (so a
    YAML file's value stays), or with `keep_defaults` takes the field's default."""
    default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
    unset = default if keep_defaults else argparse.SUPPRESS
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = typing.get_args(hint) if is_union else ()
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    text = spec.metadata["help"]
    # A help text that explains its own default (e.g. "default: learning_rate") keeps it alone.
    text = text if "default" in text else f"{text} (default: {default})"
    if base is bool:  # --name / --no_name (underscores, as every other flag)
        parser.add_argument(*flags, dest=dest, action="store_const", const=True, default=unset, help=text)
        negated = [
            flag.rpartition(".")[0] + ".no_" + spec.name if "." in flag else f"--no_{spec.name}" for flag in flags
        ]
        parser.add_argument(
            *negated, dest=dest, action="store_const", const=False, default=unset, help=f"{flags[0]} off"
        )
        return
    if typing.get_origin(base) in (list, tuple, dict):
        kwargs = dict(type=yaml.safe_load, metavar="YAML")  # e.g. --block_out_channels "[64, 128]"
    elif type(None) in args:
        kwargs = dict(type=_optional(base), metavar=spec.name.upper())
    else:
        kwargs = dict(type=base, metavar=spec.name.upper())
    parser.add_argument(*flags, dest=dest, default=unset, help=text, **kwargs)


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    options_class: type,
    names: typing.Iterable[str],
    keep_defaults: bool = False,
) -> None:
    """A flat flag `--NAME` per option in `names` of the dataclass `options_class` (a group, e.g.
    `DataOptions`), with the field's help text and default: other commands reuse training's options
    (`latentcode-eval`'s data flags). Flags left out are absent from the parsed namespace, or with
    `keep_defaults` take the field's default."""
    hints = typing.get_type_hints(options_class)
    fields = {spec.name: spec for spec in dataclasses.fields(options_class)}
    for name in names:
        _add_option(parser, [f"--{name}"], name, fields[name], hints[name], keep_defaults)


def build_parser(
    config_class: type[RunConfig] = TrainingConfig, description: str = TRAIN_DESCRIPTION
) -> argparse.ArgumentParser:
    """`--config YAML`, then a flag per run-wide option and one argument group per group:
    `--GROUP.OPTION` for each of its options (and the flat `--OPTION` where in `FLAT_FLAGS`). The
    parsed names are the options' paths ("optimization.learning_rate"); flags left out keep the
    YAML's value or the field's default."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", help="YAML file with any of the options below (default: none; each option's own value stated below)"
    )
    hints = typing.get_type_hints(config_class)
    for spec in dataclasses.fields(config_class):
        if not spec.metadata.get("group") and spec.name not in MAPPING_SECTIONS:
            _add_option(parser, [f"--{spec.name}"], spec.name, spec, hints[spec.name], keep_defaults=False)
    option_groups(config_class)  # names are unique: each flat flag is one option's
    for group_name, options_class in group_classes(config_class).items():
        section = parser.add_argument_group(
            group_name, textwrap.fill(" ".join(options_class.__doc__.split()), 78, break_on_hyphens=False)
        )
        group_hints = typing.get_type_hints(options_class)
        for spec in dataclasses.fields(options_class):
            flags = [f"--{group_name}.{spec.name}", *([f"--{spec.name}"] if spec.name in FLAT_FLAGS else [])]
            _add_option(section, flags, f"{group_name}.{spec.name}", spec, group_hints[spec.name], keep_defaults=False)
    return parser


def parse_args(
    argv: list[str] | None = None, config_class: type[RunConfig] = TrainingConfig, description: str = TRAIN_DESCRIPTION
):
    """Command line -> `config_class` (default [`TrainingConfig`]). `--model.KEY VALUE` pairs set
    model config fields, `--quantizer_loss_weights.KEY VALUE` the run's quantizer loss weights."""
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = {}, []
    while argv:
        token = argv.pop(0)
        section = next((name for name in MAPPING_SECTIONS if token.startswith(f"--{name}.")), None)
        if section is None:
            rest.append(token)
            continue
        key, separator, value = token[len(section) + 3 :].partition("=")
        if not separator:
            if not argv:
                raise ValueError(f"{token} needs a value")
            value = argv.pop(0)
        overrides.setdefault(section, {})[key] = yaml.safe_load(value)
    namespace = vars(build_parser(config_class, description).parse_args(rest))
    path = namespace.pop("config")
    for dest, value in namespace.items():
        group_name, _, name = dest.rpartition(".")
        if group_name:
            overrides.setdefault(group_name, {})[name] = value
        else:
            overrides[name] = value
    return load_config(path, config_class, **overrides)
