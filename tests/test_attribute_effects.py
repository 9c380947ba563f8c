"""Attribute vectors on dSprites, where the truth is known: the factors read back from pixels equal
the rendered ones, the image sets differ in one factor only, and moving along a vector changes the
named factor and nothing else for a model whose code *is* the factors (and not for a random VAE,
nor for a model that ties one factor to another)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from latentcode import VAEConfig, VAEModel
from latentcode.data.dsprites import FACTOR_NAMES, DSprites, read_factors, render
from latentcode.evaluation.attribute_effects import (
    AttributeEffects,
    attribute_effects,
    dsprites_attribute_sets,
    factor_changes,
)
from latentcode.traversal import attribute_vector

# One attribute per factor but shape: (factor, low, high, fixed factors). Strengths 0.25 .. 1
# times these differences are whole steps, so a code of the factors decodes them without
# rounding. "Rotated" on hearts: a few small squares and ellipses render the same pixels at
# neighbouring orientations (the ellipse at scale index 1 at orientations 1 and 2), which no
# reading from pixels can tell apart.
ATTRIBUTES = [
    ("scale", 1, 5, {}),
    ("position_x", 4, 20, {}),
    ("position_y", 24, 8, {}),
    ("orientation", 0, 4, {"shape": 2}),
]


def sample_rows(factor: str, low: int, high: int, count: int, seed: int, fixed=None) -> np.ndarray:
    """The factor rows behind `dsprites_attribute_sets(factor, low, high, count, seed, fixed=fixed)`:
    `[2 * count, 5]`, the "with" rows first."""
    rows = DSprites().sample_factors(count, np.random.RandomState(seed))
    for name, index in (fixed or {}).items():
        rows[:, FACTOR_NAMES.index(name)] = index
    column = FACTOR_NAMES.index(factor)
    return np.concatenate([np.where(np.arange(5) == column, value, rows) for value in (high, low)])


class FactorCodeModel(torch.nn.Module):
    """A model whose code is the five factor indices: the encoder looks a rendered image up among
    the renders of `rows` (exact, independent of `read_factors`), the decoder renders the code
    rounded to the grid. `x_per_scale` ties position x to the scale code: an entangled decoder."""

    def __init__(self, rows: np.ndarray, x_per_scale: float = 0.0):
        super().__init__()
        self.codes = {}
        for row, image in zip(rows, render(rows)):
            self.codes.setdefault(image.tobytes(), row.astype(np.float32))
        self.x_per_scale = x_per_scale

    def latent_code_shape(self):
        return (5,)

    def continuous_code(self, pixel_values: torch.Tensor) -> torch.Tensor:
        keys = [image.tobytes() for image in (pixel_values[:, 0] > 0).numpy()]
        return torch.from_numpy(np.stack([self.codes[key] for key in keys]))

    def decode(self, codes: torch.Tensor, return_dict: bool = True):
        factors = codes.double().numpy().copy()
        factors[:, 3] += self.x_per_scale * factors[:, 1]
        factors = np.clip(np.rint(factors), 0, np.array([2, 5, 39, 31, 31])).astype(np.int64)
        return SimpleNamespace(sample=torch.from_numpy(render(factors)).float()[:, None] * 2 - 1)


def moves_only(effects: AttributeEffects, factor: str, expected: float) -> bool:
    """The pass criterion: the named factor moves by `expected` per unit strength (within 25 %),
    every other factor by at most 0.25 index steps (shape: 25 % of the images) per unit."""
    named = effects.per_unit_strength[factor]
    others = [value for name, value in effects.absolute_per_unit_strength.items() if name != factor]
    return bool(abs(named - expected) <= 0.25 * abs(expected) and max(others) <= 0.25)


def test_read_factors_recovers_the_rendered_factors():
    """Rendered images match their sprite with no differing pixel, so x, y and scale are the
    rendered ones to float rounding (centroid and area sums of at most 4096 pixels: 1e-9 holds
    with room). Orientation is identifiable only up to the shape's symmetry: the read factors
    render the very same image, and a heart's (no symmetry) reads exactly, 2 pi as 0."""
    factors = DSprites().sample_factors(300, np.random.RandomState(1))
    factors[:120, :3] = np.stack([np.arange(120) // 40, np.arange(120) % 6, np.arange(120) % 40], axis=1)
    factors[120:124, 3:] = [[0, 0], [31, 31], [0, 31], [31, 0]]  # the frame's corners
    images = render(factors)
    reading = read_factors(images)
    assert reading.factors.shape == (300, 5) and not reading.mismatched_pixels.any()
    np.testing.assert_array_equal(reading.factors[:, 0], factors[:, 0])
    np.testing.assert_allclose(reading.factors[:, [1, 3, 4]], factors[:, [1, 3, 4]], rtol=0, atol=1e-9)
    assert np.array_equal(render(np.rint(reading.factors).astype(np.int64)), images)
    hearts = factors[:, 0] == 2
    np.testing.assert_array_equal(reading.factors[hearts, 2], factors[hearts, 2] % 39)


def test_read_factors_takes_soft_pixels_and_channels_and_reads_an_empty_image_as_nan():
    factors = DSprites().sample_factors(20, np.random.RandomState(2))
    soft = render(factors)[:, None].astype(np.float64) * 0.6 + 0.2  # probabilities 0.2 / 0.8
    soft = soft + np.random.RandomState(0).uniform(-0.15, 0.15, soft.shape)
    reading = read_factors(np.repeat(soft, 3, axis=1))
    np.testing.assert_allclose(reading.factors[:, [0, 1, 3, 4]], factors[:, [0, 1, 3, 4]], atol=1e-9)
    empty = read_factors(np.zeros((1, 64, 64)))
    assert np.isnan(empty.factors).all()
    with pytest.raises(ValueError, match=r"expected dSprites-like images .* got shape \(2, 32, 32\)"):
        read_factors(np.zeros((2, 32, 32)))


def test_attribute_sets_differ_in_the_named_factor_only():
    with_attribute, without_attribute = dsprites_attribute_sets("scale", 1, 4, count=12, seed=3)
    assert with_attribute.shape == without_attribute.shape == (12, 1, 64, 64)
    assert set(with_attribute.unique().tolist()) == {-1.0, 1.0}
    rows = sample_rows("scale", 1, 4, 12, seed=3)
    assert np.array_equal(with_attribute[:, 0].numpy() > 0, render(rows[:12]))
    assert np.array_equal(without_attribute[:, 0].numpy() > 0, render(rows[12:]))
    assert (rows[:12, 1] == 4).all() and (rows[12:, 1] == 1).all()
    np.testing.assert_array_equal(np.delete(rows[:12], 1, axis=1), np.delete(rows[12:], 1, axis=1))
    rgb, _ = dsprites_attribute_sets("scale", 1, 4, count=12, seed=3, channels=3)
    assert rgb.shape == (12, 3, 64, 64) and torch.equal(rgb[:, 2], with_attribute[:, 0])
    hearts, _ = dsprites_attribute_sets("orientation", 0, 4, count=12, seed=3, fixed={"shape": 2, "scale": 5})
    assert np.array_equal(
        hearts[:, 0].numpy() > 0, render(sample_rows("orientation", 0, 4, 12, 3, {"shape": 2, "scale": 5})[:12])
    )
    np.testing.assert_allclose(read_factors((hearts.numpy() + 1) / 2).factors[:, :2], [[2, 5]] * 12, atol=1e-9)
    with pytest.raises(ValueError, match="factors are named"):
        dsprites_attribute_sets("size", 1, 4, count=2)
    with pytest.raises(ValueError, match=r"scale takes the indices 0..5, got 6"):
        dsprites_attribute_sets("scale", 1, 6, count=2)
    with pytest.raises(ValueError, match="expected two different indices of 'scale', not fixed"):
        dsprites_attribute_sets("scale", 1, 4, count=2, fixed={"scale": 3})


@pytest.mark.parametrize("factor, low, high, fixed", ATTRIBUTES, ids=[factor for factor, *_ in ATTRIBUTES])
def test_a_code_of_the_factors_moves_only_the_named_factor(factor, low, high, fixed):
    """Moving the "without" images by strength s changes the named factor by s * (high - low),
    exactly, and no other factor at all; the decoded images are dSprites renders."""
    with_attribute, without_attribute = dsprites_attribute_sets(factor, low, high, count=24, seed=5, fixed=fixed)
    model = FactorCodeModel(sample_rows(factor, low, high, 24, seed=5, fixed=fixed))
    vector = attribute_vector(model, with_attribute, without_attribute)
    effects = attribute_effects(model, vector, without_attribute)
    column = FACTOR_NAMES.index(factor)
    expected = np.zeros((4, 5))
    expected[:, column] = np.array([0.25, 0.5, 0.75, 1.0]) * (high - low)
    np.testing.assert_allclose(effects.changes, expected, atol=1e-9)
    np.testing.assert_allclose(effects.absolute_changes, np.abs(expected), atol=1e-9)
    assert effects.per_unit_strength[factor] == pytest.approx(high - low)
    assert moves_only(effects, factor, high - low)
    assert not effects.mismatched_pixels.any() and not effects.empty_fraction.any()
    assert "| +1.00 | " in effects.markdown()


def test_a_decoder_that_ties_position_to_scale_fails():
    """A "larger" vector through a decoder that also moves the sprite right by 2 pixels per scale
    step: the measurement shows x moving 8 pixels per unit strength, beside scale's 4 steps."""
    rows = DSprites().sample_factors(16, np.random.RandomState(6))
    rows[:, 3] = rows[:, 3] % 12  # room to move right by up to 8 pixels
    rows[:, 1] = 1
    model = FactorCodeModel(rows, x_per_scale=2.0)
    pixels = torch.from_numpy(render(rows)).float()[:, None] * 2 - 1
    effects = attribute_effects(model, torch.tensor([0.0, 4.0, 0.0, 0.0, 0.0]), pixels)
    assert effects.per_unit_strength["scale"] == pytest.approx(4.0)
    assert effects.per_unit_strength["position_x"] == pytest.approx(8.0)
    assert not moves_only(effects, "scale", 4.0)


def test_a_random_vae_does_not_move_only_the_named_factor():
    """An untrained VAE decodes every code to the same grey haze (every pixel's probability just
    above 1/2): no factor moves, and the decoded images are far from any sprite."""
    torch.manual_seed(0)
    vae = VAEModel(VAEConfig(backbone="vector", in_channels=1, sample_size=64, latent_channels=10)).eval()
    with_attribute, without_attribute = dsprites_attribute_sets("scale", 1, 5, count=16, seed=7)
    effects = attribute_effects(vae, attribute_vector(vae, with_attribute, without_attribute), without_attribute)
    assert not moves_only(effects, "scale", 4.0)
    assert effects.mismatched_pixels.min() > 1000


def test_a_random_direction_in_a_code_of_the_factors_moves_several_factors():
    rows = sample_rows("scale", 1, 5, 24, seed=8)
    model = FactorCodeModel(rows)
    pixels = torch.from_numpy(render(rows[24:])).float()[:, None] * 2 - 1
    direction = torch.from_numpy(np.random.RandomState(0).normal(size=5)).float()
    effects = attribute_effects(model, direction * 4 / direction.norm(), pixels)
    moved = [name for name, value in effects.absolute_per_unit_strength.items() if value > 0.25]
    assert len(moved) >= 3, effects.markdown()
    assert not any(moves_only(effects, factor, 4.0) for factor in FACTOR_NAMES)


def test_orientation_changes_count_modulo_the_shapes_symmetry():
    """A square turned by 10 steps (92.3 degrees) has turned 0.25 steps past its quarter turn
    (9.75 steps), by 13 steps 3.25; an ellipse by 20 steps 0.5 past its half turn, by 17 steps
    2.5 short of it; a heart has no symmetry. Changes are read in whole steps (half to even)."""
    before = np.array([[0, 2, 0, 10, 10], [0, 2, 30, 10, 10], [1, 2, 0, 10, 10], [1, 2, 0, 10, 10],
                       [2, 2, 35, 10, 10]], dtype=np.float64)  # fmt: skip
    after = before.copy()
    after[:, 2] = [10, 4, 20, 17, 2]  # the heart: 35 -> 2 is 6 steps forward across 2 pi (39 steps)
    after[4, 3] += 1
    changes = factor_changes(before, after)
    np.testing.assert_array_equal(changes[:, 2], [0, 3, 0, -2, 6])
    np.testing.assert_array_equal(changes[:, [0, 1, 3, 4]], [[0, 0, 0, 0]] * 4 + [[0, 0, 1, 0]])
    after[0, 0] = 1
    assert factor_changes(before, after)[0, 0] == 1  # shape: changed or not


def test_bad_strengths_and_images_raise_clear_errors():
    model = FactorCodeModel(np.zeros((1, 5), dtype=np.int64))
    pixels = torch.from_numpy(render(np.zeros((1, 5), dtype=np.int64))).float()[:, None] * 2 - 1
    with pytest.raises(ValueError, match="expected nonzero strengths"):
        attribute_effects(model, torch.zeros(5), pixels, strengths=[0.0, 1.0])
    with pytest.raises(ValueError, match=r"expected dSprites-sized images \[N, C, 64, 64\]"):
        attribute_effects(model, torch.zeros(5), pixels[:, :, :32, :32])
