"""Residual vector quantisation (SoundStream, Zeghidour et al. 2021; RQ-VAE, Lee et al. 2022).

Level i quantises what levels 0..i-1 left over, so a token is a tuple of `depth` indices and
the code is the sum of the levels' codes. Quantiser dropout trains every prefix of the levels to
be a usable (coarser) code.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Quantizer, QuantizerOutput, broadcast_from_rank0, is_rank0
from .vector import VectorQuantizer


class ResidualVectorQuantizer(Quantizer):
    """`num_quantizers` [`VectorQuantizer`] levels applied to successive residuals.

    Indices are `[B, h, w, num_quantizers]`; in training with quantiser dropout, the levels a
    batch did not use have index -1 (and `indices_to_codes` reads -1 as "no contribution").
    Terms and losses are summed over the levels used, perplexity is averaged. With the straight-through
    estimator the gradient of the summed code is copied to the latents; with the rotation trick
    each level rotates its residual onto its code and the levels' outputs are summed (as
    vector-quantize-pytorch's `ResidualVQ(rotation_trick=True)` does). Every level's round trip
    (indices -> codes -> indices) is exact; re-encoding the summed code gives the same tuple
    when each level's codes are further apart than what the later levels add, as in a trained
    quantizer whose levels fit ever smaller residuals.

    Args:
        num_quantizers: depth.
        codebook_size: K of every level.
        codebook_dim: D.
        quantizer_dropout: probability that a training batch uses only the first n levels, n
            uniform in [1, depth] (drawn on rank 0 and broadcast, so replicas agree).
        **vector_quantizer_options: the [`VectorQuantizer`] flags, the same for every level.
    """

    # `**vector_quantizer_options` are the arguments of this class.
    options_passed_to = VectorQuantizer
    loss_terms = VectorQuantizer.loss_terms
    training_only_options = ("quantizer_dropout", *VectorQuantizer.training_only_options)

    @classmethod
    def resolve_sizes(cls, codebook_size, codebook_dim, options, latent_channels, num_quantizers=None):
        """A VQ codebook per level (K = 1024, D = `latent_channels` by default), 4 levels by default."""
        sizes = VectorQuantizer.resolve_sizes(codebook_size, codebook_dim, options, latent_channels)
        return {**sizes, "num_quantizers": 4 if num_quantizers is None else num_quantizers}

    def __init__(
        self,
        num_quantizers: int,
        codebook_size: int,
        codebook_dim: int,
        quantizer_dropout: float = 0.0,
        **vector_quantizer_options,
    ):
        super().__init__()
        if num_quantizers < 1:
            raise ValueError(f"num_quantizers must be >= 1, got {num_quantizers}")
        if not 0.0 <= quantizer_dropout <= 1.0:
            raise ValueError(f"quantizer_dropout must be in [0, 1], got {quantizer_dropout}")
        self.num_quantizers = num_quantizers
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.quantizer_dropout = quantizer_dropout
        self.levels = nn.ModuleList(
            VectorQuantizer(codebook_size, codebook_dim, **vector_quantizer_options) for _ in range(num_quantizers)
        )

    @property
    def codebook_usage(self) -> torch.Tensor:
        """Fraction of codes hit over the sliding window, averaged over the levels."""
        return torch.stack([level.codebook_usage for level in self.levels]).mean()

    @property
    def usage_perplexity(self) -> torch.Tensor:
        """Window perplexity averaged over the levels."""
        return torch.stack([level.usage_perplexity for level in self.levels]).mean()

    def _training_depth(self, device: torch.device) -> int:
        depth = torch.tensor([self.num_quantizers], device=device)
        if is_rank0() and torch.rand(()) < self.quantizer_dropout:
            depth.fill_(int(torch.randint(1, self.num_quantizers + 1, ())))
        return int(broadcast_from_rank0(depth).item())

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices `[B, h, w, num_quantizers]` (-1: level unused) -> summed codes `[B, D, h, w]`."""
        self._check_indices(indices, self.num_quantizers, self.codebook_size, low=-1)
        codes = torch.zeros(indices.shape[0], self.codebook_dim, *indices.shape[1:3], device=indices.device)
        for depth, level in enumerate(self.levels):
            level_indices = indices[..., depth]
            used = (level_indices >= 0).unsqueeze(1)
            codes = codes + level.indices_to_codes(level_indices.clamp_min(0)) * used
        return codes

    def forward(self, latents: torch.Tensor, update_codebook: bool | None = None) -> QuantizerOutput:
        """Quantise latents `[B, D, h, w]`; see [`QuantizerOutput`]. `update_codebook` (default: in
        training mode) maintains every level's codebook and applies quantizer dropout; with
        `update_codebook=False` all levels are used and nothing changes."""
        self._check_latents(latents)
        update_codebook = self.training if update_codebook is None else update_codebook
        depth = self._training_depth(latents.device) if update_codebook and self.quantizer_dropout > 0 else None
        with torch.autocast(device_type=latents.device.type, enabled=False):
            latents = latents.float()
            residual, total = latents, torch.zeros_like(latents)
            indices = torch.full(
                (*latents.shape[:1], *latents.shape[2:], self.num_quantizers),
                -1,
                dtype=torch.long,
                device=latents.device,
            )
            outputs = []
            for i, level in enumerate(self.levels[:depth]):
                output = level(residual, update_codebook=update_codebook)
                codes = output.quantized.detach()
                # Later levels see the residual with the gradient path to the encoder intact.
                residual = residual - codes
                total = total + codes
                indices[..., i] = output.indices
                outputs.append(output)
            if self.levels[0].gradient_estimator == "rotation":
                quantized = sum(output.quantized for output in outputs)
            else:
                quantized = latents + (total - latents).detach()
        return QuantizerOutput(
            quantized=quantized,
            indices=indices,
            perplexity=torch.stack([output.perplexity for output in outputs]).mean(),
            terms={name: sum(output.terms[name] for output in outputs) for name in outputs[0].terms},
        )
