"""The β-VAE family's objectives (latentcode.disentanglement), each against its formula on known
inputs, and short training runs through training/train.py with each of them."""

from __future__ import annotations

import math
from statistics import NormalDist
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import require_shared_dataset, reset_accelerate_state
from safetensors.torch import load_file

from latentcode import VAEConfig, VAEModel
from latentcode.disentanglement import (
    PROBABILITY_EPS,
    BetaTCVAELoss,
    BetaVAELoss,
    CapacityAnnealingLoss,
    FactorVAELoss,
    TotalCorrelationDiscriminator,
    decompose_kl,
    discriminator_loss,
    log_importance_weight_matrix,
    permute_dims,
    reconstruction_nll,
    total_correlation_estimate,
)
from latentcode.objectives import AutoencoderObjective
from latentcode.training import build_engine, load_config, parse_args, train

VECTOR_VAE = dict(
    backbone="vector",
    in_channels=1,
    sample_size=32,
    latent_channels=4,
    vector_hidden_channels=8,
    vector_hidden_size=16,
    use_quant_conv=False,
    use_post_quant_conv=False,
)


def vector_vae(**overrides) -> VAEModel:
    torch.manual_seed(0)
    return VAEModel(VAEConfig(**{**VECTOR_VAE, **overrides}))


