"""Building blocks: the shared backbone and the bottlenecks' modules."""

from .backbones.ldm import Decoder, Encoder
from .distributions import DiagonalGaussianDistribution
from .quantizers import VectorQuantizer, nearest_codebook_indices

__all__ = ["Decoder", "DiagonalGaussianDistribution", "Encoder", "VectorQuantizer", "nearest_codebook_indices"]
