"""SimVQ (Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models with
One Linear Layer"): the codebook is a learned linear map of a frozen random basis.

Training the K codes directly updates only the codes that are hit, so the others fall behind
and die. Here the codes are `basis @ W^T` with a frozen Gaussian basis `[K, D]` and a learned
`W` `[D, D]`: every gradient step on W moves all K codes together, so none is left behind.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import CodebookUsageWindow, Quantizer, QuantizerOutput, flatten_latents, perplexity_of, unflatten_codes
from .gradients import GRADIENT_ESTIMATORS, snap_to_codes
from .search import nearest_codebook_indices
from .vector import DEFAULT_WINDOW_PER_CODE


class SimVectorQuantizer(Quantizer):
    """K codes `frozen_basis @ codebook_transform.weight^T`, nearest-neighbour assignment.

    The codes learn by the codebook loss `||sg(z) - e||^2` (through W), the encoder by the
    commitment loss `||z - sg(e)||^2` and the decoder's gradient (straight-through or rotation
    trick); both terms are returned unweighted. With the rotation trick and the standard weights
    (codebook 1, commitment 0.25, `loss_weights.QuantizerLossWeights`) this is
    vector-quantize-pytorch's `SimVQ`.

    Args:
        codebook_size: K.
        codebook_dim: D, of the codes and of the frozen basis.
        gradient_estimator: `"rotation"` or `"straight_through"`.
        usage_window: tokens in the sliding window of the usage metrics; defaults to 16 * K.
        max_block_elements: memory bound of the nearest-neighbour search.
    """

    loss_terms = ("codebook", "commitment")
    training_only_options = (
        "gradient_estimator",
        "usage_window",
        "max_block_elements",
    )

    def __init__(
        self,
        codebook_size: int,
        codebook_dim: int,
        gradient_estimator: str = "rotation",
        usage_window: int | None = None,
        max_block_elements: int | None = None,
    ):
        super().__init__()
        if gradient_estimator not in GRADIENT_ESTIMATORS:
            raise ValueError(f"gradient_estimator must be one of {GRADIENT_ESTIMATORS}, got {gradient_estimator!r}")
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.gradient_estimator = gradient_estimator
        self.max_block_elements = max_block_elements
        self.usage = CodebookUsageWindow(codebook_size, usage_window or DEFAULT_WINDOW_PER_CODE * codebook_size)
        # Saved with the model: the codes are meaningless without the basis W was trained on.
        self.register_buffer("frozen_basis", torch.empty(codebook_size, codebook_dim))
        self.codebook_transform = nn.Linear(codebook_dim, codebook_dim, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Unit-variance codes on average: N(0, 1/D) coordinates, as in the paper's reference code.
        self.frozen_basis.normal_(0.0, self.codebook_dim**-0.5)
        self.codebook_transform.reset_parameters()
        self.usage.reset()

    @property
    def codebook(self) -> torch.Tensor:
        """`[K, D]` fp32 codes (differentiable in W)."""
        return F.linear(self.frozen_basis.float(), self.codebook_transform.weight.float())

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of indices `[B, h, w]` -> `[B, D, h, w]` (fp32)."""
        self._check_indices(indices, None, self.codebook_size)
        basis_rows = F.embedding(indices.long(), self.frozen_basis.float())
        return F.linear(basis_rows, self.codebook_transform.weight.float()).permute(0, 3, 1, 2).contiguous()

    def forward(self, latents: torch.Tensor, update_codebook: bool | None = None) -> QuantizerOutput:
        """Quantise latents `[B, D, h, w]`; see [`QuantizerOutput`]. `update_codebook` (default: in
        training mode) updates the usage window; the codes change only by the optimiser's steps on W."""
        self._check_latents(latents)
        update_codebook = self.training if update_codebook is None else update_codebook
        with torch.autocast(device_type=latents.device.type, enabled=False):
            rows = flatten_latents(latents)
            codebook = self.codebook
            indices = nearest_codebook_indices(rows.detach(), codebook.detach(), self.max_block_elements)
            codes = F.embedding(indices, codebook)
            quantized, codebook_loss, commitment_loss = snap_to_codes(self.gradient_estimator, rows, codes)
            if update_codebook:
                self.usage.update(indices)
        return QuantizerOutput(
            quantized=unflatten_codes(quantized, latents),
            indices=indices.view(latents.shape[0], *latents.shape[2:]),
            perplexity=perplexity_of(torch.bincount(indices, minlength=self.codebook_size)),
            terms={"codebook": codebook_loss, "commitment": commitment_loss},
        )
