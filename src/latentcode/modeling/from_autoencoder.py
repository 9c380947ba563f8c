"""A VQ-VAE from a trained continuous model: `VQVAEModel.from_autoencoder` and its latent space.

Training a photo tokenizer end to end takes GPU-weeks; keeping a pretrained autoencoder and
quantising its latent space takes hours (ReVQ, "Quantize-then-Rectify", 2025). Given a trained
[`AutoencoderModel`] or [`VAEModel`], [`vqvae_from_autoencoder`] builds an ordinary
[`VQVAEModel`] (save / load, token API, tiling, evaluation) whose encoder and decoder are the
source's, copied bit-exactly and frozen by default, and whose `quant_conv` / `post_quant_conv`
are `modules/latent_adapters.py`'s projections between the source's continuous latent z
(`[B, L, h, w]`: an AutoEncoder's latents, a VAE's posterior mean) and the quantiser's code:

```python
vqvae = VQVAEModel.from_autoencoder(taef2, quantizer="residual_vq", codebook_size=256, num_quantizers=2)
latents = continuous_latents(vqvae, pixels)           # z, what the source encodes pixels to
latent_space_loss(vqvae, latents).loss.backward()     # trains projections, codebook, corrector
```

`latent_patch_size=2` makes one token of each 2x2 patch of z (a coarser token grid with more
bits per token; `modules/latent_adapters.py`). Here f is the source's downsampling factor; the
VQ-VAE's `downsampling_factor`, image size over token grid size, is f * `latent_patch_size`.

Everything that trains (the learned projections, the quantiser, the corrector) sits between z
and its estimate z_hat, so it can train on cached latents, without the encoder or the decoder.
Optionally the decoder trains too, on z_hat, against a frozen copy of the source's decoder
([`start_decoder_finetune`]):

```python
target = start_decoder_finetune(vqvae)                # the decoder trains; target: the source's, frozen
latent_space_loss(vqvae, latents, decoder_loss_weight=0.1, target_decoder=target).loss.backward()
```
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration import LatentCodeConfig
from ..modules.latent_adapters import decoder_parts, pretrained_parts
from .autoencoder import AutoencoderModel
from .vae import VAEModel

SOURCE_FAMILIES = {AutoencoderModel: "autoencoder", VAEModel: "vae"}
# A decoder as a function: latents `[B, L, h, w]` -> pixels `[B, C, h*f, w*f]`.
LatentsToPixels = Callable[[torch.Tensor], torch.Tensor]


def vqvae_from_autoencoder(
    cls,
    model: AutoencoderModel | VAEModel,
    *,
    quantizer: str = "vq",
    codebook_size: int | None = None,
    codebook_dim: int | None = None,
    num_quantizers: int | None = None,
    quantizer_config: dict | None = None,
    corrector_config: dict | None = None,
    frozen: bool = True,
    **config_fields,
):
    """A `cls` (`VQVAEModel`) on the encoder and decoder of `model`, a trained `AutoencoderModel`
    or `VAEModel` on a grid backbone (`"ldm"`, `"tiny"`).

    The VQ-VAE's config is the source's backbone config with the quantiser's sizes, `quantizer` /
    `quantizer_config` as in `VQVAEConfig`, `corrector_config` (None: no corrector) and
    `config_fields` (other `VQVAEConfig` fields: `latent_patch_size`, loss weights, ...); `source_autoencoder` records
    the source. Weights: encoder, decoder and the source's own projections copied bit-exactly,
    frozen unless `frozen=False` (`VQVAEModel.freeze_autoencoder` changes it later); the learned
    projections start as the identity when `codebook_dim` equals the source's `latent_channels`,
    else as a random orthogonal projection onto `codebook_dim` directions and back; a learned
    codebook is fitted (k-means, by default) on the first training batch, as in any VQ-VAE.
    Returned on the source's device and dtype, in its train / eval mode.
    """
    family = SOURCE_FAMILIES.get(type(model))
    if family is None:
        raise ValueError(
            f"from_autoencoder takes a trained AutoencoderModel or VAEModel (a continuous latent to quantise), got "
            f"{type(model).__name__}; convert other autoencoders first (e.g. VAEModel.from_diffusers, "
            "conversion/convert_taesd_to_latentcode.py)"
        )
    source = model.config
    if model.backbone_spec.vector_latent:
        raise ValueError(
            f"from_autoencoder quantises a latent grid; backbone={source.backbone!r} codes each image as one vector: "
            "train a VQ-VAE on it instead (VQVAEConfig(backbone='vector', num_latent_tokens=...))"
        )
    fields = {name: getattr(source, name) for name in LatentCodeConfig.field_names()}
    record = {
        "family": family,
        "use_quant_conv": source.use_quant_conv,
        "use_post_quant_conv": source.use_post_quant_conv,
        "frozen": frozen,
        "decoder_finetuned": False,
        "name_or_path": str(getattr(source, "_name_or_path", "") or ""),
    }
    config = cls.config_class(
        **{**fields, "use_quant_conv": True, "use_post_quant_conv": True, **config_fields},
        quantizer=quantizer,
        codebook_size=codebook_size,
        codebook_dim=codebook_dim,
        num_quantizers=num_quantizers,
        quantizer_config=quantizer_config,
        source_autoencoder=record,
        corrector_config=corrector_config,
    )
    vqvae = cls(config).to(device=model.device, dtype=model.dtype)
    copy_pretrained_weights(model, vqvae)
    initialize_projections(vqvae)
    return vqvae.train(model.training)


@torch.no_grad()
def copy_pretrained_weights(source: nn.Module, vqvae: nn.Module) -> None:
    """The source's encoder, decoder and projections into the VQ-VAE's (`pretrained_parts`), exactly."""
    targets = pretrained_parts(vqvae)
    origins = {"encoder": source.encoder, "decoder": source.decoder}
    origins |= {f"{name}.pretrained": getattr(source, name) for name in ("quant_conv", "post_quant_conv")}
    for name, target in targets.items():
        target.load_state_dict(origins[name].state_dict())


@torch.no_grad()
def initialize_projections(vqvae: nn.Module) -> None:
    """The learned projections `to_code` `[D, P]` and `from_code` `[P, D]` (P = p*p*L, a latent
    patch's values): the identity when D = P, else a random orthogonal `to_code` and its
    transpose (a patch -> its projection on D directions); biases zero."""
    to_code, from_code = vqvae.quant_conv.to_code, vqvae.post_quant_conv.from_code
    code_channels, latent_channels = to_code.weight.shape[:2]
    matrix = torch.empty(code_channels, latent_channels, dtype=torch.float32)
    if code_channels == latent_channels:
        nn.init.eye_(matrix)
    else:
        nn.init.orthogonal_(matrix)
    to_code.weight.copy_(matrix[:, :, None, None])
    from_code.weight.copy_(matrix.T[:, :, None, None])
    to_code.bias.zero_()
    from_code.bias.zero_()


@torch.no_grad()
def fit_projections(vqvae: nn.Module, latents: torch.Tensor) -> None:
    """Start the learned projections at the principal components of the source's latents z
    `[B, L, h, w]`, taken as the p x p patches a token codes (`[P]` values each, P = p*p*L):
    `to_code` maps a patch - mean onto its D directions of most variance, `from_code` back (the
    best linear D-dimensional code of a patch in squared error). Where D < P this beats the
    random start of `from_autoencoder` by far; where D = P it is a rotation."""
    vqvae._check_code(latents, vqvae.config.latent_channels)
    to_code, from_code = vqvae.quant_conv.to_code, vqvae.post_quant_conv.from_code
    patches = vqvae.quant_conv.patches(latents)
    rows = patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1]).double()
    mean = rows.mean(0)
    _, _, directions = torch.linalg.svd(rows - mean, full_matrices=False)  # [P, P], rows by variance
    basis = directions[: to_code.weight.shape[0]]  # [D, P]
    to_code.weight.copy_(basis[:, :, None, None])
    to_code.bias.copy_(-(basis @ mean))
    from_code.weight.copy_(basis.T[:, :, None, None])
    from_code.bias.copy_(mean)


def freeze_pretrained_parts(vqvae: nn.Module, frozen: bool = True) -> None:
    """`requires_grad = not frozen` on every part copied from the source (`pretrained_parts`), and
    `config.source_autoencoder["frozen"] = frozen`: a frozen part has no gradient, so an optimiser
    leaves it bit-identical, and a saved model records the choice for training to honour."""
    source = vqvae.config.source_autoencoder
    if source is None:
        raise ValueError(
            "freeze_autoencoder freezes the parts a VQ-VAE took from a pretrained continuous model, and this one was "
            "not made from one (config.source_autoencoder is None); make it with VQVAEModel.from_autoencoder, or set "
            "requires_grad on the modules you mean"
        )
    for part in pretrained_parts(vqvae).values():
        part.requires_grad_(not frozen)
    vqvae.config.source_autoencoder = {**source, "frozen": frozen}


class SourceDecoder(nn.Module):
    """A frozen copy of a VQ-VAE's decoding side as it is when copied (the source's projection,
    where it has one, then the decoder): latents `[B, L, h, w]` -> pixels `[B, C, h*f, w*f]`, as
    [`decode_latents`] gives them. Always in evaluation mode and without gradients: the fixed
    target of a decoder fine-tune ([`start_decoder_finetune`])."""

    def __init__(self, vqvae: nn.Module):
        super().__init__()
        self.projection = copy.deepcopy(vqvae.post_quant_conv.pretrained)
        self.decoder = copy.deepcopy(vqvae.decoder)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> SourceDecoder:
        return super().train(False)  # a trainer's .train() must not change the target

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents if self.projection is None else self.projection(latents))


def start_decoder_finetune(vqvae: nn.Module) -> SourceDecoder:
    """Let the VQ-VAE's decoding side (`decoder_parts`: the decoder and the source's projection
    before it) train on the quantised code, and return its target: a frozen copy of it as the
    source made it ([`SourceDecoder`]), for `latent_space_loss(..., target_decoder=...)`.

    Records `decoder_finetuned` in `config.source_autoencoder`, so a saved model says its decoder
    is no longer the source's. The encoder keeps its setting (frozen: bit-identical), and `frozen`
    keeps its meaning, what loading applies: a loaded fine-tuned model has no trainable
    pretrained part. A second fine-tune of a fine-tuned decoder is refused: its target, the
    source's decoder, is no longer in the model."""
    source = vqvae.config.source_autoencoder
    if source is None:
        raise ValueError(
            "start_decoder_finetune trains the decoder a VQ-VAE took from a pretrained continuous model against that "
            "model's decoder, and this one was not made from one (config.source_autoencoder is None); make it with "
            "VQVAEModel.from_autoencoder"
        )
    if source["decoder_finetuned"]:
        raise ValueError(
            "this VQ-VAE's decoder was fine-tuned already (source_autoencoder['decoder_finetuned'] is True), so the "
            "target of a fine-tune, the source's own decoder, is no longer in it; make the VQ-VAE again from the "
            f"source autoencoder ({source['name_or_path'] or 'its name_or_path is not recorded'}), or resume the "
            "fine-tune's checkpoint"
        )
    target = SourceDecoder(vqvae)
    for part in decoder_parts(vqvae).values():
        part.requires_grad_(True)
    vqvae.config.source_autoencoder = {**source, "decoder_finetuned": True}
    return target


