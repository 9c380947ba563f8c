"""The training loop: one optimiser step at a time, on one CPU, one GPU or many processes.

Per optimiser step, for each of `gradient_accumulation_steps` micro-batches:

1. the generator (the autoencoder) runs through the accelerate-prepared model, so under DDP
   its gradients are averaged across processes;
2. its loss is the model's own objective (reconstruction + regulariser, the VAE's KL warmed up)
   plus, as configured, LPIPS (computed with gradients) and the adversarial term through a
   frozen discriminator, weighted adaptively at the decoder's last layer;
3. the discriminator, once `disc_start` is reached, judges real images and *detached*
   reconstructions in one forward pass of its own prepared (DDP) module.

A step whose loss or gradient is NaN/inf on any process is skipped on all of them and counted;
`max_consecutive_nonfinite_steps` in a row stop the run, before anything is saved from it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import (
    InitProcessGroupKwargs,
    ProjectConfiguration,
    gather_object,
    set_seed,
)
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..data import ImageBatches, image_data_from_config
from ..evaluation.evaluate import evaluate, markdown_table
from ..families import get_family
from ..grids import reconstruction_grid
from ..losses import (
    PatchDiscriminator,
    PerceptualLoss,
    adaptive_generator_weight,
    discriminator_loss,
    generator_adversarial_loss,
    kl_warmup_factor,
)
from ..modeling import LatentCodePreTrainedModel
from ..modules.quantizers.base import CodebookUsageWindow
from .checkpointing import (
    CheckpointWriteError,
    check_output_dir,
    describe_disk,
    list_checkpoints,
    load_checkpoint,
    lock_output_dir,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import RESUME_FIXED_SETTINGS, RunConfig, TrainingConfig
from .ema import EMAModel
from .model_card import render_model_card

logger = logging.getLogger(__name__)

# Values of the model output logged each step when the family has them.
FAMILY_TERMS = ("kl", "codebook_loss", "commitment_loss", "perplexity")


def run_accelerator(config: RunConfig, **kwargs) -> Accelerator:
    """The `Accelerator` of a training script: mixed precision, trackers (`report_to`) logging to
    `output_dir/logging_dir`, the CPU when there is no GPU, collectives that give up after
    `ddp_timeout`; `kwargs` go to `Accelerator`. fp16 without a GPU is refused."""
    output_dir = Path(config.output_dir)
    use_cuda = torch.cuda.is_available()
    if config.mixed_precision == "fp16" and not use_cuda:
        raise ValueError(
            "mixed_precision='fp16' needs a CUDA GPU (fp16 autocast with loss scaling); this run is on the "
            "CPU: use 'bf16' (CPU autocast) or 'no'"
        )
    return Accelerator(
        mixed_precision=config.mixed_precision,
        # Collectives wait at most ddp_timeout for a lost process (see lost_process_errors).
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=config.ddp_timeout))],
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / config.logging_dir)
        ),
        cpu=not use_cuda,
        **kwargs,
    )


class NonFiniteLossError(RuntimeError):
    """Too many NaN/inf steps in a row."""


class ProcessLostError(RuntimeError):
    """Another process of a multi-process run died or stopped answering (`ddp_timeout`)."""


class ResumeMismatchError(ValueError):
    """A resume with settings that would break the run's trajectory."""


def resume_settings(config: TrainingConfig) -> dict:
    """The settings a resume must keep (see `RESUME_FIXED_SETTINGS`), as saved in a checkpoint."""
    settings = {key: getattr(config, key) for key in RESUME_FIXED_SETTINGS}
    settings["discriminator"] = config.disc_weight > 0  # whether the run has one at all
    return json.loads(json.dumps(settings))  # as read back from JSON (tuples become lists)


def check_resume_settings(saved: dict, config: TrainingConfig, checkpoint: Path) -> None:
    """Raise [`ResumeMismatchError`] naming every trajectory setting that differs from `saved`."""
    current = resume_settings(config)
    changed = [
        f"{key}: {saved[key]!r} -> {current[key]!r}" for key in current if key in saved and saved[key] != current[key]
    ]
    if changed:
        raise ResumeMismatchError(
            f"cannot resume from {checkpoint}: these settings differ from the run that wrote it, and changing "
            f"them would silently break the run (data position, random streams, weights): {'; '.join(changed)}. "
            "Resume with the checkpoint's values, or start a new run in another output_dir."
        )


