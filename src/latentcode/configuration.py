"""Configurations of the three model families.

All three share the backbone fields (named as in diffusers' ``AutoencoderKL`` / ``VQModel``
so that a model drops into a diffusers pipeline); each family adds only its bottleneck's
fields.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PretrainedConfig

QUANTIZER_TYPES = ("vq",)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class LatentCodeConfig(PretrainedConfig):
    r"""Backbone fields shared by [`AutoencoderConfig`], [`VAEConfig`] and [`VQVAEConfig`].

    Args:
        in_channels (`int`, defaults to 3): channels of the input image (1 grey, 3 RGB, 4 RGBA).
        out_channels (`int`, *optional*): channels of the reconstruction; defaults to `in_channels`.
        block_out_channels (`Sequence[int]`, defaults to `(128, 256, 512)`): channels of each
            resolution level. The image is downsampled by 2 between levels, so the spatial
            downsampling factor is `2 ** (len(block_out_channels) - 1)`.
        layers_per_block (`int`, defaults to 2): ResNet blocks per level in the encoder (the
            decoder uses one more, as in latent-diffusion).
        latent_channels (`int`, defaults to 4): channels of the latent code at the encoder's output.
        norm_num_groups (`int`, defaults to 32): groups of every GroupNorm.
        attention_levels (`Sequence[int]`, defaults to `()`): levels (0 = full resolution) whose
            ResNet blocks are each followed by self-attention, in encoder and decoder.
        mid_block_add_attention (`bool`, defaults to `True`): self-attention in the middle blocks.
        dropout (`float`, defaults to 0.0): dropout inside the ResNet blocks.
        sample_size (`int`, defaults to 256): the image size the model is meant for; also the
            default tile size of tiled encode/decode.
        scaling_factor (`float`, defaults to 1.0): as in diffusers, latent-diffusion models
            multiply latents by it before the diffusion model and divide before decoding.
        use_quant_conv / use_post_quant_conv (`bool`, defaults to `True`): 1x1 convolutions
            between the backbone and the bottleneck, as in diffusers.
        reconstruction_loss (`str`, defaults to `"mse"`): `"mse"` or `"l1"`, used by `model(x).loss`.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        block_out_channels: Sequence[int] = (128, 256, 512),
        layers_per_block: int = 2,
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        attention_levels: Sequence[int] = (),
        mid_block_add_attention: bool = True,
        dropout: float = 0.0,
        sample_size: int = 256,
        scaling_factor: float = 1.0,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        reconstruction_loss: str = "mse",
        **kwargs,
    ):
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.block_out_channels = list(block_out_channels)
        self.layers_per_block = layers_per_block
        self.latent_channels = latent_channels
        self.norm_num_groups = norm_num_groups
        self.attention_levels = sorted(attention_levels)
        self.mid_block_add_attention = mid_block_add_attention
        self.dropout = dropout
        self.sample_size = sample_size
        self.scaling_factor = scaling_factor
        self.use_quant_conv = use_quant_conv
        self.use_post_quant_conv = use_post_quant_conv
        self.reconstruction_loss = reconstruction_loss
        super().__init__(**kwargs)
        self._validate_backbone()

    @property
    def downsampling_factor(self) -> int:
        """Ratio of image size to latent size: `2 ** (len(block_out_channels) - 1)`."""
        return 2 ** (len(self.block_out_channels) - 1)

    def _validate_backbone(self) -> None:
        _check(len(self.block_out_channels) >= 1, "block_out_channels needs at least one level, got []")
        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"{name} must be a positive int, got {value!r}")
        for channels in self.block_out_channels:
            _check(
                channels % self.norm_num_groups == 0,
                f"every entry of block_out_channels must be divisible by norm_num_groups="
                f"{self.norm_num_groups}, got block_out_channels={self.block_out_channels}",
            )
        levels = len(self.block_out_channels)
        for level in self.attention_levels:
            _check(
                0 <= level < levels,
                f"attention_levels must be in [0, {levels - 1}] for {levels} levels, got {self.attention_levels}",
            )
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _check(
            self.reconstruction_loss in ("mse", "l1"),
            f"reconstruction_loss must be 'mse' or 'l1', got {self.reconstruction_loss!r}",
        )


class AutoencoderConfig(LatentCodeConfig):
    r"""Configuration of [`AutoencoderModel`]: a deterministic latent code, no extra fields."""

    model_type = "latentcode_autoencoder"

    # An explicit __init__ is needed: transformers >= 5 turns config subclasses without one
    # into dataclasses whose generated __init__ would bypass LatentCodeConfig.__init__.
    def __init__(self, **kwargs):
        super().__init__(**kwargs)


class VAEConfig(LatentCodeConfig):
    r"""Configuration of [`VAEModel`]: a diagonal Gaussian latent code.

    Args:
        kl_weight (`float`, defaults to 1e-3): weight of the KL term in `model(x).loss`, with the
            KL expressed in nats per pixel value so that it is on the scale of the per-pixel
            reconstruction loss. For an MSE loss this is `2 * sigma**2` of a Gaussian decoder.
        **kwargs: the backbone fields of [`LatentCodeConfig`].
    """

    model_type = "latentcode_vae"

    def __init__(self, kl_weight: float = 1e-3, **kwargs):
        self.kl_weight = kl_weight
        super().__init__(**kwargs)
        _check(kl_weight >= 0, f"kl_weight must be >= 0, got {kl_weight}")


class VQVAEConfig(LatentCodeConfig):
    r"""Configuration of [`VQVAEModel`]: a discrete codebook code.

    Args:
        codebook_size (`int`, defaults to 1024): number of codebook vectors K (the vocabulary).
        codebook_dim (`int`, *optional*): dimension D of a codebook vector; defaults to
            `latent_channels`. When it differs, `use_quant_conv` / `use_post_quant_conv` must be
            on: the 1x1 convolutions project between the two.
        quantizer (`str`, defaults to `"vq"`): the quantizer type.
        commitment_weight (`float`, defaults to 0.25): beta of the VQ-VAE paper, on the
            commitment term `||z_e - sg(e)||^2` that pulls the encoder towards its code.
        codebook_weight (`float`, defaults to 1.0): weight of the codebook term
            `||sg(z_e) - e||^2` that pulls codes towards the encoder outputs.
        **kwargs: the backbone fields of [`LatentCodeConfig`].
    """

    model_type = "latentcode_vqvae"

    def __init__(
        self,
        codebook_size: int = 1024,
        codebook_dim: int | None = None,
        quantizer: str = "vq",
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        **kwargs,
    ):
        self.codebook_size = codebook_size
        self.quantizer = quantizer
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        super().__init__(**kwargs)
        self.codebook_dim = self.latent_channels if codebook_dim is None else codebook_dim
        _check(
            isinstance(codebook_size, int) and codebook_size >= 2,
            f"codebook_size must be an int >= 2, got {codebook_size!r}",
        )
        _check(
            isinstance(self.codebook_dim, int) and self.codebook_dim >= 1,
            f"codebook_dim must be a positive int, got {self.codebook_dim!r}",
        )
        _check(quantizer in QUANTIZER_TYPES, f"quantizer must be one of {QUANTIZER_TYPES}, got {quantizer!r}")
        if self.codebook_dim != self.latent_channels:
            _check(
                self.use_quant_conv and self.use_post_quant_conv,
                f"codebook_dim={self.codebook_dim} differs from latent_channels={self.latent_channels}: "
                "use_quant_conv and use_post_quant_conv must be True to project between them",
            )
