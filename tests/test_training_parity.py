"""Training parity with diffusers (issue 24): ours, converted from a diffusers `AutoencoderKL` /
`VQModel`, trains like it, step for step.

Both models start from the same weights and take AdamW steps on the same batches with the same
posterior noise; the gradients of the first step and the losses of every step must agree to
float32 rounding. Any training-mode difference (initialisation aside) fails this: a different
posterior parameterisation or clamping, KL reduction, quantiser loss, a dropout, a
training-only code path that computes something else. Run with one thread (where the backbone's
Winograd convolutions run in the forward pass and the input's gradient) and with two.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, VQModel

from latentcode import VAEModel, VQVAEModel
from latentcode.conversion.diffusers import diffusers_key_to_latentcode
from latentcode.modules import winograd

# Wide enough (64 channels, 32 tiles of 4x4 at 16x16 with 2 images) for the one-thread Winograd
# convolutions to run in the first level; two levels keep it fast.
ARCHITECTURE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(64, 64),
    layers_per_block=1,
    norm_num_groups=32,
)
STEPS = 3
# Large enough that the KL term moves the loss and the gradients well above rounding (the
# protocol of benchmarks/bench_parity.py uses 1e-6, where a wrong KL would hide in the MSE).
KL_WEIGHT = 1e-3
# Float32 rounding through two convolution implementations (oneDNN's, in NCHW vs channels_last,
# and Winograd's, ~1e-5 of a convolution's output) and AdamW's normalised steps: measured
# ~1e-6 for the losses and ~1e-5 for the gradients. Checked to fail for a KL averaged instead of
# summed, a posterior sample scaled by the variance instead of the standard deviation, and a
# Winograd convolution 1e-3 off (gradient differences 1.6e-3).
LOSS_TOLERANCE = 1e-5
GRADIENT_TOLERANCE = 1e-4


def peer_model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "vqvae":
        return VQModel(latent_channels=3, num_vq_embeddings=64, **ARCHITECTURE)
    return AutoencoderKL(latent_channels=4, **ARCHITECTURE)


def training_loss(model, family: str, pixels: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
    """MSE + 1e-6 x KL per image of a posterior sample (VAE), MSE + the quantiser's loss (VQ)."""
    if isinstance(model, VAEModel):
        output = model(pixels, sample_posterior=True, generator=noise)
        return output.reconstruction_loss + KL_WEIGHT * output.kl
    if isinstance(model, VQVAEModel):
        return model(pixels).loss
    if family == "vqvae":
        output = model(pixels)
        return F.mse_loss(output.sample, pixels) + output.commit_loss.mean()
    posterior = model.encode(pixels).latent_dist
    sample = model.decode(posterior.sample(generator=noise)).sample
    return F.mse_loss(sample, pixels) + KL_WEIGHT * posterior.kl().mean()


def gradient_differences(ours: dict, reference: dict) -> dict[str, float]:
    """Per parameter, `||ours - reference||` over the reference gradient's norm, or over 1e-3 of the
    largest gradient norm where that is more: some gradients are zero in exact arithmetic (the
    attention's key bias: softmax ignores a per-query constant) and only rounding remains."""
    floor = 1e-3 * max(float(g.norm()) for g in reference.values())
    return {k: float((g - reference[k]).norm()) / max(float(reference[k].norm()), floor) for k, g in ours.items()}


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


@pytest.mark.parametrize("family", ["vae", "vqvae"])
def test_training_steps_match_diffusers_from_the_same_weights(family, threads, monkeypatch):
    peer = peer_model(family).train()
    ours = (VQVAEModel if family == "vqvae" else VAEModel).from_diffusers(peer).train()
    winograd_calls = []
    original = winograd.winograd_conv2d
    monkeypatch.setattr(winograd, "winograd_conv2d", lambda *a: winograd_calls.append(1) or original(*a))
    optimizers = [torch.optim.AdamW(model.parameters(), lr=4e-4) for model in (peer, ours)]
    images = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        # Smooth images (upsampled noise) in [-1, 1], more like photos than white noise is.
        pixels = F.interpolate(torch.rand(2, 3, 4, 4, generator=images) * 2 - 1, size=16, mode="bilinear")
        losses, gradients = [], []
        for model, optimizer in zip((peer, ours), optimizers):
            loss = training_loss(model, family, pixels, torch.Generator().manual_seed(step))
            loss.backward()
            losses.append(loss.item())
            gradients.append({name: p.grad.clone() for name, p in model.named_parameters()})
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        assert losses[1] == pytest.approx(losses[0], rel=LOSS_TOLERANCE), f"step {step}"
        if step == 0:  # same weights: the gradients agree too
            reference = {diffusers_key_to_latentcode(k): g for k, g in gradients[0].items()}
            assert gradients[1].keys() == reference.keys()
            differences = gradient_differences(gradients[1], reference)
            worst = max(differences, key=differences.get)
            assert differences[worst] < GRADIENT_TOLERANCE, f"gradient of {worst}: {differences[worst]:.2e}"
    # The one-thread run covers the Winograd path; with two threads the backbone runs oneDNN's.
    assert bool(winograd_calls) == (threads == 1)
