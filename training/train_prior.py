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

import argparse
import json
import logging
import math
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import AutoModel, get_scheduler

import latentcode
from latentcode.data import add_data_arguments, image_data_from_args
from latentcode.grids import save_image_grid
from latentcode.prior import (
    PRIOR_ARCHITECTURES,
    build_prior,
    encode_to_sequences,
    prior_loss,
    sample_images,
    token_mapping,
)
from latentcode.training.model_card import render_model_card


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="a trained latentcode VQ-VAE")
    parser.add_argument("--output_dir", required=True)
    add_data_arguments(parser, resolution_default="the VQ-VAE's sample_size")
    model = parser.add_argument_group("prior")
    model.add_argument("--architecture", choices=PRIOR_ARCHITECTURES, default="gpt2")
    model.add_argument("--hidden_size", type=int, default=256)
    model.add_argument("--num_layers", type=int, default=4)
    model.add_argument("--num_heads", type=int, default=4)
    model.add_argument("--dropout", type=float, default=0.0)
    train = parser.add_argument_group("training")
    train.add_argument("--max_train_steps", type=int, default=2000)
    train.add_argument("--train_batch_size", type=int, default=32, help="per process")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--learning_rate", type=float, default=3e-4)
    train.add_argument("--adam_weight_decay", type=float, default=0.01)
    train.add_argument("--lr_scheduler", default="cosine")
    train.add_argument("--lr_warmup_steps", type=int, default=100)
    train.add_argument("--max_grad_norm", type=float, default=1.0)
    train.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--logging_steps", type=int, default=50)
    sampling = parser.add_argument_group("validation and sampling")
    sampling.add_argument("--validation_steps", type=int, default=500, help="0: only at the end")
    sampling.add_argument("--num_samples", type=int, default=16)
    sampling.add_argument("--temperature", type=float, default=1.0)
    sampling.add_argument("--top_k", type=int, default=None)
    return parser.parse_args(argv)


@torch.no_grad()
def validation_nll(prior, mapping, sequences: torch.Tensor, batch_size: int) -> float:
    """Mean held-out negative log-likelihood in nats per code."""
    was_training = prior.training
    prior.eval()
    losses = [prior_loss(prior, chunk, mapping) * len(chunk) for chunk in sequences.split(batch_size)]
    prior.train(was_training)
    return (torch.stack(losses).sum() / len(sequences)).item()


def main(args: argparse.Namespace) -> dict:
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        cpu=not torch.cuda.is_available(),
    )
    set_seed(args.seed)
    output_dir = Path(args.output_dir)

    vqvae = AutoModel.from_pretrained(args.pretrained_model_name_or_path)
    if not isinstance(vqvae, latentcode.VQVAEModel):
        raise ValueError(f"--pretrained_model_name_or_path must hold a VQVAEModel, got {type(vqvae).__name__}")
    vqvae = vqvae.eval().requires_grad_(False).to(accelerator.device)
    resolution = args.resolution or vqvae.config.sample_size
    latent_shape = vqvae.latent_shape(resolution)

    batches, validation_images = image_data_from_args(args, vqvae.config.in_channels, resolution, accelerator)
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
    optimizer = torch.optim.AdamW(prior.parameters(), lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=args.max_train_steps
    )
    prior, optimizer = accelerator.prepare(prior, optimizer)
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
        return metrics

    history, metrics = [], {}
    prior.train()
    for step in range(1, args.max_train_steps + 1):
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
        if step % args.logging_steps == 0 or step == 1:
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
