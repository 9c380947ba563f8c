"""Every dSprites image encoded once (`EncodedDSprites`) scores as encoding on demand does, and MIG
as Chen et al. (2018) estimate it (`sampled_mutual_information_gap`) against its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import tiny_vector_model

from latentcode.data.dsprites import FACTOR_SIZES, DSprites, index_to_factors, render
from latentcode.evaluation import disentanglement_metrics as dm
from latentcode.evaluation import encoded_dsprites
from latentcode.evaluation.encoded_dsprites import EncodedDSprites, IndexedDSprites

SMALL_SIZES = {
    "beta_vae": dict(batch_size=16, num_train=60, num_eval=30),
    "factor_vae": dict(batch_size=16, num_train=60, num_eval=30, num_variance_estimate=300),
    "mig": dict(num_train=500),
    "dci": dict(num_train=60, num_test=30),
    "sap": dict(num_train=200, num_test=100),
}


def moments(images: np.ndarray) -> np.ndarray:
    """`[N, 64, 64]` -> `[N, 5]` float32: the shape's area and the sums of its pixels' row, column,
    squared row and squared column coordinates (position, scale, elongation). Sums of integers
    below 2^24: exact in float32 whatever the batch, so both paths must agree to the bit."""
    pixels = np.asarray(images, dtype=np.float32)
    rows, columns = pixels.sum(axis=2), pixels.sum(axis=1)  # [N, 64] each
    coordinate = np.arange(64, dtype=np.float32)
    return np.stack(
        [rows.sum(1), rows @ coordinate, columns @ coordinate, rows @ coordinate**2, columns @ coordinate**2], axis=1
    )


def moments_representation(observations: np.ndarray) -> np.ndarray:
    """The representation function the metrics call on demand: observations `[N, 1, 64, 64]`."""
    return moments(observations[:, 0])


@pytest.fixture(scope="module")
def encoded_moments():
    """The moments of all 737,280 images without drawing them: each image is one of the 720
    sprites at the origin moved dx columns right and dy rows down (nothing leaves the frame), so
    its row sum is the sprite's plus dy x area, its squared-row sum the sprite's plus 2 dy x row
    sum plus dy^2 x area, and the same for columns with dx."""
    origin = np.stack(np.meshgrid(*(np.arange(n) for n in FACTOR_SIZES[:3]), [0], [0], indexing="ij"), -1)
    area, rows, columns, rows2, columns2 = moments(render(origin.reshape(-1, 5))).astype(np.float64).T
    shape = (*FACTOR_SIZES[:3], 1, 1)
    area, rows, columns, rows2, columns2 = (m.reshape(shape) for m in (area, rows, columns, rows2, columns2))
    dx = np.arange(FACTOR_SIZES[3], dtype=np.float64)[:, None]  # position_x: columns
    dy = np.arange(FACTOR_SIZES[4], dtype=np.float64)[None, :]  # position_y: rows
    codes = [area, rows + dy * area, columns + dx * area, rows2 + 2 * dy * rows + dy**2 * area,
             columns2 + 2 * dx * columns + dx**2 * area]  # fmt: skip
    codes = [np.broadcast_to(code, FACTOR_SIZES).reshape(-1) for code in codes]
    return EncodedDSprites(np.stack(codes, axis=1).astype(np.float32))


def test_the_indexed_sampler_draws_the_same_factors_and_indexes_their_images():
    factors = DSprites().sample_factors(500, np.random.RandomState(7))
    indexed = IndexedDSprites()
    assert np.array_equal(indexed.sample_factors(500, np.random.RandomState(7)), factors)
    indices = indexed.sample_observations_from_factors(factors)
    assert indices.shape == (500,) and np.array_equal(index_to_factors(indices), factors)


def test_every_metric_scores_the_same_from_the_encoded_dataset(encoded_moments):
    functions = {
        "beta_vae": dm.beta_vae_score,
        "factor_vae": dm.factor_vae_score,
        "mig": dm.mutual_information_gap,
        "dci": lambda *a, **k: dm.dci(*a, classifier_random_state=0, **k),
        "sap": lambda *a, **k: dm.sap_score(*a, classifier_random_state=0, **k),
    }
    for metric, function in functions.items():
        on_demand = function(moments_representation, DSprites(), 4, **SMALL_SIZES[metric])
        looked_up = function(encoded_moments.representation, encoded_moments.sampler, 4, **SMALL_SIZES[metric])
        assert looked_up == on_demand, metric
        if metric == "mig":  # not a trivial score: the area carries shape and scale
            assert min(on_demand["mig_per_factor"][:2]) > 0.3, on_demand


def test_a_vae_is_encoded_as_its_posterior(monkeypatch):
    """The means are the representation the metrics score; the stds are the posterior's (a few
    thousand images: the grid size is patched down)."""
    monkeypatch.setattr(encoded_dsprites, "NUM_IMAGES", 3000)
    model = tiny_vector_model("vae")
    encoded = EncodedDSprites.encode(model, batch_size=1024)
    images = DSprites().sample_observations_from_factors(index_to_factors(np.arange(3000)))
    assert np.allclose(encoded.means, dm.posterior_mean_representation(model)(images), atol=1e-5)
    with torch.no_grad():
        std = model.encode(torch.from_numpy(images) * 2 - 1).latent_dist.std.flatten(1).numpy()
    assert encoded.stds.shape == (3000, 4) and np.allclose(encoded.stds, std, atol=1e-5)
    assert np.array_equal(encoded.representation(np.array([5, 2999])), encoded.means[[5, 2999]])


def test_encoded_dsprites_refuses_partial_codes_and_pixel_observations(encoded_moments):
    with pytest.raises(ValueError, match=r"expected the codes of all 737280 dSprites images, \[737280, D\]"):
        EncodedDSprites(np.zeros((10, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="takes dataset indices"):
        encoded_moments.representation(np.zeros((2, 1, 64, 64), dtype=np.float32))


def brute_force_entropies(samples, means, stds):
    """-(1/S) sum_s log (1/N) sum_n N(samples[s]; means[n], stds[n]^2), per dimension, in float64."""
    densities = np.exp(-0.5 * ((samples[:, None] - means[None]) / stds[None]) ** 2) / (
        stds[None] * math.sqrt(2 * math.pi)
    )
    return -np.log(densities.mean(axis=1)).mean(axis=0)


def test_posterior_entropies_equal_their_definition():
    random = np.random.RandomState(0)
    means, stds = random.randn(300, 3), np.exp(random.randn(300, 3) * 0.5 - 1)
    samples = means[:120] + stds[:120] * random.randn(120, 3)
    expected = brute_force_entropies(samples, means, stds)
    assert np.allclose(dm.posterior_entropies(samples, means, stds, chunk=7), expected, rtol=1e-5, atol=1e-5)


GRID = (3, 4, 5)  # a small factor grid, 60 "images", C order


def grid_factors() -> np.ndarray:
    return np.stack(np.unravel_index(np.arange(int(np.prod(GRID))), GRID), axis=1).astype(np.float32)


def test_sampled_mig_of_a_code_that_is_the_factors_is_one_and_of_an_uninformative_code_zero():
    factors = grid_factors()
    exact = dm.sampled_mutual_information_gap(factors, np.full_like(factors, 1e-3), GRID, num_samples=60)
    # every dimension carries its factor's log(values) nats exactly and nothing of the others
    assert exact["sampled_mig"] == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(exact["mutual_information"], np.eye(3), atol=1e-6)
    blank = dm.sampled_mutual_information_gap(np.zeros_like(factors), np.ones_like(factors), GRID, num_samples=60)
    assert blank["sampled_mig"] == pytest.approx(0.0, abs=1e-6)
    # factors 1 and 2 only, as Chen et al. leave dSprites' shape out
    chosen = dm.sampled_mutual_information_gap(factors, np.full_like(factors, 1e-3), GRID, factors=(1, 2))
    assert chosen["factors"] == [1, 2] and np.array(chosen["mutual_information"]).shape == (3, 2)


def test_sampled_mig_of_an_entangled_code_is_low_and_matches_a_brute_force_estimate():
    factors = grid_factors()
    mixed = np.stack([factors[:, 1] + factors[:, 2], factors[:, 1] - factors[:, 2], factors[:, 0]], 1)
    stds = np.full_like(mixed, 0.3)
    result = dm.sampled_mutual_information_gap(mixed, stds, GRID, num_samples=60, random_state=5)
    # factor 0 alone has its own dimension (its 3 values overlap under the noise); 1 and 2 are
    # spread over two dimensions equally: no gap
    gaps = result["mig_per_factor"]
    assert gaps[0] > 0.6 and max(gaps[1:]) < 0.1 and result["sampled_mig"] < 0.5

    # the same estimate by hand: every image's sample (all 60: num_samples covers the grid) against
    # all posteriors, then within each value's images
    random = np.random.RandomState(5)
    samples = mixed + stds * random.standard_normal(mixed.shape).astype(np.float32)
    marginal = brute_force_entropies(samples, mixed, stds)
    rows = np.arange(60).reshape(GRID)
    for column, size in enumerate(GRID):
        subsets = [np.take(rows, value, axis=column).reshape(-1) for value in range(size)]
        conditional = np.mean([brute_force_entropies(samples[r], mixed[r], stds[r]) for r in subsets], axis=0)
        expected = np.clip(marginal - conditional, 0, None) / math.log(size)
        assert np.allclose(np.array(result["mutual_information"])[:, column], expected, atol=1e-4)


def test_sampled_mig_refuses_codes_that_do_not_cover_the_grid():
    with pytest.raises(ValueError, match=r"over the whole grid \(3, 4, 5\) \(N = 60\)"):
        dm.sampled_mutual_information_gap(np.zeros((59, 2)), np.ones((59, 2)), GRID)


def test_the_sampled_mig_factors_of_the_cli_leave_shape_out():
    from latentcode.evaluation.disentanglement_cli import SAMPLED_MIG_FACTORS

    assert [FACTOR_SIZES[i] for i in SAMPLED_MIG_FACTORS] == [6, 40, 32, 32]
