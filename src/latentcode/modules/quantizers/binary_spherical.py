"""Binary spherical quantisation (BSQ, Zhao et al. 2024): LFQ on the unit sphere.

The latent is l2-normalised and quantised to the nearest of the `2^D` sign codes scaled onto
the sphere, `sign(u) / sqrt(D)`. The quantisation error is bounded (both are unit vectors), and
the entropy regulariser is LFQ's with the code scale `1 / sqrt(D)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .lookup_free import LookupFreeQuantizer


class BinarySphericalQuantizer(LookupFreeQuantizer):
    """BSQ: [`LookupFreeQuantizer`] with l2-normalised latents and codes `{-1, +1}^D / sqrt(D)`.

    Takes LFQ's arguments; `indices_to_codes` returns unit-norm codes, and the straight-through
    gradient reaches the latents through the normalisation.
    """

    @property
    def code_scale(self) -> float:
        return 1.0 / math.sqrt(self.codebook_dim)

    def _prepare(self, rows: torch.Tensor) -> torch.Tensor:
        return F.normalize(rows, dim=1)
