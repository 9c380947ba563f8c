"""AutoencoderModel: a deterministic autoencoder, read top to bottom.

    pixels --encoder--> quant_conv --> latents --> post_quant_conv --decoder--> pixels
    loss = reconstruction_loss

The backbone halves (`_bottleneck_input`, `_decode_code`), input checks and tiling are the
shared [`LatentCodePreTrainedModel`]'s (`base.py`); this file holds the family's outputs,
`encode` / `decode` / `forward` and its family answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# diffusers' pipeline loader finds how to load a component by looking its loading base classes
# (`ModelMixin`, ...) up by name in the module that model_index.json records for it: this one.
from diffusers import ModelMixin  # noqa: F401
from transformers.utils import ModelOutput

from ..configuration import AutoencoderConfig
from ..families import CodeSize, FamilyBehaviour, refuse_kl_weight, refuse_quantizer_weights, register_family
from .base import DecoderOutput, LatentCodePreTrainedModel, _as_tuple, mean_reconstruction_loss


@dataclass
class AutoencoderEncoderOutput(ModelOutput):
    """`latents`: `[B, latent_channels, H/f, W/f]`."""

    latents: torch.FloatTensor | None = None


@dataclass
class AutoencoderOutput(ModelOutput):
    """`loss` = `reconstruction_loss`; `sample`: reconstruction; `latents`: the code.
    `hidden_states` (with `output_hidden_states`): the encoder's feature maps, see `forward`."""

    loss: torch.FloatTensor | None = None
    sample: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None

    def regularizer(self, objective, step: int) -> tuple[float, dict]:
        """The bottleneck term of a training `objective` for this output: none for an AutoEncoder."""
        return 0.0, {}


@register_family("autoencoder")
class AutoencoderModel(LatentCodePreTrainedModel, FamilyBehaviour):
    """Deterministic autoencoder: the code is the encoder's output.

    ```python
    model = AutoencoderModel(AutoencoderConfig(block_out_channels=(64, 128)))
    latents = model.encode(pixels).latents          # [B, 4, H/2, W/2]
    reconstruction = model.decode(latents).sample   # [B, 3, H, W]
    ```
    """

    config_class = AutoencoderConfig

    @staticmethod
    def bottleneck_channels(config):
        return config.latent_channels, config.latent_channels, config.latent_channels

    def encode(self, pixel_values: torch.Tensor, return_dict: bool | None = None):
        """`[B, C, H, W]` pixels in [-1, 1] -> `.latents` `[B, latent_channels, H/f, W/f]`."""
        latents = self._bottleneck_input(pixel_values)
        return self._return(AutoencoderEncoderOutput(latents=latents), return_dict)

    def decode(self, latents: torch.Tensor, return_dict: bool | None = None, generator=None):
        """`[B, latent_channels, h, w]` -> `.sample` `[B, out_channels, h*f, w*f]`.

        The signature is diffusers' `AutoencoderKL.decode`: pipelines pass their `generator`,
        which a deterministic decoder does not use.
        """
        self._check_code(latents, self.config.latent_channels)
        return self._return(DecoderOutput(sample=self._decode_code(latents)), return_dict)

    def forward(
        self, pixel_values: torch.Tensor, return_dict: bool | None = None, *, output_hidden_states: bool | None = None
    ):
        """Reconstruct `[B, C, H, W]` pixels; `output_hidden_states` (default
        `config.output_hidden_states`) adds the encoder's feature maps as `.hidden_states`: after
        `conv_in` (`[B, block_out_channels[0], H, W]`), after each resolution level `l` (`[B,
        block_out_channels[l], H/2^(l+1), W/2^(l+1)]`; the last level does not downsample: `H/f`)
        and after the mid block (`[B, block_out_channels[-1], H/f, W/f]`)."""
        hidden_states = self._hidden_states_list(output_hidden_states)
        latents = self._bottleneck_input(pixel_values, hidden_states)
        sample = self._decode_code(latents)
        reconstruction_loss = mean_reconstruction_loss(sample, pixel_values, self.config.reconstruction_loss)
        output = AutoencoderOutput(
            loss=reconstruction_loss,
            sample=sample,
            latents=latents,
            reconstruction_loss=reconstruction_loss,
            hidden_states=_as_tuple(hidden_states),
        )
        return self._return(output, return_dict)

    # -- family behaviour (latentcode.families.FamilyBehaviour) ---------------------------------

    display_name = "AutoEncoder"
    stored_columns = {"latents": "latent"}

    def reconstruct_encoded(self, encoded: AutoencoderEncoderOutput) -> torch.Tensor:
        """The decoded code `[B, out_channels, H, W]`."""
        return self.decode(encoded.latents, return_dict=True).sample

    def continuous_code_encoded(self, encoded: AutoencoderEncoderOutput, sample_posterior=False, generator=None):
        """The code itself, `[B, latent_channels, h, w]` (deterministic: no posterior to sample)."""
        return encoded.latents

    def code_size(self, encoded: AutoencoderEncoderOutput) -> CodeSize:
        """The code as it is stored: 32 bits per latent value (no entropy model bounds it)."""
        latents = encoded.latents
        values = latents[0].numel()
        bits = torch.full((latents.shape[0],), 32.0 * values, dtype=torch.float64, device=latents.device)
        return CodeSize(tuple(latents.shape[1:]), bits, f"{values} float32 values, uncompressed")

    def stored_code(self, encoded: AutoencoderEncoderOutput) -> dict[str, torch.Tensor]:
        """`latents` `[B, C*h*w]` (or `[B, D]` for a vector latent)."""
        return {"latents": encoded.latents.flatten(1)}

    def regularizer_description(self, objective=None) -> None:
        return None

    def objective_weights(self, kl_weight: float | None = None, quantizer_weights: dict | None = None) -> dict:
        refuse_kl_weight(self, kl_weight)
        refuse_quantizer_weights(self, quantizer_weights)
        return {}
