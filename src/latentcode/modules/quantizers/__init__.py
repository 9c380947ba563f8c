"""Quantizers of the VQ-VAE bottleneck, one per file, all with the same interface:
`forward(latents [B, D, h, w], update_codebook=None) -> QuantizerOutput` (`update_codebook=False`
is the pure path, no codebook or usage update), `indices_to_codes`, and the usage metrics
`codebook_usage` / `usage_perplexity` for training logs. A quantizer returns its loss terms
unweighted (`QuantizerOutput.terms`); [`QuantizerLossWeights`] (`loss_weights`) weighs them.

- [`VectorQuantizer`]: a learned K x D codebook (EMA, k-means init, dead-code restart, cosine).
- [`FiniteScalarQuantizer`]: FSQ, a fixed grid of `prod(levels)` codes.
- [`LookupFreeQuantizer`]: LFQ, `2^D` sign codes with an entropy loss.
- [`BinarySphericalQuantizer`]: BSQ, LFQ on the unit sphere.
- [`SimVectorQuantizer`]: SimVQ, a codebook that is a learned linear map of a frozen basis.
- [`ResidualVectorQuantizer`]: a stack of VectorQuantizers on successive residuals.

`registry` maps the type names of `VQVAEConfig.quantizer` to these classes and derives what a
config may pass to each from its constructor. Shared pieces: `maintenance` (k-means, EMA
updates and dead-code restarts of a learned codebook), `gradients` (straight-through and rotation-trick estimators), `entropy` (the
memory-bounded entropy regulariser of LFQ / BSQ), `search` (the chunked nearest-code search).
"""

from .base import CodebookUsageWindow, Quantizer, QuantizerOutput
from .binary_spherical import BinarySphericalQuantizer
from .finite_scalar import FiniteScalarQuantizer
from .lookup_free import LookupFreeQuantizer
from .loss_weights import QuantizerLossWeights
from .maintenance import kmeans
from .registry import QUANTIZERS, build_quantizer
from .residual import ResidualVectorQuantizer
from .search import nearest_codebook_indices
from .sim_vq import SimVectorQuantizer
from .vector import VectorQuantizer

__all__ = [
    "BinarySphericalQuantizer",
    "CodebookUsageWindow",
    "FiniteScalarQuantizer",
    "LookupFreeQuantizer",
    "QUANTIZERS",
    "Quantizer",
    "QuantizerLossWeights",
    "QuantizerOutput",
    "ResidualVectorQuantizer",
    "SimVectorQuantizer",
    "VectorQuantizer",
    "build_quantizer",
    "kmeans",
    "nearest_codebook_indices",
]