def fake_output(batch: int = 6, dims: int = 3, seed: int = 0) -> SimpleNamespace:
    """A VAE forward output with known posteriors: means, log-variances, a sample and its KL."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, dims, generator=generator)
    logvar = 0.5 * torch.randn(batch, dims, generator=generator)
    z = mean + torch.exp(0.5 * logvar) * torch.randn(batch, dims, generator=generator)
    posterior = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    kl = torch.distributions.kl_divergence(posterior, prior).sum(1).mean()
    return SimpleNamespace(latents=z, latent_mean=mean, latent_logvar=logvar, kl=kl)


# -- reconstruction likelihoods --------------------------------------------------------------------


def test_likelihoods_are_disentangling_vaes_sums_per_image_on_0_1_pixels():
    generator = torch.Generator().manual_seed(0)
    p = 0.01 + 0.98 * torch.rand(3, 1, 8, 8, generator=generator)  # the decoder's probabilities
    t = torch.rand(3, 1, 8, 8, generator=generator)  # [0, 1] pixels (grey values, as MNIST's)
    y, x = 2 * p - 1, 2 * t - 1  # latentcode's [-1, 1] convention
    # disentangling-vae's _reconstruction_loss, summed per image, averaged over the batch of 3.
    bce = F.binary_cross_entropy(p, t, reduction="sum") / 3
    torch.testing.assert_close(reconstruction_nll(y, x, "bernoulli"), bce, rtol=1e-5, atol=1e-4)
    mse = F.mse_loss(p * 255, t * 255, reduction="sum") / 255 / 3
    torch.testing.assert_close(reconstruction_nll(y, x, "gaussian"), mse, rtol=1e-5, atol=1e-4)
    l1 = 3 * F.l1_loss(p, t, reduction="sum") / 3
    torch.testing.assert_close(reconstruction_nll(y, x, "laplace"), l1, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="reconstruction_distribution must be one of"):
        reconstruction_nll(y, x, "poisson")
    with pytest.raises(ValueError, match="must have one shape"):
        reconstruction_nll(y, x[:, :, :4], "bernoulli")


def test_bernoulli_through_the_sigmoid_decoder_matches_bce_with_logits_and_stays_finite_when_saturated():
    logits = torch.linspace(-8, 8, 64).view(1, 1, 8, 8).requires_grad_(True)
    t = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = reconstruction_nll(2 * torch.sigmoid(logits) - 1, 2 * t - 1, "bernoulli")  # the vector decoder's output
    (grad,) = torch.autograd.grad(loss, logits)
    reference = F.binary_cross_entropy_with_logits(logits.detach(), t, reduction="sum")
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, torch.sigmoid(logits.detach()) - t, rtol=1e-3, atol=1e-5)  # d/dlogit = p - t

    # A saturated decoder (p rounds to 0 or 1 in fp32): finite loss and gradient, the log clamped.
    saturated = torch.tensor([-40.0, 40.0]).view(1, 1, 1, 2).requires_grad_(True)
    target = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    loss = reconstruction_nll(2 * torch.sigmoid(saturated) - 1, 2 * target - 1, "bernoulli")
    (grad,) = torch.autograd.grad(loss, saturated)
    assert torch.isclose(loss, torch.tensor(-2 * math.log(PROBABILITY_EPS)))
    assert torch.isfinite(grad).all()


# -- β-VAE and capacity annealing ------------------------------------------------------------------


def test_beta_vae_objective_is_nll_plus_beta_kl_of_a_real_forward_pass():
    model = vector_vae()
    pixels = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    output = model(pixels, sample_posterior=True, return_dict=True, generator=torch.Generator().manual_seed(1))
    posterior = torch.distributions.Normal(output.latent_mean, torch.exp(0.5 * output.latent_logvar))
    prior = torch.distributions.Normal(0.0, 1.0)
    kl = torch.distributions.kl_divergence(posterior, prior).sum(1).mean()
    torch.testing.assert_close(output.kl, kl, rtol=1e-5, atol=1e-6)

    objective = AutoencoderObjective.for_model(model, vae_loss=BetaVAELoss(beta=4.0, anneal_steps=10))
    loss, logs = objective(output, pixels, step=5)  # annealed: half of β KL at step 5 of 10
    p, t = (output.sample + 1) / 2, (pixels + 1) / 2
    nll = F.binary_cross_entropy(p, t, reduction="sum") / 4
    torch.testing.assert_close(loss, nll + 0.5 * 4.0 * kl, rtol=1e-5, atol=1e-3)
    assert logs["anneal_factor"] == 0.5
    assert "β-VAE (Higgins et al. 2017): bernoulli reconstruction" in objective.describe(model)
    with pytest.raises(ValueError, match="its own annealing is vae_loss.anneal_steps"):
        AutoencoderObjective.for_model(model, kl_warmup_steps=5, vae_loss=BetaVAELoss())


def test_capacity_schedule_and_term():
    loss = CapacityAnnealingLoss(capacity_start=2.0, capacity_end=12.0, gamma=100.0, anneal_steps=100)
    assert [loss.capacity(step) for step in (0, 25, 50, 100, 1000)] == [2.0, 4.5, 7.0, 12.0, 12.0]
    term, logs = loss.regularizer(SimpleNamespace(kl=torch.tensor(10.0)), step=50)  # |10 - 7| * 100
    assert term.item() == pytest.approx(300.0) and logs["capacity"] == 7.0
    term, _ = loss.regularizer(SimpleNamespace(kl=torch.tensor(10.0)), step=100)  # |10 - 12| * 100
    assert term.item() == pytest.approx(200.0)
    with pytest.raises(ValueError, match="capacity_start <= capacity_end"):
        CapacityAnnealingLoss(capacity_start=5.0, capacity_end=1.0)


# -- β-TCVAE ----------------------------------------------------------------------------------------


def test_stratified_weights_put_1_over_n_on_each_samples_own_posterior():
    n, m = 20, 3
    weights = log_importance_weight_matrix(4, n).exp()
    strat = (n - m) / (n * m)
    expected = torch.tensor(
        [
            [1 / n, strat, 1 / m, 1 / m],
            [1 / m, 1 / n, strat, 1 / m],
            [1 / m, 1 / m, 1 / n, strat],
            [strat, 1 / m, 1 / m, 1 / n],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(weights.sum(1), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least the batch size"):
        log_importance_weight_matrix(8, 5)


def _brute_force_decomposition(z, mean, logvar, n):
    """MI, TC and dimension-wise KL by explicit loops over samples, posteriors and dimensions."""
    batch, dims = z.shape
    m = batch - 1

    def weight(b, c):
        return 1 / n if c == b else (n - m) / (n * m) if c == (b + 1) % batch else 1 / m

    def density(b, c, j):
        return NormalDist(mean[c, j].item(), math.exp(0.5 * logvar[c, j].item())).pdf(z[b, j].item())

    mi = tc = dw = 0.0
    for b in range(batch):
        log_q_z_given_x = sum(math.log(density(b, b, j)) for j in range(dims))
        log_p_z = sum(math.log(NormalDist().pdf(z[b, j].item())) for j in range(dims))
        log_q_z = math.log(sum(weight(b, c) * math.prod(density(b, c, j) for j in range(dims)) for c in range(batch)))
        log_prod = sum(math.log(sum(weight(b, c) * density(b, c, j) for c in range(batch))) for j in range(dims))
        mi += (log_q_z_given_x - log_q_z) / batch
        tc += (log_q_z - log_prod) / batch
        dw += (log_prod - log_p_z) / batch
    return mi, tc, dw


def test_kl_decomposition_equals_explicit_loops():
    output = fake_output(batch=5, dims=3)
    parts = decompose_kl(output.latents, output.latent_mean, output.latent_logvar, dataset_size=20)
    mi, tc, dw = _brute_force_decomposition(output.latents, output.latent_mean, output.latent_logvar, 20)
    assert parts.mutual_information.item() == pytest.approx(mi, rel=1e-4, abs=1e-4)
    assert parts.total_correlation.item() == pytest.approx(tc, rel=1e-4, abs=1e-4)
    assert parts.dimension_wise_kl.item() == pytest.approx(dw, rel=1e-4, abs=1e-4)
    # Whatever the weights, the three add up to the batch's E[log q(z|x) - log p(z)].
    posterior = torch.distributions.Normal(output.latent_mean, torch.exp(0.5 * output.latent_logvar))
    sample_kl = (
        posterior.log_prob(output.latents) - torch.distributions.Normal(0.0, 1.0).log_prob(output.latents)
    ).sum(1)
    total = parts.mutual_information + parts.total_correlation + parts.dimension_wise_kl
    torch.testing.assert_close(total, sample_kl.mean(), rtol=1e-5, atol=1e-5)

    loss = BetaTCVAELoss(alpha=1.5, beta=6.0, gamma=2.0, dataset_size=20, anneal_steps=4)
    term, logs = loss.regularizer(output, step=1)  # dimension-wise KL annealed to a quarter
    assert term.item() == pytest.approx(1.5 * mi + 6.0 * tc + 0.25 * 2.0 * dw, rel=1e-4, abs=1e-4)
    assert {"mutual_information", "total_correlation", "dimension_wise_kl"} <= logs.keys()
    with pytest.raises(ValueError, match="needs vector latents"):
        decompose_kl(torch.zeros(4, 2, 3, 3), torch.zeros(4, 2, 3, 3), torch.zeros(4, 2, 3, 3), 20)


# -- FactorVAE --------------------------------------------------------------------------------------


def test_permute_dims_keeps_each_dimensions_marginal_and_mixes_the_dimensions():
    z = torch.arange(64 * 5, dtype=torch.float32).view(64, 5)
    permuted = permute_dims(z, generator=torch.Generator().manual_seed(0))
    for j in range(5):  # each column holds the same values, in another order
        assert torch.equal(torch.sort(permuted[:, j]).values, z[:, j])
    assert not torch.equal(permuted, z)
    # The columns move independently: the rows of z (5k, 5k + 1, ...) are broken up.
    assert (permuted[:, 1:] - permuted[:, :1] != torch.arange(1, 5)).any()
    torch.testing.assert_close(permute_dims(z, generator=torch.Generator().manual_seed(0)), permuted)


def test_discriminator_losses_on_known_logits():
    joint = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    permuted = torch.tensor([[0.0, 3.0], [1.0, 0.0], [-2.0, 2.0]])
    expected = 0.5 * (-torch.log_softmax(joint, 1)[:, 0].mean() + -torch.log_softmax(permuted, 1)[:, 1].mean())
    torch.testing.assert_close(discriminator_loss(joint, permuted), expected)
    assert total_correlation_estimate(joint).item() == pytest.approx((3.0 + 0.0) / 2)
    discriminator = TotalCorrelationDiscriminator(10)  # the paper's 6 x 1000, LeakyReLU 0.2
    assert [layer.out_features for layer in discriminator.linears] == [1000] * 5 + [2]
    assert discriminator(torch.zeros(3, 10)).shape == (3, 2)


def test_factor_vae_terms_train_only_their_own_side():
    torch.manual_seed(0)
    loss = FactorVAELoss(gamma=6.0, discriminator=TotalCorrelationDiscriminator(3, hidden_units=16))
    output = fake_output(batch=6, dims=3)
    output.latents.requires_grad_(True)
    term, logs = loss.regularizer(output, step=0)
    logits = loss.discriminator(output.latents.detach())
    torch.testing.assert_close(term, output.kl + 6.0 * (logits[:, 0] - logits[:, 1]).mean())
    term.backward()
    assert output.latents.grad is not None and output.latents.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.discriminator.parameters())  # the VAE's term leaves it alone

    output.latents.grad = None
    torch.manual_seed(1)
    d_loss = loss.discriminator_loss(output)
    d_loss.backward()
    assert output.latents.grad is None  # the discriminator's loss leaves the encoder alone
    assert all(p.grad is not None for p in loss.discriminator.parameters())
    torch.manual_seed(1)
    z = output.latents.detach()
    reference = loss.discriminator(torch.cat([z[:3], permute_dims(z[3:])]))
    torch.testing.assert_close(d_loss, discriminator_loss(reference[:3], reference[3:]))


# -- refusals ---------------------------------------------------------------------------------------


def test_objectives_refuse_models_they_cannot_train():
    grid = VAEModel(VAEConfig(in_channels=1, block_out_channels=(8,), norm_num_groups=4, latent_channels=2))
    with pytest.raises(
        ValueError, match="reconstruction_distribution='bernoulli' needs a decoder whose output is a probability"
    ):
        BetaVAELoss().check_model(grid)
    BetaVAELoss(reconstruction_distribution="gaussian").check_model(grid)  # β-VAE takes a latent grid
    with pytest.raises(ValueError, match="needs a vector latent; backbone='ldm' has a latent grid"):
        BetaTCVAELoss(reconstruction_distribution="gaussian", dataset_size=100).check_model(grid)
    discriminator = TotalCorrelationDiscriminator(2, hidden_units=4)
    with pytest.raises(ValueError, match="needs a vector latent"):
        FactorVAELoss(reconstruction_distribution="gaussian", discriminator=discriminator).check_model(grid)
    with pytest.raises(
        ValueError,
        match=r"vae_objective='factor' trains a Gaussian code \(model_family one of \['vae'\]\), but model_family='vqvae'",
    ):
        load_config(model_family="vqvae", vae_objective="factor")
    with pytest.raises(ValueError, match="set anneal_steps, not kl_warmup_steps"):
        load_config(model_family="vae", vae_objective="beta", kl_warmup_steps=10)
    with pytest.raises(ValueError, match="vae_objective must be one of"):
        load_config(model_family="vae", vae_objective="betaH")


# -- training through training/train.py ------------------------------------------------------------


def _run_arguments(output_dir, objective: str, *extra: str) -> list[str]:
    data = require_shared_dataset("mnist-samples")
    model = ["--model.backbone", "vector", "--model.in_channels", "1", "--model.latent_channels", "4"]
    model += ["--model.vector_hidden_channels", "8", "--model.vector_hidden_size", "32"]
    return [
        *("--output_dir", str(output_dir), "--model_family", "vae", *model),
        *("--train_data_dir", str(data), "--resolution", "32", "--train_batch_size", "8"),
        *("--max_train_steps", "4", "--learning_rate", "1e-3", "--num_validation_images", "8"),
        *("--checkpointing_steps", "0", "--validation_steps", "0", "--report_to", "none"),
        *("--vae_objective", objective, "--anneal_steps", "2", "--tc_discriminator_hidden_units", "32", *extra),
    ]


EXPECTED_TERMS = {
    "beta": {"reconstruction_loss", "kl", "anneal_factor"},
    "capacity": {"reconstruction_loss", "kl", "capacity"},
    "btcvae": {"reconstruction_loss", "kl", "mutual_information", "total_correlation", "dimension_wise_kl"},
    "factor": {"reconstruction_loss", "kl", "total_correlation", "tc_discriminator_loss", "tc_discriminator_grad_norm"},
}


@pytest.mark.usefixtures("fresh_accelerate_state")
@pytest.mark.parametrize("objective", sorted(EXPECTED_TERMS))
def test_training_with_each_objective_logs_its_terms(objective, tmp_path):
    engine = build_engine(parse_args(_run_arguments(tmp_path / "run", objective)))
    logged = []
    engine.accelerator.log = lambda values, step=None: logged.append(values)
    engine.run()
    steps = [values for values in logged if "train/loss" in values]
    assert len(steps) == 4
    for values in steps:
        assert {f"train/{term}" for term in EXPECTED_TERMS[objective]} <= values.keys()
        assert all(math.isfinite(value) for value in values.values())
    if objective == "capacity":  # C from 0 to 25 nats over 2 steps, logged at steps 0..3
        assert [values["train/capacity"] for values in steps] == [0.0, 12.5, 25.0, 25.0]
    card = (tmp_path / "run" / "README.md").read_text()
    assert "bernoulli reconstruction (nats per image)" in card
    if objective == "btcvae":  # N: the 100 digits less the 8 held out for validation
        assert "minibatch stratified sampling over 92 images" in card
    assert (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_resumed_factor_vae_run_is_bit_identical(tmp_path):
    """The discriminator, its Adam and the permutations' random stream are checkpointed."""
    extra = ("--checkpointing_steps", "2")
    train(parse_args(_run_arguments(tmp_path / "uninterrupted", "factor", *extra)))
    reset_accelerate_state()
    resume = ("--resume_from_checkpoint", str(tmp_path / "uninterrupted" / "checkpoint-2"))
    train(parse_args(_run_arguments(tmp_path / "resumed", "factor", *extra, *resume)))
    # model.safetensors: the VAE, model_1.safetensors: the TC discriminator.
    for name in ("model.safetensors", "model_1.safetensors"):
        a = load_file(tmp_path / "uninterrupted" / "checkpoint-4" / name)
        b = load_file(tmp_path / "resumed" / "checkpoint-4" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    first = load_file(tmp_path / "uninterrupted" / "checkpoint-2" / "model_1.safetensors")
    assert any(not torch.equal(first[key], a[key]) for key in a)  # the discriminator did train


def test_beta_vae_and_capacity_annealing_take_a_latent_grid():
    torch.manual_seed(0)
    model = VAEModel(VAEConfig(in_channels=1, block_out_channels=(8,), norm_num_groups=4, latent_channels=2))
    pixels = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    output = model(pixels, sample_posterior=True, return_dict=True)
    posterior = torch.distributions.Normal(output.latent_mean, torch.exp(0.5 * output.latent_logvar))
    kl = torch.distributions.kl_divergence(posterior, torch.distributions.Normal(0.0, 1.0)).sum((1, 2, 3)).mean()
    mse = F.mse_loss((output.sample + 1) / 2 * 255, (pixels + 1) / 2 * 255, reduction="sum") / 255 / 3
    for vae_loss, regularizer in (
        (BetaVAELoss(beta=2.0, reconstruction_distribution="gaussian"), 2.0 * kl),
        (
            CapacityAnnealingLoss(capacity_end=5.0, gamma=10.0, reconstruction_distribution="gaussian"),
            10.0 * (kl - 5.0).abs(),
        ),
    ):
        vae_loss.check_model(model)
        loss, _ = AutoencoderObjective.for_model(model, vae_loss=vae_loss)(output, pixels, step=0)
        torch.testing.assert_close(loss, mse + regularizer, rtol=1e-5, atol=1e-3)
