"""Latent diffusion in miniature: train a small diffusers `UNet2DModel` on the latents of a
trained latentcode VAE (or VQ-VAE) and save the result as a diffusers `LDMPipeline`.

    accelerate launch training/train_latent_diffusion.py --pretrained_model_name_or_path runs/vae-digits \\
        --dataset_name builtin:digits --output_dir runs/ldm-digits --max_train_steps 5000

Images are streamed (`latentcode.data`) and encoded on the fly by the frozen autoencoder: VAE
posterior samples, or VQ-VAE latents before quantisation (the pipeline's `decode` quantises), as
latent-diffusion does. Latents are multiplied by `scaling_factor` (measured as 1 / std on the
first batch unless given, and stored in the autoencoder's config) so the UNet sees unit variance.
`--output_dir` then holds a pipeline that `DiffusionPipeline.from_pretrained` loads after
`import latentcode`, plus `samples.png`. The pieces are in `latentcode.latent_diffusion`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from diffusers import DDIMScheduler, DDPMScheduler
from transformers import AutoModel, get_scheduler

import latentcode
from latentcode.data import image_data_from_config
from latentcode.grids import save_image_grid
from latentcode.latent_diffusion import (
    compute_scaling_factor,
    continuous_latents,
    diffusion_loss,
    latent_diffusion_pipeline,
    latent_unet,
)
from latentcode.training.checkpointing import load_checkpoint, resolve_checkpoint, save_checkpoint
from latentcode.training.config import RunConfig, option
from latentcode.training.config import parse_args as parse_config
from latentcode.training.loop import run_accelerator, tracker_config


@dataclass
class LatentDiffusionConfig(RunConfig):
    """The options of train.py's runs (data, optimiser, checkpoints, trackers) and the UNet's."""

    pretrained_model_name_or_path: str | None = option("the trained latentcode VAE or VQ-VAE (required)", default=None)
    output_dir: str = option("where checkpoints, logs and the pipeline go", default="latentcode-ldm")
    resolution: int | None = option(
        "images are resized and cropped to this (default: the autoencoder's sample_size)", default=None
    )
    num_validation_images: int = option("held-out images for the validation loss", default=64)
    block_out_channels: list[int] = option("UNet channels per level", default_factory=lambda: [64, 128])
    layers_per_block: int = option("UNet ResNet blocks per level", default=1)
    norm_num_groups: int = option("UNet GroupNorm groups", default=32)
    num_train_timesteps: int = option("DDPM noise-schedule steps", default=1000)
    scaling_factor: float | None = option("latent scale (default: 1 / std of the first batch)", default=None)
    max_train_steps: int = option("optimiser steps", default=5000)
    train_batch_size: int = option("images per process per step", default=64)
    learning_rate: float = option("peak learning rate", default=2e-4)
    lr_warmup_steps: int = option("linear learning-rate warm-up steps", default=200)
    validation_steps: int = option("validation loss and samples every N steps (0: only at the end)", default=1000)
    logging_steps: int = option("print the training loss every N steps", default=50)
    num_samples: int = option("images sampled at each validation", default=16)
    num_inference_steps: int = option("DDIM steps when sampling", default=50)

    def validate(self) -> None:
        super().validate()
        if self.pretrained_model_name_or_path is None:
            raise ValueError("pretrained_model_name_or_path (the trained VAE or VQ-VAE) is required")


def parse_args(argv: list[str] | None = None) -> LatentDiffusionConfig:
    return parse_config(argv, LatentDiffusionConfig, description=__doc__)


def main(args: LatentDiffusionConfig) -> dict:
    accelerator = run_accelerator(args)
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    device = accelerator.device

    autoencoder = AutoModel.from_pretrained(args.pretrained_model_name_or_path)
    if not isinstance(autoencoder, (latentcode.VAEModel, latentcode.VQVAEModel)):
        raise ValueError(
            f"--pretrained_model_name_or_path must hold a VAEModel or VQVAEModel, got {type(autoencoder).__name__}"
        )
    autoencoder = autoencoder.eval().requires_grad_(False).to(device)
    resolution = args.resolution or autoencoder.config.sample_size

    batches, validation_images = image_data_from_config(
        args, autoencoder.config.in_channels, resolution, accelerator.process_index, accelerator.num_processes
    )
    # Each process has its own noise; the validation noise is the same everywhere and every time.
    generator = torch.Generator(device).manual_seed(args.seed + accelerator.process_index)

    @torch.no_grad()
    def encode(pixels: torch.Tensor, noise: torch.Generator = generator) -> torch.Tensor:
        latents = continuous_latents(autoencoder, pixels.to(device), sample_posterior=True, generator=noise)
        return latents * autoencoder.config.scaling_factor

    checkpoint = resolve_checkpoint(output_dir, args.resume_from_checkpoint)
    first_batch = batches.next_batch() if checkpoint is None else None
    if args.scaling_factor is not None:
        autoencoder.config.scaling_factor = args.scaling_factor
    elif checkpoint is None:
        # Every process must scale alike: use the mean of their measurements.
        local = compute_scaling_factor(autoencoder, [first_batch], generator=generator)
        measured = accelerator.reduce(torch.tensor(local, device=device), "mean")
        autoencoder.config.scaling_factor = measured.item()
    # (a resumed run takes the factor it measured back from its checkpoint, below)

    unet = latent_unet(
        autoencoder.config, resolution, args.block_out_channels, args.layers_per_block, args.norm_num_groups
    )
    noise_scheduler = DDPMScheduler(num_train_timesteps=args.num_train_timesteps)
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=args.max_train_steps
    )
    unet, optimizer = accelerator.prepare(unet, optimizer)
    accelerator.register_for_checkpointing(lr_scheduler)
    first_step = 1
    if checkpoint is not None:
        trainer_state, process_state = load_checkpoint(accelerator, checkpoint)
        first_step = trainer_state["global_step"] + 1
        autoencoder.config.scaling_factor = trainer_state["scaling_factor"]
        batches.load_state_dict(process_state["data"])
        generator.set_state(process_state["noise_generator"])
        accelerator.print(f"resumed from {checkpoint} at step {first_step - 1}")
    accelerator.init_trackers(args.tracker_project_name, config=tracker_config(args))
    accelerator.print(f"scaling_factor = {autoencoder.config.scaling_factor:.5f}")
    accelerator.print(f"UNet: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")

    # Validation posterior samples from a fixed seed: the same in every run, resumed or not.
    validation_noise = torch.Generator(device).manual_seed(args.seed)
    validation_latents = encode(validation_images, validation_noise) if len(validation_images) else None

    def pipeline():
        scheduler = DDIMScheduler.from_config(noise_scheduler.config)
        return latent_diffusion_pipeline(autoencoder, accelerator.unwrap_model(unet), scheduler)

    def validate(step: int) -> dict:
        metrics = {"step": step}
        model = accelerator.unwrap_model(unet).eval()
        if validation_latents is not None:
            fixed = torch.Generator(device).manual_seed(args.seed)
            with torch.no_grad():
                metrics["validation_loss"] = diffusion_loss(model, noise_scheduler, validation_latents, fixed).item()
        images = pipeline()(
            batch_size=args.num_samples,
            generator=torch.Generator().manual_seed(args.seed),
            num_inference_steps=args.num_inference_steps,
            output_type="np",
        ).images
        samples = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1  # [N, C, H, W] in [-1, 1]
        save_image_grid(samples, output_dir / "samples" / f"step_{step:06d}.png")
        model.train()
        accelerator.print(json.dumps(metrics))
        accelerator.log({f"validation/{k}": v for k, v in metrics.items() if k != "step"}, step=step)
        return metrics

    history, metrics = [], {}
    unet.train()
    for step in range(first_step, args.max_train_steps + 1):
        pixels = first_batch if first_batch is not None and step == 1 else batches.next_batch()
        loss = diffusion_loss(unet, noise_scheduler, encode(pixels), generator)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        lr_scheduler.step()
        history.append(accelerator.gather(loss.detach()[None]).mean().item())
        accelerator.log({"train/loss": history[-1], "train/lr": lr_scheduler.get_last_lr()[0]}, step=step)
        if args.checkpointing_steps and step % args.checkpointing_steps == 0:
            trainer_state = {"global_step": step, "scaling_factor": autoencoder.config.scaling_factor}
            process_state = {"data": batches.state_dict(), "noise_generator": generator.get_state()}
            save_checkpoint(accelerator, output_dir, step, trainer_state, process_state, args.checkpoints_total_limit)
        if step % args.logging_steps == 0 or step == first_step:
            accelerator.print(f"step {step}: loss {history[-1]:.4f}")
        if accelerator.is_main_process and args.validation_steps and step % args.validation_steps == 0:
            metrics = validate(step)
        accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        if not metrics or metrics["step"] != args.max_train_steps:
            metrics = validate(args.max_train_steps)
        pipeline().save_pretrained(output_dir)
        (output_dir / "samples.png").write_bytes(
            (output_dir / "samples" / f"step_{args.max_train_steps:06d}.png").read_bytes()
        )
        metrics.update(scaling_factor=autoencoder.config.scaling_factor)
        if history:  # empty when resumed at the last step
            metrics.update(first_train_loss=history[0], last_train_loss=history[-1])
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    main(parse_args())
