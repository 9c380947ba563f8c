"""Finite scalar quantisation (FSQ, Mentzer et al. 2023): no codebook to collapse.

Each of the D channels is bounded to `levels[i]` values and rounded; the implicit codebook is
the grid of all `prod(levels)` combinations, and a code's index is its mixed-radix number.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch

from .base import CodebookUsageWindow, Quantizer, QuantizerOutput, flatten_latents, perplexity_of, unflatten_codes
from .vector import DEFAULT_WINDOW_PER_CODE

# 1000 codes of dimension 4, FSQ paper's choice for a ~2^10 codebook.
DEFAULT_LEVELS = (8, 5, 5, 5)


class FiniteScalarQuantizer(Quantizer):
    """FSQ: bound each channel with tanh, round it to one of `levels[i]` values.

    Codes are the rounded values scaled to [-1, 1]: channel i takes the values
    `(j - levels[i] // 2) / (levels[i] // 2)` for `j` in `range(levels[i])`. There are no losses;
    the gradient passes the rounding straight through to the tanh.

    Args:
        levels: values per channel; the default `(8, 5, 5, 5)` has 1000 codes, D = 4.
        usage_window: tokens in the sliding window of the usage metrics; defaults to 16 * K.
    """

    training_only_options = ("usage_window",)

    def __init__(self, levels: Sequence[int] = DEFAULT_LEVELS, usage_window: int | None = None):
        super().__init__()
        levels = [int(level) for level in levels]
        if len(levels) == 0 or min(levels) < 2:
            raise ValueError(f"levels must be a non-empty list of ints >= 2, got {levels}")
        self.levels = levels
        self.codebook_dim = len(levels)
        self.codebook_size = prod(levels)
        # Mixed radix: channel 0 is the least significant digit.
        self.basis = [prod(levels[:i]) for i in range(len(levels))]
        self.usage = CodebookUsageWindow(
            self.codebook_size, usage_window or DEFAULT_WINDOW_PER_CODE * self.codebook_size
        )

    @classmethod
    def resolve_sizes(cls, codebook_size, codebook_dim, options, latent_channels, num_quantizers=None):
        """K = prod(levels) codes of dimension D = len(levels); other given sizes are refused."""
        levels = options.get("levels", DEFAULT_LEVELS)
        size = prod(int(level) for level in levels)
        if codebook_size not in (None, size):
            raise ValueError(f"for quantizer='fsq' codebook_size is prod(levels)={size}, got {codebook_size}")
        if codebook_dim not in (None, len(levels)):
            raise ValueError(f"for quantizer='fsq' codebook_dim is len(levels)={len(levels)}, got {codebook_dim}")
        return {"codebook_size": size, "codebook_dim": len(levels)}

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """levels and mixed-radix basis as int64 tensors `[D]`. Built on demand rather than kept as
        buffers, which from_pretrained would leave uninitialised since they are not saved."""
        return torch.tensor(self.levels, device=device), torch.tensor(self.basis, device=device)

    def _bound(self, rows: torch.Tensor) -> torch.Tensor:
        """`[N, D]` -> values in `(-levels/2, levels/2)` that round to the `levels` integers
        `[-(L // 2), (L - 1) // 2]`. Even L need the half-step offset to get L values."""
        levels, _ = self._constants(rows.device)
        half = (levels - 1) * (1 + 1e-3) / 2
        offset = (levels % 2 == 0).float() * 0.5
        shift = torch.atanh(offset / half)
        return torch.tanh(rows + shift) * half - offset

    def _digits_to_index(self, rounded: torch.Tensor) -> torch.Tensor:
        levels, basis = self._constants(rounded.device)
        return ((rounded.round().long() + levels // 2) * basis).sum(dim=-1)

    def grid_codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Inverse of [`indices_to_codes`]: codes `[B, D, h, w]` on the grid -> `[B, h, w]`.
        (Latents pass through the tanh bound first: quantise them with `forward`.)"""
        self._check_latents(codes)
        batch, _, height, width = codes.shape
        levels, _ = self._constants(codes.device)
        return self._digits_to_index(flatten_latents(codes) * (levels // 2)).view(batch, height, width)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices `[B, h, w]` -> codes `[B, D, h, w]` (fp32, in [-1, 1])."""
        self._check_indices(indices, None, self.codebook_size)
        levels, basis = self._constants(indices.device)
        digits = (indices.long().unsqueeze(-1) // basis) % levels
        return ((digits - levels // 2).float() / (levels // 2).float()).permute(0, 3, 1, 2).contiguous()

    def forward(self, latents: torch.Tensor, update_codebook: bool | None = None) -> QuantizerOutput:
        """Quantise latents `[B, D, h, w]`; see [`QuantizerOutput`] (no terms, zero losses).
        `update_codebook` (default: in training mode) updates the usage window; the grid is fixed."""
        self._check_latents(latents)
        update_codebook = self.training if update_codebook is None else update_codebook
        with torch.autocast(device_type=latents.device.type, enabled=False):
            bounded = self._bound(flatten_latents(latents))
            rounded = bounded + (bounded.round() - bounded).detach()
            quantized = rounded / (self._constants(rounded.device)[0] // 2).float()
            indices = self._digits_to_index(rounded.detach())
            if update_codebook:
                self.usage.update(indices)
        return QuantizerOutput(
            quantized=unflatten_codes(quantized, latents),
            indices=indices.view(latents.shape[0], *latents.shape[2:]),
            perplexity=perplexity_of(torch.bincount(indices, minlength=self.codebook_size)),
            terms={},
        )
