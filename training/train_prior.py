"""Train an autoregressive prior over the codes of a trained VQ-VAE, then sample new images.

    accelerate launch training/train_prior.py --pretrained_model_name_or_path runs/vqvae-digits \\
        --dataset_name builtin:digits --output_dir runs/prior-digits --max_train_steps 2000

Images are streamed (`latentcode.data`), encoded to code sequences by the frozen VQ-VAE on the
fly, and a transformers causal LM (`--architecture gpt2` or `llama`) learns them. Every
`--validation_steps` and at the end: the held-out negative log-likelihood and a PNG grid of
sampled images. The prior is written to `--output_dir` with `save_pretrained`, with its model
card (`model_cards/prior.md`) and `samples.png`. The library side is `latentcode.prior`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import AutoModel, get_scheduler

import latentcode
from latentcode.data import image_data_from_config
from latentcode.grids import save_image_grid
from latentcode.prior import (
    PRIOR_ARCHITECTURES,
    build_prior,
    encode_to_sequences,
    prior_loss,
    sample_images,
    token_mapping,
)
from latentcode.training.checkpointing import load_checkpoint, resolve_checkpoint, save_checkpoint
from latentcode.training.config import RunConfig, option
from latentcode.training.config import parse_args as parse_config
from latentcode.training.loop import run_accelerator, tracker_config
from latentcode.training.model_card import render_model_card


@dataclass
class PriorConfig(RunConfig):
    """The options of train.py's runs (data, optimiser, checkpoints, trackers) and the prior's."""

    pretrained_model_name_or_path: str | None = option("the trained latentcode VQ-VAE (required)", default=None)
    output_dir: str = option("where checkpoints, logs and the prior (save_pretrained) go", default="latentcode-prior")
    resolution: int | None = option(
        "images are resized and cropped to this (default: the VQ-VAE's sample_size)", default=None
    )
    num_validation_images: int = option("held-out images for the validation NLL", default=64)
    architecture: str = option(f"one of {PRIOR_ARCHITECTURES}", default="gpt2")
    hidden_size: int = option("width of the prior", default=256)
    num_layers: int = option("transformer layers", default=4)
    num_heads: int = option("attention heads", default=4)
    dropout: float = option("dropout of the prior", default=0.0)
    max_train_steps: int = option("optimiser steps", default=2000)
    train_batch_size: int = option("images per process per micro-batch", default=32)
    learning_rate: float = option("peak learning rate", default=3e-4)
    adam_weight_decay: float = option("AdamW weight decay", default=0.01)
    lr_warmup_steps: int = option("linear learning-rate warm-up steps", default=100)
    logging_steps: int = option("print the training loss every N steps", default=50)
    num_samples: int = option("images sampled at each validation and at the end", default=16)
    temperature: float = option("sampling temperature", default=1.0)
    top_k: int | None = option("sample from the k most likely codes only", default=None)

    def validate(self) -> None:
        super().validate()
        if self.pretrained_model_name_or_path is None:
            raise ValueError("pretrained_model_name_or_path (the trained VQ-VAE) is required")
        if self.architecture not in PRIOR_ARCHITECTURES:
            raise ValueError(f"architecture must be one of {PRIOR_ARCHITECTURES}, got {self.architecture!r}")


def parse_args(argv: list[str] | None = None) -> PriorConfig:
    return parse_config(argv, PriorConfig, description=__doc__)


@torch.no_grad()
def validation_nll(prior, mapping, sequences: torch.Tensor, batch_size: int) -> float:
    """Mean held-out negative log-likelihood in nats per code."""
    was_training = prior.training
    prior.eval()
    losses = [prior_loss(prior, chunk, mapping) * len(chunk) for chunk in sequences.split(batch_size)]
    prior.train(was_training)
    return (torch.stack(losses).sum() / len(sequences)).item()


def main(args: PriorConfig) -> dict:
    accelerator = run_accelerator(args, gradient_accumulation_steps=args.gradient_accumulation_steps)
    set_seed(args.seed)
    output_dir = Path(args.output_dir)

    vqvae = AutoModel.from_pretrained(args.pretrained_model_name_or_path)
    if not isinstance(vqvae, latentcode.VQVAEModel):
        raise ValueError(f"--pretrained_model_name_or_path must hold a VQVAEModel, got {type(vqvae).__name__}")
    vqvae = vqvae.eval().requires_grad_(False).to(accelerator.device)
    resolution = args.resolution or vqvae.config.sample_size
    latent_shape = vqvae.latent_shape(resolution)

    batches, validation_images = image_data_from_config(
        args, vqvae.config.in_channels, resolution, accelerator.process_index, accelerator.num_processes
    )
    validation_codes = torch.cat(list(encode_to_sequences(vqvae, validation_images.split(64))))

    prior = build_prior(
        vqvae.config.codebook_size,
        latent_shape,
        architecture=args.architecture,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        dropout=args.dropout,
        vqvae_name_or_path=args.pretrained_model_name_or_path,
    )
    mapping = token_mapping(prior.config)
    optimizer = torch.optim.AdamW(
        prior.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=args.max_train_steps
    )
    prior, optimizer = accelerator.prepare(prior, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    first_step = 1
    checkpoint = resolve_checkpoint(output_dir, args.resume_from_checkpoint)
    if checkpoint is not None:
        trainer_state, process_state = load_checkpoint(accelerator, checkpoint)
        first_step = trainer_state["global_step"] + 1
        batches.load_state_dict(process_state["data"])
        accelerator.print(f"resumed from {checkpoint} at step {first_step - 1}")
    accelerator.init_trackers(args.tracker_project_name, config=tracker_config(args))
    accelerator.print(
        f"prior: {args.architecture}, {sum(p.numel() for p in prior.parameters()) / 1e6:.2f}M parameters, "
        f"{math.prod(latent_shape)} codes per image {tuple(latent_shape)}, vocabulary {mapping.vocab_size}"
    )

    def validate(step: int) -> dict:
        unwrapped = accelerator.unwrap_model(prior)
        metrics = {"step": step, "validation_nll": validation_nll(unwrapped, mapping, validation_codes, 64)}
        samples = sample_images(
            unwrapped, vqvae, args.num_samples, temperature=args.temperature, top_k=args.top_k, seed=args.seed
        )
        save_image_grid(samples, output_dir / "samples" / f"step_{step:06d}.png")
        accelerator.print(json.dumps(metrics))
        accelerator.log({"validation/nll": metrics["validation_nll"]}, step=step)
        return metrics

    history, metrics = [], {}
    prior.train()
    for step in range(first_step, args.max_train_steps + 1):
        for _ in range(args.gradient_accumulation_steps):
            with accelerator.accumulate(prior):
                (sequences,) = encode_to_sequences(vqvae, [batches.next_batch()])
                loss = prior_loss(prior, sequences, mapping)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(prior.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
        scheduler.step()
        history.append(accelerator.gather(loss.detach()[None]).mean().item())
        accelerator.log({"train/loss": history[-1], "train/lr": scheduler.get_last_lr()[0]}, step=step)
        if args.checkpointing_steps and step % args.checkpointing_steps == 0:
            trainer_state = {"global_step": step}
            process_state = {"data": batches.state_dict()}
            save_checkpoint(accelerator, output_dir, step, trainer_state, process_state, args.checkpoints_total_limit)
        if step % args.logging_steps == 0 or step == first_step:
            accelerator.print(
                f"step {step}: train loss {history[-1]:.4f} nats/code, lr {scheduler.get_last_lr()[0]:.2e}"
            )
        if accelerator.is_main_process and args.validation_steps and step % args.validation_steps == 0:
            metrics = validate(step)
        accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        if not metrics or metrics["step"] != args.max_train_steps:
            metrics = validate(args.max_train_steps)
        unwrapped = accelerator.unwrap_model(prior)
        unwrapped.save_pretrained(output_dir)
        samples = sample_images(
            unwrapped, vqvae, args.num_samples, temperature=args.temperature, top_k=args.top_k, seed=args.seed
        )
        save_image_grid(samples, output_dir / "samples.png")
        if history:  # empty when resumed at the last step
            metrics.update(first_train_loss=history[0], last_train_loss=history[-1])
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        card = render_model_card(
            "prior",
            dict(
                architecture=args.architecture,
                model_class=type(unwrapped).__name__,
                num_parameters=f"{sum(p.numel() for p in unwrapped.parameters()) / 1e6:.2f}M",
                vqvae=args.pretrained_model_name_or_path,
                codebook_size=vqvae.config.codebook_size,
                latent_shape=" x ".join(str(size) for size in latent_shape),
                sequence_length=math.prod(latent_shape),
                dataset=args.dataset_name or args.train_data_dir or "builtin:digits",
                resolution=resolution,
                steps=args.max_train_steps,
                batch_size=args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps,
                learning_rate=args.learning_rate,
                validation_nll=f"{metrics['validation_nll']:.4f}",
                bits_per_image=f"{metrics['validation_nll'] * math.prod(latent_shape) / math.log(2):.1f}",
                num_validation_images=len(validation_codes),
                repo_id=str(output_dir),
            ),
        )
        (output_dir / "README.md").write_text(card)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    main(parse_args())
