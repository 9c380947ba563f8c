"""VQVAEModel: a vector-quantised autoencoder and its token API, read top to bottom.

    pixels --encoder--> quant_conv --> latents --quantizer--> quantized (+ indices)
           --> post_quant_conv --decoder--> pixels
    loss = reconstruction_loss + the quantizer's terms weighted by model.loss_weights()

The backbone halves (`_bottleneck_input`, `_decode_code`), input checks and tiling are the
shared [`LatentCodePreTrainedModel`]'s (`base.py`); the quantizer is the class that
`config.quantizer` names in `modules/quantizers/registry.py` (`"vq"`: `vector.py`), and its
terms' weights are `modules/quantizers/loss_weights.py`'s [`QuantizerLossWeights`].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

# diffusers' pipeline loader finds how to load a component by looking its loading base classes
# (`ModelMixin`, ...) up by name in the module that model_index.json records for it: this one.
from diffusers import ModelMixin  # noqa: F401
from torch import nn
from transformers.utils import ModelOutput

from ..configuration import VQVAEConfig
from ..families import CodeSize, FamilyBehaviour, refuse_kl_weight, register_family
from ..modules.latent_adapters import build_adapters, encoder_channels
from ..modules.quantizers import QuantizerLossWeights, SimVectorQuantizer, VectorQuantizer, build_quantizer
from ..tokens import grid_as_vector_code, indices_to_sequence, latent_shape, sequence_to_indices, vector_code_as_grid
from .base import DecoderOutput, LatentCodePreTrainedModel, _as_tuple, mean_reconstruction_loss
from .from_autoencoder import freeze_pretrained_parts, vqvae_from_autoencoder


@dataclass
class VQVAEEncoderOutput(ModelOutput):
    """`latents`: `[B, D, H/f, W/f]` before quantisation; `quantized`: the same shape after,
    with the straight-through gradient; `indices`: `[B, H/f, W/f]` int64 codes. On a
    vector-latent backbone `[B, G * D]`, `[B, G * D]` and `[B, G]` (G = `num_latent_tokens`)."""

    latents: torch.FloatTensor | None = None
    quantized: torch.FloatTensor | None = None
    indices: torch.LongTensor | None = None


@dataclass
class VQVAEOutput(ModelOutput):
    """`loss` = `reconstruction_loss + quantizer_loss`, the quantizer's terms weighted by the
    config's loss weights (e.g. `codebook_weight * codebook + commitment_weight * commitment`,
    `model.loss_weights()`); `quantizer_terms`: those terms unweighted, by name (what a
    training objective weighs with its own weights); `codebook_loss` / `commitment_loss`: its
    `"codebook"` / `"commitment"` term as a scalar that logs show (None where the quantizer has no
    such term: an EMA codebook has no codebook loss); `perplexity`: exp(entropy) of the batch's
    code histogram. `hidden_states` (with `output_hidden_states`): the encoder's feature maps,
    see `forward`."""

    loss: torch.FloatTensor | None = None
    sample: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None
    quantized: torch.FloatTensor | None = None
    indices: torch.LongTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    perplexity: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    quantizer_loss: torch.FloatTensor | None = None
    quantizer_terms: dict[str, torch.FloatTensor] | None = None

    def regularizer(self, objective, step: int) -> tuple[torch.Tensor, dict]:
        """The bottleneck term of a training `objective` for this output: its quantizer's terms."""
        return objective.quantizer_term(self, step)


