"""The β-VAE family's objectives: β-VAE, capacity annealing, β-TCVAE and FactorVAE.

The losses of YannDubs/disentangling-vae (`disvae/models/losses.py`), whose published checkpoints
latentcode converts, with the same scale so that their published weights carry over:

    beta      recon + anneal(step) * β * KL                       (Higgins et al. 2017; disentangling-vae's betaH)
    capacity  recon + γ * |KL - C(step)|, C rising linearly        (Burgess et al. 2018; disentangling-vae's betaB)
    btcvae    recon + α * MI + β * TC + anneal(step) * γ * dw-KL  (Chen et al. 2018)
    factor    recon + KL + anneal(step) * γ * TC(discriminator)   (Kim & Mnih 2018)

Every term is in nats per image, averaged over the batch: `recon` is the negative
log-likelihood of the image summed over its pixels ([`reconstruction_nll`]), `KL` is
KL(q(z|x) || N(0, I)) summed over the latent dimensions. `anneal(step)` and `C(step)` rise
linearly over `anneal_steps` optimiser steps (`losses.linear_ramp`, disentangling-vae's
`linear_annealing`; 0: no annealing).

latentcode's pixels are in [-1, 1]; disentangling-vae's in [0, 1]. The likelihoods map both the
image and the reconstruction `y -> (y + 1) / 2` first, so the numbers are disentangling-vae's.

β-VAE and capacity annealing take any latent (the KL sums over every latent element). β-TCVAE
and FactorVAE estimate the total correlation between latent dimensions from the minibatch; they
need a vector latent (`backbone="vector"`, `[B, D]`): on a grid of C x h x w elements a batch
of B samples says nothing about the joint q(z) (and FactorVAE's discriminator would grow with
the image). They refuse other backbones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .losses import linear_ramp

# latentcode's own VAE objective (`kl`: the model config's `kl_weight` per value) and
# disentangling-vae's `--loss` names.
VAE_OBJECTIVES = ("kl", "beta", "capacity", "btcvae", "factor")
RECONSTRUCTION_DISTRIBUTIONS = ("bernoulli", "gaussian", "laplace")
# Backbones whose decoder ends in a sigmoid: their output is a probability per pixel (Bernoulli).
PROBABILITY_BACKBONES = ("vector",)
# Smallest probability the Bernoulli likelihood takes: a [-1, 1] pixel near +-1 holds the
# probability only to about 3e-8 in fp32, so below 1e-6 its logarithm would be noise (and its
# gradient explode); there the log is clamped (at most 3 % off above it).
PROBABILITY_EPS = 1e-6


def reconstruction_nll(reconstruction: torch.Tensor, target: torch.Tensor, distribution: str) -> torch.Tensor:
    """Negative log-likelihood of `target` under `reconstruction`, summed over each image's pixels
    and averaged over the batch (nats per image), both `[B, C, H, W]` in [-1, 1]; as
    disentangling-vae's `_reconstruction_loss` on their [0, 1] values `p` (reconstruction) and `t`:

    - `bernoulli`: `-sum(t log p + (1 - t) log(1 - p))` (a decoder ending in a sigmoid; the logs
      are read from `1 + y` and `1 - y` directly, each clamped at `log(PROBABILITY_EPS)`),
    - `gaussian`: `sum((255 p - 255 t)^2) / 255` (MSE in 8-bit units, divided by 255),
    - `laplace`: `3 * sum(|p - t|)`.
    """
    if distribution not in RECONSTRUCTION_DISTRIBUTIONS:
        raise ValueError(
            f"reconstruction_distribution must be one of {RECONSTRUCTION_DISTRIBUTIONS}, got {distribution!r}"
        )
    if reconstruction.shape != target.shape:
        raise ValueError(
            f"the reconstruction {tuple(reconstruction.shape)} and the image {tuple(target.shape)} must have one shape"
        )
    y, x = reconstruction.float(), target.float()
    t = (x + 1) / 2
    if distribution == "bernoulli":
        # log p = log((1 + y) / 2) and log(1 - p) = log((1 - y) / 2), without forming 1 - p.
        log_p = torch.log(((1 + y) / 2).clamp_min(PROBABILITY_EPS))
        log_not_p = torch.log(((1 - y) / 2).clamp_min(PROBABILITY_EPS))
        per_value = -(t * log_p + (1 - t) * log_not_p)
    elif distribution == "gaussian":
        per_value = 255 * ((y - x) / 2) ** 2
    else:
        per_value = 3 * ((y - x) / 2).abs()
    return per_value.sum() / y.shape[0]


def log_density_gaussian(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(logvar)) (broadcasting)."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean).pow(2) * torch.exp(-logvar))


def log_importance_weight_matrix(batch_size: int, dataset_size: int) -> torch.Tensor:
    """`[B, B]` log-weights of minibatch stratified sampling (Chen et al. 2018, appendix C.2), with
    `M = B - 1` and `N = dataset_size`: row b weights sample b's own posterior `1 / N`, one other
    (the next, cyclically) `(N - M) / (N M)` and the remaining `M - 1` ones `1 / M`; each row sums
    to 1.

    (Chen et al.'s released code, which disentangling-vae copies, writes the `1 / N` and `(N - M) /
    (N M)` with strides of B, which puts them on columns 0 and 1 of every row instead of each
    sample's own posterior; this matrix is the paper's.)
    """
    if batch_size < 2:
        raise ValueError(f"β-TCVAE's minibatch estimate needs a batch of at least 2 images, got {batch_size}")
    if dataset_size < batch_size:
        raise ValueError(
            f"β-TCVAE's dataset size ({dataset_size}) must be at least the batch size ({batch_size}); "
            "set tc_dataset_size to the number of training images"
        )
    n, m = dataset_size, batch_size - 1
    rows = torch.arange(batch_size)
    weights = torch.full((batch_size, batch_size), 1 / m, dtype=torch.float64)
    weights[rows, (rows + 1) % batch_size] = (n - m) / (n * m)
    weights[rows, rows] = 1 / n
    return weights.log()


@dataclass
class KLDecomposition:
    """β-TCVAE's decomposition of the batch's KL, each a scalar in nats per image:
    `mutual_information` E[log q(z|x) - log q(z)], `total_correlation` E[log q(z) - sum_j log
    q(z_j)], `dimension_wise_kl` E[sum_j log q(z_j) - log p(z)]."""

    mutual_information: torch.Tensor
    total_correlation: torch.Tensor
    dimension_wise_kl: torch.Tensor


def decompose_kl(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, dataset_size: int) -> KLDecomposition:
    """The [`KLDecomposition`] of a batch of posterior samples `z` `[B, D]` of q(z|x_b) =
    N(mean_b, exp(logvar_b)), with q(z) and each q(z_j) estimated by minibatch stratified sampling
    over the batch's posteriors (Chen et al. 2018; disentangling-vae's `_get_log_pz_qz_prodzi_qzCx`
    with `is_mss=True`):

        log q(z_b)   ~ log sum_c w_bc q(z_b | x_c)
        log q(z_b,j) ~ log sum_c w_bc q(z_b,j | x_c)        w: [`log_importance_weight_matrix`]

    disentangling-vae adds log w_bc to each of the D dimensions before summing them for log q(z),
    weighting the joint by w_bc^D; that shifts its MI up and its TC down by about (D - 1) log M
    nats. Here the joint is weighted once, as in the paper and Chen et al.'s code. MI + TC +
    dimension-wise KL is the batch's E[log q(z|x) - log p(z)] either way."""
    if z.dim() != 2:
        raise ValueError(
            f"β-TCVAE needs vector latents [B, D], got {tuple(z.shape)}; use backbone='vector' "
            "(or vae_objective beta / capacity, which take any latent)"
        )
    z, mean, logvar = z.float(), mean.float(), logvar.float()
    log_q_z_given_x = log_density_gaussian(z, mean, logvar).sum(dim=1)
    log_p_z = log_density_gaussian(z, torch.zeros_like(z), torch.zeros_like(z)).sum(dim=1)
    # [B, B, D]: log q(z_b,j | x_c) for sample b under posterior c.
    matrix = log_density_gaussian(z[:, None], mean[None], logvar[None])
    log_weights = log_importance_weight_matrix(z.shape[0], dataset_size).to(z.device, z.dtype)
    log_q_z = torch.logsumexp(matrix.sum(dim=2) + log_weights, dim=1)
    log_prod_q_zj = torch.logsumexp(matrix + log_weights[:, :, None], dim=1).sum(dim=1)
    return KLDecomposition(
        mutual_information=(log_q_z_given_x - log_q_z).mean(),
        total_correlation=(log_q_z - log_prod_q_zj).mean(),
        dimension_wise_kl=(log_prod_q_zj - log_p_z).mean(),
    )


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """FactorVAE's samples of prod_j q(z_j) (Kim & Mnih 2018, algorithm 1): each column of `z`
    `[B, D]` shuffled across the batch by its own random permutation."""
    if z.dim() != 2:
        raise ValueError(f"permute_dims takes vector latents [B, D], got {tuple(z.shape)}")
    batch_size, dims = z.shape
    order = torch.stack([torch.randperm(batch_size, generator=generator) for _ in range(dims)], dim=1)
    return torch.gather(z, 0, order.to(z.device))


class TotalCorrelationDiscriminator(nn.Module):
    """FactorVAE's discriminator: an MLP `[B, latent_dim] -> [B, 2]` logits (column 0: "a sample
    of q(z)", column 1: "a sample of prod_j q(z_j)"), `num_layers` linear layers of
    `hidden_units` with LeakyReLU(0.2) between them: the paper's 6 x 1000, as disentangling-vae."""

    def __init__(self, latent_dim: int, hidden_units: int = 1000, num_layers: int = 6, negative_slope: float = 0.2):
        super().__init__()
        if num_layers < 2 or hidden_units < 1 or latent_dim < 1:
            raise ValueError(
                f"the discriminator needs latent_dim >= 1, hidden_units >= 1 and num_layers >= 2, got "
                f"{latent_dim}, {hidden_units}, {num_layers}"
            )
        sizes = [latent_dim] + [hidden_units] * (num_layers - 1) + [2]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.negative_slope = negative_slope

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for linear in self.linears[:-1]:
            h = F.leaky_relu(linear(h), self.negative_slope)
        return self.linears[-1](h)


def total_correlation_estimate(logits: torch.Tensor) -> torch.Tensor:
    """The density-ratio estimate of TC, `mean(logit_q(z) - logit_prod)` of `[B, 2]` logits:
    log(D / (1 - D)) for the softmax discriminator D."""
    return (logits[:, 0] - logits[:, 1]).mean()


def discriminator_loss(logits_joint: torch.Tensor, logits_permuted: torch.Tensor) -> torch.Tensor:
    """The discriminator's cross-entropy: samples of q(z) are class 0, permuted ones class 1,
    each half weighted 1/2 (disentangling-vae's `d_tc_loss`)."""
    joint = F.cross_entropy(
        logits_joint.float(), torch.zeros(len(logits_joint), dtype=torch.long, device=logits_joint.device)
    )
    permuted = F.cross_entropy(
        logits_permuted.float(), torch.ones(len(logits_permuted), dtype=torch.long, device=logits_permuted.device)
    )
    return 0.5 * (joint + permuted)


def _vector_latent(z: torch.Tensor, objective: str) -> torch.Tensor:
    if z.dim() != 2:
        raise ValueError(
            f"vae_objective={objective!r} needs vector latents [B, D], got {tuple(z.shape)}; use backbone='vector' "
            "(or vae_objective beta / capacity, which take any latent)"
        )
    return z


@dataclass
class VAELoss:
    """The reconstruction likelihood and regulariser of one of disentangling-vae's objectives
    (the subclasses). [`latentcode.objectives.AutoencoderObjective`] calls `reconstruction` and
    `regularizer`; their sum is the objective, in nats per image.

    Args:
        reconstruction_distribution: the pixel likelihood, one of `RECONSTRUCTION_DISTRIBUTIONS`
            ([`reconstruction_nll`]; `bernoulli` needs a decoder ending in a sigmoid).
        anneal_steps: optimiser steps over which the objective's annealed quantity rises (0: none).
    """

    reconstruction_distribution: str = "bernoulli"
    anneal_steps: int = 0

    name = "VAE"  # the objective's name in model cards
    needs_vector_latent = False

    def __post_init__(self):
        if self.reconstruction_distribution not in RECONSTRUCTION_DISTRIBUTIONS:
            raise ValueError(
                f"reconstruction_distribution must be one of {RECONSTRUCTION_DISTRIBUTIONS}, got {self.reconstruction_distribution!r}"
            )
        if self.anneal_steps < 0:
            raise ValueError(f"anneal_steps must be >= 0 optimiser steps, got {self.anneal_steps}")

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model this objective cannot train, saying why and what to use."""
        backbone = model.config.backbone
        if self.reconstruction_distribution == "bernoulli" and backbone not in PROBABILITY_BACKBONES:
            raise ValueError(
                f"reconstruction_distribution='bernoulli' needs a decoder whose output is a probability per pixel (backbones "
                f"{PROBABILITY_BACKBONES} end in a sigmoid); backbone={backbone!r} outputs unbounded values: "
                "use reconstruction_distribution='gaussian' or 'laplace', or backbone='vector'"
            )
        if self.needs_vector_latent and not model.backbone_spec.vector_latent:
            raise ValueError(
                f"{self.name} estimates the total correlation between latent dimensions from the minibatch and needs "
                f"a vector latent; backbone={backbone!r} has a latent grid. Use backbone='vector', or "
                "vae_objective beta / capacity, which take any latent"
            )

    def reconstruction(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of `target` `[B, C, H, W]`, nats per image ([`reconstruction_nll`])."""
        return reconstruction_nll(reconstruction, target, self.reconstruction_distribution)

    def anneal(self, step: int) -> float:
        """The regularisation's annealing factor at optimiser `step`: 0 -> 1 over `anneal_steps` steps."""
        return linear_ramp(0.0, 1.0, step, self.anneal_steps)

    def regularizer(self, output, step: int) -> tuple[torch.Tensor, dict]:
        """`(term, logged_parts)` for a VAE's forward `output` (`kl`, `latents`, `latent_mean`,
        `latent_logvar`) at optimiser `step`."""
        raise NotImplementedError

    def terms(self) -> str:
        """The regulariser in words, for `describe`."""
        raise NotImplementedError

    def describe(self) -> str:
        """The objective in words, for a model card."""
        annealing = f", annealed over {self.anneal_steps} steps" if self.anneal_steps else ""
        return f"{self.name}: {self.reconstruction_distribution} reconstruction (nats per image) + {self.terms()}{annealing}"


@dataclass
class BetaVAELoss(VAELoss):
    """β-VAE (Higgins et al. 2017): `recon + anneal(step) * beta * KL`; `beta = 1` is the VAE."""

    beta: float = 4.0
    name = "β-VAE (Higgins et al. 2017)"

    def regularizer(self, output, step: int) -> tuple[torch.Tensor, dict]:
        factor = self.anneal(step)
        return factor * self.beta * output.kl, {"anneal_factor": factor}

    def terms(self) -> str:
        return f"β KL (β = {self.beta})"


@dataclass
class CapacityAnnealingLoss(VAELoss):
    """β-VAE with capacity annealing (Burgess et al. 2018): `recon + gamma * |KL - C(step)|`, the
    capacity C rising linearly from `capacity_start` to `capacity_end` nats over `anneal_steps` steps."""

    capacity_start: float = 0.0
    capacity_end: float = 25.0
    gamma: float = 1000.0
    name = "β-VAE with capacity annealing (Burgess et al. 2018)"

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.capacity_start <= self.capacity_end:
            raise ValueError(
                f"the capacity rises from capacity_start to capacity_end: need 0 <= capacity_start <= capacity_end, got "
                f"{self.capacity_start} and {self.capacity_end}"
            )

    def capacity(self, step: int) -> float:
        """C at optimiser `step`, in nats."""
        return linear_ramp(self.capacity_start, self.capacity_end, step, self.anneal_steps)

    def regularizer(self, output, step: int) -> tuple[torch.Tensor, dict]:
        capacity = self.capacity(step)
        return self.gamma * (output.kl - capacity).abs(), {"capacity": capacity}

    def terms(self) -> str:
        return f"γ |KL - C| (γ = {self.gamma}, C from {self.capacity_start} to {self.capacity_end} nats)"


@dataclass
class BetaTCVAELoss(VAELoss):
    """β-TCVAE (Chen et al. 2018): `recon + alpha * MI + beta * TC + anneal(step) * gamma * dw-KL`
    ([`decompose_kl`]); `dataset_size`: the number of training images N (stratified sampling)."""

    alpha: float = 1.0
    beta: float = 6.0
    gamma: float = 1.0
    dataset_size: int = 0
    name = "β-TCVAE (Chen et al. 2018)"
    needs_vector_latent = True

    def __post_init__(self):
        super().__post_init__()
        if self.dataset_size < 2:
            raise ValueError(
                f"β-TCVAE needs the number of training images (minibatch stratified sampling), got "
                f"{self.dataset_size}; set tc_dataset_size"
            )

    def regularizer(self, output, step: int) -> tuple[torch.Tensor, dict]:
        z = _vector_latent(output.latents, "btcvae")
        parts = decompose_kl(z, output.latent_mean, output.latent_logvar, self.dataset_size)
        factor = self.anneal(step)
        term = (
            self.alpha * parts.mutual_information
            + self.beta * parts.total_correlation
            + factor * self.gamma * parts.dimension_wise_kl
        )
        logs = {
            "mutual_information": parts.mutual_information,
            "total_correlation": parts.total_correlation,
            "dimension_wise_kl": parts.dimension_wise_kl,
            "anneal_factor": factor,
        }
        return term, logs

    def terms(self) -> str:
        return (
            f"α MI + β TC + γ dimension-wise KL (α = {self.alpha}, β = {self.beta}, γ = {self.gamma}; "
            f"minibatch stratified sampling over {self.dataset_size} images)"
        )


@dataclass
class FactorVAELoss(VAELoss):
    """FactorVAE (Kim & Mnih 2018): `recon + KL + anneal(step) * gamma * TC`, TC estimated by
    `discriminator` ([`TotalCorrelationDiscriminator`]) through its logits, which the VAE's term
    does not train (its weights enter detached). The discriminator learns from
    `discriminator_loss` (`trained`: its DDP-prepared wrapper, by default itself).

    The paper draws two batches per step: one for the VAE and the q(z) samples, one whose samples
    are permuted. Here one batch of B images goes through the VAE (reconstruction, KL and the TC
    estimate over all B); its first half's samples are the discriminator's q(z) samples, its second
    half's, dimension-wise permuted, the prod_j q(z_j) ones. (disentangling-vae splits the batch
    the same way but trains the VAE on the first half only; its discriminator loss also reaches
    the encoder, which the paper's does not and this one does not.)
    """

    gamma: float = 6.0
    discriminator: TotalCorrelationDiscriminator | None = None
    trained: nn.Module | None = None
    name = "FactorVAE (Kim & Mnih 2018)"
    needs_vector_latent = True

    def __post_init__(self):
        super().__post_init__()
        if self.discriminator is None:
            raise ValueError("FactorVAE needs its TotalCorrelationDiscriminator (discriminator=)")

    def regularizer(self, output, step: int) -> tuple[torch.Tensor, dict]:
        z = _vector_latent(output.latents, "factor")
        weights = {name: weight.detach() for name, weight in self.discriminator.named_parameters()}
        logits = torch.func.functional_call(self.discriminator, weights, (z,)).float()
        total_correlation = total_correlation_estimate(logits)
        factor = self.anneal(step)
        term = output.kl + factor * self.gamma * total_correlation
        return term, {"total_correlation": total_correlation, "anneal_factor": factor}

    def discriminator_loss(self, output) -> torch.Tensor:
        """The discriminator's loss on the batch's detached posterior samples `output.latents`
        `[B, D]`: the first half as they are, the second half permuted ([`permute_dims`])."""
        z = _vector_latent(output.latents, "factor").detach()
        if len(z) < 2:
            raise ValueError(f"FactorVAE's discriminator needs a batch of at least 2 images, got {len(z)}")
        half = len(z) // 2
        judge = self.trained if self.trained is not None else self.discriminator
        logits = judge(torch.cat([z[:half], permute_dims(z[half:])])).float()
        return discriminator_loss(logits[:half], logits[half:])

    def terms(self) -> str:
        return f"KL + γ TC (γ = {self.gamma}; TC from a discriminator on permuted samples)"


def vae_loss_from_config(config, model: nn.Module, dataset_size: int) -> VAELoss | None:
    """The [`VAELoss`] that a training config's `vae_objective` and its weights (disentangling-vae's
    weights under readable names: `beta`, `capacity_start`, ...) describe for `model`, or `None` for `kl`
    (latentcode's own KL term). `dataset_size`: the training images, β-TCVAE's N unless
    `tc_dataset_size` says otherwise."""
    objective = config.objective.vae_objective
    if objective == "kl":
        return None
    common = dict(
        reconstruction_distribution=config.objective.reconstruction_distribution,
        anneal_steps=config.objective.anneal_steps,
    )
    if objective == "beta":
        loss = BetaVAELoss(beta=config.objective.beta, **common)
    elif objective == "capacity":
        loss = CapacityAnnealingLoss(
            capacity_start=config.objective.capacity_start,
            capacity_end=config.objective.capacity_end,
            gamma=config.objective.capacity_weight,
            **common,
        )
    elif objective == "btcvae":
        size = config.objective.tc_dataset_size or dataset_size
        loss = BetaTCVAELoss(
            alpha=config.objective.mutual_information_weight,
            beta=config.objective.tc_weight,
            gamma=config.objective.dimension_kl_weight,
            dataset_size=size,
            **common,
        )
    elif objective == "factor":
        discriminator = TotalCorrelationDiscriminator(
            model.config.latent_channels, config.objective.tc_discriminator_hidden_units
        )
        loss = FactorVAELoss(gamma=config.objective.tc_weight, discriminator=discriminator, **common)
    else:
        raise ValueError(f"vae_objective must be one of {VAE_OBJECTIVES}, got {objective!r}")
    loss.check_model(model)
    return loss
