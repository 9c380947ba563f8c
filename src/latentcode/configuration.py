"""Configurations of the three model families.

All three share the backbone fields (named as in diffusers' ``AutoencoderKL`` / ``VQModel``
so that a model drops into a diffusers pipeline); each family adds only its bottleneck's
fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Sequence

from transformers import PretrainedConfig

from .hub import check_pretrained_source
from .modules.backbones import get_backbone
from .modules.backbones.vector import num_convolutions
from .modules.quantizers.gradients import GRADIENT_ESTIMATORS

QUANTIZER_TYPES = ("vq", "fsq", "lfq", "bsq", "residual_vq", "simvq")
# Quantizers with a learned codebook, whose gradient estimator is a choice.
CODEBOOK_QUANTIZERS = ("vq", "residual_vq", "simvq")


# Keys that PretrainedConfig (transformers 5) takes besides its dataclass fields: what its
# __post_init__ consumes, `model_type` (in every config.json) and `tie_word_embeddings` (which
# PreTrainedModel.tie_weights reads from every config).
TRANSFORMERS_CONFIG_KEYS = frozenset(
    {
        "model_type",
        "torch_dtype",
        "num_labels",
        "name_or_path",
        "_name_or_path",
        "_commit_hash",
        "output_attentions",
        "attn_implementation",
        "experts_implementation",
        "per_layer_config",
        "tie_word_embeddings",
        "_attn_implementation_internal",
        "_experts_implementation_internal",
    }
    | {field.name for field in dataclasses.fields(PretrainedConfig)}
)

# Fields that only diffusers pipelines read (`force_upcast`, `latents_mean` / `latents_std` in
# SDXL, `shift_factor` in SD3 / Flux, `lookup_from_codebook` in aMUSEd): a model converted from
# diffusers keeps them on its config for those pipelines; the model itself does not use them.
DIFFUSERS_PIPELINE_FIELDS = frozenset(
    {"force_upcast", "latents_mean", "latents_std", "shift_factor", "lookup_from_codebook"}
)


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
        backbone (`str`, defaults to `"ldm"`): the encoder / decoder pair, a name in
            `latentcode.modules.backbones.BACKBONES`: `"ldm"` (taming / latent-diffusion),
            `"vector"` (conv + fully connected, a `[D]` latent with `D = latent_channels`; images
            of `sample_size` 32 or 64) or `"tiny"` (TAESD-style; `block_out_channels` per level,
            `layers_per_block` blocks at each level below full resolution, which has one).
        vector_hidden_channels (`int`, defaults to 32) / vector_hidden_size (`int`, defaults to
            256): channels of the `"vector"` backbone's convolutions and width of its linear layers.
        tiny_midblock_pooling (`bool`, defaults to `False`): the `"tiny"` backbone's group-norm
            pooling branch in the blocks at the lowest resolution (TAESD's `taef2`).
    """

    # Fields that set how a model trains, not what it computes (dropout is inactive in eval).
    # Each class lists its own; `training_fields()` collects them over the class hierarchy.
    # Export to diffusers drops them, and conversion lets them be overridden.
    training_only_fields = ("dropout", "reconstruction_loss")

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
        backbone: str = "ldm",
        vector_hidden_channels: int = 32,
        vector_hidden_size: int = 256,
        tiny_midblock_pooling: bool = False,
        **kwargs,
    ):
        self._reject_unknown_keys(kwargs)
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
        self.backbone = backbone
        self.vector_hidden_channels = vector_hidden_channels
        self.vector_hidden_size = vector_hidden_size
        self.tiny_midblock_pooling = tiny_midblock_pooling
        super().__init__(**kwargs)
        self._validate_backbone()
        self._validate_backbone_choice()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """transformers' `from_pretrained`, failing at once, naming the path, when there is no such
        folder and no Hub repo to look for (as the models' `from_pretrained` does)."""
        check_pretrained_source(
            pretrained_model_name_or_path,
            cache_dir=kwargs.get("cache_dir"),
            revision=kwargs.get("revision"),
            local_files_only=kwargs.get("local_files_only", False),
            token=kwargs.get("token"),
        )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def field_names(cls) -> list[str]:
        """The fields this config class accepts: the keyword arguments of its and its bases' `__init__`."""
        names = set()
        for klass in cls.__mro__:
            if issubclass(klass, LatentCodeConfig):
                parameters = inspect.signature(klass.__init__).parameters.values()
                names |= {p.name for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD and p.name != "self"}
        return sorted(names)

    @classmethod
    def training_fields(cls) -> set[str]:
        """The training-only fields of this class and its bases (see `training_only_fields`)."""
        return {name for klass in cls.__mro__ for name in vars(klass).get("training_only_fields", ())}

    def _reject_unknown_keys(self, kwargs: dict) -> None:
        """A misspelt field would otherwise be stored as an attribute nobody reads, and the model
        built with the default: raise naming the key and the closest valid names."""
        unknown = [key for key in kwargs if key not in TRANSFORMERS_CONFIG_KEYS | DIFFUSERS_PIPELINE_FIELDS]
        if not unknown:
            return
        known = self.field_names()
        valid = known + sorted(TRANSFORMERS_CONFIG_KEYS | DIFFUSERS_PIPELINE_FIELDS)
        close = difflib.get_close_matches(unknown[0], valid, n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}?" if close else f"its fields are: {', '.join(known)}"
        raise ValueError(f"{type(self).__name__} has no field {unknown[0]!r}; {hint}")

    @property
    def downsampling_factor(self) -> int:
        """Ratio of image size to latent size, as the backbone declares it: `2 **
        (len(block_out_channels) - 1)` for a latent grid, `sample_size` for a vector latent."""
        return get_backbone(self.backbone).downsampling_factor(self)

    def _validate_backbone_choice(self) -> None:
        """The backbone exists and its own options are valid (`get_backbone` lists the names)."""
        backbone = get_backbone(self.backbone)
        for name in ("vector_hidden_channels", "vector_hidden_size"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, f"{name} must be a positive int, got {value!r}")
        if backbone.vector_latent:
            num_convolutions(self.sample_size)  # raises for an image size the layout does not have

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
    training_only_fields = ("kl_weight",)

    def __init__(self, kl_weight: float = 1e-3, **kwargs):
        self.kl_weight = kl_weight
        super().__init__(**kwargs)
        _check(kl_weight >= 0, f"kl_weight must be >= 0, got {kl_weight}")