@dataclass
class TrainingResult:
    """What [`train`] hands back: the final (EMA) model, unwrapped; the final validation metrics
    (main process; empty elsewhere); this process's total loss per optimiser step."""

    model: LatentCodePreTrainedModel
    metrics: dict = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


def build_model(config: TrainingConfig) -> LatentCodePreTrainedModel:
    """A new model of `config.model_family` from `config.model`, or a pretrained one; checks that
    `resolution` suits its downsampling factor."""
    family = get_family(config.model_family)
    if config.pretrained_model_name_or_path is not None:
        model = family.model_class.from_pretrained(config.pretrained_model_name_or_path)
    else:
        model = family.model_class(family.config_class(**{"sample_size": config.resolution, **config.model}))
    factor = model.config.downsampling_factor
    if config.resolution % factor:
        raise ValueError(
            f"resolution={config.resolution} is not divisible by the model's downsampling factor {factor} "
            f"(2 ** (len(block_out_channels) - 1), block_out_channels={model.config.block_out_channels})"
        )
    return model


def _usage_windows(model: nn.Module) -> list[CodebookUsageWindow]:
    """The quantizers' usage windows: per-process state that lives outside the state dict."""
    return [
        module.usage for module in model.modules() if isinstance(getattr(module, "usage", None), CodebookUsageWindow)
    ]


def _cloned(state: dict) -> dict:
    return {key: value.clone() if torch.is_tensor(value) else value for key, value in state.items()}


def usage_state(model: nn.Module) -> list[dict]:
    return [_cloned(vars(usage)) for usage in _usage_windows(model)]


def load_usage_state(model: nn.Module, states: list[dict]) -> None:
    for usage, saved in zip(_usage_windows(model), states, strict=True):
        vars(usage).update(_cloned(saved))


def snapshot_forward_state(model: nn.Module) -> dict:
    """What a training forward pass changes in place, outside autograd: buffers, parameters without
    gradients (EMA codebooks, updated by the quantizer itself) and the quantizers' usage windows."""
    tensors = {
        name: value.detach().clone()
        for name, value in model.state_dict(keep_vars=True).items()
        if not (isinstance(value, nn.Parameter) and value.requires_grad)
    }
    return {"tensors": tensors, "usage": usage_state(model)}


@torch.no_grad()
def restore_forward_state(model: nn.Module, snapshot: dict) -> None:
    current = model.state_dict(keep_vars=True)
    for name, value in snapshot["tensors"].items():
        current[name].copy_(value)
    load_usage_state(model, snapshot["usage"])


def tracker_config(config: RunConfig) -> dict:
    """The config flattened to the scalar values trackers accept (`model.KEY` for the model)."""
    flat = {key: value for key, value in config.to_dict().items() if key != "model"}
    flat.update({f"model.{key}": value for key, value in getattr(config, "model", {}).items()})
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in flat.items()}


