"""Loss pieces of the VQGAN recipe, assembled by `latentcode.objectives.AutoencoderObjective`.

`model(pixels).loss` already holds the reconstruction term (MSE or L1, `config.reconstruction_loss`)
plus the family's regulariser (KL for the VAE, codebook + commitment for the VQ-VAE). The
objective adds, as options:

- [`linear_ramp`]: the one linear schedule of a weight over optimiser steps (the VAE's KL warm-up,
  the β-VAE family's annealing, a quantizer's entropy-weight annealing);
- [`PerceptualLoss`]: LPIPS (the `lpips` package) between reconstruction and target;
- [`PatchDiscriminator`] with [`discriminator_loss`] / [`generator_adversarial_loss`] (hinge or
  non-saturating), weighted by [`adaptive_generator_weight`] as in taming-transformers:
  `||grad_last nll|| / ||grad_last g||`, gradients taken at the decoder's last layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GAN_LOSSES = ("hinge", "non_saturating")


def linear_ramp(start: float, end: float, step: int, steps: int) -> float:
    """`start` at optimiser step 0, linearly to `end` at step `steps` and after (`end` throughout
    when `steps` is 0). `step` counts the optimiser steps taken before this one (0 for the first)."""
    if steps < 0:
        raise ValueError(f"a linear ramp's steps must be >= 0, got {steps}")
    if steps == 0 or step >= steps:
        return float(end)
    return float(start + (end - start) * step / steps)


class PerceptualLoss(nn.Module):
    """LPIPS distance (Zhang et al., 2018) between images in [-1, 1], via the `lpips` package.

    The network is frozen and stays in eval mode, but the distance is differentiable with
    respect to its inputs, so its gradient reaches the decoder. Grey images are repeated to
    three channels and an alpha channel is dropped.

    Args:
        net: LPIPS backbone, "vgg" (as in taming-transformers), "alex" or "squeeze".
        pretrained: load the backbone's ImageNet weights (from torchvision's cache or
            download.pytorch.org). `False` gives a random backbone: only for tests, where the
            loss's plumbing matters and its values do not.
        how_to_disable: how the caller's user turns LPIPS off, for the error message.
    """

    def __init__(self, net: str = "vgg", pretrained: bool = True, how_to_disable: str = "set perceptual_weight: 0"):
        super().__init__()
        import lpips

        try:
            self.lpips = lpips.LPIPS(net=net, pnet_rand=not pretrained, verbose=False)
        except (OSError, RuntimeError) as error:
            raise RuntimeError(
                f"could not load the ImageNet weights of LPIPS' {net!r} backbone ({error}). torchvision downloads "
                "them from download.pytorch.org into $TORCH_HOME/hub/checkpoints (default ~/.cache/torch); "
                f"on an offline machine copy the file there first, or {how_to_disable}"
            ) from error
        self.lpips.requires_grad_(False)
        self.lpips.eval()

    def train(self, mode: bool = True):
        # Dropout inside LPIPS' linear heads must stay off: the loss is a fixed metric.
        return super().train(False)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`[B, C, H, W]` x2 in [-1, 1] -> `[B]` LPIPS distances."""
        return self.lpips(as_rgb(reconstruction), as_rgb(target)).flatten()


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    channels = images.shape[1]
    if channels == 1:
        return images.expand(-1, 3, -1, -1)
    if channels in (3, 4):
        return images[:, :3]
    raise ValueError(f"LPIPS needs 1, 3 or 4 channel images, got {channels} channels")


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix; taming-transformers' `NLayerDiscriminator`).

    `[B, C, H, W] -> [B, 1, h, w]` logits, one per overlapping patch; `num_layers` stride-2
    convolutions, so `h ~ H / 2**num_layers - 2` (the input must be at least `2**(num_layers + 2)`
    pixels wide). Initialised like taming: N(0, 0.02) convolutions, N(1, 0.02) norm scales.

    Args:
        in_channels: channels of the images judged.
        channels: width of the first layer (doubled per layer, at most 8x).
        num_layers: stride-2 layers.
        norm: "batch" (as in taming) or "none".
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3, norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            layers = [nn.Conv2d(c_in, c_out, 4, stride, 1, bias=norm == "none")]
            if norm == "batch":
                # Batch statistics only: the discriminator never runs in eval mode, and running
                # statistics would be buffers that its frozen generator-side calls update on each
                # process differently.
                layers.append(nn.BatchNorm2d(c_out, track_running_stats=False))
            return [*layers, nn.LeakyReLU(0.2, inplace=True)]

        layers = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        width = channels
        for layer in range(1, num_layers + 1):
            out = channels * min(2**layer, 8)
            layers += block(width, out, stride=2 if layer < num_layers else 1)
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)

    @property
    def minimum_size(self) -> int:
        """Smallest image side for which every layer still has a spatial extent."""
        return 2 ** (self.num_layers + 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if min(images.shape[-2:]) < self.minimum_size:
            raise ValueError(
                f"a PatchDiscriminator with num_layers={self.num_layers} needs images of at least "
                f"{self.minimum_size}x{self.minimum_size} pixels, got {tuple(images.shape[-2:])}"
            )
        return self.layers(images)


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Discriminator objective, the mean of its real and fake halves.

    hinge: `relu(1 - D(x)) + relu(1 + D(G(z)))`; non_saturating: `softplus(-D(x)) + softplus(D(G(z)))`
    (the binary cross-entropy of the original GAN).
    """
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
    if kind == "non_saturating":
        return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())
    raise ValueError(f"GAN loss must be one of {GAN_LOSSES}, got {kind!r}")


def generator_adversarial_loss(logits_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Generator objective on the discriminator's logits for reconstructions.

    hinge: `-D(G(z))` (as in taming); non_saturating: `softplus(-D(G(z)))`.
    """
    if kind == "hinge":
        return -logits_fake.mean()
    if kind == "non_saturating":
        return F.softplus(-logits_fake).mean()
    raise ValueError(f"GAN loss must be one of {GAN_LOSSES}, got {kind!r}")


def adaptive_generator_weight(
    nll_loss: torch.Tensor, generator_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """VQGAN's balance between reconstruction and adversarial terms (Esser et al., 2021, eq. 7).

    `||d nll / d last_layer|| / (||d g / d last_layer|| + 1e-4)`, clamped to `[0, max_weight]` and
    detached. Both losses must still have their graphs (they are kept for the backward pass).
    """
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    generator_grad = torch.autograd.grad(generator_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.float().norm() / (generator_grad.float().norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
