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

import argparse
import json
import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import DDIMScheduler, DDPMScheduler
from transformers import AutoModel, get_scheduler

import latentcode
from latentcode.data import add_data_arguments, image_data_from_args
from latentcode.grids import save_image_grid
from latentcode.latent_diffusion import (
    compute_scaling_factor,
    continuous_latents,
    diffusion_loss,
    latent_diffusion_pipeline,
    latent_unet,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="a trained latentcode VAE or VQ-VAE")
    parser.add_argument("--output_dir", required=True)
    add_data_arguments(parser, resolution_default="the autoencoder's sample_size")
    unet = parser.add_argument_group("UNet and noise schedule")
    unet.add_argument("--block_out_channels", type=int, nargs="+", default=[64, 128])
    unet.add_argument("--layers_per_block", type=int, default=1)
    unet.add_argument("--norm_num_groups", type=int, default=32)
    unet.add_argument("--num_train_timesteps", type=int, default=1000)
    unet.add_argument("--scaling_factor", type=float, default=None, help="default: 1 / std of the first batch")
    train = parser.add_argument_group("training")
    train.add_argument("--max_train_steps", type=int, default=5000)
    train.add_argument("--train_batch_size", type=int, default=64, help="per process")
    train.add_argument("--learning_rate", type=float, default=2e-4)
    train.add_argument("--lr_scheduler", default="cosine")
    train.add_argument("--lr_warmup_steps", type=int, default=200)
    train.add_argument("--max_grad_norm", type=float, default=1.0)
    train.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--logging_steps", type=int, default=50)
    sampling = parser.add_argument_group("validation and sampling")
    sampling.add_argument("--validation_steps", type=int, default=1000, help="0: only at the end")
    sampling.add_argument("--num_samples", type=int, default=16)
    sampling.add_argument("--num_inference_steps", type=int, default=50)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=not torch.cuda.is_available())
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

    batches, validation_images = image_data_from_args(args, autoencoder.config.in_channels, resolution, accelerator)
    # Each process has its own noise; the validation noise is the same everywhere and every time.
    generator = torch.Generator(device).manual_seed(args.seed + accelerator.process_index)

    @torch.no_grad()
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        latents = continuous_latents(autoencoder, pixels.to(device), sample_posterior=True, generator=generator)
        return latents * autoencoder.config.scaling_factor

    first_batch = batches.next_batch()
    if args.scaling_factor is None:
        # Every process must scale alike: use the mean of their measurements.
        local = compute_scaling_factor(autoencoder, [first_batch], generator=generator)
        measured = accelerator.reduce(torch.tensor(local, device=device), "mean")
        autoencoder.config.scaling_factor = measured.item()
    else:
        autoencoder.config.scaling_factor = args.scaling_factor
    accelerator.print(f"scaling_factor = {autoencoder.config.scaling_factor:.5f}")

    unet = latent_unet(
        autoencoder.config, resolution, args.block_out_channels, args.layers_per_block, args.norm_num_groups
    )
    noise_scheduler = DDPMScheduler(num_train_timesteps=args.num_train_timesteps)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate)
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=args.max_train_steps
    )
    unet, optimizer = accelerator.prepare(unet, optimizer)
    accelerator.print(f"UNet: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")

    validation_latents = encode(validation_images) if len(validation_images) else None

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
        return metrics

    history, metrics = [], {}
    unet.train()
    for step in range(1, args.max_train_steps + 1):
        pixels = first_batch if step == 1 else batches.next_batch()
        loss = diffusion_loss(unet, noise_scheduler, encode(pixels), generator)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        lr_scheduler.step()
        history.append(accelerator.gather(loss.detach()[None]).mean().item())
        if step % args.logging_steps == 0 or step == 1:
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
        metrics.update(
            first_train_loss=history[0], last_train_loss=history[-1], scaling_factor=autoencoder.config.scaling_factor
        )
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    main(parse_args())