def continuous_latents(vqvae: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pixels `[B, C, H, W]` -> z `[B, L, H/f, W/f]`, the source model's continuous latent (what
    its `encode` gives: an AutoEncoder's latents, a VAE's posterior mean), through the VQ-VAE's
    copy of its encoder (untiled)."""
    vqvae._check_pixels(pixel_values)
    return vqvae.quant_conv.continuous_latent(vqvae.encoder(pixel_values))


@dataclass
class LatentSpaceLoss:
    """`loss` = `latent_loss + quantizer_loss + decoder_loss_weight * decoder_loss`:
    `latent_loss`, the mean squared error between the estimate `estimate` `[B, L, h, w]` (the
    code through `from_code` and the corrector) and the source's latent z; `quantizer_loss`, the
    quantiser's `terms` weighted by the config's loss weights; `decoder_loss`, [`decoded_loss`]
    (zero when not asked for); `indices`, the tokens."""

    loss: torch.Tensor
    latent_loss: torch.Tensor
    quantizer_loss: torch.Tensor
    decoder_loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    estimate: torch.Tensor
    indices: torch.Tensor


def decode_latents(vqvae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """The source's latents (or an estimate of them) `[B, L, h, w]` -> pixels `[B, C, h*f, w*f]`
    through the VQ-VAE's decoder (and the source's projection, where it has one): the source's,
    frozen, unless a decoder fine-tune trains them."""
    projection = vqvae.post_quant_conv.pretrained
    return vqvae.decoder(latents if projection is None else projection(latents))


def decoded_loss(
    vqvae: nn.Module, latents: torch.Tensor, estimate: torch.Tensor, target_decoder: LatentsToPixels | None = None
) -> torch.Tensor:
    """Mean squared error between the VQ-VAE's decoder's image of the estimate z_hat and the
    source's reconstruction of z (each `[B, L, h, w]` -> `[B, C, h*f, w*f]`, pixels in [-1, 1]).
    The latent loss weighs every latent channel alike; this is the error the photo shows. Cached
    latents suffice. The target is `target_decoder(z)` where given (a callable latents -> pixels:
    the frozen copy of [`start_decoder_finetune`], while the VQ-VAE's own decoder trains), else
    the VQ-VAE's frozen decoder's. Gradients reach z_hat, and the decoder where it trains."""
    with torch.no_grad():
        target = decode_latents(vqvae, latents) if target_decoder is None else target_decoder(latents)
    return F.mse_loss(decode_latents(vqvae, estimate).float(), target.float())


def latent_space_loss(
    vqvae: nn.Module,
    latents: torch.Tensor,
    decoder_loss_weight: float = 0.0,
    decoder_loss_crops: int = 2,
    decoder_loss_size: int = 8,
    target_decoder: LatentsToPixels | None = None,
) -> LatentSpaceLoss:
    """The loss of the trainable parts on the source's latents z `[B, L, h, w]` (from
    [`continuous_latents`] or cached; h and w multiples of `latent_patch_size`): z -> `to_code`
    -> quantiser (updating an EMA codebook in training mode, as `forward` does) -> `from_code` ->
    corrector -> z_hat, compared with z.

    With `decoder_loss_weight` > 0 it adds [`decoded_loss`] on the top-left `decoder_loss_size`
    square of the first `decoder_loss_crops` latents: the decoder costs far more than the rest,
    so it sees a few small crops per step. `target_decoder`: that loss's target decoder (None:
    the VQ-VAE's own, frozen), see [`decoded_loss`]."""
    vqvae._check_code(latents, vqvae.config.latent_channels)
    quantized = vqvae._quantize(vqvae.quant_conv.code(latents))
    estimate = vqvae.post_quant_conv.latent_estimate(quantized.quantized.to(latents.dtype))
    latent_loss = F.mse_loss(estimate.float(), latents.float())
    quantizer_loss, _ = vqvae.loss_weights()(quantized.terms)
    loss = latent_loss + quantizer_loss
    decoder_loss = latent_loss.new_zeros(())
    if decoder_loss_weight > 0:
        crop = (slice(0, decoder_loss_crops), slice(None), slice(0, decoder_loss_size), slice(0, decoder_loss_size))
        decoder_loss = decoded_loss(vqvae, latents[crop], estimate[crop], target_decoder)
        loss = loss + decoder_loss_weight * decoder_loss
    return LatentSpaceLoss(
        loss=loss,
        latent_loss=latent_loss,
        quantizer_loss=quantizer_loss,
        decoder_loss=decoder_loss,
        terms=quantized.terms,
        estimate=estimate,
        indices=quantized.indices,
    )
