"""Vector quantisation: the VQ-VAE's discrete bottleneck.

The nearest-neighbour search is exact but memory-bounded: distances are computed block by
block as `||e||^2 - 2 x.e` (the `||x||^2` term does not change the argmin) and each block is
reduced to its minimum at once, so at most `max_block_elements` distances exist at a time
instead of the full N x K matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# 2**20 fp32 distances = 4 MiB per block: large enough for an efficient matmul, small enough
# that K = 2**18 codes against 16k vectors needs a few MiB instead of 16 GiB.
DEFAULT_MAX_BLOCK_ELEMENTS = 2**20


@torch.no_grad()
def nearest_codebook_indices(
    vectors: torch.Tensor, codebook: torch.Tensor, max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS
) -> torch.Tensor:
    """Index of the nearest codebook vector (Euclidean) for every row of `vectors`.

    Args:
        vectors: `[N, D]`.
        codebook: `[K, D]`.
        max_block_elements: bound on the number of distances held at once.

    Returns:
        `[N]` int64 indices in `[0, K)`. Ties go to the lowest index, as `argmin` does.
    """
    if vectors.dim() != 2 or codebook.dim() != 2 or vectors.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"expected vectors [N, D] and codebook [K, D] with the same D, got {tuple(vectors.shape)} "
            f"and {tuple(codebook.shape)}"
        )
    num_vectors, num_codes = vectors.shape[0], codebook.shape[0]
    codes_per_block = min(num_codes, max_block_elements)
    rows_per_block = max(1, max_block_elements // codes_per_block)
    codebook_sq_norms = codebook.pow(2).sum(dim=1)
    indices = torch.empty(num_vectors, dtype=torch.long, device=vectors.device)
    for row_start in range(0, num_vectors, rows_per_block):
        rows = vectors[row_start : row_start + rows_per_block]
        best_distance, best_index = None, None
        for code_start in range(0, num_codes, codes_per_block):
            code_end = code_start + codes_per_block
            distances = torch.addmm(
                codebook_sq_norms[code_start:code_end], rows, codebook[code_start:code_end].T, alpha=-2.0
            )
            distance, index = distances.min(dim=1)
            if best_distance is None:
                best_distance, best_index = distance, index
            else:
                closer = distance < best_distance
                best_distance = torch.where(closer, distance, best_distance)
                best_index = torch.where(closer, index + code_start, best_index)
        indices[row_start : row_start + rows_per_block] = best_index
    return indices


@dataclass
class QuantizerOutput:
    """What a quantizer returns for latents `[B, D, h, w]`.

    Attributes:
        quantized: `[B, D, h, w]` codes with the straight-through gradient: the forward value
            is the codebook vector, the backward pass copies the gradient to the latents.
        indices: `[B, h, w]` int64 code indices.
        codebook_loss: `||sg(z) - e||^2`, moves the codes (mean over elements).
        commitment_loss: `||z - sg(e)||^2`, moves the encoder (mean over elements, unweighted).
        loss: `codebook_weight * codebook_loss + commitment_weight * commitment_loss`.
        perplexity: exp of the entropy of the code histogram in this batch.
    """

    quantized: torch.Tensor
    indices: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    loss: torch.Tensor
    perplexity: torch.Tensor


class VectorQuantizer(nn.Module):
    """K x D codebook, nearest-neighbour assignment, straight-through gradient.

    The search and the codebook lookup always run in fp32, also under autocast: in half
    precision nearby codes become indistinguishable and the argmin flips.

    Args:
        codebook_size: K, the number of codes.
        codebook_dim: D, the dimension of a code.
        commitment_weight: beta on the commitment term (0.25 in the VQ-VAE paper).
        codebook_weight: weight on the codebook term.
        max_block_elements: memory bound of the nearest-neighbour search.
    """

    def __init__(
        self,
        codebook_size: int,
        codebook_dim: int,
        commitment_weight: float = 0.25,
        codebook_weight: float = 1.0,
        max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
    ):
        super().__init__()
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.max_block_elements = max_block_elements
        self.codebook = nn.Parameter(torch.empty(codebook_size, codebook_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Uniform in [-1/K, 1/K], as in the VQ-VAE reference code and taming-transformers.
        nn.init.uniform_(self.codebook, -1.0 / self.codebook_size, 1.0 / self.codebook_size)

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.dim() != 4 or latents.shape[1] != self.codebook_dim:
            raise ValueError(
                f"expected latents [B, {self.codebook_dim}, h, w] (codebook_dim={self.codebook_dim}), "
                f"got shape {tuple(latents.shape)}"
            )

    def codes_to_indices(self, latents: torch.Tensor) -> torch.Tensor:
        """Nearest-code indices of latents `[B, D, h, w]` -> `[B, h, w]`, without gradients."""
        self._check_latents(latents)
        batch, _, height, width = latents.shape
        flat = latents.detach().float().permute(0, 2, 3, 1).reshape(-1, self.codebook_dim)
        indices = nearest_codebook_indices(flat, self.codebook.detach().float(), self.max_block_elements)
        return indices.view(batch, height, width)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of indices `[B, h, w]` -> `[B, D, h, w]` (fp32)."""
        if indices.dtype in (torch.bool,) or indices.is_floating_point() or indices.is_complex():
            raise ValueError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        if indices.dim() != 3:
            raise ValueError(f"expected indices of shape [B, h, w], got shape {tuple(indices.shape)}")
        if indices.numel() > 0:
            low, high = int(indices.min()), int(indices.max())
            if low < 0 or high >= self.codebook_size:
                raise ValueError(
                    f"indices must be in [0, {self.codebook_size - 1}] (codebook_size={self.codebook_size}), "
                    f"got values in [{low}, {high}]"
                )
        return F.embedding(indices.long(), self.codebook.float()).permute(0, 3, 1, 2).contiguous()

    def forward(self, latents: torch.Tensor) -> QuantizerOutput:
        """Quantise latents `[B, D, h, w]`; see [`QuantizerOutput`]."""
        with torch.autocast(device_type=latents.device.type, enabled=False):
            latents = latents.float()
            indices = self.codes_to_indices(latents)
            codes = self.indices_to_codes(indices)
            codebook_loss = F.mse_loss(codes, latents.detach())
            commitment_loss = F.mse_loss(latents, codes.detach())
            quantized = latents + (codes - latents).detach()
            counts = torch.bincount(indices.flatten(), minlength=self.codebook_size).float()
            probabilities = counts / counts.sum()
            perplexity = torch.exp(-torch.sum(probabilities * torch.log(probabilities.clamp_min(1e-10))))
        return QuantizerOutput(
            quantized=quantized,
            indices=indices,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            loss=self.codebook_weight * codebook_loss + self.commitment_weight * commitment_loss,
            perplexity=perplexity,
        )
