"""`training/train.py`'s task for the engine: an AutoEncoder, VAE or VQ-VAE and its recipe.

The engine (`engine.py`) runs the steps, the weight EMA, checkpoints and resume; this module
supplies the model, its data, the objective (`latentcode.objectives.AutoencoderObjective`:
reconstruction, KL warm-up, quantizer terms, LPIPS, the GAN with its adaptive weight), the
discriminators' own losses in the same backward pass, the decoder-only phase, validation (the
evaluation `latentcode-eval` runs) and the final model, metrics and card.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from ..data import ImageBatches, image_data_from_config
from ..disentanglement import FactorVAELoss, vae_loss_from_config
from ..evaluation.evaluate import EvaluationResult, evaluate, metrics_markdown, per_dimension_values
from ..families import get_family
from ..grids import reconstruction_grid
from ..losses import PatchDiscriminator, PerceptualLoss
from ..modeling import LatentCodePreTrainedModel
from ..objectives import AdversarialTerms, AutoencoderObjective
from .checkpointing import CheckpointWriteError, describe_disk, list_checkpoints
from .config import TrainingConfig
from .ema import EMAModel
from .engine import Engine, Part, TrainingResult, TrainingTask, data_source, training_report
from .model_card import render_model_card

logger = logging.getLogger(__name__)

# The modules a decoder-only fine-tuning phase trains; every other child of the model (encoder,
# quant_conv, quantizer) is frozen, so the codes, and so the rate, do not change.
DECODER_SIDE = ("decoder", "post_quant_conv")


def build_model(config: TrainingConfig) -> LatentCodePreTrainedModel:
    """A new model of `config.model_family` from `config.model`, or a pretrained one; checks that
    `resolution` suits its downsampling factor."""
    family = get_family(config.model_family)
    if config.pretrained_model_name_or_path is not None:
        model = family.model_class.from_pretrained(config.pretrained_model_name_or_path)
    else:
        model = family.model_class(family.config_class(**{"sample_size": config.data.resolution, **config.model}))
    factor = model.config.downsampling_factor
    if config.data.resolution % factor:
        raise ValueError(
            f"resolution={config.data.resolution} is not divisible by the model's downsampling factor {factor} "
            f"(config.downsampling_factor: 2 ** (len(block_out_channels) - 1), block_out_channels="
            f"{model.config.block_out_channels}, times latent_patch_size where the model has one)"
        )
    return model


def decoder_finetune_start(config: TrainingConfig, total_steps: int | None) -> int | None:
    """The first step (0-based) of the decoder-only phase: the last `decoder_finetune_fraction`
    of `total_steps`; None when the option is off or the step count is not yet fitted."""
    if not config.optimization.decoder_finetune_fraction or total_steps is None:
        return None
    return total_steps - math.floor(config.optimization.decoder_finetune_fraction * total_steps)


def _adam_options(config: TrainingConfig) -> dict:
    betas = (config.optimization.adam_beta1, config.optimization.adam_beta2)
    return dict(betas=betas, weight_decay=config.optimization.adam_weight_decay, eps=config.optimization.adam_epsilon)


class AutoencoderTask(TrainingTask):
    """Trains an autoencoder (AutoEncoder, VAE or VQ-VAE): its model, objective, discriminators,
    validation and final save, for the [`Engine`]."""

    def __init__(self, config: TrainingConfig):
        self.config = config
        self.use_gan = config.adversarial.disc_weight > 0
        layers, resolution = config.adversarial.disc_num_layers, config.data.resolution
        if self.use_gan and resolution < 2 ** (layers + 2):
            raise ValueError(
                f"resolution={resolution} is too small for a discriminator with disc_num_layers={layers}: it needs "
                f"at least {2 ** (layers + 2)}"
            )
        self.decoder_only = False  # the decoder-only phase has begun (set again on a resume past it)

    def build(self, engine: Engine) -> ImageBatches:
        config, accelerator = self.config, engine.accelerator
        optimization, compute, gan = config.optimization, config.compute, config.adversarial
        model = build_model(config)
        if compute.gradient_checkpointing:
            model.activation_checkpointing_enable()
        if compute.torch_compile:
            model.compile(backend=compute.torch_compile_backend)  # in place: checkpoints keep their keys
        if optimization.decoder_finetune_fraction and accelerator.num_processes > 1:
            raise ValueError(
                f"decoder_finetune_fraction={optimization.decoder_finetune_fraction} freezes the encoder mid-run, "
                f"which DistributedDataParallel does not allow ({accelerator.num_processes} processes); run it on one "
                "process, or set decoder_finetune_fraction 0"
            )
        batches, self.validation_images = image_data_from_config(
            config,
            model.config.in_channels,
            config.data.resolution,
            accelerator.process_index,
            accelerator.num_processes,
        )
        if self.validation_images.numel() == 0:
            raise ValueError("num_validation_images must be >= 1: validation metrics and the grid need images")
        trainable = [p for p in model.parameters() if p.requires_grad]
        parts = [
            Part("model", model, torch.optim.AdamW(trainable, lr=optimization.learning_rate, **_adam_options(config)))
        ]
        perceptual = None
        if gan.perceptual_weight > 0:
            perceptual = PerceptualLoss(gan.perceptual_net, gan.perceptual_pretrained).to(accelerator.device)
        adversarial = None
        if self.use_gan:
            discriminator = PatchDiscriminator(
                model.config.out_channels, gan.disc_channels, gan.disc_num_layers, gan.disc_norm
            )
            lr = gan.disc_learning_rate or optimization.learning_rate  # constant: not on the run's schedule
            optimizer = torch.optim.AdamW(discriminator.parameters(), lr=lr, **_adam_options(config))
            parts.append(Part("discriminator", discriminator, optimizer, learning_rate=lr))
            adversarial = AdversarialTerms(
                discriminator, gan.disc_weight, gan.disc_start, gan.disc_loss, gan.disc_adaptive_weight
            )
        vae_loss = vae_loss_from_config(config, model, dataset_size=batches.order.total)
        if isinstance(vae_loss, FactorVAELoss):  # Adam with the paper's betas, constant learning rate
            lr = config.objective.tc_discriminator_learning_rate
            optimizer = torch.optim.Adam(vae_loss.discriminator.parameters(), lr=lr, betas=(0.5, 0.9))
            parts.append(Part("tc_discriminator", vae_loss.discriminator, optimizer, lr))
        self.objective = AutoencoderObjective.for_model(
            model,
            **config.quantizer_loss_weights,  # the weights this run overrides; the others are the model's
            kl_weight=config.objective.kl_weight,
            kl_warmup_steps=config.objective.kl_warmup_steps,
            perceptual=perceptual,
            perceptual_weight=gan.perceptual_weight,
            adversarial=adversarial,
            vae_loss=vae_loss,
        )
        parts = {part.name: part.module for part in engine.prepare(parts)}
        self.model = parts["model"]  # prepared (DDP): its gradients are synchronised
        self.unwrapped: LatentCodePreTrainedModel = engine.unwrap(self.model)
        if self.objective.adversarial is not None:
            # The generator's term looks through the unwrapped discriminator (frozen, so that no DDP
            # reduction of its absent gradients is expected); its own loss trains the prepared one.
            self.objective.adversarial.discriminator = engine.unwrap(parts["discriminator"])
            self.objective.adversarial.trained = parts["discriminator"]
        if isinstance(self.objective.vae_loss, FactorVAELoss):  # likewise FactorVAE's discriminator
            self.objective.vae_loss.discriminator = engine.unwrap(parts["tc_discriminator"])
            self.objective.vae_loss.trained = parts["tc_discriminator"]
        return batches

    def _enter_decoder_phase(self, engine: Engine) -> None:
        """From `decoder_finetune_start` on: the encoder side frozen and run as in evaluation (no
        codebook EMA update, no dead-code restart), only the decoder side trained."""
        start = decoder_finetune_start(self.config, engine.schedule.total_steps)
        # once begun, the phase stays: a time budget's re-fitted step count may move `start` later
        if not self.decoder_only and (start is None or engine.global_step < start):
            return
        frozen = [module for name, module in self.unwrapped.named_children() if name not in DECODER_SIDE]
        if not self.decoder_only:
            freeze_at_saved_weights(frozen, engine.ema, engine.averaged)
            self.decoder_only = True
            logger.info(
                "step %d: decoder-only fine-tuning from here on (encoder, quant_conv, quantizer frozen)",
                engine.global_step + 1,
            )
        for module in frozen:  # every step: validation puts the whole model back in training mode
            module.eval()

    def compute_loss(self, engine: Engine, pixels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The objective of the autoencoder plus FactorVAE's discriminator loss and, once the GAN is
        active, the discriminator's own loss (disjoint parameters: one backward pass trains all)."""
        self._enter_decoder_phase(engine)
        output = self.model(pixels, return_dict=True)
        with engine.accelerator.autocast():
            loss, logs = self.objective(output, pixels, engine.global_step, self.unwrapped.decoder.last_layer)
            logs = {**self.unwrapped.loss_summary(output), **logs}  # the family's terms (KL, perplexity, ...)
            if isinstance(self.objective.vae_loss, FactorVAELoss):
                logs["tc_discriminator_loss"] = self.objective.vae_loss.discriminator_loss(output)
                loss = loss + logs["tc_discriminator_loss"]
            adversarial = self.objective.adversarial
            if adversarial is not None and adversarial.active(engine.global_step):
                logs["discriminator_loss"] = adversarial.discriminator_loss(pixels, output.sample)
                return loss + logs["discriminator_loss"], logs
        return loss, logs

    def validate(self, engine: Engine, grid_path: Path | None = None) -> dict[str, float]:
        """Main process: metrics on the validation images (the evaluation `latentcode-eval` runs),
        grid PNG written (`validation/step-N.png` unless `grid_path`) and logged."""
        return self._validation_result(engine, grid_path).metrics

    def _validation_result(self, engine: Engine, grid_path: Path | None = None) -> EvaluationResult:
        """[`validate`], returning the whole evaluation (the model card shows its per-dimension KL)."""
        images = self.validation_images
        result = evaluate(
            self.unwrapped,
            images.split(self.config.optimization.train_batch_size),
            num_grid_images=len(images),
            autocast=engine.accelerator.autocast,
            throughput=False,  # timings would make a resumed run's metrics differ
        )
        grid = reconstruction_grid(images, result.reconstructions.clamp(-1, 1), num_columns=8)
        grid_path = grid_path or engine.output_dir / "validation" / f"step-{engine.global_step:06d}.png"
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(grid_path)
        for tracker in engine.accelerator.trackers:
            if tracker.name == "tensorboard":
                array = torch.from_numpy(np.array(grid.convert("RGB")))
                tracker.log_images({"validation/reconstructions": array[None]}, engine.global_step, dataformats="NHWC")
            elif tracker.name == "wandb":
                tracker.log_images({"validation/reconstructions": [grid]}, engine.global_step)
        return result

    def finish(self, engine: Engine, summary: dict) -> dict:
        """Save the final model (EMA weights if used), processor, grid and card; returns the
        report (validation metrics under `metrics`, run counters under `details`)."""
        result = self._validation_result(engine, engine.output_dir / "reconstructions.png")
        validation = result.metrics
        engine.accelerator.log({f"validation/{k}": v for k, v in validation.items()}, step=engine.global_step)
        self._save_final_model(engine.output_dir)
        self._write_model_card(engine, result)
        return training_report(
            engine,
            summary,
            kind="training",
            metrics=validation,
            num_images=len(self.validation_images),
            details={"resolution": self.config.data.resolution},
            per_dimension=per_dimension_values(result),
        )

    def _save_final_model(self, output_dir: Path) -> None:
        from safetensors import SafetensorError

        try:
            self.unwrapped.save_pretrained(output_dir)
            self._save_image_processor(output_dir)
        except (OSError, RuntimeError, SafetensorError) as error:  # a full disk, in whichever writer meets it
            last = list_checkpoints(output_dir)
            raise CheckpointWriteError(
                f"could not write the final model to {output_dir} ({type(error).__name__}: {error}); "
                f"{describe_disk(output_dir)}. The last checkpoint {last[-1] if last else '(none)'} is intact: "
                "free space and rerun with --resume_from_checkpoint latest to write the model again."
            ) from error

    def _save_image_processor(self, output_dir: Path) -> None:
        try:
            from ..image_processing import LatentCodeImageProcessor
        except ImportError:  # the processor is optional for training; the model is what matters
            logger.warning("latentcode.image_processing is unavailable; no image processor saved")
            return
        processor = LatentCodeImageProcessor.from_model_config(self.unwrapped.config, size=self.config.data.resolution)
        processor.save_pretrained(output_dir)

    def _write_model_card(self, engine: Engine, validation: EvaluationResult) -> None:
        config, model = self.config, self.unwrapped
        values = {
            "model_class": type(model).__name__,
            "model_family": config.model_family,
            "repo_id": config.reporting.hub_model_id or str(engine.output_dir),
            "dataset": data_source(config),
            "resolution": config.data.resolution,
            "in_channels": model.config.in_channels,
            "steps": engine.global_step,
            "batch_size": config.optimization.train_batch_size
            * config.optimization.gradient_accumulation_steps
            * engine.accelerator.num_processes,
            "learning_rate": config.optimization.learning_rate,
            "losses": self.objective.describe(model),
            "metrics": metrics_markdown(validation).strip(),
            "config": yaml.safe_dump(config.to_dict(), sort_keys=False).strip(),
        }
        (engine.output_dir / "README.md").write_text(render_model_card("training", values))


@torch.no_grad()
def freeze_at_saved_weights(modules: list[nn.Module], ema: EMAModel | None, averaged: list[nn.Parameter]) -> None:
    """Stop training `modules`, at the weights the run will save (`ema`'s averages of the
    `averaged` parameters, when it keeps them)."""
    frozen = {id(p) for module in modules for p in module.parameters()}
    if ema is not None:
        # The saved model is the average: the decoder learns the encoder that will be saved. The
        # EMA then steps these towards themselves, which leaves them bit for bit as they are.
        for average, parameter in zip(ema.shadow, averaged, strict=True):
            if id(parameter) in frozen:
                parameter.copy_(average.to(parameter.dtype))
    for module in modules:
        module.requires_grad_(False)  # no gradient: AdamW skips them (no update, no weight decay)


def build_engine(config: TrainingConfig) -> Engine:
    """The engine of a `train.py` run, set up (model, data, resume) and ready to `run()`."""
    return Engine(config, AutoencoderTask(config))


def train(config: TrainingConfig) -> TrainingResult:
    """Run the training described by `config` and return the final model and metrics."""
    return build_engine(config).run()
