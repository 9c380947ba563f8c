"""VAEModel: a variational autoencoder with a diagonal Gaussian posterior, read top to bottom.

    pixels --encoder--> quant_conv --> moments (mean, log-variance) --> z ~ q(z|x)
           --> post_quant_conv --decoder--> pixels
    loss = reconstruction_loss + kl_weight * KL(q(z|x) || N(0, I)) / (C * H * W)

The backbone halves (`_bottleneck_input`, `_decode_code`), input checks and tiling are the
shared [`LatentCodePreTrainedModel`]'s (`base.py`); the posterior is
`modules/distributions.py`'s [`DiagonalGaussianDistribution`].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# diffusers' pipeline loader finds how to load a component by looking its loading base classes
# (`ModelMixin`, ...) up by name in the module that model_index.json records for it: this one.
from diffusers import ModelMixin  # noqa: F401
from transformers.utils import ModelOutput

from ..configuration import VAEConfig
from ..families import CodeSize, FamilyBehaviour, refuse_quantizer_weights, register_family
from ..modules.distributions import DiagonalGaussianDistribution, weighted_kl_per_value
from .base import DecoderOutput, LatentCodePreTrainedModel, _as_tuple, mean_reconstruction_loss


@dataclass
class VAEEncoderOutput(ModelOutput):
    """`latent_dist`: the posterior q(z|x), a [`DiagonalGaussianDistribution`] over
    `[B, latent_channels, H/f, W/f]` (named as in diffusers' `AutoencoderKLOutput`)."""

    latent_dist: DiagonalGaussianDistribution | None = None


@dataclass
class VAEOutput(ModelOutput):
    """`loss` = `reconstruction_loss + kl_weight * kl / (C*H*W)`; `kl`: KL(q(z|x) || N(0, I))
    summed over latent elements, averaged over the batch (nats per image). `latents`: the code
    that was decoded (a posterior sample or its mean), `latent_mean` / `latent_logvar`: the
    posterior's parameters, each `[B, latent_channels, H/f, W/f]`. Plain tensors, not the
    distribution object `encode` returns, so that the forward pass can be traced and exported.
    `hidden_states` (with `output_hidden_states`): the encoder's feature maps, see `forward`."""

    loss: torch.FloatTensor | None = None
    sample: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    latent_mean: torch.FloatTensor | None = None
    latent_logvar: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    kl: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None

    def regularizer(self, objective, step: int) -> tuple[torch.Tensor, dict]:
        """The bottleneck term of a training `objective` for this output: its KL term."""
        return objective.kl_term(self, step)


@register_family("vae", diffusers_class_name="AutoencoderKL")
class VAEModel(LatentCodePreTrainedModel, FamilyBehaviour):
    """Variational autoencoder with a diagonal Gaussian posterior, like diffusers' `AutoencoderKL`.

    ```python
    posterior = model.encode(pixels).latent_dist           # DiagonalGaussianDistribution
    z = posterior.sample(generator=torch.Generator().manual_seed(0))
    images = model.decode(z).sample
    new_images = model.sample(4, generator=torch.Generator().manual_seed(0))
    ```
    """

    config_class = VAEConfig

    @staticmethod
    def bottleneck_channels(config):
        return 2 * config.latent_channels, 2 * config.latent_channels, config.latent_channels

    def encode(self, pixel_values: torch.Tensor, return_dict: bool | None = None):
        """`[B, C, H, W]` -> `.latent_dist`, a Gaussian over `[B, latent_channels, H/f, W/f]`."""
        posterior = DiagonalGaussianDistribution(self._bottleneck_input(pixel_values))
        return self._return(VAEEncoderOutput(latent_dist=posterior), return_dict)

    def decode(self, latents: torch.Tensor, return_dict: bool | None = None, generator=None):
        """`[B, latent_channels, h, w]` -> `.sample` `[B, out_channels, h*f, w*f]`.

        The signature is diffusers' `AutoencoderKL.decode`: pipelines pass their `generator`,
        which the deterministic decoder does not use.
        """
        self._check_code(latents, self.config.latent_channels)
        return self._return(DecoderOutput(sample=self._decode_code(latents)), return_dict)

    def forward(
        self,
        pixel_values: torch.Tensor,
        sample_posterior: bool | None = None,
        return_dict: bool | None = None,
        generator: torch.Generator | None = None,
        *,
        output_hidden_states: bool | None = None,
    ):
        """Reconstruct through a posterior sample (default in training) or its mean (in eval).

        Arguments are in the order of diffusers' `AutoencoderKL.forward`; `output_hidden_states`
        adds the encoder's feature maps, as [`AutoencoderModel.forward`] describes.
        """
        if sample_posterior is None:
            sample_posterior = self.training
        hidden_states = self._hidden_states_list(output_hidden_states)
        posterior = DiagonalGaussianDistribution(self._bottleneck_input(pixel_values, hidden_states))
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        sample = self._decode_code(z)
        reconstruction_loss = mean_reconstruction_loss(sample, pixel_values, self.config.reconstruction_loss)
        kl = posterior.kl().float().mean()
        loss = reconstruction_loss + weighted_kl_per_value(kl, self.config.kl_weight, sample)
        output = VAEOutput(
            loss=loss,
            sample=sample,
            latents=z,
            latent_mean=posterior.mean,
            latent_logvar=posterior.logvar,
            reconstruction_loss=reconstruction_loss,
            kl=kl,
            hidden_states=_as_tuple(hidden_states),
        )
        return self._return(output, return_dict)

    @torch.no_grad()
    def sample(
        self, num_samples: int, generator: torch.Generator | None = None, latent_size: int | None = None
    ) -> torch.Tensor:
        """Decode `num_samples` draws from the prior N(0, I).

        `latent_size` defaults to `config.sample_size / f`. Returns `[num_samples, out_channels,
        latent_size*f, latent_size*f]` (`config.sample_size` on a vector-latent backbone, whose
        code is one `[latent_channels]` vector per image and takes no `latent_size`).
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if latent_size is not None and self.backbone_spec.vector_latent:
            raise ValueError(
                f"latent_size={latent_size} sets a latent grid, but backbone={self.config.backbone!r} has one "
                f"latent vector per {self.config.sample_size}x{self.config.sample_size} image; leave it None"
            )
        image_size = None if latent_size is None else latent_size * self.downsampling_factor
        shape = (num_samples, *self.latent_code_shape(image_size))
        device = generator.device if generator is not None else self.device
        z = torch.randn(shape, generator=generator, device=device).to(self.device, self.dtype)
        return self.decode(z, return_dict=True).sample

    # -- family behaviour (latentcode.families.FamilyBehaviour) ---------------------------------

    display_name = "VAE"
    can_sample_prior = True
    stored_columns = {"latent_mean": "latent", "latent_std": "latent"}

    def reconstruct_encoded(self, encoded: VAEEncoderOutput) -> torch.Tensor:
        """The decoded posterior mean `[B, out_channels, H, W]`."""
        return self.decode(encoded.latent_dist.mode(), return_dict=True).sample

    def continuous_code_encoded(
        self, encoded: VAEEncoderOutput, sample_posterior: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The posterior mean `[B, latent_channels, h, w]`, or a sample of the posterior (drawn with
        `generator`) with `sample_posterior`, as latent diffusion trains on."""
        posterior = encoded.latent_dist
        return posterior.sample(generator=generator) if sample_posterior else posterior.mode()

    def code_size(self, encoded: VAEEncoderOutput) -> CodeSize:
        """KL(q(z|x) || N(0, I)) in bits per image: the cost of the code with bits-back coding."""
        posterior = encoded.latent_dist
        bits = posterior.kl().double() / math.log(2)
        return CodeSize(tuple(posterior.mean.shape[1:]), bits, "KL to the prior N(0, I)")

    def stored_code(self, encoded: VAEEncoderOutput) -> dict[str, torch.Tensor]:
        """The posterior's `latent_mean` and `latent_std`, each `[B, C*h*w]` (`[B, D]` for a vector)."""
        posterior = encoded.latent_dist
        return {"latent_mean": posterior.mean.flatten(1), "latent_std": posterior.std.flatten(1)}

    def regularizer_description(self, objective=None) -> str:
        weight = self.config.kl_weight if objective is None else objective.kl_weight
        return f"KL to N(0, I) (weight {weight})"

    def objective_weights(self, kl_weight: float | None = None, quantizer_weights: dict | None = None) -> dict:
        refuse_quantizer_weights(self, quantizer_weights)
        return {"kl_weight": self.config.kl_weight if kl_weight is None else kl_weight}
