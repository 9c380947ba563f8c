"""Training objectives: every loss term, weight and schedule of a recipe, in one object each.

`model(pixels).loss` is the family's standard objective at the model config's weights, the
smallest training loop. [`AutoencoderObjective`] is the recipe `training/train.py` runs: from the
model's output it computes

    loss = reconstruction (MSE or L1)
         + perceptual_weight * LPIPS                                  (optional)
         + kl_weight * linear_ramp(0, 1, step, kl_warmup_steps) * KL / (C*H*W)  (VAE)
           (or a β-VAE family objective, `vae_loss`: its likelihood and regulariser, in nats
           per image, replace the reconstruction and this KL term; `latentcode.disentanglement`)
         + commitment_weight * commitment + codebook_weight * codebook (VQ-VAE: the quantizer's
         + entropy_weight(step) * (entropy_per_sample                   terms, those it has)
                                   - diversity_weight * entropy_codebook)
         + adaptive_weight * disc_weight * adversarial                (from disc_start, optional)

and returns `(loss, logged_parts)` (the family's own values, `model.loss_summary(output)`, are
logged next to them by the training task). With its defaults (`for_model`: the model config's
reconstruction loss, KL weight and quantizer weights, no warm-up, no LPIPS, no GAN) it equals
`model(x).loss` exactly (with an entropy annealing: from its last step on). The discriminator's own loss is [`AdversarialTerms.discriminator_loss`].

Where the weights live, one place each, as transformers' models keep default loss coefficients
in their configs (`Wav2Vec2Config.diversity_loss_weight`, DETR's `*_loss_coefficient`): the
model config holds the family's default objective (`VAEConfig.kl_weight`; `VQVAEConfig`'s
`commitment_weight`, `codebook_weight`, `entropy_weight`, `diversity_weight`,
`entropy_annealing_steps`, `entropy_annealing_start_factor`), which `model(x).loss` and
`for_model` use; the training recipe overrides any of them (`TrainingConfig.objective.kl_weight` and
`TrainingConfig.quantizer_loss_weights`; unset = the model's). A quantizer returns its terms unweighted (`VQVAEOutput.quantizer_terms`:
an EMA codebook has no codebook term, residual levels sum theirs) and
[`QuantizerLossWeights`] weighs them. The entropy annealing is a function of the optimiser step
(`entropy_weight_at(step)`), so a resumed run anneals as the uninterrupted one; `model(x).loss`
has no step and uses the weight after annealing.

A prior's next-code cross-entropy is `latentcode.prior.prior_loss`, beside the prior it trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .configuration import check_reconstruction_loss
from .disentanglement import VAELoss
from .losses import (
    PerceptualLoss,
    adaptive_generator_weight,
    discriminator_loss,
    generator_adversarial_loss,
    linear_ramp,
)
from .modeling.base import mean_reconstruction_loss
from .modules.distributions import weighted_kl_per_value
from .modules.quantizers.loss_weights import QuantizerLossWeights


@dataclass
class AdversarialTerms:
    """The GAN part of a recipe (VQGAN): a PatchGAN judged through its `hinge` or
    `non_saturating` loss, active from optimiser step `start`.

    `discriminator` is the module the generator's term looks through (frozen during that pass, so
    no gradient reaches it); `trained` is the one its own loss trains (under DDP: the prepared,
    gradient-synchronised wrapper of the same module; by default the module itself).
    """

    discriminator: nn.Module
    weight: float
    start: int = 0
    kind: str = "hinge"
    adaptive: bool = True
    trained: nn.Module | None = None

    def active(self, step: int) -> bool:
        return step >= self.start

    def generator_term(
        self, reconstruction: torch.Tensor, nll: torch.Tensor, last_layer: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        """`weight * adversarial` for reconstructions `[B, C, H, W]`, the weight scaled by VQGAN's
        gradient-norm ratio at the decoder's `last_layer` when `adaptive`."""
        self.discriminator.requires_grad_(False)
        try:
            logits_fake = self.discriminator(reconstruction).float()
        finally:
            self.discriminator.requires_grad_(True)
        adversarial = generator_adversarial_loss(logits_fake, self.kind)
        weight = torch.tensor(self.weight, device=reconstruction.device)
        if self.adaptive:
            weight = weight * adaptive_generator_weight(nll, adversarial, last_layer)
        return weight * adversarial, {"generator_adversarial_loss": adversarial, "adversarial_weight": weight}

    def discriminator_loss(self, pixels: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """The discriminator's loss on real `pixels` and detached reconstructions, in one forward
        pass (one pass keeps BatchNorm and DDP's buffer sync simple)."""
        judge = self.trained if self.trained is not None else self.discriminator
        logits = judge(torch.cat([pixels, reconstruction.detach()])).float()
        logits_real, logits_fake = logits.chunk(2)
        return discriminator_loss(logits_real, logits_fake, self.kind)


@dataclass
class AutoencoderObjective:
    """The loss of an autoencoder of any family (see the module docstring).

    Args:
        reconstruction_loss: "mse" or "l1", the mean over every value.
        kl_weight: weight of the VAE's KL divergence per value (the model config's `kl_weight`).
        kl_warmup_steps: the KL weight rises linearly from 0 over these optimiser steps.
        quantizer_weights: the weights of a VQ-VAE's quantizer terms and the entropy annealing
            (`for_model`: the model config's, with the recipe's overrides).
        vae_loss: a β-VAE family objective ([`latentcode.disentanglement.VAELoss`]: β-VAE,
            capacity annealing, β-TCVAE, FactorVAE); its pixel likelihood replaces
            `reconstruction_loss` and its regulariser the KL term (`None`: off).
        perceptual: an LPIPS module, weighted by `perceptual_weight` (`None`: off).
        adversarial: the GAN terms (`None`: off).
    """

    reconstruction_loss: str = "mse"
    kl_weight: float = 0.0
    kl_warmup_steps: int = 0
    perceptual: PerceptualLoss | None = None
    perceptual_weight: float = 0.0
    adversarial: AdversarialTerms | None = None
    quantizer_weights: QuantizerLossWeights = field(default_factory=QuantizerLossWeights)
    vae_loss: VAELoss | None = None

    def __post_init__(self):
        check_reconstruction_loss(self.reconstruction_loss)
        if self.vae_loss is not None and self.kl_warmup_steps:
            raise ValueError(
                f"kl_warmup_steps={self.kl_warmup_steps} warms up the KL weight, which vae_loss replaces; "
                "its own annealing is vae_loss.anneal_steps"
            )

    @classmethod
    def for_model(cls, model: nn.Module, **options) -> AutoencoderObjective:
        """The objective whose defaults are `model`'s own `loss` (its config's reconstruction loss,
        KL weight and quantizer loss weights); `options` set the other terms, and override the KL
        weight and the quantizer's weights one by one by their names (`kl_weight=1e-4`,
        `commitment_weight=0.5`; None: the model's)."""
        weights = {name: options.pop(name) for name in QuantizerLossWeights.names() if name in options}
        defaults = {"reconstruction_loss": model.config.reconstruction_loss}
        defaults.update(model.objective_weights(options.pop("kl_weight", None), weights))  # the family's term
        return cls(**{**defaults, **options})

    def reconstruction(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean per-value MSE or L1 of `[B, C, H, W]` images, in fp32 (with `vae_loss`: its
        negative log-likelihood, nats per image)."""
        if self.vae_loss is not None:
            return self.vae_loss.reconstruction(reconstruction, target)
        return mean_reconstruction_loss(reconstruction, target, self.reconstruction_loss)

    def regularizer(self, output, step: int) -> tuple[torch.Tensor | float, dict]:
        """The family's bottleneck term, as the model's forward `output` picks it: the warmed-up KL
        or `vae_loss`'s regulariser (VAE, `kl_term`), the quantizer's own terms (VQ-VAE,
        `quantizer_term`), nothing (AutoEncoder)."""
        return output.regularizer(self, step)

    def kl_term(self, output, step: int) -> tuple[torch.Tensor, dict]:
        """The KL term of a VAE's forward `output` (nats per image, `output.kl`) at `step`."""
        if self.vae_loss is not None:
            return self.vae_loss.regularizer(output, step)
        factor = linear_ramp(0.0, 1.0, step, self.kl_warmup_steps)
        return weighted_kl_per_value(output.kl, self.kl_weight * factor, output.sample), {"kl_warmup_factor": factor}

    def quantizer_term(self, output, step: int) -> tuple[torch.Tensor, dict]:
        """The weighted quantizer terms of a VQ-VAE's forward `output` at `step`."""
        return self.quantizer_weights(output.quantizer_terms, step)

    def describe(self, model: nn.Module) -> str:
        """The terms in words, for a model card: `"MSE reconstruction, KL (weight 1e-06, ...)"`."""
        parts = [f"{self.reconstruction_loss.upper()} reconstruction"]
        regularizer = model.regularizer_description(self)  # the family's own term, at these weights
        if self.vae_loss is not None:
            parts = [self.vae_loss.describe()]
        elif regularizer is not None:
            parts.append(
                regularizer + (f", warmed up over {self.kl_warmup_steps} steps" if self.kl_warmup_steps else "")
            )
        if self.perceptual is not None:
            parts.append(f"LPIPS (weight {self.perceptual_weight})")
        if self.adversarial is not None:
            adaptive = "adaptive " if self.adversarial.adaptive else ""
            parts.append(
                f"PatchGAN {self.adversarial.kind} loss ({adaptive}weight {self.adversarial.weight}, "
                f"from step {self.adversarial.start})"
            )
        return ", ".join(parts)

    def __call__(
        self, output, pixels: torch.Tensor, step: int, last_layer: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        """`(loss, logged_parts)` of a model `output` for `pixels` `[B, C, H, W]` at optimiser
        `step`; `last_layer`: the decoder's last weight (the adaptive GAN weight needs it). The
        graph is kept: the reconstruction can still feed the discriminator's loss."""
        reconstruction = output.sample
        nll = self.reconstruction(reconstruction, pixels)
        logs = {"reconstruction_loss": nll}
        if self.perceptual is not None:
            perceptual = self.perceptual(reconstruction, pixels).float().mean()
            nll = nll + self.perceptual_weight * perceptual
            logs["perceptual_loss"] = perceptual
        regularizer, regularizer_logs = self.regularizer(output, step)
        loss = nll + regularizer
        logs.update(regularizer_logs)
        if self.adversarial is not None and self.adversarial.active(step):
            if last_layer is None and self.adversarial.adaptive:
                raise ValueError("the adaptive adversarial weight needs the decoder's last layer (last_layer=)")
            term, adversarial_logs = self.adversarial.generator_term(reconstruction, nll, last_layer)
            loss = loss + term
            logs.update(adversarial_logs)
        logs["loss"] = loss
        return loss, logs
