"""Validation metrics and the reconstruction grid."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from ..modeling import LatentCodePreTrainedModel


@torch.no_grad()
def evaluate(
    model: LatentCodePreTrainedModel, images: torch.Tensor, batch_size: int = 16, autocast=nullcontext
) -> tuple[dict[str, float], torch.Tensor]:
    """Reconstruct `images` `[V, C, H, W]` in [-1, 1] in eval mode (a VAE decodes its posterior mean).

    Returns `(metrics, reconstructions)`: `mse` and `l1` on the [-1, 1] scale, `psnr` in dB on the
    [0, 1] scale (mean over images), plus for a VQ-VAE `codebook_usage` (fraction of codes used)
    and `perplexity` (exp of the code histogram's entropy) over all `images`, and for a VAE
    `kl` (nats per image); `reconstructions` `[V, C, H, W]` fp32 clamped to [-1, 1], on the CPU.
    """
    was_training = model.training
    model.eval()
    reconstructions, squared, absolute, psnr, indices, kl = [], [], [], [], [], []
    for chunk in images.split(batch_size):
        chunk = chunk.to(model.device)
        with autocast():
            output = model(chunk)
        reconstruction = output.sample.float().clamp(-1.0, 1.0)
        error = (reconstruction - chunk).flatten(1)
        mse = error.pow(2).mean(1)
        squared.append(mse)
        absolute.append(error.abs().mean(1))
        psnr.append(10.0 * torch.log10(4.0 / mse.clamp_min(1e-10)))  # range 2 on [-1, 1] = range 1 on [0, 1]
        reconstructions.append(reconstruction.cpu())
        if getattr(output, "indices", None) is not None:
            indices.append(output.indices.flatten().cpu())
        if getattr(output, "kl", None) is not None:
            kl.append(output.kl.float().cpu() * len(chunk))
    model.train(was_training)
    metrics = {
        "mse": torch.cat(squared).mean().item(),
        "l1": torch.cat(absolute).mean().item(),
        "psnr": torch.cat(psnr).mean().item(),
    }
    if indices:
        counts = torch.bincount(torch.cat(indices), minlength=model.codebook_size).double()
        probabilities = counts / counts.sum()
        entropy = -(probabilities[probabilities > 0] * probabilities[probabilities > 0].log()).sum()
        metrics["codebook_usage"] = (counts > 0).double().mean().item()
        metrics["perplexity"] = math.exp(entropy.item())
    if kl:
        metrics["kl"] = torch.stack(kl).sum().item() / len(images)
    return metrics, torch.cat(reconstructions)
