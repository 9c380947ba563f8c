"""`training/train_latent_diffusion.py`'s task: the frozen autoencoder encodes each batch to scaled
latents (or they are read from a `latentcode-tokenize` output), a diffusers UNet learns to denoise
them (`latentcode.latent_diffusion`); validation loss, sampled grids and the saved `LDMPipeline`.

Here rather than in the script so that the script's options (`--help`) load without torch."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from transformers import AutoModel

from .. import modeling  # noqa: F401  (registers the families with AutoModel)
from ..data import image_data_from_config
from ..families import FamilyBehaviour
from ..grids import save_image_grid
from ..hub import resolve_pretrained
from ..latent_diffusion import (
    continuous_latents,
    diffusion_loss,
    latent_diffusion_pipeline,
    latent_unet,
    scaling_factor_of,
)
from .codes import code_data
from .engine import Engine, Part, TrainingTask, training_report


class LatentDiffusionTask(TrainingTask):
    """Trains a diffusers UNet to denoise a frozen autoencoder's scaled latents: its model, loss,
    validation and saved pipeline, for the [`Engine`]."""

    def __init__(self, config):
        """`config`: the parsed options of `training/train_latent_diffusion.py` (its `LatentDiffusionConfig`)."""
        self.config = config
        self.validation_latents = None

    def build(self, engine: Engine):
        config, accelerator, device = self.config, engine.accelerator, engine.device
        autoencoder = AutoModel.from_pretrained(
            resolve_pretrained(config.pretrained_model_name_or_path, cache_dir=config.data.cache_dir)
        )
        if not isinstance(autoencoder, FamilyBehaviour):  # any family: each has a continuous code
            raise ValueError(
                "--pretrained_model_name_or_path must hold a latentcode model (AutoEncoder, VAE or VQ-VAE), got a "
                f"{type(autoencoder).__name__}"
            )
        self.autoencoder = autoencoder.eval().requires_grad_(False).to(device)
        resolution = config.data.resolution or autoencoder.config.sample_size
        # Initialised first, from the seed alone (DataLoaders draw from a generator of their own,
        # data/batches.py): the same UNet whether the latents come from images or from a tokenised dataset.
        unet = latent_unet(
            autoencoder.config,
            resolution,
            config.unet.block_out_channels,
            config.unet.layers_per_block,
            config.unet.norm_num_groups,
        )
        batches, self.validation_batch = self.data(resolution, accelerator.process_index, accelerator.num_processes)
        # Each process has its own noise; the validation noise is the same everywhere and every time.
        self.generator = torch.Generator(device).manual_seed(config.seed + accelerator.process_index)
        if config.unet.scaling_factor is not None:
            autoencoder.config.scaling_factor = config.unet.scaling_factor
        else:  # measured on the first batch, which step 1 then reads again (a resume restores its own)
            start = batches.state_dict()
            local = scaling_factor_of([self.latents(batches.next_batch().to(device), self.generator)])
            batches.load_state_dict(start)
            # Every process must scale alike: use the mean of their measurements.
            autoencoder.config.scaling_factor = accelerator.reduce(torch.tensor(local, device=device), "mean").item()
        # No clipping of the predicted latents to [-1, 1] (diffusers' pixel-space default): scaled
        # latents have unit std, a third of their values lie outside, and clipping them pulled the
        # first hour's samples towards blends of digits (benchmarks/README.md, 'First-hour samples').
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=config.unet.num_train_timesteps, clip_sample=False)
        betas = (config.optimization.adam_beta1, config.optimization.adam_beta2)
        adam = dict(
            betas=betas, weight_decay=config.optimization.adam_weight_decay, eps=config.optimization.adam_epsilon
        )
        optimizer = torch.optim.AdamW(unet.parameters(), lr=config.optimization.learning_rate, **adam)
        accelerator.print(f"UNet: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M parameters")
        engine.prepare([Part("unet", unet, optimizer)])
        accelerator.print(f"scaling_factor = {autoencoder.config.scaling_factor:.5f}")
        return batches

    def data(self, resolution: int, rank: int, world_size: int):
        """The training batches and the held-out batch: pixels `[B, C, H, W]`, or with
        `--latents_dataset` the stored codes `[B, k, C, h, w]` (k = 2: a posterior's mean and std;
        k = 1: the code)."""
        config, autoencoder = self.config, self.autoencoder
        if config.data.latents_dataset is None:
            return image_data_from_config(config, autoencoder.config.in_channels, resolution, rank, world_size)
        if autoencoder.has_tokens:
            raise ValueError(
                f"--latents_dataset needs the tokenised latents of a VAE or an AutoEncoder; {config.data.latents_dataset!r} "
                "would hold a VQ-VAE's token indices, not the latents before quantisation it diffuses: drop "
                "--latents_dataset to encode the images on the fly"
            )
        shape = list(autoencoder.stored_code_shape(resolution))
        columns = list(autoencoder.stored_columns)

        def stored_latents(rows: dict) -> torch.Tensor:
            return torch.stack([rows[name].float().unflatten(1, shape) for name in columns], dim=1)

        return code_data(config.data.latents_dataset, autoencoder, config, stored_latents, shape, rank, world_size)

    @torch.no_grad()
    def latents(self, batch: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
        """Unscaled latents `[B, C, h, w]` of a batch: a posterior sample (drawn with `noise`) or
        the code; from pixels, or from stored codes as `model.continuous_code` would draw them."""
        if self.config.data.latents_dataset is None:
            return continuous_latents(self.autoencoder, batch, sample_posterior=True, generator=noise)
        mean = batch[:, 0]
        if batch.shape[1] == 1:  # a deterministic code
            return mean
        eps = torch.randn(mean.shape, generator=noise, device=mean.device, dtype=mean.dtype)
        return mean + batch[:, 1] * eps  # as DiagonalGaussianDistribution.sample draws it

    def encode(self, batch: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
        return self.latents(batch, noise) * self.autoencoder.config.scaling_factor

    def compute_loss(self, engine: Engine, batch: torch.Tensor):
        latents = self.encode(batch, self.generator)
        loss = diffusion_loss(engine.parts[0].module, self.noise_scheduler, latents, self.generator)
        return loss, {"loss": loss}

    def state(self, engine: Engine) -> tuple[dict, dict]:
        return {"scaling_factor": self.autoencoder.config.scaling_factor}, {
            "noise_generator": self.generator.get_state()
        }

    def load_state(self, engine: Engine, trainer_state: dict, process_state: dict) -> None:
        self.autoencoder.config.scaling_factor = trainer_state["scaling_factor"]
        self.generator.set_state(process_state["noise_generator"])

    def pipeline(self, engine: Engine):
        scheduler = DDIMScheduler.from_config(self.noise_scheduler.config)
        return latent_diffusion_pipeline(self.autoencoder, engine.model, scheduler)

    def validate(self, engine: Engine) -> dict:
        config, device = self.config, engine.device
        metrics = {}
        unet = engine.model.eval()
        if self.validation_batch is not None and len(self.validation_batch):
            if self.validation_latents is None:  # the same posterior samples in every run, resumed or not
                noise = torch.Generator(device).manual_seed(config.seed)
                self.validation_latents = self.encode(self.validation_batch.to(device), noise)
            fixed = torch.Generator(device).manual_seed(config.seed)
            with torch.no_grad():
                loss = diffusion_loss(unet, self.noise_scheduler, self.validation_latents, fixed)
            metrics["validation_loss"] = loss.item()
        images = self.pipeline(engine)(
            batch_size=config.sampling.num_samples,
            generator=torch.Generator().manual_seed(config.seed),
            num_inference_steps=config.sampling.num_inference_steps,
            output_type="np",
        ).images
        samples = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1  # [N, C, H, W] in [-1, 1]
        save_image_grid(samples, engine.output_dir / "samples" / f"step_{engine.global_step:06d}.png")
        unet.train()
        engine.accelerator.print(f"step {engine.global_step}: {metrics}")
        return metrics

    def finish(self, engine: Engine, summary: dict) -> dict:
        output_dir = engine.output_dir
        metrics = self.validate(engine)
        self.pipeline(engine).save_pretrained(output_dir)
        (output_dir / "samples.png").write_bytes(
            (output_dir / "samples" / f"step_{engine.global_step:06d}.png").read_bytes()
        )
        return training_report(
            engine,
            summary,
            kind="latent-diffusion",
            metrics=metrics,
            num_images=0 if self.validation_batch is None else len(self.validation_batch),
            source=self.config.data.latents_dataset,
            details={"scaling_factor": self.autoencoder.config.scaling_factor},
        )