class VQVAEConfig(LatentCodeConfig):
    r"""Configuration of [`VQVAEModel`]: a discrete codebook code.

    The defaults are the recipe that keeps a codebook alive on real images (EMA codes, k-means
    initialisation, dead-code expiry every step: >= 95% of the codes used on CIFAR-10 at K = 512
    to 65,536 where plain VQ uses a fraction; see benchmarks/README.md and tests/test_quantizers.py),
    so a config that only sets sizes trains well.

    Args:
        codebook_size (`int`, *optional*): number of codes K (the vocabulary), per level for
            `"residual_vq"`. Defaults to 1024; for `"fsq"` it is `prod(fsq_levels)`, for `"lfq"`
            `2 ** codebook_dim`.
        codebook_dim (`int`, *optional*): dimension D of a code; defaults to `latent_channels`
            (`len(fsq_levels)` for FSQ, `log2(codebook_size)` for LFQ). When it differs,
            `use_quant_conv` / `use_post_quant_conv` must be on: the 1x1 convolutions project
            between the two. A small D with `codebook_l2_norm=True` is the factorised lookup of
            ViT-VQGAN / LlamaGen (e.g. `latent_channels=256, codebook_dim=8`).
        quantizer (`str`, defaults to `"vq"`): `"vq"` (learned codebook), `"fsq"` (finite scalar
            quantisation), `"lfq"` (lookup-free, with its entropy loss), `"bsq"` (binary spherical:
            LFQ on the unit sphere, with the same `lfq_*` options), `"residual_vq"`
            (`num_quantizers` VQ levels on successive residuals; indices get a trailing depth axis)
            or `"simvq"` (codes = learned linear map of a frozen random basis).
        gradient_estimator (`str`, *optional*): how the decoder's gradient reaches the encoder
            through a learned codebook (`"vq"`, `"residual_vq"`, `"simvq"`): `"straight_through"`
            or `"rotation"` (the rotation trick of Fifty et al. 2024). Defaults to `"rotation"`
            for `"simvq"`, `"straight_through"` otherwise.
        commitment_weight (`float`, defaults to 0.25): beta of the VQ-VAE paper, on the
            commitment term `||z_e - sg(e)||^2` that pulls the encoder towards its code.
        codebook_weight (`float`, defaults to 1.0): weight of the codebook term
            `||sg(z_e) - e||^2` that pulls codes towards the encoder outputs (without EMA only).
        codebook_ema (`bool`, defaults to `True`): codes are exponential moving averages of the
            encoder outputs assigned to them instead of being learned by the codebook loss ("vq"
            and "residual_vq"). (Not the training option `use_ema`, an EMA of the weights.)
        codebook_ema_decay (`float`, defaults to 0.99) / codebook_ema_epsilon (`float`, defaults
            to 1e-5): decay of the averages and the Laplace smoothing of the cluster sizes.
            Configs saved with the former names `use_ema` / `ema_decay` / `ema_epsilon` load.
        kmeans_init (`bool`, defaults to `True`): initialise codes by k-means on the first
            training batch.
        kmeans_iterations (`int`, defaults to 10): Lloyd steps of that k-means.
        dead_code_restart (`bool`, defaults to `True`): dead codes are re-seeded with encoder
            outputs of the current batch (at most one code per token of the batch).
        dead_code_threshold (`float`, defaults to 0.5): with `codebook_ema`, a code is dead when
            its EMA cluster size falls below this fraction of the mean cluster size, tested
            every step (a code hit evenly has the mean size; a re-seeded code starts there and
            lasts about `log(1 / threshold) / (1 - codebook_ema_decay)` steps without a hit).
            In [0, 1); 0 (and `codebook_ema=False`) tests instead, every usage window, for
            codes not hit in the window, which at a large K leaves most codes dead for long.
        codebook_usage_window (`int`, *optional*): tokens per process in the sliding window of the
            usage metrics and the dead-code test; defaults to 16 * codebook_size.
        codebook_l2_norm (`bool`, defaults to `False`): cosine-similarity (l2-normalised) codes.
        fsq_levels (`Sequence[int]`, *optional*): FSQ's values per channel; defaults to
            `(8, 5, 5, 5)` (1000 codes) for `"fsq"`.
        lfq_entropy_weight (`float`, defaults to 0.1), lfq_diversity_weight (`float`, defaults to
            1.0), lfq_temperature (`float`, defaults to 0.01): LFQ's (and BSQ's) entropy loss.
        lfq_entropy_max_group_bits (`int`, defaults to 12): the codebook entropy is exact up to
            this many bits; above, the bits are split into near-equal groups of at most this many
            and the groups' entropies summed (memory `tokens x 2^bits` per group).
        lfq_entropy_annealing_steps (`int`, defaults to 0) / lfq_entropy_annealing_start_factor
            (`float`, defaults to 1.0): the entropy weight starts at `start_factor *
            lfq_entropy_weight` and falls linearly to `lfq_entropy_weight` over these training steps.
        num_quantizers (`int`, *optional*): depth of `"residual_vq"` (defaults to 4).
        quantizer_dropout (`float`, defaults to 0.0): probability that a residual-VQ training batch
            uses only a random prefix of the levels.
        **kwargs: the backbone fields of [`LatentCodeConfig`].
    """

    model_type = "latentcode_vqvae"
    training_only_fields = (
        "commitment_weight",
        "codebook_weight",
        "codebook_ema",
        "codebook_ema_decay",
        "codebook_ema_epsilon",
        "kmeans_init",
        "kmeans_iterations",
        "dead_code_restart",
        "dead_code_threshold",
        "codebook_usage_window",
    )
    # Former name -> current name; the former names still load.
    renamed_fields = {
        "use_ema": "codebook_ema",
        "ema_decay": "codebook_ema_decay",
        "ema_epsilon": "codebook_ema_epsilon",
    }

    def __init__(
        self,
        codebook_size: int | None = None,
        codebook_dim: int | None = None,
        quantizer: str = "vq",
        gradient_estimator: str | None = None,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        codebook_ema: bool = True,
        codebook_ema_decay: float = 0.99,
        codebook_ema_epsilon: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iterations: int = 10,
        dead_code_restart: bool = True,
        dead_code_threshold: float = 0.5,
        codebook_usage_window: int | None = None,
        codebook_l2_norm: bool = False,
        fsq_levels: Sequence[int] | None = None,
        lfq_entropy_weight: float = 0.1,
        lfq_diversity_weight: float = 1.0,
        lfq_temperature: float = 0.01,
        lfq_entropy_max_group_bits: int = 12,
        lfq_entropy_annealing_steps: int = 0,
        lfq_entropy_annealing_start_factor: float = 1.0,
        num_quantizers: int | None = None,
        quantizer_dropout: float = 0.0,
        **kwargs,
    ):
        # Configs written before the codebook's EMA fields had names of their own.
        renamed = {name: kwargs.pop(old) for old, name in self.renamed_fields.items() if old in kwargs}
        codebook_ema = renamed.get("codebook_ema", codebook_ema)
        codebook_ema_decay = renamed.get("codebook_ema_decay", codebook_ema_decay)
        codebook_ema_epsilon = renamed.get("codebook_ema_epsilon", codebook_ema_epsilon)
        self.quantizer = quantizer
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.codebook_ema = codebook_ema
        self.codebook_ema_decay = codebook_ema_decay
        self.codebook_ema_epsilon = codebook_ema_epsilon
        self.kmeans_init = kmeans_init
        self.kmeans_iterations = kmeans_iterations
        self.dead_code_restart = dead_code_restart
        self.dead_code_threshold = dead_code_threshold
        self.codebook_usage_window = codebook_usage_window
        self.codebook_l2_norm = codebook_l2_norm
        self.lfq_entropy_weight = lfq_entropy_weight
        self.lfq_diversity_weight = lfq_diversity_weight
        self.lfq_temperature = lfq_temperature
        self.lfq_entropy_max_group_bits = lfq_entropy_max_group_bits
        self.lfq_entropy_annealing_steps = lfq_entropy_annealing_steps
        self.lfq_entropy_annealing_start_factor = lfq_entropy_annealing_start_factor
        self.quantizer_dropout = quantizer_dropout
        super().__init__(**kwargs)
        _check(quantizer in QUANTIZER_TYPES, f"quantizer must be one of {QUANTIZER_TYPES}, got {quantizer!r}")
        if gradient_estimator is None:
            gradient_estimator = "rotation" if quantizer == "simvq" else "straight_through"
        _check(
            gradient_estimator in GRADIENT_ESTIMATORS,
            f"gradient_estimator must be one of {GRADIENT_ESTIMATORS}, got {gradient_estimator!r}",
        )
        _check(
            gradient_estimator == "straight_through" or quantizer in CODEBOOK_QUANTIZERS,
            f"gradient_estimator={gradient_estimator!r} needs a learned codebook (quantizer in "
            f"{CODEBOOK_QUANTIZERS}), got quantizer={quantizer!r}",
        )
        self.gradient_estimator = gradient_estimator
        _check(
            isinstance(lfq_entropy_max_group_bits, int) and lfq_entropy_max_group_bits >= 1,
            f"lfq_entropy_max_group_bits must be a positive int, got {lfq_entropy_max_group_bits!r}",
        )
        _check(
            isinstance(lfq_entropy_annealing_steps, int) and lfq_entropy_annealing_steps >= 0,
            f"lfq_entropy_annealing_steps must be an int >= 0, got {lfq_entropy_annealing_steps!r}",
        )
        self._resolve_code_shape(codebook_size, codebook_dim, fsq_levels, num_quantizers)
        _check(
            isinstance(self.codebook_size, int) and self.codebook_size >= 2,
            f"codebook_size must be an int >= 2, got {self.codebook_size!r}",
        )
        _check(
            isinstance(self.codebook_dim, int) and self.codebook_dim >= 1,
            f"codebook_dim must be a positive int, got {self.codebook_dim!r}",
        )
        _check(0.0 <= codebook_ema_decay < 1.0, f"codebook_ema_decay must be in [0, 1), got {codebook_ema_decay}")
        _check(
            isinstance(dead_code_threshold, (int, float)) and 0.0 <= dead_code_threshold < 1.0,
            f"dead_code_threshold must be a number in [0, 1), got {dead_code_threshold!r}",
        )
        _check(0.0 <= quantizer_dropout <= 1.0, f"quantizer_dropout must be in [0, 1], got {quantizer_dropout}")
        _check(
            codebook_usage_window is None or codebook_usage_window >= 1,
            f"codebook_usage_window must be None or >= 1 tokens, got {codebook_usage_window}",
        )
        if self.codebook_dim != self.latent_channels:
            _check(
                self.use_quant_conv and self.use_post_quant_conv,
                f"codebook_dim={self.codebook_dim} differs from latent_channels={self.latent_channels}: "
                "use_quant_conv and use_post_quant_conv must be True to project between them",
            )

    def _resolve_code_shape(self, codebook_size, codebook_dim, fsq_levels, num_quantizers) -> None:
        """Fill codebook_size / codebook_dim / fsq_levels / num_quantizers from what the quantizer
        type implies, and reject combinations that contradict it."""
        quantizer = self.quantizer
        _check(
            fsq_levels is None or quantizer == "fsq", f"fsq_levels is for quantizer='fsq', got quantizer={quantizer!r}"
        )
        _check(
            num_quantizers is None or quantizer == "residual_vq",
            f"num_quantizers is for quantizer='residual_vq', got quantizer={quantizer!r}",
        )
        self.fsq_levels = None
        self.num_quantizers = None
        if quantizer == "fsq":
            levels = [int(level) for level in (fsq_levels if fsq_levels is not None else (8, 5, 5, 5))]
            _check(len(levels) > 0 and min(levels) >= 2, f"fsq_levels must be ints >= 2, got {levels}")
            size = 1
            for level in levels:
                size *= level
            _check(
                codebook_size in (None, size),
                f"for quantizer='fsq' codebook_size is prod(fsq_levels)={size}, got {codebook_size}",
            )
            _check(
                codebook_dim in (None, len(levels)),
                f"for quantizer='fsq' codebook_dim is len(fsq_levels)={len(levels)}, got {codebook_dim}",
            )
            self.fsq_levels, self.codebook_size, self.codebook_dim = levels, size, len(levels)
        elif quantizer in ("lfq", "bsq"):
            if codebook_size is None:
                codebook_size = 2 ** (codebook_dim if codebook_dim is not None else 10)
            _check(
                isinstance(codebook_size, int) and codebook_size >= 2 and codebook_size & (codebook_size - 1) == 0,
                f"for quantizer={quantizer!r} codebook_size must be a power of 2, got {codebook_size}",
            )
            bits = codebook_size.bit_length() - 1
            _check(
                codebook_dim in (None, bits),
                f"for quantizer={quantizer!r} codebook_dim is log2(codebook_size)={bits}, got {codebook_dim}",
            )
            self.codebook_size, self.codebook_dim = codebook_size, bits
        else:
            self.codebook_size = 1024 if codebook_size is None else codebook_size
            self.codebook_dim = self.latent_channels if codebook_dim is None else codebook_dim
            if quantizer == "residual_vq":
                self.num_quantizers = 4 if num_quantizers is None else num_quantizers
                _check(
                    isinstance(self.num_quantizers, int) and self.num_quantizers >= 1,
                    f"num_quantizers must be a positive int, got {self.num_quantizers!r}",
                )
