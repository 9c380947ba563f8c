"""Lookup-free quantisation (LFQ, MAGVIT-v2, Yu et al. 2023): each channel is one bit.

A code is the sign vector of the latent, `{-1, +1}^D`, so the implicit codebook has `2^D`
codes and no search is needed. An entropy loss keeps the bits confident (low per-token
entropy) and the codes diverse (high entropy of the batch-average code distribution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import CodebookUsageWindow, Quantizer, QuantizerOutput, flatten_latents, perplexity_of, unflatten_codes
from .vector import DEFAULT_WINDOW_PER_CODE


def _binary_entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    probability = torch.sigmoid(logits)
    return -(probability * F.logsigmoid(logits) + (1 - probability) * F.logsigmoid(-logits))


class LookupFreeQuantizer(Quantizer):
    """LFQ with MAGVIT-v2's entropy loss.

    The soft assignment of a latent z to code c is `softmax_c(-||z - c||^2 / temperature)`. Since
    `||z - c||^2` is a sum over channels, it factorises into independent bits with
    `p(c_i = +1) = sigmoid(4 z_i / temperature)`, so the per-token entropy is the sum of the bits'
    entropies. The batch-average distribution does not factorise: it is computed exactly over
    all `2^D` codes, which costs `N x 2^D` memory (fine up to D of about 14 at N = 16k tokens).

    `entropy_loss = mean_n H(p(. | z_n)) - diversity_weight * H(mean_n p(. | z_n))`.

    Args:
        codebook_dim: D, the number of bits; K = 2^D.
        commitment_weight: weight of `||z - sg(sign(z))||^2`.
        entropy_weight: weight of the entropy loss.
        diversity_weight: gamma on the codebook-entropy term.
        temperature: of the soft assignment.
        usage_window: tokens in the sliding window of the usage metrics; defaults to 16 * K.
    """

    def __init__(
        self,
        codebook_dim: int,
        commitment_weight: float = 0.25,
        entropy_weight: float = 0.1,
        diversity_weight: float = 1.0,
        temperature: float = 0.01,
        usage_window: int | None = None,
    ):
        super().__init__()
        if codebook_dim < 1 or codebook_dim > 62:
            raise ValueError(f"codebook_dim (bits) must be in [1, 62], got {codebook_dim}")
        self.codebook_dim = codebook_dim
        self.codebook_size = 2**codebook_dim
        self.commitment_weight = commitment_weight
        self.entropy_weight = entropy_weight
        self.diversity_weight = diversity_weight
        self.temperature = temperature
        self.usage = CodebookUsageWindow(
            self.codebook_size, usage_window or DEFAULT_WINDOW_PER_CODE * self.codebook_size
        )

    def _bit_values(self, device: torch.device) -> torch.Tensor:
        """`[D]` int64 place values, channel 0 the most significant bit (not a buffer: from_pretrained
        leaves unsaved buffers uninitialised)."""
        return 2 ** torch.arange(self.codebook_dim - 1, -1, -1, device=device)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices `[B, h, w]` -> codes `[B, D, h, w]` in `{-1, +1}` (fp32)."""
        self._check_indices(indices, None, self.codebook_size)
        bits = (indices.long().unsqueeze(-1) // self._bit_values(indices.device)) % 2
        return (bits.float() * 2 - 1).permute(0, 3, 1, 2).contiguous()

    def entropy_loss(self, rows: torch.Tensor) -> torch.Tensor:
        """MAGVIT-v2's entropy loss of fp32 latents `[N, D]` (see the class docstring)."""
        logits = 4 * rows / self.temperature  # [N, D], log-odds of each bit being +1
        per_token_entropy = _binary_entropy_from_logits(logits).sum(dim=1).mean()
        all_codes = self.indices_to_codes(torch.arange(self.codebook_size, device=rows.device).view(1, 1, -1))
        code_bits = (all_codes.view(self.codebook_dim, -1) > 0).float()  # [D, K]
        log_soft_assignment = F.logsigmoid(logits) @ code_bits + F.logsigmoid(-logits) @ (1 - code_bits)  # [N, K]
        average = log_soft_assignment.exp().mean(dim=0)
        codebook_entropy = -(average * average.clamp_min(1e-12).log()).sum()
        return per_token_entropy - self.diversity_weight * codebook_entropy

    def forward(self, latents: torch.Tensor, update_codebook: bool | None = None) -> QuantizerOutput:
        """Quantise latents `[B, D, h, w]`; see [`QuantizerOutput`]. `update_codebook` (default: in
        training mode) updates the usage window; LFQ has no codebook to maintain."""
        self._check_latents(latents)
        update_codebook = self.training if update_codebook is None else update_codebook
        with torch.autocast(device_type=latents.device.type, enabled=False):
            rows = flatten_latents(latents)
            codes = torch.where(rows > 0, 1.0, -1.0)
            quantized = rows + (codes - rows).detach()
            indices = ((rows.detach() > 0).long() * self._bit_values(rows.device)).sum(1)
            commitment_loss = F.mse_loss(rows, codes)
            entropy_loss = self.entropy_loss(rows) if self.entropy_weight > 0 else rows.new_zeros(())
            if update_codebook:
                self.usage.update(indices)
        return QuantizerOutput(
            quantized=unflatten_codes(quantized, latents),
            indices=indices.view(latents.shape[0], *latents.shape[2:]),
            codebook_loss=rows.new_zeros(()),
            commitment_loss=commitment_loss,
            loss=self.commitment_weight * commitment_loss + self.entropy_weight * entropy_loss,
            perplexity=perplexity_of(torch.bincount(indices, minlength=self.codebook_size)),
            entropy_loss=entropy_loss,
        )
