"""`training/train_prior.py`'s task: the frozen VQ-VAE encodes each batch to code sequences (or
they are read from a `latentcode-tokenize` output), an autoregressive prior (`latentcode.prior`)
learns them; validation NLL, sampled grids, the saved prior and its model card.

Here rather than in the script so that the script's options (`--help`) load without torch."""

from __future__ import annotations

import math

import torch
from transformers import AutoModel

from .. import modeling  # noqa: F401  (registers the families with AutoModel)
from ..data import image_data_from_config
from ..grids import save_image_grid
from ..hub import resolve_pretrained
from ..prior import build_prior, encode_to_sequences, prior_loss, sample_images, token_mapping
from .codes import code_data
from .engine import Engine, Part, TrainingTask, data_source, training_report
from .model_card import render_model_card


def code_sequences(rows: dict) -> torch.Tensor:
    """The code sequences `[B, L]` (int64) of tokenised rows (stored as uint16 or int32)."""
    return rows["indices"].long()


class PriorTask(TrainingTask):
    """Trains a prior over a frozen VQ-VAE's code sequences: its model, loss, validation NLL and
    samples, and final save, for the [`Engine`]."""

    def __init__(self, config):
        """`config`: the parsed options of `training/train_prior.py` (its `PriorConfig`)."""
        self.config = config

    def build(self, engine: Engine):
        config, accelerator = self.config, engine.accelerator
        vqvae = AutoModel.from_pretrained(
            resolve_pretrained(config.pretrained_model_name_or_path, cache_dir=config.data.cache_dir)
        )
        if not getattr(vqvae, "has_tokens", False):
            raise ValueError(
                f"--pretrained_model_name_or_path must hold a latentcode model with discrete tokens (a VQ-VAE: "
                f"has_tokens), got a {type(vqvae).__name__}; train a prior over the codes of a VQ-VAE"
            )
        self.vqvae = vqvae.eval().requires_grad_(False).to(accelerator.device)
        self.resolution = config.data.resolution or vqvae.config.sample_size
        self.latent_shape = vqvae.latent_shape(self.resolution)
        # Initialised first, from the seed alone (DataLoaders draw from a generator of their own,
        # data/batches.py): the same prior whether the codes come from images or from a tokenised dataset.
        prior = build_prior(
            vqvae.config.codebook_size,
            self.latent_shape,
            architecture=config.prior.architecture,
            hidden_size=config.prior.hidden_size,
            num_layers=config.prior.num_layers,
            num_heads=config.prior.num_heads,
            dropout=config.prior.dropout,
            vqvae_name_or_path=config.pretrained_model_name_or_path,
        )
        self.mapping = token_mapping(prior.config)
        batches, self.validation_codes = self.data(accelerator.process_index, accelerator.num_processes)
        betas = (config.optimization.adam_beta1, config.optimization.adam_beta2)
        adam = dict(
            betas=betas, weight_decay=config.optimization.adam_weight_decay, eps=config.optimization.adam_epsilon
        )
        optimizer = torch.optim.AdamW(prior.parameters(), lr=config.optimization.learning_rate, **adam)
        accelerator.print(
            f"prior: {config.prior.architecture}, {sum(p.numel() for p in prior.parameters()) / 1e6:.2f}M parameters, "
            f"{math.prod(self.latent_shape)} codes per image {tuple(self.latent_shape)}, "
            f"vocabulary {self.mapping.vocab_size}"
        )
        engine.prepare([Part("prior", prior, optimizer)])
        return batches

    def data(self, rank: int, world_size: int):
        """The training batches (pixels, or code sequences `[B, L]` with `--codes_dataset`) and the
        held-out code sequences `[V, L]`."""
        config, vqvae = self.config, self.vqvae
        if config.data.codes_dataset is not None:
            shape = self.latent_shape
            return code_data(config.data.codes_dataset, vqvae, config, code_sequences, shape, rank, world_size)
        batches, images = image_data_from_config(config, vqvae.config.in_channels, self.resolution, rank, world_size)
        return batches, torch.cat(list(encode_to_sequences(vqvae, images.split(64))))

    def compute_loss(self, engine: Engine, batch: torch.Tensor):
        """The objective of a micro-batch: pixels `[B, C, H, W]`, or code sequences `[B, L]`."""
        sequences = batch if self.config.data.codes_dataset else next(encode_to_sequences(self.vqvae, [batch]))
        loss = prior_loss(engine.parts[0].module, sequences, self.mapping)
        return loss, {"loss": loss}

    @torch.no_grad()
    def validation_nll(self, prior) -> float:
        """Mean held-out negative log-likelihood in nats per code."""
        prior.eval()
        chunks = self.validation_codes.split(64)
        losses = [prior_loss(prior, chunk, self.mapping) * len(chunk) for chunk in chunks]
        prior.train()
        return (torch.stack(losses).sum() / len(self.validation_codes)).item()

    def samples(self, engine: Engine) -> torch.Tensor:
        config = self.config
        prior = engine.model
        return sample_images(
            prior,
            self.vqvae,
            config.sampling.num_samples,
            temperature=config.sampling.temperature,
            top_k=config.sampling.top_k,
            seed=config.seed,
        )

    def validate(self, engine: Engine) -> dict:
        nll = self.validation_nll(engine.model)
        save_image_grid(self.samples(engine), engine.output_dir / "samples" / f"step_{engine.global_step:06d}.png")
        engine.accelerator.print(f"step {engine.global_step}: validation NLL {nll:.4f} nats/code")
        return {"nll": nll}

    def finish(self, engine: Engine, summary: dict) -> dict:
        config, output_dir = self.config, engine.output_dir
        nll = self.validate(engine)["nll"]
        prior = engine.model
        prior.save_pretrained(output_dir)
        save_image_grid(self.samples(engine), output_dir / "samples.png")
        bits = nll * math.prod(self.latent_shape) / math.log(2)
        card = render_model_card(
            "prior",
            dict(
                architecture=config.prior.architecture,
                model_class=type(prior).__name__,
                num_parameters=f"{sum(p.numel() for p in prior.parameters()) / 1e6:.2f}M",
                vqvae=config.pretrained_model_name_or_path,
                codebook_size=self.vqvae.config.codebook_size,
                latent_shape=" x ".join(str(size) for size in self.latent_shape),
                sequence_length=math.prod(self.latent_shape),
                dataset=config.data.codes_dataset or data_source(config),
                resolution=self.resolution,
                steps=engine.global_step,
                batch_size=config.optimization.train_batch_size
                * engine.accelerator.num_processes
                * config.optimization.gradient_accumulation_steps,
                learning_rate=config.optimization.learning_rate,
                validation_nll=f"{nll:.4f}",
                bits_per_image=f"{bits:.1f}",
                num_validation_images=len(self.validation_codes),
                repo_id=str(output_dir),
            ),
        )
        (output_dir / "README.md").write_text(card)
        return training_report(
            engine,
            summary,
            kind="prior",
            metrics={"nll": nll, "bits_per_image": bits},
            num_images=len(self.validation_codes),
            source=config.data.codes_dataset,
        )
