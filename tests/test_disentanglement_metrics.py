"""The disentanglement metrics against disentanglement_lib's own code (the reference), on three
representations of the generated dSprites: a random projection of the pixels, a random-init
vector VAE's posterior mean, and one made from the factors themselves; and the scores a perfect
and a random representation must get.

The reference runs in place with stand-ins for gin (tests/disentanglement_reference.py); these
tests skip where ../shared/reference is absent. Sizes are small (hundreds of points, not the
defaults' 10,000) so that the comparisons run in seconds; the code paths are the defaults'.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from disentanglement_reference import load_reference
from helpers import tiny_vector_model

from latentcode.data.dsprites import FACTOR_SIZES, DSprites
from latentcode.evaluation import disentanglement_metrics as metrics


class FactorsAsObservations(DSprites):
    """dSprites' factor sampler whose observations are the factor indices themselves `[N, 5]`
    (float32), so that a representation can be made from the factors."""

    def sample_observations_from_factors(self, factors, random_state=None):
        return np.asarray(factors, dtype=np.float32)


class CoarseDSprites(DSprites):
    """dSprites with 4 orientations and 4 x 4 positions spread over the grid (21 classes in all,
    not 113): for DCI, whose boosted trees fit one tree per class and step."""

    coarse_sizes = (3, 6, 4, 4, 4)
    spacing = np.array([1, 1, 10, 10, 10])

    def sample_factors(self, num, random_state):
        factors = np.stack([random_state.randint(size, size=num) for size in self.coarse_sizes], axis=1)
        return factors * self.spacing


class CoarseFactorsAsObservations(CoarseDSprites, FactorsAsObservations):
    pass


def perfect_representation(observations: np.ndarray) -> np.ndarray:
    """Each factor in its own dimension (monotone, rescaled), then five constant dimensions."""
    codes = observations / np.array(FACTOR_SIZES, dtype=np.float32) * 2 - 1
    return np.concatenate([codes, np.zeros_like(codes)], axis=1)


def random_projection(observations: np.ndarray) -> np.ndarray:
    """A fixed random linear map of the pixels to 10 dimensions: informative, entangled."""
    weights = np.random.RandomState(123).randn(int(np.prod(observations.shape[1:])), 10).astype(np.float32)
    return observations.reshape(len(observations), -1) @ weights


def random_vae_representation():
    model = tiny_vector_model("vae", latent_channels=10, vector_hidden_channels=8, vector_hidden_size=32)
    with torch.no_grad():  # He initialisation: the default one leaves codes varying by ~3e-4
        for parameter in model.encoder.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, (2.0 / parameter[0].numel()) ** 0.5)
    return metrics.posterior_mean_representation(model)


CASES = {
    "random": lambda: (random_projection, DSprites()),
    "model": lambda: (random_vae_representation(), DSprites()),
    "perfect": lambda: (perfect_representation, FactorsAsObservations()),
}


COARSE_CASES = {
    "random": lambda: (random_projection, CoarseDSprites()),
    "model": lambda: (random_vae_representation(), CoarseDSprites()),
    "perfect": lambda: (perfect_representation, CoarseFactorsAsObservations()),
}


@pytest.fixture(scope="module")
def reference():
    return load_reference()


@pytest.mark.parametrize("case", CASES)
def test_mig_equals_the_reference(reference, case):
    representation, sampler = CASES[case]()
    ours = metrics.mutual_information_gap(representation, sampler, random_state=3, num_train=1000)
    theirs = reference.mig.compute_mig(sampler, representation, np.random.RandomState(3), num_train=1000)
    assert ours["discrete_mig"] == pytest.approx(theirs["discrete_mig"], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("continuous_factors", [False, True])
def test_sap_equals_the_reference(reference, case, continuous_factors):
    representation, sampler = CASES[case]()
    sizes = dict(num_train=400, num_test=200, continuous_factors=continuous_factors)
    np.random.seed(5)  # LinearSVC's random_state=None draws from numpy's global state, in both
    ours = metrics.sap_score(representation, sampler, random_state=4, **sizes)
    np.random.seed(5)
    theirs = reference.sap_score.compute_sap(sampler, representation, np.random.RandomState(4), **sizes)
    assert ours["SAP_score"] == pytest.approx(theirs["SAP_score"], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("case", COARSE_CASES)
def test_dci_equals_the_reference(reference, case):
    representation, sampler = COARSE_CASES[case]()
    np.random.seed(6)  # GradientBoostingClassifier's random_state=None: numpy's global state, in both
    ours = metrics.dci(representation, sampler, random_state=5, num_train=200, num_test=100)
    np.random.seed(6)
    theirs = reference.dci.compute_dci(sampler, representation, np.random.RandomState(5), num_train=200, num_test=100)
    for name in ("disentanglement", "completeness", "informativeness_train", "informativeness_test"):
        assert ours[name] == pytest.approx(theirs[name], rel=1e-12, abs=1e-15), name


@pytest.mark.parametrize("case", CASES)
def test_beta_vae_score_equals_the_reference(reference, case):
    representation, sampler = CASES[case]()
    sizes = dict(batch_size=16, num_train=150, num_eval=60)
    ours = metrics.beta_vae_score(representation, sampler, random_state=7, **sizes)
    theirs = reference.beta_vae.compute_beta_vae_sklearn(sampler, representation, np.random.RandomState(7), **sizes)
    assert ours == {name: pytest.approx(value, abs=1e-15) for name, value in theirs.items()}


@pytest.mark.parametrize("case", CASES)
def test_factor_vae_score_equals_the_reference(reference, case):
    representation, sampler = CASES[case]()
    sizes = dict(batch_size=16, num_train=150, num_eval=60, num_variance_estimate=300)
    ours = metrics.factor_vae_score(representation, sampler, random_state=8, **sizes)
    theirs = reference.factor_vae.compute_factor_vae(sampler, representation, np.random.RandomState(8), **sizes)
    for name in ("train_accuracy", "eval_accuracy"):
        assert ours[name] == pytest.approx(theirs[name], abs=1e-15), name
    # disentanglement_lib's num_active_dims is len(boolean mask), the number of dimensions; ours
    # counts the kept ones: the perfect representation's five constant dimensions are pruned.
    assert ours["num_active_dims"] == (5 if case == "perfect" else 10)


def test_the_perfect_representation_scores_near_one_and_the_random_one_near_zero():
    """MIG with 20 bins stays below 1 for a perfect code of factors with more than 20 values
    (orientation's 40, the positions' 32 share bins): about 0.9."""
    perfect, sampler = perfect_representation, FactorsAsObservations()
    mig = metrics.mutual_information_gap(perfect, sampler, num_train=2000)
    assert 0.85 < mig["discrete_mig"] < 1.0
    assert mig["mig_per_factor"][:2] == pytest.approx([1.0, 1.0], abs=0.02)  # shape, scale: <= 20 values
    assert metrics.factor_vae_score(perfect, sampler, batch_size=16, num_train=100, num_eval=50,
                                    num_variance_estimate=200)["eval_accuracy"] == 1.0  # fmt: skip
    assert metrics.beta_vae_score(perfect, sampler, batch_size=16, num_train=200, num_eval=100)["eval_accuracy"] > 0.95
    dci = metrics.dci(perfect, CoarseFactorsAsObservations(), num_train=200, num_test=100, classifier_random_state=0)
    assert dci["disentanglement"] > 0.9 and dci["completeness"] > 0.9

    random_mig = metrics.mutual_information_gap(random_projection, DSprites(), num_train=2000)
    assert random_mig["discrete_mig"] < 0.1


def test_mutual_information_against_its_definition():
    a = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    b = np.array([5, 5, 7, 7, 7, 5, 7, 5])
    joint = np.zeros((3, 2))
    for x, y in zip(a, b):
        joint[x, int(y == 7)] += 1 / len(a)
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    expected = np.sum(joint[joint > 0] * np.log(joint[joint > 0] / outer[joint > 0]))
    assert metrics.mutual_information(a, b) == pytest.approx(expected, rel=1e-12)
    assert metrics.mutual_information(a, np.zeros(8)) == 0.0
    assert metrics.factor_entropies(np.stack([a, b], 1)) == pytest.approx(
        [-(3 / 8 * np.log(3 / 8) * 2 + 2 / 8 * np.log(2 / 8)), np.log(2)]
    )


def test_histogram_discretize_uses_equal_width_bins_between_min_and_max():
    codes = np.array([[0.0], [0.49], [0.51], [1.0]])
    assert metrics.histogram_discretize(codes, num_bins=2)[:, 0].tolist() == [1, 1, 2, 2]


def test_a_model_is_scored_through_its_posterior_mean():
    model = tiny_vector_model("vae", latent_channels=3, vector_hidden_size=8)
    by_model = metrics.mutual_information_gap(model, DSprites(), num_train=64)
    by_function = metrics.mutual_information_gap(metrics.posterior_mean_representation(model), DSprites(), num_train=64)
    assert by_model == by_function
    images = DSprites().sample_observations(2, np.random.RandomState(0))
    expected = model.encode(torch.from_numpy(images) * 2 - 1).latent_dist.mean.detach().numpy()
    assert np.array_equal(metrics.posterior_mean_representation(model)(images), expected)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="random_state must be an int seed or a numpy RandomState"):
        metrics.mutual_information_gap(random_projection, DSprites(), random_state="zero")
    with pytest.raises(ValueError, match=r"codes \[N, D\], got shape \(16,\)"):
        metrics.mutual_information_gap(lambda x: np.zeros(len(x)), DSprites(), num_train=16)
    with pytest.raises(TypeError, match="expected a model or a representation function"):
        metrics.beta_vae_score("my-model", DSprites())
