"""How the gradient of the decoder's loss reaches the encoder through a quantizer.

The forward value is always the code; the estimators differ in the backward pass:

- `"straight_through"` (van den Oord et al. 2017): the gradient at the code is copied to the
  latent unchanged.
- `"rotation"` (Fifty et al. 2024, "Restructuring Vector Quantization with the Rotation
  Trick"): the latent is mapped to its code by a rotation and a rescaling that are treated as
  constants, so the gradient at the code reaches the latent rotated and rescaled: codes far from
  their latents pass gradients that push the latents apart or together, which the
  straight-through copy cannot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GRADIENT_ESTIMATORS = ("straight_through", "rotation")


def straight_through(latents: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Value `codes`, gradient copied to `latents` (both `[N, D]`)."""
    return latents + (codes - latents).detach()


def rotation_trick(latents: torch.Tensor, codes: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Value `codes`, gradient through `R latents * |codes| / |latents|` with R and the scale constant.

    R is the rotation taking the direction `u = latents / |latents|` to `q = codes / |codes|` in
    the plane they span (section 4.2 of the paper, as a Householder form that never builds a
    D x D matrix): `R e = e - 2 (e.w) w + 2 (e.u) q` with `w = (u + q) / |u + q|`.

    Args:
        latents: `[N, D]` fp32, with the gradient path to the encoder.
        codes: `[N, D]` fp32 codes of the same rows; no gradient passes through this output to
            them (the codebook and commitment losses train the codes).

    Returns:
        `[N, D]`, equal to `codes` up to rounding.
    """
    latent_norm = latents.detach().norm(dim=1, keepdim=True)
    code_norm = codes.detach().norm(dim=1, keepdim=True)
    direction = (latents.detach() / latent_norm.clamp_min(eps)).detach()
    target = (codes.detach() / code_norm.clamp_min(eps)).detach()
    householder = F.normalize(direction + target, dim=1)
    rotated = (
        latents
        - 2 * (latents * householder).sum(1, keepdim=True) * householder
        + 2 * (latents * direction).sum(1, keepdim=True) * target
    )
    return rotated * (code_norm / latent_norm.clamp_min(eps))


def estimate_gradient(estimator: str, latents: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Apply the named estimator (one of `GRADIENT_ESTIMATORS`) to rows `[N, D]`."""
    if estimator == "rotation":
        return rotation_trick(latents, codes)
    if estimator == "straight_through":
        return straight_through(latents, codes)
    raise ValueError(f"gradient_estimator must be one of {GRADIENT_ESTIMATORS}, got {estimator!r}")


def snap_to_codes(
    estimator: str, rows: torch.Tensor, codes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A codebook lookup's training terms, for latent rows `[N, D]` and their chosen codes `[N, D]`
    (differentiable in the codebook).

    Returns:
        `(quantized, codebook_loss, commitment_loss)`: `quantized` `[N, D]` equals `codes` with the
        gradient reaching `rows` through `estimator`; the codebook loss moves the codes towards the
        (detached) latents, the commitment loss the latents towards the (detached) codes.
    """
    if not (torch.is_grad_enabled() and (rows.requires_grad or codes.requires_grad)):
        # Nothing to differentiate: both terms are the same number, and a gradient
        # estimator's forward value would only be the codes, rounded.
        loss = F.mse_loss(codes, rows)
        return codes, loss, loss
    codebook_loss = F.mse_loss(codes, rows.detach())
    commitment_loss = F.mse_loss(rows, codes.detach())
    return estimate_gradient(estimator, rows, codes.detach()), codebook_loss, commitment_loss
