"""The projections around the quantiser of a VQ-VAE made from a pretrained continuous autoencoder.

`VQVAEModel.from_autoencoder` keeps the source model's encoder and decoder; between them the
VQ-VAE's `quant_conv` and `post_quant_conv` are these two modules, each a frozen part copied
from the source (its own 1x1 projection, where it has one) and a learned part:

    encoder features [B, E, h, w] --pretrained--> the source's continuous latent z [B, L, h, w]
        --patches--> [B, p*p*L, h/p, w/p] --to_code--> [B, D, h/p, w/p] --quantizer--> code
        --from_code--> [B, p*p*L, h/p, w/p] --unpatch--> z_hat [B, L, h, w]
        --corrector--> --pretrained--> decoder input [B, L, h, w]

E is the source encoder's output (L for an AutoEncoder, 2L for a VAE, whose posterior mean, the
first L channels, is z), L its `latent_channels`, D the VQ-VAE's `codebook_dim`, p its
`latent_patch_size` (1: a token per latent position; 2: a token per 2x2 patch of positions, its
p*p*L values side by side as `torch.nn.functional.pixel_unshuffle` lays them out). `z` is what
the source decodes, so `to_code` / `from_code` (1x1 convolutions, learned) and the corrector
(`code_corrector.py`, optional) train in latent space against z alone.

`VQVAEConfig.source_autoencoder` records the source (see [`check_source_autoencoder`]); it is
everything a saved model needs to be rebuilt, with no reference to the source's folder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .code_corrector import CodeCorrector

# Encoder output channels per latent channel of each source family: a VAE's encoder gives the
# mean and the log-variance of its posterior.
ENCODER_CHANNELS_PER_LATENT = {"autoencoder": 1, "vae": 2}
# The keys of `VQVAEConfig.source_autoencoder` and their types.
SOURCE_FIELDS = {
    "family": str,
    "use_quant_conv": bool,
    "use_post_quant_conv": bool,
    "frozen": bool,
    "decoder_finetuned": bool,
    "name_or_path": str,
}
# Keys added to `SOURCE_FIELDS` after models were saved without them, and what those models mean.
SOURCE_FIELD_DEFAULTS = {"decoder_finetuned": False}


def complete_source_autoencoder(source: dict | None) -> dict | None:
    """A `source_autoencoder` record with the keys saved models may lack (`SOURCE_FIELD_DEFAULTS`)
    filled in; anything that is not a dict unchanged, for [`check_source_autoencoder`] to judge."""
    return {**SOURCE_FIELD_DEFAULTS, **source} if isinstance(source, dict) else source


def check_source_autoencoder(source: dict | None) -> None:
    """Refuse a `source_autoencoder` record that is not None or a dict with exactly
    `SOURCE_FIELDS`: `family` ("autoencoder" or "vae", the family of the model whose encoder and
    decoder are reused), `use_quant_conv` / `use_post_quant_conv` (whether that model had the
    projection, copied frozen), `frozen` (the pretrained parts load without gradients: see
    `VQVAEModel.freeze_autoencoder`), `decoder_finetuned` (the decoder and the source's projection
    before it were trained on the quantised code after the copy, so they are no longer the
    source's: see `from_autoencoder.start_decoder_finetune`) and `name_or_path` (where it came
    from, for people)."""
    if source is None:
        return
    if not isinstance(source, dict) or set(source) != set(SOURCE_FIELDS):
        got = sorted(source) if isinstance(source, dict) else type(source).__name__
        raise ValueError(
            f"source_autoencoder must be None or a dict with keys {sorted(SOURCE_FIELDS)}, got {got}; "
            "VQVAEModel.from_autoencoder(model, ...) writes it"
        )
    for key, kind in SOURCE_FIELDS.items():
        if not isinstance(source[key], kind):
            raise ValueError(f"source_autoencoder[{key!r}] must be a {kind.__name__}, got {source[key]!r}")
    if source["family"] not in ENCODER_CHANNELS_PER_LATENT:
        raise ValueError(
            f"source_autoencoder['family'] must be one of {tuple(ENCODER_CHANNELS_PER_LATENT)} (a continuous "
            f"model), got {source['family']!r}"
        )


def encoder_channels(latent_channels: int, source: dict | None) -> int:
    """Channels of the encoder's output: `latent_channels`, twice that for a VAE source."""
    return latent_channels * (ENCODER_CHANNELS_PER_LATENT[source["family"]] if source else 1)