class Trainer:
    """Owns the accelerator, the models, optimisers, data and counters of one run."""

    def __init__(self, config: TrainingConfig):
        self.config = config
        self.output_dir = Path(config.output_dir)
        set_seed(config.seed)
        model = build_model(config)
        self.family = config.model_family
        self.use_gan = config.disc_weight > 0
        if self.use_gan and config.resolution < 2 ** (config.disc_num_layers + 2):
            raise ValueError(
                f"resolution={config.resolution} is too small for a discriminator with disc_num_layers="
                f"{config.disc_num_layers}: it needs at least {2 ** (config.disc_num_layers + 2)}"
            )

        with lost_process_errors(config, lambda: "start-up"):
            self._setup(config, model)

    def _setup(self, config: TrainingConfig, model: LatentCodePreTrainedModel) -> None:
        self.accelerator = accelerator = run_accelerator(config)
        # Before any work: an unwritable or full disk, or another run in the folder, stops us now.
        check_output_dir(self.output_dir)
        self._lock = lock_output_dir(self.output_dir) if accelerator.is_main_process else None
        if config.gradient_checkpointing:
            model.activation_checkpointing_enable()
        if config.torch_compile:
            model.compile(backend=config.torch_compile_backend)  # in place: checkpoints keep their keys

        self.batches: ImageBatches
        self.batches, self.validation_images = image_data_from_config(
            config, model.config.in_channels, config.resolution, accelerator.process_index, accelerator.num_processes
        )

        betas = (config.adam_beta1, config.adam_beta2)
        adam = dict(betas=betas, weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, **adam)
        # Not prepared by accelerate (whose wrapper steps it once per process); checkpointed below.
        self.scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=config.max_train_steps,
        )
        self.perceptual = None
        if config.perceptual_weight > 0:
            self.perceptual = PerceptualLoss(config.perceptual_net, config.perceptual_pretrained).to(accelerator.device)
        if self.use_gan:
            discriminator = PatchDiscriminator(
                model.config.out_channels, config.disc_channels, config.disc_num_layers, config.disc_norm
            )
            disc_optimizer = torch.optim.AdamW(
                discriminator.parameters(), lr=config.disc_learning_rate or config.learning_rate, **adam
            )
            self.model, self.optimizer, self.discriminator, self.disc_optimizer = accelerator.prepare(
                model, optimizer, discriminator, disc_optimizer
            )
        else:
            self.model, self.optimizer = accelerator.prepare(model, optimizer)
            self.discriminator = self.disc_optimizer = None
        accelerator.register_for_checkpointing(self.scheduler)
        self.ema = None
        if config.use_ema:
            self.ema = EMAModel(self._trainable_parameters(), config.ema_decay).to(accelerator.device)
            accelerator.register_for_checkpointing(self.ema)

        self.global_step = 0
        self.nonfinite_steps = 0
        self.consecutive_nonfinite = 0
        self.losses: list[float] = []
        checkpoint = resolve_checkpoint(self.output_dir, config.resume_from_checkpoint)
        if checkpoint is not None:
            self._resume(checkpoint)
        accelerator.init_trackers(config.tracker_project_name, config=tracker_config(config))

    def _resume(self, checkpoint: Path) -> None:
        config, accelerator = self.config, self.accelerator
        trainer_state, process_state = load_checkpoint(
            accelerator,
            checkpoint,
            check=lambda state: check_resume_settings(state.get("settings", {}), config, checkpoint),
        )
        self.global_step = trainer_state["global_step"]
        self.nonfinite_steps = trainer_state["nonfinite_steps"]
        self.batches.load_state_dict(process_state["data"])
        load_usage_state(self.unwrapped, process_state["quantizer_usage"])
        # The optimisers and the scheduler come back with the old run's learning rates; the
        # schedule's shape (warm-up, max_train_steps) is this run's already (its lambdas are
        # rebuilt, not saved). A new learning rate is safe to apply: it is this run's choice.
        saved_lr = self.scheduler.base_lrs[0]
        self.scheduler.base_lrs = [config.learning_rate for _ in self.scheduler.base_lrs]
        step = self.scheduler.last_epoch
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):  # a LambdaLR
            group["initial_lr"], group["lr"] = config.learning_rate, config.learning_rate * factor(step)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        if saved_lr != config.learning_rate:
            logger.warning(
                "resume: learning_rate %g -> %g (applied from step %d)",
                saved_lr,
                config.learning_rate,
                self.global_step + 1,
            )
        if self.disc_optimizer is not None:
            for group in self.disc_optimizer.param_groups:
                group["lr"] = config.disc_learning_rate or config.learning_rate
        accelerator.print(f"resumed from {checkpoint} at step {self.global_step}")

    def release_output_dir(self) -> None:
        """Let another run use the output folder (the lock also goes when the process ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    @property
    def unwrapped(self) -> LatentCodePreTrainedModel:
        return self.accelerator.unwrap_model(self.model)

    def _trainable_parameters(self) -> list[nn.Parameter]:
        # Parameters without gradients (an EMA codebook) are averages already: not averaged again.
        return [p for p in self.unwrapped.parameters() if p.requires_grad]

    def _modules_with_state(self) -> list[nn.Module]:
        modules = [self.unwrapped]
        if self.discriminator is not None:
            modules.append(self.accelerator.unwrap_model(self.discriminator))
        return modules

    # -- one optimiser step ----------------------------------------------------------------------

    def generator_loss(self, pixels: torch.Tensor, gan_active: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Total autoencoder loss of one micro-batch `[B, C, H, W]`; returns `(loss,
        reconstruction, logs)` with the graph kept for the backward pass."""
        config = self.config
        output = self.model(pixels, return_dict=True)  # the prepared (DDP) module: gradients are synchronised
        reconstruction = output.sample
        regularizer = output.loss - output.reconstruction_loss  # the family's own: KL, VQ terms, ...
        logs = {"reconstruction_loss": output.reconstruction_loss}
        if self.family == "vae":
            factor = kl_warmup_factor(self.global_step, config.kl_warmup_steps)
            regularizer = regularizer * factor
            logs["kl_warmup_factor"] = factor
        nll = output.reconstruction_loss
        with self.accelerator.autocast():
            if self.perceptual is not None:
                perceptual = self.perceptual(reconstruction, pixels).float().mean()
                nll = nll + config.perceptual_weight * perceptual
                logs["perceptual_loss"] = perceptual
            loss = nll + regularizer
            if gan_active:
                # The discriminator only passes gradients through to the reconstruction here: frozen,
                # and called unwrapped, so that no DDP reduction of its (absent) gradients is expected.
                discriminator = self.accelerator.unwrap_model(self.discriminator)
                discriminator.requires_grad_(False)
                try:
                    logits_fake = discriminator(reconstruction).float()
                finally:
                    discriminator.requires_grad_(True)
                adversarial = generator_adversarial_loss(logits_fake, config.disc_loss)
                weight = torch.tensor(config.disc_weight, device=pixels.device)
                if config.disc_adaptive_weight:
                    last_layer = self.unwrapped.decoder.last_layer
                    weight = weight * adaptive_generator_weight(nll, adversarial, last_layer)
                loss = loss + weight * adversarial
                logs.update(generator_adversarial_loss=adversarial, adversarial_weight=weight)
        for name in FAMILY_TERMS:
            if getattr(output, name, None) is not None:
                logs[name] = getattr(output, name)
        logs["loss"] = loss
        return loss, reconstruction, logs

    def discriminator_loss(self, pixels: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Discriminator loss on real `pixels` and detached reconstructions, one forward pass of
        the prepared (DDP) discriminator (one pass keeps BatchNorm and DDP's buffer sync simple)."""
        with self.accelerator.autocast():
            logits = self.discriminator(torch.cat([pixels, reconstruction.detach()])).float()
        logits_real, logits_fake = logits.chunk(2)
        return discriminator_loss(logits_real, logits_fake, self.config.disc_loss)

    def _all_finite(self, *values: torch.Tensor) -> bool:
        """True when every value is finite on every process (all must skip a step together)."""
        finite = torch.tensor([float(all(torch.isfinite(v).all() for v in values))], device=self.accelerator.device)
        return bool(self.accelerator.gather(finite).min() > 0)

    def training_step(self) -> dict[str, float]:
        """One optimiser step (or a skipped one); returns the values to log."""
        config, accelerator = self.config, self.accelerator
        gan_active = self.use_gan and self.global_step >= config.disc_start
        accumulation = config.gradient_accumulation_steps
        sums: dict[str, float] = defaultdict(float)
        snapshots = [snapshot_forward_state(module) for module in self._modules_with_state()]
        finite = True
        for micro_step in range(accumulation):
            pixels = self.batches.next_batch().to(accelerator.device)
            with ExitStack() as stack:
                if micro_step < accumulation - 1:  # synchronise gradients on the last micro-batch only
                    stack.enter_context(accelerator.no_sync(self.model))
                    if gan_active:
                        stack.enter_context(accelerator.no_sync(self.discriminator))
                loss, reconstruction, logs = self.generator_loss(pixels, gan_active)
                disc_loss = self.discriminator_loss(pixels, reconstruction) if gan_active else None
                if not self._all_finite(loss, *([disc_loss] if gan_active else [])):
                    finite = False
                    break
                accelerator.backward(loss / accumulation)
                if gan_active:
                    accelerator.backward(disc_loss / accumulation)
                    logs["discriminator_loss"] = disc_loss
            for name, value in logs.items():
                sums[name] += float(value.detach() if torch.is_tensor(value) else value) / accumulation

        if finite:
            grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
            sums["grad_norm"] = float(grad_norm)
            # fp16 overflows are the GradScaler's business (it skips those steps itself).
            finite = math.isfinite(sums["grad_norm"]) or config.mixed_precision == "fp16"
        if finite:
            self.optimizer.step()
            if gan_active:
                sums["discriminator_grad_norm"] = float(
                    accelerator.clip_grad_norm_(self.discriminator.parameters(), config.max_grad_norm)
                )
                self.disc_optimizer.step()
            if self.ema is not None:
                self.ema.step(self._trainable_parameters())
            self.consecutive_nonfinite = 0
        else:
            for module, snapshot in zip(self._modules_with_state(), snapshots):
                restore_forward_state(module, snapshot)  # e.g. an EMA codebook fed NaN in the forward pass
            self.nonfinite_steps += 1
            self.consecutive_nonfinite += 1
            logger.warning("non-finite loss or gradient at step %d: step skipped", self.global_step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        if self.disc_optimizer is not None:
            self.disc_optimizer.zero_grad(set_to_none=True)
        sums["lr"] = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        if self.consecutive_nonfinite >= config.max_consecutive_nonfinite_steps:
            last = list_checkpoints(self.output_dir)
            raise NonFiniteLossError(
                f"{self.consecutive_nonfinite} steps in a row had a NaN/inf loss or gradient (up to step "
                f"{self.global_step + 1}); stopping. Last good checkpoint: {last[-1] if last else 'none'}"
            )
        windows = _usage_windows(self.unwrapped)
        if windows:  # fraction of codes hit over the quantizers' recent-token windows
            sums["codebook_usage"] = sum(float(window.fraction_used()) for window in windows) / len(windows)
        sums["nonfinite_steps"] = self.nonfinite_steps
        sums["corrupt_images"] = self.batches.corrupt_images
        return dict(sums)

    # -- checkpoints, validation, the end --------------------------------------------------------

    def save_checkpoint(self) -> Path:
        trainer_state = {
            "global_step": self.global_step,
            "nonfinite_steps": self.nonfinite_steps,
            "settings": resume_settings(self.config),
        }
        return save_checkpoint(
            self.accelerator,
            self.output_dir,
            self.global_step,
            trainer_state,
            {"data": self.batches.state_dict(), "quantizer_usage": usage_state(self.unwrapped)},
            self.config.checkpoints_total_limit,
        )

    def validate(self, grid_path: Path) -> dict[str, float]:
        """Main process: metrics on the validation images (the evaluation `latentcode-eval` runs), grid
        PNG written and logged."""
        images = self.validation_images
        result = evaluate(
            self.unwrapped,
            images.split(self.config.train_batch_size),
            num_grid_images=len(images),
            autocast=self.accelerator.autocast,
            throughput=False,  # timings would make a resumed run's metrics differ
        )
        metrics = result.metrics
        grid = reconstruction_grid(images, result.reconstructions.clamp(-1, 1), num_columns=8)
        grid_path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(grid_path)
        self.accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=self.global_step)
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                array = torch.from_numpy(np.array(grid.convert("RGB")))
                tracker.log_images({"validation/reconstructions": array[None]}, self.global_step, dataformats="NHWC")
            elif tracker.name == "wandb":
                tracker.log_images({"validation/reconstructions": [grid]}, self.global_step)
        return metrics

    def run(self) -> TrainingResult:
        """Train to `max_train_steps`, then [`finish`]. In a multi-process run, a process that dies
        or stops answering for `ddp_timeout` seconds ends it on the others with a [`ProcessLostError`]."""
        try:
            with lost_process_errors(self.config, lambda: f"step {self.global_step + 1}"):
                return self._run()
        finally:
            self.release_output_dir()

    def _run(self) -> TrainingResult:
        config, accelerator = self.config, self.accelerator
        if self.validation_images.numel() == 0:
            raise ValueError("num_validation_images must be >= 1: validation metrics and the grid need images")
        progress = tqdm(
            total=config.max_train_steps,
            initial=self.global_step,
            disable=not accelerator.is_main_process,
            desc="steps",
        )
        start = time.perf_counter()
        while self.global_step < config.max_train_steps:
            logs = self.training_step()
            self.global_step += 1
            self.losses.append(logs.get("loss", float("nan")))
            accelerator.log({f"train/{k}": v for k, v in logs.items()}, step=self.global_step)
            progress.update(1)
            progress.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}")
            if config.checkpointing_steps and self.global_step % config.checkpointing_steps == 0:
                if self.consecutive_nonfinite:  # the same on every process (all skip a step together)
                    logger.warning(
                        "not saving a checkpoint at step %d: the last %d steps were NaN/inf; the last good "
                        "checkpoint stays the newest",
                        self.global_step,
                        self.consecutive_nonfinite,
                    )
                else:
                    self.save_checkpoint()
            if (
                config.validation_steps
                and self.global_step % config.validation_steps == 0
                and self.global_step < config.max_train_steps
            ):
                if accelerator.is_main_process:
                    self.validate(self.output_dir / "validation" / f"step-{self.global_step:06d}.png")
                accelerator.wait_for_everyone()
        progress.close()
        return self.finish(train_seconds=time.perf_counter() - start)

    def finish(self, train_seconds: float) -> TrainingResult:
        """Save the final model (EMA weights if used), processor, grid, metrics and card; push."""
        config, accelerator = self.config, self.accelerator
        accelerator.wait_for_everyone()
        # Processes may meet the same bad file in different epochs: count the union of their files.
        corrupt = set().union(*gather_object([self.batches.corrupt.state_dict()]))
        model = self.unwrapped
        if self.ema is not None:
            self.ema.copy_to(self._trainable_parameters())
        metrics = {}
        if accelerator.is_main_process:
            validation = self.validate(self.output_dir / "reconstructions.png")
            self._save_final_model(model)
            metrics = {
                "validation": validation,
                "global_step": self.global_step,
                "images_seen": self.global_step
                * config.train_batch_size
                * config.gradient_accumulation_steps
                * accelerator.num_processes,
                "train_seconds_this_session": round(train_seconds, 2),
                "final_train_loss": self.losses[-1] if self.losses else None,
                "nonfinite_steps": self.nonfinite_steps,
                "corrupt_images": len(corrupt),
                "corrupt_validation_images": len(self.batches.held_out_corrupt),
                "num_processes": accelerator.num_processes,
            }
            (self.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
            self._write_model_card(model, validation)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        if config.push_to_hub and accelerator.is_main_process:
            push_to_hub(self.output_dir, config.hub_model_id, config.hub_token)
        return TrainingResult(model=model, metrics=metrics, losses=self.losses)

    def _save_final_model(self, model: LatentCodePreTrainedModel) -> None:
        from safetensors import SafetensorError

        try:
            model.save_pretrained(self.output_dir)
            self._save_image_processor(model)
        except (OSError, RuntimeError, SafetensorError) as error:  # a full disk, in whichever writer meets it
            last = list_checkpoints(self.output_dir)
            raise CheckpointWriteError(
                f"could not write the final model to {self.output_dir} ({type(error).__name__}: {error}); "
                f"{describe_disk(self.output_dir)}. The last checkpoint {last[-1] if last else '(none)'} is intact: "
                "free space and rerun with --resume_from_checkpoint latest to write the model again."
            ) from error

    def _save_image_processor(self, model: LatentCodePreTrainedModel) -> None:
        try:
            from ..image_processing import LatentCodeImageProcessor
        except ImportError:  # the processor is optional for training; the model is what matters
            logger.warning("latentcode.image_processing is unavailable; no image processor saved")
            return
        LatentCodeImageProcessor.from_model_config(model.config, size=self.config.resolution).save_pretrained(
            self.output_dir
        )

    def _write_model_card(self, model: LatentCodePreTrainedModel, validation: dict) -> None:
        config = self.config
        data = config.dataset_name or config.train_data_dir or "builtin:digits"
        values = {
            "model_class": type(model).__name__,
            "model_family": config.model_family,
            "repo_id": config.hub_model_id or str(self.output_dir),
            "dataset": data,
            "resolution": config.resolution,
            "in_channels": model.config.in_channels,
            "steps": self.global_step,
            "batch_size": config.train_batch_size * config.gradient_accumulation_steps * self.accelerator.num_processes,
            "learning_rate": config.learning_rate,
            "losses": self._loss_summary(),
            "metrics": markdown_table(validation).strip(),
            "config": yaml.safe_dump(config.to_dict(), sort_keys=False).strip(),
        }
        (self.output_dir / "README.md").write_text(render_model_card("training", values))

    def _loss_summary(self) -> str:
        config = self.config
        parts = [f"{getattr(self.unwrapped.config, 'reconstruction_loss', 'mse').upper()} reconstruction"]
        if self.family == "vae":
            parts.append(f"KL (weight {self.unwrapped.config.kl_weight}, warm-up {config.kl_warmup_steps} steps)")
        if self.family == "vqvae":
            parts.append(f"the {self.unwrapped.config.quantizer!r} quantizer's own terms as configured")
        if config.perceptual_weight > 0:
            parts.append(f"LPIPS-{config.perceptual_net} (weight {config.perceptual_weight})")
        if self.use_gan:
            adaptive = "adaptive " if config.disc_adaptive_weight else ""
            parts.append(
                f"PatchGAN {config.disc_loss} loss ({adaptive}weight {config.disc_weight}, from step {config.disc_start})"
            )
        return ", ".join(parts)


# What gloo / NCCL say when a peer process is gone (killed: the connection closes) or frozen
# (the collective times out after ddp_timeout).
_LOST_PROCESS_MESSAGES = ("connection closed by peer", "connection reset by peer", "timed out", "broken pipe")


@contextmanager
def lost_process_errors(config: TrainingConfig, where: Callable[[], str]):
    """Turn the backend's error for a dead or frozen peer into a [`ProcessLostError`] naming the
    ranks this process was waiting for, `ddp_timeout` and `where()` it happened."""
    try:
        yield
    except (RuntimeError, torch.distributed.DistError) as error:
        state = PartialState()
        if state.num_processes > 1 and _is_lost_process(error):
            me, world = state.process_index, state.num_processes
            others = [rank for rank in range(world) if rank != me]
            raise ProcessLostError(
                f"rank {me} of {world} at {where()}: a collective operation with the other processes (ranks "
                f"{others}) failed: one of them died or did not answer within ddp_timeout={config.ddp_timeout} s "
                f"({_first_line(error)}). Resume with --resume_from_checkpoint latest."
            ) from error
        raise


def _is_lost_process(error: BaseException) -> bool:
    return isinstance(error, torch.distributed.DistError) or any(
        text in str(error).lower() for text in _LOST_PROCESS_MESSAGES
    )


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"


def push_to_hub(folder: Path, repo_id: str, token: str | None = None) -> None:
    """Upload the saved model folder (without checkpoints and logs); on failure raise a
    RuntimeError that says the local save is complete."""
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            ignore_patterns=["checkpoint-*", ".checkpoint-*", ".latentcode.lock", "logs/*", "validation/*"],
        )
    except Exception as error:  # network, auth and Hub errors come in many types; all mean the same here
        raise RuntimeError(
            f"the model is saved in {folder}, but uploading it to the Hub as {repo_id} failed: {error}. "
            f"Nothing is lost; upload later with `hf upload {repo_id} {folder}`."
        ) from error
    logger.info("uploaded %s to https://huggingface.co/%s", folder, repo_id)


def train(config: TrainingConfig) -> TrainingResult:
    """Run the training described by `config` and return the final model and metrics."""
    return Trainer(config).run()
