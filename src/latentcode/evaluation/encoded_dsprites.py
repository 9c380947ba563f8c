"""Every generated dSprites image encoded once: the posterior of the whole factor grid, for scoring.

The metrics of `latentcode.evaluation.disentanglement_metrics` draw factors, render their images
and encode them, batch by batch. At disentanglement_lib's sizes that is about 2.9 million images
per model (the BetaVAE score alone encodes 1.9 million: 15,000 points x 2 batches of 64), four
times the 737,280 images the generated dSprites holds. [`EncodedDSprites`] encodes each image once
and stands in for the data and the model together: its `sampler` is a `DSprites` whose
observations are dataset indices, its `representation` looks their codes up. The metrics make the
same random draws either way, so the scores are the same as encoding on demand (tests/
test_encoded_dsprites.py checks every metric), in a fraction of the time.

It also holds what MIG as Chen et al. (2018) estimate it needs and the sampled metrics cannot
give: the posterior (mean and standard deviation) of every image of the grid, in the published
order (`disentanglement_metrics.sampled_mutual_information_gap`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..data.dsprites import NUM_IMAGES, DSprites, factors_to_index, index_to_factors, render


class IndexedDSprites(DSprites):
    """The generated dSprites as a factor sampler whose observations are the images' dataset
    indices `[N]` (int64) rather than their pixels: pair it with [`EncodedDSprites.representation`].
    Factors are drawn exactly as `DSprites` draws them."""

    def sample_observations_from_factors(self, factors, random_state=None) -> np.ndarray:
        return factors_to_index(factors)


@dataclass
class EncodedDSprites:
    """The posterior of every generated dSprites image under one model, in the published order.

    `means`: float32 `[737280, D]`, the representation the metrics score (a VAE's posterior mean,
    an autoencoder's code). `stds`: float32 `[737280, D]`, the posterior's standard deviations, or
    None for a model without a posterior (an autoencoder). Row `i` is image `i` of
    `latentcode.data.dsprites` (`index_to_factors(i)` gives its factors).
    """

    means: np.ndarray
    stds: np.ndarray | None = None

    def __post_init__(self):
        if self.means.ndim != 2 or len(self.means) != NUM_IMAGES:
            raise ValueError(
                f"expected the codes of all {NUM_IMAGES} dSprites images, [{NUM_IMAGES}, D]; got shape "
                f"{tuple(self.means.shape)}: build it with EncodedDSprites.encode(model)"
            )
        if self.stds is not None and self.stds.shape != self.means.shape:
            raise ValueError(f"stds {tuple(self.stds.shape)} must have the shape of means {tuple(self.means.shape)}")

    @classmethod
    def encode(
        cls, model, batch_size: int = 1024, device: str | torch.device | None = None, log: Callable | None = None
    ) -> EncodedDSprites:
        """Encode every image with `model` (a latentcode model taking 64x64 images with 1 or 3
        channels; grey images are repeated for 3), `batch_size` images at a time. A model with a
        posterior (a VAE) gives its mean and standard deviation, any other its continuous code as
        `means` and no `stds`."""
        device = torch.device(device) if device is not None else next(model.parameters()).device
        means, stds = None, None
        for start in range(0, NUM_IMAGES, batch_size):
            stop = min(start + batch_size, NUM_IMAGES)
            images = render(index_to_factors(np.arange(start, stop)))
            pixels = torch.from_numpy(images[:, None].astype(np.float32) * 2 - 1)  # {0, 1} -> the model's [-1, 1]
            if model.config.in_channels == 3:
                pixels = pixels.expand(-1, 3, -1, -1)
            with torch.no_grad():
                mean, std = _posterior(model, pixels.to(device))
            if means is None:
                means = np.empty((NUM_IMAGES, mean.shape[1]), dtype=np.float32)
                stds = np.empty_like(means) if std is not None else None
            means[start:stop] = mean
            if std is not None:
                stds[start:stop] = std
            if log is not None and (stop // batch_size) % 100 == 0:
                log(f"encoded {stop} of {NUM_IMAGES} dSprites images")
        return cls(means, stds)

    @property
    def sampler(self) -> IndexedDSprites:
        """The factor sampler to pass to the metrics with [`representation`]."""
        return IndexedDSprites()

    def representation(self, indices: np.ndarray) -> np.ndarray:
        """The codes `[N, D]` of images `indices` `[N]` (an [`IndexedDSprites`]'s observations)."""
        indices = np.asarray(indices)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(
                "EncodedDSprites.representation takes dataset indices [N] (the observations of its own "
                f"sampler), got {indices.dtype} of shape {tuple(indices.shape)}: pass encoded.sampler to the metric"
            )
        return self.means[indices]


def _posterior(model, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """`(mean [B, D], std [B, D] or None)` of `model`'s code for `pixels`, flattened."""
    encoded = model.encode(pixels)
    mean = model.continuous_code_encoded(encoded).flatten(1).float().cpu().numpy()
    std = model.stored_code(encoded).get("latent_std")  # a VAE stores its posterior's; other families have none
    return mean, None if std is None else std.float().cpu().numpy()