class LatentToCode(nn.Module):
    """The `quant_conv` of a VQ-VAE from a continuous autoencoder: encoder features `[B, E, h, w]`
    -> the source's latent z `[B, L, h, w]` (`pretrained`, its projection, or none) -> its p x p
    patches `[B, p*p*L, h/p, w/p]` -> `[B, D, h/p, w/p]` (`to_code`, learned)."""

    def __init__(
        self, encoder_channels: int, latent_channels: int, code_channels: int, source_projection: bool, patch_size: int
    ):
        super().__init__()
        self.latent_channels = latent_channels
        self.patch_size = patch_size
        self.pretrained = nn.Conv2d(encoder_channels, encoder_channels, 1) if source_projection else None
        self.to_code = nn.Conv2d(latent_channels * patch_size**2, code_channels, 1)

    def continuous_latent(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder features `[B, E, h, w]` -> z `[B, L, h, w]`, what the source model encodes
        them to (an AutoEncoder's latents, a VAE's posterior mean)."""
        moments = features if self.pretrained is None else self.pretrained(features)
        return moments[:, : self.latent_channels]

    def patches(self, latents: torch.Tensor) -> torch.Tensor:
        """z `[B, L, h, w]` -> its p x p patches `[B, p*p*L, h/p, w/p]`, one per token; h and w
        must be multiples of p."""
        p = self.patch_size
        if p == 1:
            return latents
        height, width = latents.shape[-2:]
        if height % p or width % p:
            raise ValueError(
                f"latent_patch_size={p} codes {p}x{p} patches of latent positions, got a latent grid of "
                f"{height}x{width}: crop the latents (or the images, to a multiple of the model's downsampling_factor) "
                f"to a multiple of {p}"
            )
        return F.pixel_unshuffle(latents, p)

    def code(self, latents: torch.Tensor) -> torch.Tensor:
        """z `[B, L, h, w]` -> the quantiser's input `[B, D, h/p, w/p]`."""
        return self.to_code(self.patches(latents))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.code(self.continuous_latent(features))


class CodeToLatent(nn.Module):
    """The `post_quant_conv` of a VQ-VAE from a continuous autoencoder: a code `[B, D, h/p, w/p]`
    -> p x p patches of latent positions (`from_code`, learned) -> z_hat `[B, L, h, w]` (then
    `corrector`, learned, when configured) -> the source's projection (`pretrained`, or none) ->
    the decoder's input `[B, L, h, w]`."""

    def __init__(
        self, code_channels: int, latent_channels: int, source_projection: bool, corrector: dict | None, patch_size: int
    ):
        super().__init__()
        self.patch_size = patch_size
        self.from_code = nn.Conv2d(code_channels, latent_channels * patch_size**2, 1)
        self.corrector = None if corrector is None else CodeCorrector(latent_channels, **corrector)
        self.pretrained = nn.Conv2d(latent_channels, latent_channels, 1) if source_projection else None

    def latent_estimate(self, code: torch.Tensor) -> torch.Tensor:
        """A code `[B, D, h/p, w/p]` -> z_hat `[B, L, h, w]`, the estimate of the source's latent z."""
        patches = self.from_code(code)
        latents = patches if self.patch_size == 1 else F.pixel_shuffle(patches, self.patch_size)
        return latents if self.corrector is None else self.corrector(latents)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        latents = self.latent_estimate(code)
        return latents if self.pretrained is None else self.pretrained(latents)


def build_adapters(config) -> tuple[LatentToCode, CodeToLatent]:
    """The `quant_conv` and `post_quant_conv` of a VQ-VAE whose `config.source_autoencoder` is set."""
    source, latent, code, patch = (
        config.source_autoencoder,
        config.latent_channels,
        config.codebook_dim,
        config.latent_patch_size,
    )
    to_code = LatentToCode(encoder_channels(latent, source), latent, code, source["use_quant_conv"], patch)
    return to_code, CodeToLatent(code, latent, source["use_post_quant_conv"], config.corrector_config, patch)


def pretrained_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The modules of a VQ-VAE from a continuous autoencoder that hold the source's weights, by
    name: its `encoder`, `decoder` and the `pretrained` projections of its adapters."""
    parts = {"encoder": model.encoder, "decoder": model.decoder}
    for name in ("quant_conv", "post_quant_conv"):
        projection = getattr(model, name).pretrained
        if projection is not None:
            parts[f"{name}.pretrained"] = projection
    return parts


# The names in `pretrained_parts` of the modules that turn the source's latent into pixels.
DECODER_PARTS = ("decoder", "post_quant_conv.pretrained")


def decoder_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The decoding side of [`pretrained_parts`]: the `decoder` and the source's projection before
    it (`post_quant_conv.pretrained`, where the source has one), what a decoder fine-tune trains."""
    return {name: part for name, part in pretrained_parts(model).items() if name in DECODER_PARTS}