@register_family("vqvae", diffusers_class_name="VQModel")
class VQVAEModel(LatentCodePreTrainedModel, FamilyBehaviour):
    """VQ-VAE: the code is the nearest of `codebook_size` learned vectors (or an FSQ / LFQ /
    residual-VQ code, as `config.quantizer` says; see `latentcode.modules.quantizers`).

    ```python
    encoded = model.encode(pixels)          # .latents, .quantized, .indices [B, H/f, W/f]
    images = model.decode_indices(encoded.indices).sample
    ```
    `decode(latents)` quantises continuous latents first, as diffusers' `VQModel.decode` does.
    On the `"vector"` backbone the code is one vector `[B, G * D]` per image, quantised as
    G = `config.num_latent_tokens` tokens of D = `codebook_dim` entries: indices `[B, G]`.
    """

    config_class = VQVAEConfig
    # The codebook's training state is derived from the codebook when a checkpoint lacks it
    # (VectorQuantizer.initialize_unloaded_state): not worth a "missing keys" report.
    _keys_to_ignore_on_load_missing = [r"quantizer\.(.+\.)?(initialized|ema_cluster_size|ema_codebook_sum)$"]

    def _build_bottleneck(self, config: VQVAEConfig) -> None:
        """The quantizer `config.quantizer` names, from the config's values; its constructor checks
        its options here (a config holds values; a bad option raises as the model is built)."""
        self.quantizer = build_quantizer(config.quantizer, config.quantizer_sizes(), config.quantizer_config)
        if config.source_autoencoder is not None:  # made from a continuous model: see from_autoencoder
            self.quant_conv, self.post_quant_conv = build_adapters(config)
            self.freeze_autoencoder(config.source_autoencoder["frozen"])

    def _init_weights(self, module: nn.Module) -> None:
        # A learned codebook derives its training state from the codebook; SimVQ's basis is drawn.
        if isinstance(module, VectorQuantizer):
            module.initialize_unloaded_state()
        elif isinstance(module, SimVectorQuantizer):
            module.reset_parameters()
        else:
            super()._init_weights(module)

    @staticmethod
    def bottleneck_channels(config):
        encoder_out = encoder_channels(config.latent_channels, config.source_autoencoder)
        return encoder_out, config.code_channels, config.code_channels

    @classmethod
    def from_autoencoder(cls, model, **options) -> VQVAEModel:
        """A VQ-VAE on the (copied, by default frozen) encoder and decoder of a trained `AutoencoderModel`
        / `VAEModel`, a quantiser on its latent grid: `options` as `from_autoencoder.vqvae_from_autoencoder`."""
        return vqvae_from_autoencoder(cls, model, **options)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Loads, then freezes again what `config.source_autoencoder` says (loading unfreezes every weight)."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if model.config.source_autoencoder is not None:
            model.freeze_autoencoder(model.config.source_autoencoder["frozen"])
        return loaded

    def freeze_autoencoder(self, frozen: bool = True) -> None:
        """Stop (`frozen=False`: restart) training the parts copied from the source autoencoder
        (`modules/latent_adapters.pretrained_parts`), recorded in `config.source_autoencoder`."""
        freeze_pretrained_parts(self, frozen)

    def loss_weights(self, **overrides) -> QuantizerLossWeights:
        """The weights of the quantizer's terms in `forward`'s loss: the config's (`commitment_weight`,
        ...; a change of them is honoured), for this quantizer's terms, with `overrides` (a training
        recipe's; None: the config's). An override of a weight whose term the quantizer lacks is refused."""
        return QuantizerLossWeights.from_config(self.config, self.quantizer.loss_terms, **overrides)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def encode(self, pixel_values: torch.Tensor, return_dict: bool | None = None):
        """`[B, C, H, W]` -> `.latents` / `.quantized` `[B, D, H/f, W/f]`, `.indices` `[B, H/f, W/f]`
        (`[B, H/f, W/f, num_quantizers]` for `"residual_vq"`); on a vector-latent backbone
        `[B, G * D]` and `[B, G]` (`[B, G, num_quantizers]`)."""
        latents = self._bottleneck_input(pixel_values)
        quantized = self._quantize(latents, update_codebook=False)
        output = VQVAEEncoderOutput(latents=latents, quantized=quantized.quantized, indices=quantized.indices)
        return self._return(output, return_dict)

    def _quantize(self, latents: torch.Tensor, update_codebook: bool | None = None):
        """The quantizer's [`QuantizerOutput`] for the bottleneck input: a latent grid `[B, D, h, w]`
        as it is; a vector `[B, G * D]` as its G tokens (`tokens.vector_code_as_grid`), with
        `quantized` back in the vector's layout and `indices` `[B, G]` (`[B, G, depth]`)."""
        if not self.backbone_spec.vector_latent:
            return self.quantizer(latents, update_codebook=update_codebook)
        grid = vector_code_as_grid(latents, self.config.num_latent_tokens)
        output = self.quantizer(grid, update_codebook=update_codebook)
        return replace(output, quantized=grid_as_vector_code(output.quantized), indices=output.indices.squeeze(1))

    def decode(
        self,
        latents: torch.Tensor,
        force_not_quantize: bool = False,
        return_dict: bool | None = None,
        shape: tuple[int, ...] | None = None,
    ):
        """`[B, D, h, w]` continuous latents (a vector latent's `[B, G * D]`) -> quantise -> `.sample`
        `[B, out_channels, h*f, w*f]`.

        The signature is diffusers' `VQModel.decode`. `force_not_quantize=True` decodes the
        latents as they are (they are then taken to be codebook vectors already). With `shape`
        `(B, h, w, D)` as well, `latents` are token indices (any shape with `B * h * w` entries,
        e.g. aMUSEd's `[B, h*w]`) that are looked up in the codebook, as `VQModel` does with
        `lookup_from_codebook`.
        """
        if shape is not None:
            return self._decode_looked_up_indices(latents, force_not_quantize, shape, return_dict)
        self._check_code(latents, self.config.code_channels)
        code = latents if force_not_quantize else self._quantize(latents, update_codebook=False).quantized
        sample = self._decode_code(code.to(latents.dtype))
        return self._return(DecoderOutput(sample=sample), return_dict)

    def _decode_looked_up_indices(self, indices, force_not_quantize, shape, return_dict):
        """diffusers' `decode(indices, force_not_quantize=True, shape=(B, h, w, D))`."""
        if self.backbone_spec.vector_latent:
            raise ValueError(
                "decode(..., shape=(B, h, w, D)) looks up a grid of token indices, as diffusers' VQModel does; this "
                f"model's tokens are the num_latent_tokens={self.config.num_latent_tokens} groups of a vector latent "
                "(backbone='vector'): decode them with decode_indices(indices [B, num_latent_tokens])"
            )
        if not force_not_quantize:
            raise ValueError(
                "decode(..., shape=...) looks token indices up in the codebook and needs force_not_quantize=True, "
                "as diffusers' VQModel.decode does; without shape, decode quantises continuous latents"
            )
        if len(shape) != 4 or shape[3] != self.config.codebook_dim:
            raise ValueError(f"expected shape (B, h, w, codebook_dim={self.config.codebook_dim}), got {tuple(shape)}")
        grid = tuple(shape[:3]) + ((self.config.num_quantizers,) if self.config.num_quantizers else ())
        if not isinstance(indices, torch.Tensor) or indices.numel() != math.prod(grid):
            got = tuple(indices.shape) if isinstance(indices, torch.Tensor) else type(indices).__name__
            raise ValueError(f"expected {math.prod(grid)} token indices for shape {tuple(shape)}, got {got}")
        return self.decode_indices(indices.reshape(grid), return_dict)

    def decode_indices(self, indices: torch.Tensor, return_dict: bool | None = None):
        """Token indices `[B, h, w]` in `[0, codebook_size)` (`[B, h, w, num_quantizers]` for
        `"residual_vq"`; a vector latent's `[B, G]` / `[B, G, num_quantizers]`) -> `.sample`
        `[B, out_channels, h*f, w*f]`."""
        code = self._indices_to_code(indices.to(self.device)).to(self.dtype)
        return self._return(DecoderOutput(sample=self._decode_code(code)), return_dict)

    def forward(
        self, pixel_values: torch.Tensor, return_dict: bool | None = None, *, output_hidden_states: bool | None = None
    ):
        """Reconstruct through the quantiser (which, in training, also updates an EMA codebook);
        `output_hidden_states` adds the encoder's feature maps, as [`AutoencoderModel.forward`]
        describes. The loss weighs the quantizer's terms with `loss_weights()` (no
        optimiser step here: the entropy weight without its annealing)."""
        hidden_states = self._hidden_states_list(output_hidden_states)
        latents = self._bottleneck_input(pixel_values, hidden_states)
        quantized = self._quantize(latents)
        sample = self._decode_code(quantized.quantized.to(latents.dtype))
        reconstruction_loss = mean_reconstruction_loss(sample, pixel_values, self.config.reconstruction_loss)
        quantizer_loss, _ = self.loss_weights()(quantized.terms)
        output = VQVAEOutput(
            loss=reconstruction_loss + quantizer_loss,
            sample=sample,
            latents=latents,
            quantized=quantized.quantized,
            indices=quantized.indices,
            reconstruction_loss=reconstruction_loss,
            codebook_loss=quantized.terms.get("codebook"),
            commitment_loss=quantized.terms.get("commitment"),
            perplexity=quantized.perplexity,
            hidden_states=_as_tuple(hidden_states),
            quantizer_loss=quantizer_loss,
            quantizer_terms=quantized.terms,
        )
        return self._return(output, return_dict)

    # -- the token layout: a latent grid's positions, or a vector latent's groups --------------

    def _indices_to_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Token indices -> the quantized code `_decode_code` takes (the inverse of `_quantize`'s)."""
        if not self.backbone_spec.vector_latent:
            return self.quantizer.indices_to_codes(indices)
        expected = self.latent_shape()
        if tuple(indices.shape[1:]) != expected:
            raise ValueError(
                f"expected token indices [B, {', '.join(map(str, expected))}] (num_latent_tokens="
                f"{self.config.num_latent_tokens} tokens of a vector latent), got shape {tuple(indices.shape)}"
            )
        return grid_as_vector_code(self.quantizer.indices_to_codes(indices.unsqueeze(1)))

    # -- token API for sequence models (latentcode.tokens) --------------------------------------

    def latent_shape(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, ...]:
        """Token grid of one image of `image_size` (`H` or `(H, W)`, default `config.sample_size`;
        the token API's shape, what `decode_indices` takes; the continuous code `decode` takes is
        `latent_code_shape`):
        `(h, w)`, or `(h, w, depth)` for a quantiser with `config.num_quantizers > 1` levels; on a
        vector-latent backbone `(G,)` or `(G, depth)`, G = `config.num_latent_tokens`."""
        size = self.config.sample_size if image_size is None else image_size
        return latent_shape(self.config, size, depth=getattr(self.config, "num_quantizers", None) or 1)

    @torch.no_grad()
    def encode_to_sequence(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[B, C, H, W]` pixels -> code sequence `[B, L]` int64 in raster order, `L = h * w (* depth)`
        (`G (* depth)` on a vector-latent backbone)."""
        return indices_to_sequence(self.encode(pixel_values, return_dict=True).indices)

    def decode_sequence(
        self,
        sequence: torch.Tensor,
        image_size: int | tuple[int, int] | None = None,
        return_dict: bool | None = None,
    ):
        """Code sequence `[B, L]` of images of `image_size` (default `config.sample_size`) ->
        `.sample` `[B, out_channels, H, W]`."""
        return self.decode_indices(sequence_to_indices(sequence, self.latent_shape(image_size)), return_dict)

    # -- family behaviour (latentcode.families.FamilyBehaviour) ---------------------------------

    display_name = "VQ-VAE"
    has_tokens = True
    stored_columns = {"indices": "index"}

    def reconstruct_encoded(self, encoded: VQVAEEncoderOutput) -> torch.Tensor:
        """The decoded tokens `[B, out_channels, H, W]`."""
        return self.decode_indices(encoded.indices, return_dict=True).sample

    def continuous_code_encoded(self, encoded: VQVAEEncoderOutput, sample_posterior=False, generator=None):
        """The latents before quantisation `[B, codebook_dim, h, w]` (a vector latent's `[B, G *
        codebook_dim]`; `decode` quantises them)."""
        return encoded.latents

    def code_size(self, encoded: VQVAEEncoderOutput) -> CodeSize:
        """`log2(codebook_size)` bits per token, every level of a residual quantiser included."""
        indices = encoded.indices
        tokens = indices[0].numel()
        bits = torch.full(
            (indices.shape[0],), tokens * math.log2(self.codebook_size), dtype=torch.float64, device=indices.device
        )
        return CodeSize(tuple(indices.shape[1:]), bits, f"{tokens} tokens x log2({self.codebook_size})")

    def stored_code(self, encoded: VQVAEEncoderOutput) -> dict[str, torch.Tensor]:
        """`indices` `[B, L]` in raster order, residual levels of a position together."""
        return {"indices": indices_to_sequence(encoded.indices)}

    def stored_code_shape(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, ...]:
        """The token grid `(h, w)` or `(h, w, depth)` of `latent_shape` (`(G,)` / `(G, depth)`)."""
        return self.latent_shape(image_size)

    def regularizer_description(self, objective=None) -> str:
        weights = self.loss_weights() if objective is None else objective.quantizer_weights
        terms = weights.describe(self.quantizer.loss_terms)
        return f"the {self.config.quantizer!r} quantizer's terms: {terms}"

    def objective_weights(self, kl_weight: float | None = None, quantizer_weights: dict | None = None) -> dict:
        refuse_kl_weight(self, kl_weight)
        return {"quantizer_weights": self.loss_weights(**(quantizer_weights or {}))}
