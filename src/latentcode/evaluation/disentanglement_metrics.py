"""Disentanglement metrics on data with known factors: BetaVAE score, FactorVAE score, MIG, DCI, SAP.

Each metric takes a model (its [`posterior_mean_representation`] is used) or a representation
function (observations -> codes `[N, D]`) and a factor sampler (`latentcode.data.dsprites.
DSprites`, or any object with disentanglement_lib's `GroundTruthData` methods: `num_factors`,
`sample_factors(num, random_state)`, `sample_observations_from_factors(factors, random_state)`,
`sample(num, random_state)`, `sample_observations(num, random_state)`; factors are integer
indices `[N, F]`). The definitions:

- BetaVAE score (Higgins et al. 2017): pairs of batches sharing one factor; a logistic regression
  predicts that factor from the mean absolute difference of their codes; accuracy on new pairs.
- FactorVAE score (Kim & Mnih 2018): codes scaled by their global standard deviation; a batch
  with one factor fixed votes for its least-varying dimension; majority-vote classifier accuracy.
  Dimensions with global standard deviation below `prune_threshold` are left out.
- MIG (Chen et al. 2018): each code dimension binned into `num_bins` equal-width bins; per factor,
  the gap between the two largest mutual informations with a dimension, over the factor's
  entropy; averaged over factors.
- DCI (Eastwood & Williams 2018): per factor a gradient-boosted tree classifier predicts it from
  the codes; its feature importances form the matrix R `[D, F]`; disentanglement = importance-
  weighted 1 - entropy (base F) of each row; completeness = the same over columns (base D);
  informativeness = the classifiers' accuracy (train and test).
- SAP (Kumar et al. 2018): per (dimension, factor), the accuracy of a linear SVM predicting the
  factor from that dimension alone (test set); per factor the gap between the two best
  dimensions, averaged.

Defaults are disentanglement_lib's (Locatello et al. 2019, `config/unsupervised_study_v1/
metric_configs/*.gin`, the settings behind its published numbers): BetaVAE batch 64, 10,000 train
/ 5,000 eval points; FactorVAE batch 64, 10,000 / 5,000, 10,000 images for the global variances,
prune threshold 0.05; MIG 10,000 points, 20 bins; DCI 10,000 / 5,000; SAP 10,000 / 5,000, discrete
factors; sampling batch 16 for MIG, DCI and SAP; `random_state` 0.

Equal to the reference: every metric calls the sampler, the representation function and the
random state in disentanglement_lib's order (so one seed draws the same factors, batch by batch),
computes in the representation's dtype, and uses the same classifiers with the same arguments:
`LogisticRegression(random_state=<the metric's RandomState>)` (BetaVAE),
`GradientBoostingClassifier()` (DCI) and `LinearSVC(C=0.01, class_weight="balanced")` (SAP). The
last two take `random_state=None` there, i.e. numpy's global random state: pass
`classifier_random_state` (an int) for runs that repeat, or leave None and seed numpy
(`np.random.seed`) to reproduce the reference's numbers. tests/test_disentanglement_metrics.py
compares every metric with disentanglement_lib's code. One deliberate difference: the FactorVAE
score's `num_active_dims` counts the dimensions kept (disentanglement_lib reports the number of
dimensions, kept or not); its accuracies are the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

Representation = Callable[[np.ndarray], np.ndarray]


class FactorSampler(Protocol):
    """What the metrics need of a data set with known factors (disentanglement_lib's
    `GroundTruthData`); `latentcode.data.dsprites.DSprites` is one."""

    @property
    def num_factors(self) -> int: ...

    def sample_factors(self, num: int, random_state: np.random.RandomState) -> np.ndarray: ...

    def sample_observations_from_factors(self, factors: np.ndarray, random_state) -> np.ndarray: ...

    def sample(self, num: int, random_state: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]: ...

    def sample_observations(self, num: int, random_state: np.random.RandomState) -> np.ndarray: ...


def as_random_state(random_state: int | np.random.RandomState) -> np.random.RandomState:
    """A `RandomState` from a seed (disentanglement_lib seeds one per metric), or the one given."""
    if isinstance(random_state, np.random.RandomState):
        return random_state
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return np.random.RandomState(int(random_state))
    raise TypeError(f"random_state must be an int seed or a numpy RandomState, got {type(random_state).__name__}")


def posterior_mean_representation(model, device: str | torch.device | None = None) -> Representation:
    """The representation function of a latentcode model: observations `[N, C, H, W]` in [0, 1]
    (a factor sampler's) -> the model's continuous code flattened, float32 numpy `[N, D]`: a VAE's
    posterior mean (disentanglement_lib's "mean" representation), an autoencoder's code. Grey
    observations are repeated to 3 channels for a model that takes RGB."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    channels = model.config.in_channels

    def represent(observations: np.ndarray) -> np.ndarray:
        pixels = torch.as_tensor(np.asarray(observations, dtype=np.float32))
        if pixels.dim() != 4:
            raise ValueError(f"expected observations [N, C, H, W] in [0, 1], got shape {tuple(pixels.shape)}")
        if pixels.shape[1] == 1 and channels == 3:
            pixels = pixels.expand(-1, 3, -1, -1)
        with torch.no_grad():
            code = model.continuous_code(pixels.to(device) * 2 - 1)  # [0, 1] -> the model's [-1, 1]
        return code.flatten(1).float().cpu().numpy()

    return represent


def as_representation(model_or_function) -> Representation:
    """A representation function: a latentcode model becomes its [`posterior_mean_representation`],
    a function stays as it is."""
    if isinstance(model_or_function, torch.nn.Module):
        return posterior_mean_representation(model_or_function)
    if not callable(model_or_function):
        raise TypeError(
            "expected a model or a representation function (observations [N, C, H, W] -> codes [N, D]), "
            f"got {type(model_or_function).__name__}"
        )
    return model_or_function


def _codes(representation: Representation, observations: np.ndarray) -> np.ndarray:
    codes = np.asarray(representation(observations))
    if codes.ndim != 2 or codes.shape[0] != len(observations):
        raise ValueError(
            f"the representation function must map {len(observations)} observations to codes [N, D], "
            f"got shape {tuple(codes.shape)}"
        )
    return codes


def sample_codes_and_factors(
    representation: Representation, sampler: FactorSampler, num_points: int, random_state, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """`(codes [num_points, D], factors [num_points, F])`, sampled `batch_size` at a time with
    `sampler.sample` (disentanglement_lib's `generate_batch_factor_code`, points in rows)."""
    random_state, representation = as_random_state(random_state), as_representation(representation)
    codes, factors = [], []
    for start in range(0, num_points, batch_size):
        batch_factors, observations = sampler.sample(min(batch_size, num_points - start), random_state)
        factors.append(batch_factors)
        codes.append(_codes(representation, observations))
    return np.concatenate(codes), np.concatenate(factors)


def sample_train_and_test(representation, sampler, num_train, num_test, random_state, batch_size) -> tuple:
    """`((codes, factors), (codes, factors))`: `num_train` then `num_test` points from one random
    state, in disentanglement_lib's order (DCI and SAP: fit on the first, score on the second)."""
    random_state = as_random_state(random_state)
    train = sample_codes_and_factors(representation, sampler, num_train, random_state, batch_size)
    return train, sample_codes_and_factors(representation, sampler, num_test, random_state, batch_size)


def _representation_in_chunks(representation: Representation, observations: np.ndarray, chunk: int) -> np.ndarray:
    return np.concatenate(
        [_codes(representation, observations[i : i + chunk]) for i in range(0, len(observations), chunk)]
    )


# ----------------------------------------------------------------------------------------------
# Mutual information and MIG
# ----------------------------------------------------------------------------------------------


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Each column of `codes` `[N, D]` as the index 1..num_bins of its equal-width bin between the
    column's minimum and maximum: int64 `[N, D]`."""
    codes = np.asarray(codes)
    binned = np.zeros(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, d], bins=num_bins)
        binned[:, d] = np.digitize(codes[:, d], edges[:-1])
    return binned


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) of two discrete variables observed together, `[N]` each, from
    their joint frequencies: sum over pairs of p(a, b) log(p(a, b) / (p(a) p(b))); 0 when either
    takes one value; tiny negative rounding is clipped to 0."""
    a_values, a_index = np.unique(a, return_inverse=True)
    b_values, b_index = np.unique(b, return_inverse=True)
    if len(a_values) < 2 or len(b_values) < 2:
        return 0.0
    cells = np.bincount(a_index * len(b_values) + b_index, minlength=len(a_values) * len(b_values))
    joint = cells.reshape(len(a_values), len(b_values))
    rows, columns = np.nonzero(joint)
    pair = joint[rows, columns].astype(np.float64)
    a_count = joint.sum(axis=1)[rows].astype(np.float64)
    b_count = joint.sum(axis=0)[columns].astype(np.float64)
    total = float(len(a_index))
    value = np.sum(pair / total * (np.log(pair) + np.log(total) - np.log(a_count) - np.log(b_count)))
    return float(max(value, 0.0))


def mutual_information_matrix(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """`[D, F]`: the mutual information (nats) of each discrete code dimension with each factor."""
    return np.array([[mutual_information(code, factor) for factor in factors.T] for code in discrete_codes.T])


def factor_entropies(factors: np.ndarray) -> np.ndarray:
    """`[F]`: each factor's empirical entropy (nats)."""
    return np.array([mutual_information(factor, factor) for factor in np.asarray(factors).T])


def mig_from_codes(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> dict:
    """MIG of codes `[N, D]` against factors `[N, F]`: `discrete_mig`, `mig_per_factor` `[F]`,
    and `mutual_information` `[D, F]` normalised by each factor's entropy."""
    information = mutual_information_matrix(histogram_discretize(codes, num_bins), np.asarray(factors))
    entropy = factor_entropies(factors)
    top_two = -np.sort(-information, axis=0)[:2]
    gaps = (top_two[0] - top_two[1]) / entropy
    return {
        "discrete_mig": float(np.mean(gaps)),
        "mig_per_factor": gaps.tolist(),
        "mutual_information": (information / entropy).tolist(),
    }


def mutual_information_gap(
    representation: Representation,
    sampler: FactorSampler,
    random_state: int | np.random.RandomState = 0,
    num_train: int = 10000,
    batch_size: int = 16,
    num_bins: int = 20,
) -> dict:
    """MIG on `num_train` sampled points ([`mig_from_codes`]'s dict)."""
    codes, factors = sample_codes_and_factors(representation, sampler, num_train, random_state, batch_size)
    return mig_from_codes(codes, factors, num_bins)


def posterior_entropies(samples: np.ndarray, means: np.ndarray, stds: np.ndarray, chunk: int = 64) -> np.ndarray:
    """`[D]`: each dimension's entropy (nats) under the aggregate posterior q(z_j) = (1/N) sum_n
    N(z_j; means[n, j], stds[n, j]^2), estimated at `samples` `[S, D]` drawn from it:
    -(1/S) sum_s log q(samples[s, j]) (Chen et al.'s `estimate_entropies`). `means`, `stds`:
    `[N, D]`, every image's posterior; the N components are summed `chunk` at a time."""
    points = torch.as_tensor(samples, dtype=torch.float32)  # [S, D]
    means, stds = torch.as_tensor(means, dtype=torch.float32), torch.as_tensor(stds, dtype=torch.float32)
    log_density = torch.full(points.shape, -math.inf)  # running log sum_n N(points; means[n], stds[n]^2)
    for start in range(0, len(means), chunk):
        mean, std = means[start : start + chunk, None], stds[start : start + chunk, None]  # [n, 1, D]
        terms = -0.5 * ((points - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)  # [n, S, D]
        log_density = torch.logaddexp(log_density, torch.logsumexp(terms, dim=0))
    return -(log_density - math.log(len(means))).double().mean(dim=0).numpy()


def sampled_mutual_information_gap(
    means: np.ndarray,
    stds: np.ndarray,
    factor_sizes: tuple[int, ...],
    factors: tuple[int, ...] | None = None,
    num_samples: int = 10000,
    random_state: int | np.random.RandomState = 0,
) -> dict:
    """MIG as Chen et al. (2018) estimate it (their code, `mutual_info_metric_shapes`), from the
    posterior of every image of a full factor grid rather than from binned means of a sample.

    `means`, `stds`: `[N, D]`, image n's posterior N(means[n], stds[n]^2), rows in the C order of
    the grid `factor_sizes` (N = prod(factor_sizes); the generated dSprites' published order).
    `factors`: the factor indices scored (default all; Chen et al. leave dSprites' shape out).
    One sample z ~ q(z|x) per image; H(z_j) is estimated at `num_samples` of them drawn without
    replacement ([`posterior_entropies`] over all N images), H(z_j | v_k) the same way within
    each value's images, averaged over the factor's values; I = H(z_j) - H(z_j | v_k), clipped at
    0 and divided by log(number of values). Per factor the gap between the two largest, averaged:
    `{"sampled_mig", "mig_per_factor" [F'], "mutual_information" [D, F'] (normalised),
    "factors", "num_samples"}`."""
    means, stds = np.asarray(means, dtype=np.float32), np.asarray(stds, dtype=np.float32)
    factor_sizes = tuple(int(size) for size in factor_sizes)
    if means.shape != stds.shape or means.ndim != 2 or len(means) != int(np.prod(factor_sizes)):
        raise ValueError(
            f"expected means and stds [N, D] over the whole grid {factor_sizes} (N = {int(np.prod(factor_sizes))}), "
            f"got {tuple(means.shape)} and {tuple(stds.shape)}"
        )
    factors = tuple(range(len(factor_sizes))) if factors is None else tuple(factors)
    random_state = as_random_state(random_state)
    samples = means + stds * random_state.standard_normal(means.shape).astype(np.float32)

    def entropies(rows: np.ndarray) -> np.ndarray:
        chosen = rows[random_state.permutation(len(rows))[:num_samples]]
        return posterior_entropies(samples[chosen], means[rows], stds[rows])

    marginal = entropies(np.arange(len(means)))
    grid = np.arange(len(means)).reshape(factor_sizes)
    information = np.zeros((means.shape[1], len(factors)))
    for column, factor in enumerate(factors):
        values = [np.take(grid, value, axis=factor).reshape(-1) for value in range(factor_sizes[factor])]
        conditional = np.mean([entropies(rows) for rows in values], axis=0)
        information[:, column] = np.clip(marginal - conditional, 0, None) / math.log(factor_sizes[factor])
    top_two = -np.sort(-information, axis=0)[:2]
    gaps = top_two[0] - top_two[1]
    return {
        "sampled_mig": float(np.mean(gaps)),
        "mig_per_factor": gaps.tolist(),
        "mutual_information": information.tolist(),
        "factors": list(factors),
        "num_samples": num_samples,
    }


# ----------------------------------------------------------------------------------------------
# DCI and SAP
# ----------------------------------------------------------------------------------------------


def _one_minus_normalised_entropy(weights: np.ndarray, axis: int) -> np.ndarray:
    """1 - entropy (base: the length of `axis`) of `weights + 1e-11` normalised along `axis`."""
    p = weights + 1e-11
    p = p / p.sum(axis=axis, keepdims=True)
    return 1.0 - (-(p * np.log(p)).sum(axis=axis) / np.log(weights.shape[axis]))


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """`(disentanglement, completeness)` of an importance matrix `[D, F]` (all-zero: uniform weights)."""
    weights = importance if importance.sum() != 0.0 else np.ones_like(importance)
    code_weight = weights.sum(axis=1) / weights.sum()
    factor_weight = weights.sum(axis=0) / weights.sum()
    disentanglement = np.sum(_one_minus_normalised_entropy(importance, axis=1) * code_weight)
    completeness = np.sum(_one_minus_normalised_entropy(importance, axis=0) * factor_weight)
    return float(disentanglement), float(completeness)


def dci_from_codes(codes_train, factors_train, codes_test, factors_test, classifier_random_state=None) -> dict:
    """DCI from train and test codes `[N, D]` and factors `[N, F]` (gradient-boosted trees with
    scikit-learn's defaults, one per factor, fitted in factor order)."""
    from sklearn.ensemble import GradientBoostingClassifier

    num_factors = factors_train.shape[1]
    importance = np.zeros((codes_train.shape[1], num_factors), dtype=np.float64)
    train_accuracy, test_accuracy = [], []
    for j in range(num_factors):
        classifier = GradientBoostingClassifier(random_state=classifier_random_state)
        classifier.fit(codes_train, factors_train[:, j])
        importance[:, j] = np.abs(classifier.feature_importances_)
        train_accuracy.append(np.mean(classifier.predict(codes_train) == factors_train[:, j]))
        test_accuracy.append(np.mean(classifier.predict(codes_test) == factors_test[:, j]))
    disentanglement, completeness = dci_from_importance(importance)
    return {
        "disentanglement": disentanglement,
        "completeness": completeness,
        "informativeness_train": float(np.mean(train_accuracy)),
        "informativeness_test": float(np.mean(test_accuracy)),
        "importance_matrix": importance.tolist(),
    }


def dci(
    representation: Representation,
    sampler: FactorSampler,
    random_state: int | np.random.RandomState = 0,
    num_train: int = 10000,
    num_test: int = 5000,
    batch_size: int = 16,
    classifier_random_state: int | None = None,
) -> dict:
    """DCI on `num_train` + `num_test` sampled points ([`dci_from_codes`]'s dict)."""
    train, test = sample_train_and_test(representation, sampler, num_train, num_test, random_state, batch_size)
    return dci_from_codes(*train, *test, classifier_random_state=classifier_random_state)


def sap_score_matrix(codes, factors, codes_test, factors_test, continuous_factors=False, classifier_random_state=None):
    """`[D, F]`: per (dimension, factor), the squared correlation (continuous factors) or the test
    accuracy of `LinearSVC(C=0.01, class_weight="balanced")` on that dimension alone (discrete)."""
    from sklearn.svm import LinearSVC

    scores = np.zeros((codes.shape[1], factors.shape[1]))
    for i in range(codes.shape[1]):
        for j in range(factors.shape[1]):
            if continuous_factors:
                covariance = np.cov(codes[:, i], factors[:, j], ddof=1)
                code_variance = covariance[0, 0]
                scores[i, j] = (
                    covariance[0, 1] ** 2 / (code_variance * covariance[1, 1]) if code_variance > 1e-12 else 0.0
                )
            else:
                svm = LinearSVC(C=0.01, class_weight="balanced", random_state=classifier_random_state)
                svm.fit(codes[:, i, None], factors[:, j])
                scores[i, j] = np.mean(svm.predict(codes_test[:, i, None]) == factors_test[:, j])
    return scores


def sap_from_codes(codes, factors, codes_test, factors_test, continuous_factors=False, classifier_random_state=None):
    """SAP score: per factor, the best minus the second-best dimension of [`sap_score_matrix`], averaged."""
    scores = sap_score_matrix(codes, factors, codes_test, factors_test, continuous_factors, classifier_random_state)
    top_two = np.sort(scores, axis=0)[-2:]
    return {"SAP_score": float(np.mean(top_two[1] - top_two[0])), "score_matrix": scores.tolist()}


def sap_score(
    representation: Representation,
    sampler: FactorSampler,
    random_state: int | np.random.RandomState = 0,
    num_train: int = 10000,
    num_test: int = 5000,
    batch_size: int = 16,
    continuous_factors: bool = False,
    classifier_random_state: int | None = None,
) -> dict:
    """SAP on `num_train` + `num_test` sampled points ([`sap_from_codes`]'s dict)."""
    train, test = sample_train_and_test(representation, sampler, num_train, num_test, random_state, batch_size)
    return sap_from_codes(*train, *test, continuous_factors, classifier_random_state)


# ----------------------------------------------------------------------------------------------
# The classifier-based scores: BetaVAE and FactorVAE
# ----------------------------------------------------------------------------------------------


def _beta_vae_points(representation, sampler, batch_size, num_points, random_state) -> tuple[np.ndarray, np.ndarray]:
    """`num_points` (feature [D], fixed factor) pairs: per point a factor drawn, two factor
    batches sharing it, the mean absolute difference of their codes."""
    features, labels = None, np.zeros(num_points, dtype=np.int64)
    for point in range(num_points):
        labels[point] = random_state.randint(sampler.num_factors)
        first = sampler.sample_factors(batch_size, random_state)
        second = sampler.sample_factors(batch_size, random_state)
        second[:, labels[point]] = first[:, labels[point]]
        first_images = sampler.sample_observations_from_factors(first, random_state)
        second_images = sampler.sample_observations_from_factors(second, random_state)
        difference = np.mean(
            np.abs(_codes(representation, first_images) - _codes(representation, second_images)), axis=0
        )
        if features is None:
            features = np.zeros((num_points, difference.shape[0]))
        features[point] = difference
    return features, labels


def beta_vae_score(
    representation: Representation,
    sampler: FactorSampler,
    random_state: int | np.random.RandomState = 0,
    batch_size: int = 64,
    num_train: int = 10000,
    num_eval: int = 5000,
) -> dict:
    """The BetaVAE score: `{"train_accuracy", "eval_accuracy"}` of a logistic regression (fitted
    with the metric's own RandomState, as disentanglement_lib does)."""
    from sklearn.linear_model import LogisticRegression

    random_state, representation = as_random_state(random_state), as_representation(representation)
    train_points, train_labels = _beta_vae_points(representation, sampler, batch_size, num_train, random_state)
    classifier = LogisticRegression(random_state=random_state)
    classifier.fit(train_points, train_labels)
    train_accuracy = np.mean(classifier.predict(train_points) == train_labels)
    eval_points, eval_labels = _beta_vae_points(representation, sampler, batch_size, num_eval, random_state)
    eval_accuracy = classifier.score(eval_points, eval_labels)
    return {"train_accuracy": float(train_accuracy), "eval_accuracy": float(eval_accuracy)}


def _factor_vae_votes(representation, sampler, batch_size, num_points, random_state, variances, active):
    """`[F, D]` votes: per point a factor drawn and held fixed over a batch; the vote goes to the
    kept dimension with the least variance relative to its global variance."""
    votes = np.zeros((sampler.num_factors, len(variances)), dtype=np.int64)
    kept = np.flatnonzero(active)
    for _ in range(num_points):
        factor = random_state.randint(sampler.num_factors)
        factors = sampler.sample_factors(batch_size, random_state)
        factors[:, factor] = factors[0, factor]
        codes = _codes(representation, sampler.sample_observations_from_factors(factors, random_state))
        local = np.var(codes, axis=0, ddof=1)
        votes[factor, kept[np.argmin(local[active] / variances[active])]] += 1
    return votes


def factor_vae_score(
    representation: Representation,
    sampler: FactorSampler,
    random_state: int | np.random.RandomState = 0,
    batch_size: int = 64,
    num_train: int = 10000,
    num_eval: int = 5000,
    num_variance_estimate: int = 10000,
    prune_threshold: float = 0.05,
) -> dict:
    """The FactorVAE score: `{"train_accuracy", "eval_accuracy", "num_active_dims"}` of the
    majority-vote classifier (0 when no dimension's global standard deviation reaches
    `prune_threshold`). The global variances come from `num_variance_estimate` images encoded
    64 at a time, as in disentanglement_lib."""
    random_state, representation = as_random_state(random_state), as_representation(representation)
    observations = sampler.sample_observations(num_variance_estimate, random_state)
    variances = np.var(_representation_in_chunks(representation, observations, 64), axis=0, ddof=1)
    active = np.sqrt(variances) >= prune_threshold
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    train_votes = _factor_vae_votes(representation, sampler, batch_size, num_train, random_state, variances, active)
    classifier = np.argmax(train_votes, axis=0)  # the factor each dimension stands for
    columns = np.arange(train_votes.shape[1])
    eval_votes = _factor_vae_votes(representation, sampler, batch_size, num_eval, random_state, variances, active)
    return {
        "train_accuracy": float(np.sum(train_votes[classifier, columns]) / np.sum(train_votes)),
        "eval_accuracy": float(np.sum(eval_votes[classifier, columns]) / np.sum(eval_votes)),
        "num_active_dims": int(active.sum()),
    }
