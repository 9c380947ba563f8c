"""VQGAN losses: GAN objectives, adaptive weight, KL warm-up, LPIPS wrapper, PatchGAN."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torch.nn.functional as F
from helpers import QUANTIZER_OVERRIDES, tiny_model

from latentcode.losses import (
    PatchDiscriminator,
    PerceptualLoss,
    adaptive_generator_weight,
    discriminator_loss,
    generator_adversarial_loss,
    linear_ramp,
)


def test_gan_losses_match_their_definitions():
    real = torch.tensor([[2.0, 0.5], [-1.0, 0.0]])
    fake = torch.tensor([[-3.0, 0.2], [1.5, -0.5]])
    # hinge: mean(relu(1 - real)) = (0 + .5 + 2 + 1) / 4; mean(relu(1 + fake)) = (0 + 1.2 + 2.5 + .5) / 4
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.5 * (3.5 / 4 + 4.2 / 4))
    bce = F.binary_cross_entropy_with_logits
    expected = 0.5 * (bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake)))
    torch.testing.assert_close(discriminator_loss(real, fake, "non_saturating"), expected)
    assert generator_adversarial_loss(fake, "hinge").item() == pytest.approx(-fake.mean().item())
    torch.testing.assert_close(generator_adversarial_loss(fake, "non_saturating"), bce(fake, torch.ones_like(fake)))
    with pytest.raises(ValueError, match="GAN loss must be one of"):
        discriminator_loss(real, fake, "wasserstein")


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    torch.manual_seed(0)
    last_layer = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 3)
    out = x @ last_layer.T  # [5, 4]
    nll = out.pow(2).mean()
    adversarial = -out.mean() * 0.01
    grad_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    grad_adv = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    weight = adaptive_generator_weight(nll, adversarial, last_layer)
    torch.testing.assert_close(weight, grad_nll.norm() / (grad_adv.norm() + 1e-4))
    assert not weight.requires_grad
    (nll + weight * adversarial).backward()  # graphs are kept for the real backward pass
    out = x @ last_layer.T
    assert adaptive_generator_weight(out.sum() * 1e6, out.sum() * 1e-9, last_layer).item() == 1e4  # clamped


def test_linear_ramp_rises_from_start_to_end_and_holds():
    """The one linear schedule: the KL warm-up, the β-VAE family's annealing and the entropy weight's."""
    assert [linear_ramp(0, 1, step, 4) for step in (0, 1, 2, 4, 10)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert linear_ramp(3.0, 1.0, 2, 4) == 2.0  # falls too (an entropy weight annealed from 3x)
    assert linear_ramp(5, 50, 3, 0) == 50.0  # no ramp: the end value throughout
    with pytest.raises(ValueError, match=">= 0"):
        linear_ramp(0, 1, 0, -1)


def test_patch_discriminator_shapes_and_minimum_size():
    torch.manual_seed(0)
    disc = PatchDiscriminator(in_channels=3, channels=8, num_layers=3)
    # taming's NLayerDiscriminator: three stride-2 convolutions (the last of them stride 1) -> H/8 - 2
    assert disc(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert disc.minimum_size == 32 and disc(torch.randn(1, 3, 32, 32)).shape == (1, 1, 2, 2)
    with pytest.raises(ValueError, match="needs images of at least 32x32 pixels"):
        disc(torch.randn(1, 3, 16, 16))
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert abs(torch.cat([c.weight.flatten() for c in convs]).std().item() - 0.02) < 0.002  # N(0, 0.02) init


def test_lpips_gradients_reach_the_decoder(digits):

    torch.manual_seed(0)
    perceptual = PerceptualLoss("vgg", pretrained=False)  # random backbone: no download in tests
    model = tiny_model("vqvae", in_channels=1).train()
    pixels = digits[:4]
    distance = perceptual(model(pixels).sample, pixels)
    assert distance.shape == (4,) and (distance > 0).all()
    gradient = torch.autograd.grad(distance.mean(), model.decoder.last_layer)[0]
    assert gradient.abs().sum() > 0
    assert all(p.grad is None for p in perceptual.parameters())  # LPIPS itself stays fixed
    torch.testing.assert_close(perceptual(pixels, pixels), torch.zeros(4), atol=1e-6, rtol=0)
    # grey is compared as RGB: the wrapper equals the package on repeated channels
    rgb = pixels.expand(-1, 3, -1, -1)
    torch.testing.assert_close(perceptual(pixels, pixels.flip(0)), perceptual.lpips(rgb, rgb.flip(0)).flatten())
    perceptual.train()
    assert not perceptual.lpips.training  # dropout never switches on


def test_lpips_without_backbone_weights_fails_clearly(monkeypatch):
    import lpips.pretrained_networks

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(lpips.pretrained_networks.tv, "vgg16", offline)
    with pytest.raises(
        RuntimeError, match=r"could not load the ImageNet weights of LPIPS' 'vgg' backbone.*perceptual_weight: 0"
    ):
        PerceptualLoss("vgg", pretrained=True)


# -- the objective: every term, weight and schedule in one object ---------------------------------


def _training_output(family: str, **overrides):

    model = tiny_model(family, **overrides).train()
    pixels = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return model, pixels, model(pixels)


@pytest.mark.parametrize(
    "family, overrides",
    [("autoencoder", {}), ("vae", {}), ("vae", {"kl_weight": 0.3, "reconstruction_loss": "l1"})]
    + [("vqvae", overrides) for overrides in QUANTIZER_OVERRIDES.values()],
    ids=lambda value: value if isinstance(value, str) else "-".join(map(str, value.values())) or "defaults",
)
def test_the_default_objective_is_the_models_own_loss_exactly(family, overrides):
    from latentcode.objectives import AutoencoderObjective

    model, pixels, output = _training_output(family, **overrides)
    loss, parts = AutoencoderObjective.for_model(model)(output, pixels, step=0)
    assert torch.equal(loss, output.loss)
    assert torch.equal(parts["reconstruction_loss"], output.reconstruction_loss) and parts["loss"] is loss


def test_the_recipe_overrides_the_models_kl_weight_and_refuses_it_where_there_is_no_kl():
    from latentcode.objectives import AutoencoderObjective
    from latentcode.training.config import load_config

    model, pixels, output = _training_output("vae", kl_weight=0.5)
    loss, parts = AutoencoderObjective.for_model(model, kl_weight=2.0)(output, pixels, step=0)
    expected = parts["reconstruction_loss"] + 2.0 * output.kl / output.sample[0].numel()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    assert AutoencoderObjective.for_model(model, kl_weight=None).kl_weight == 0.5  # None: the model's
    autoencoder = tiny_model("autoencoder")
    with pytest.raises(ValueError, match=r"kl_weight=2.0 weighs a KL, but AutoencoderModel has none; drop it"):
        AutoencoderObjective.for_model(autoencoder, kl_weight=2.0)
    with pytest.raises(ValueError, match=r"vae_objective='beta' has its own weights .*not kl_weight"):
        load_config(model_family="vae", vae_objective="beta", kl_weight=1.0)


def test_each_objective_term_follows_its_formula():
    from latentcode.objectives import AdversarialTerms, AutoencoderObjective

    model, pixels, output = _training_output("vae", kl_weight=0.5)
    values = output.sample[0].numel()
    l1 = F.l1_loss(output.sample, pixels)
    objective = AutoencoderObjective(reconstruction_loss="l1", kl_weight=0.5, kl_warmup_steps=10)
    for step, factor in [(0, 0.0), (5, 0.5), (10, 1.0), (20, 1.0)]:  # the KL warm-up schedule
        loss, parts = objective(output, pixels, step)
        assert parts["kl_warmup_factor"] == factor
        torch.testing.assert_close(loss, l1 + 0.5 * factor * output.kl / values, rtol=1e-6, atol=0)

    class MeanAbs(torch.nn.Module):  # a stand-in perceptual distance, [B] per image
        def forward(self, reconstruction, target):
            return (reconstruction - target).abs().flatten(1).mean(1) * 3

    objective.perceptual, objective.perceptual_weight = MeanAbs(), 0.2
    loss, parts = objective(output, pixels, step=10)
    torch.testing.assert_close(parts["perceptual_loss"], 3 * l1)
    torch.testing.assert_close(loss, l1 + 0.2 * 3 * l1 + 0.5 * output.kl / values)

    torch.manual_seed(0)
    discriminator = PatchDiscriminator(3, channels=8, num_layers=1)
    objective.adversarial = AdversarialTerms(discriminator, weight=0.7, start=5, kind="hinge", adaptive=True)
    objective.kl_warmup_steps = 0  # steps 4 and 5 then differ by the adversarial term only
    last_layer = model.decoder.last_layer
    before, parts = objective(output, pixels, step=4, last_layer=last_layer)
    assert "generator_adversarial_loss" not in parts  # before disc_start
    loss, parts = objective(output, pixels, step=5, last_layer=last_layer)
    adversarial = generator_adversarial_loss(discriminator(output.sample), "hinge")
    nll = l1 + 0.2 * 3 * l1
    weight = 0.7 * adaptive_generator_weight(nll, adversarial, last_layer)
    torch.testing.assert_close(parts["adversarial_weight"], weight)
    torch.testing.assert_close(loss, before + weight * adversarial)
    assert all(p.requires_grad for p in discriminator.parameters())  # frozen only during its pass
    expected = discriminator_loss(*discriminator(torch.cat([pixels, output.sample.detach()])).chunk(2), "hinge")
    torch.testing.assert_close(objective.adversarial.discriminator_loss(pixels, output.sample), expected)
    with pytest.raises(ValueError, match="reconstruction_loss must be one of"):
        AutoencoderObjective(reconstruction_loss="huber")
