"""The VAE's posterior q(z|x): a diagonal Gaussian, with the attribute names of diffusers'
``DiagonalGaussianDistribution`` so code written for ``AutoencoderKL`` works unchanged."""

from __future__ import annotations

import math

import torch

# Clamping the log-variance keeps exp() finite in fp16/bf16 and early in training.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class DiagonalGaussianDistribution:
    """N(mean, diag(std^2)) per latent element.

    Args:
        parameters: `[B, 2 * C, h, w]`, the mean in the first `C` channels and the
            log-variance in the last `C` (the VAE encoder's output).
        deterministic: if True, `std` is zero and `sample()` returns the mean.
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        if parameters.dim() < 2 or parameters.shape[1] % 2 != 0:
            raise ValueError(
                f"parameters must be [B, 2*C, ...] (mean and log-variance), got shape {tuple(parameters.shape)}"
            )
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)
        self.deterministic = deterministic
        if deterministic:
            self.logvar = torch.zeros_like(self.mean)
            self.std = torch.zeros_like(self.mean)
            self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised draw `mean + std * eps`, `eps ~ N(0, I)`; differentiable in mean and std.

        `generator` (on the tensors' device) makes the draw reproducible. Returns `[B, C, h, w]`.
        """
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The most likely latent, the mean. `[B, C, h, w]`."""
        return self.mean

    def kl_per_element(self) -> torch.Tensor:
        """KL(q || N(0, I)) of each latent element, nats: `[B, C, h, w]` (a vector latent's `[B, D]`)."""
        if self.deterministic:
            return torch.zeros_like(self.mean)
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar)

    def kl_per_channel(self) -> torch.Tensor:
        """KL(q || N(0, I)) of each image and latent channel in nats, computed in float32 and summed
        over a grid's positions: `[B, C]` (a vector latent's `[B, D]`: one per entry). The channels'
        sum is `kl()`; per-dimension KL and active dimensions (traversal, evaluation) read this."""
        kl = DiagonalGaussianDistribution(self.parameters.float(), self.deterministic).kl_per_element()
        return kl.flatten(2).sum(2) if kl.dim() > 2 else kl

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        """KL(self || other), summed over all non-batch dims; `other` defaults to N(0, I). Returns `[B]`."""
        dims = list(range(1, self.mean.dim()))
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        if other is None:
            return torch.sum(self.kl_per_element(), dim=dims)
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=dims,
        )

    def nll(self, sample: torch.Tensor, dims: tuple[int, ...] | None = None) -> torch.Tensor:
        """Negative log-likelihood of `sample` under this Gaussian, summed over `dims`
        (default all non-batch dims). Returns `[B]`."""
        if dims is None:
            dims = tuple(range(1, self.mean.dim()))
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device, dtype=self.mean.dtype)
        log_two_pi = math.log(2.0 * math.pi)
        return 0.5 * torch.sum(log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var, dim=dims)


def weighted_kl_per_value(kl: torch.Tensor, weight: float, reconstruction: torch.Tensor) -> torch.Tensor:
    """`weight * kl / (C * H * W)`: a KL in nats per image (`kl`) as nats per reconstructed value
    of `reconstruction` `[B, C, H, W]`, the scale of a per-value reconstruction loss, weighted.
    What `VAEModel.forward`'s loss and a training objective's KL term add."""
    return weight * kl / reconstruction[0].numel()
