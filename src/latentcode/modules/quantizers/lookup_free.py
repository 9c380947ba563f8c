"""Lookup-free quantisation (LFQ, MAGVIT-v2, Yu et al. 2023): each channel is one bit.

A code is the sign vector of the latent, `{-1, +1}^D`, so the implicit codebook has `2^D`
codes and no search is needed. An entropy loss keeps the bits confident (low per-token
entropy) and the codes diverse (high entropy of the batch-average code distribution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import CodebookUsageWindow, Quantizer, QuantizerOutput, flatten_latents, perplexity_of, unflatten_codes
from .entropy import DEFAULT_MAX_GROUP_BITS, bit_entropy_terms
from .gradients import straight_through
from .vector import DEFAULT_WINDOW_PER_CODE


class LookupFreeQuantizer(Quantizer):
    """LFQ with MAGVIT-v2's entropy loss.

    The soft assignment of a latent z to code c is `softmax_c(-||z - c||^2 / temperature)`. Since
    `||z - c||^2` is a sum over channels, it factorises into independent bits with
    `p(c_i = +1) = sigmoid(4 s z_i / temperature)` (s the code scale, 1 here), so the per-token
    entropy is the sum of the bits' entropies. The entropy of the batch-average distribution is
    exact for `D <= entropy_max_group_bits` and the memory-bounded grouped estimate of
    Open-MAGVIT2 above (see `latentcode.modules.quantizers.entropy`).

    Its terms, unweighted: `commitment` `||z - sg(code)||^2`, `entropy_per_sample`
    `mean_n H(p(. | z_n))` and `entropy_codebook` `H(mean_n p(. | z_n))`. The recipe weighs them
    into MAGVIT-v2's `entropy_weight * (entropy_per_sample - diversity_weight * entropy_codebook)`
    and anneals the entropy weight over optimiser steps (see `loss_weights`).

    Args:
        codebook_dim: D, the number of bits; K = 2^D.
        temperature: of the soft assignment.
        usage_window: tokens in the sliding window of the usage metrics; defaults to 16 * K.
        entropy_max_group_bits: largest bit group of the codebook-entropy estimate (memory
            `N x 2^bits` per group).
    """

    loss_terms = ("commitment", "entropy_per_sample", "entropy_codebook")
    # The temperature shapes the entropy terms only; the code is the sign.
    training_only_options = ("temperature", "usage_window", "entropy_max_group_bits")

    @classmethod
    def resolve_sizes(cls, codebook_size, codebook_dim, options, latent_channels, num_quantizers=None):
        """D bits give K = 2^D codes: K must be a power of 2 (default 2^10) and D = log2(K)."""
        if codebook_size is None:
            codebook_size = 2 ** (codebook_dim if codebook_dim is not None else 10)
        if not (isinstance(codebook_size, int) and codebook_size >= 2 and codebook_size & (codebook_size - 1) == 0):
            raise ValueError(f"for a lookup-free quantizer codebook_size must be a power of 2, got {codebook_size}")
        bits = codebook_size.bit_length() - 1
        if codebook_dim not in (None, bits):
            raise ValueError(
                f"for a lookup-free quantizer codebook_dim is log2(codebook_size)={bits}, got {codebook_dim}"
            )
        return {"codebook_size": codebook_size, "codebook_dim": bits}

    def __init__(
        self,
        codebook_dim: int,
        temperature: float = 0.01,
        usage_window: int | None = None,
        entropy_max_group_bits: int = DEFAULT_MAX_GROUP_BITS,
    ):
        super().__init__()
        if codebook_dim < 1 or codebook_dim > 62:
            raise ValueError(f"codebook_dim (bits) must be in [1, 62], got {codebook_dim}")
        if entropy_max_group_bits < 1:
            raise ValueError(f"entropy_max_group_bits must be >= 1, got {entropy_max_group_bits}")
        self.codebook_dim = codebook_dim
        self.codebook_size = 2**codebook_dim
        self.temperature = temperature
        self.entropy_max_group_bits = entropy_max_group_bits
        self.usage = CodebookUsageWindow(
            self.codebook_size, usage_window or DEFAULT_WINDOW_PER_CODE * self.codebook_size
        )

    # -- the code: signs, at the scale of this quantizer's sphere or cube -------------------------

    @property
    def code_scale(self) -> float:
        """The magnitude s of every code coordinate: codes are `{-s, +s}^D`."""
        return 1.0

    def _prepare(self, rows: torch.Tensor) -> torch.Tensor:
        """Latent rows `[N, D]` as they are compared with the codes."""
        return rows

    def _bit_values(self, device: torch.device) -> torch.Tensor:
        """`[D]` int64 place values, channel 0 the most significant bit (not a buffer: from_pretrained
        leaves unsaved buffers uninitialised)."""
        return 2 ** torch.arange(self.codebook_dim - 1, -1, -1, device=device)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices `[B, h, w]` -> codes `[B, D, h, w]` in `{-s, +s}` (fp32)."""
        self._check_indices(indices, None, self.codebook_size)
        bits = (indices.long().unsqueeze(-1) // self._bit_values(indices.device)) % 2
        return ((bits.float() * 2 - 1) * self.code_scale).permute(0, 3, 1, 2).contiguous()

    # -- the entropy regulariser ------------------------------------------------------------------

    def entropy_terms(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MAGVIT-v2's `(entropy_per_sample, entropy_codebook)` of prepared fp32 latents `[N, D]`."""
        bit_logits = 4 * self.code_scale * rows / self.temperature  # log-odds of each bit being +1
        return bit_entropy_terms(bit_logits, self.entropy_max_group_bits)

    def forward(self, latents: torch.Tensor, update_codebook: bool | None = None) -> QuantizerOutput:
        """Quantise latents `[B, D, h, w]`; see [`QuantizerOutput`]. `update_codebook` (default: in
        training mode) updates the usage window; there is no codebook to maintain."""
        self._check_latents(latents)
        update_codebook = self.training if update_codebook is None else update_codebook
        with torch.autocast(device_type=latents.device.type, enabled=False):
            rows = self._prepare(flatten_latents(latents))
            codes = torch.where(rows > 0, self.code_scale, -self.code_scale)
            quantized = straight_through(rows, codes)
            indices = ((rows.detach() > 0).long() * self._bit_values(rows.device)).sum(1)
            commitment_loss = F.mse_loss(rows, codes)
            per_sample, codebook_entropy = self.entropy_terms(rows)
            if update_codebook:
                self.usage.update(indices)
        return QuantizerOutput(
            quantized=unflatten_codes(quantized, latents),
            indices=indices.view(latents.shape[0], *latents.shape[2:]),
            perplexity=perplexity_of(torch.bincount(indices, minlength=self.codebook_size)),
            terms={
                "commitment": commitment_loss,
                "entropy_per_sample": per_sample,
                "entropy_codebook": codebook_entropy,
            },
        )
