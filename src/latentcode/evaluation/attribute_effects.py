"""Attribute vectors where the truth is known: made from dSprites image sets that differ in one
factor, and measured by reading every factor back from the decoded pixels.

An attribute vector (`latentcode.traversal.attribute_vector`) is the mean code of images that
show an attribute minus that of images that do not. On the generated dSprites
(`latentcode.data.dsprites`) the attribute can be one factor exactly:

- [`dsprites_attribute_sets`]`("scale", 1, 4, count)`: `count` sprites drawn by the factor
  sampler (random shape, orientation and position), each rendered twice, at scale index 4
  ("with": larger) and 1 ("without"); nothing else differs. `"position_x"` gives "moved right",
  `"position_y"` "moved down" (rows count downwards), `"orientation"` "rotated" (anticlockwise).
- [`attribute_effects`]: decodes images' codes moved by `strength * vector` for a few strengths
  and reads the five factors back from the decoded pixels (`dsprites.read_factors`: the nearest
  of the 720 sprites gives shape and orientation, the centroid gives x and y, the area gives
  scale), each compared with the same image decoded at strength 0, so what the model's
  reconstruction gets wrong cancels. [`AttributeEffects`] holds the mean change of each factor
  per unit strength: a vector that *is* the attribute changes the named factor and no other.

Units are the factor grid's index steps: position x / y in pixels (one step is one pixel), scale
in steps of 0.1, orientation in steps of 2 pi / 39 (9.2 degrees), taken modulo the shape's
symmetry (a quarter turn for the square, a half turn for the ellipse; whole steps), and shape as the fraction
of images whose shape reads differently (unsigned). Moving the "without" images by strength 1
should make them the "with" images: a perfect code changes the named factor by `high - low` per
unit strength and the others by 0 (tests/test_attribute_effects.py builds one from the factors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.dsprites import FACTOR_NAMES, FACTOR_SIZES, SHAPES, SYMMETRY_STEPS, DSprites, read_factors, render
from ..traversal import apply_attribute

DEFAULT_STRENGTHS = (0.25, 0.5, 0.75, 1.0)


def dsprites_attribute_sets(
    factor: str,
    low: int,
    high: int,
    count: int,
    seed: int = 0,
    channels: int = 1,
    fixed: dict[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with and without an attribute that is one dSprites factor: `(with_attribute,
    without_attribute)`, each float32 `[count, channels, 64, 64]` in {-1, 1} (a model's pixels;
    `channels=3` repeats the grey image for an RGB model). Image `i` of both sets has the same
    factors, drawn by `DSprites().sample_factors(count, RandomState(seed))` then set to the
    indices in `fixed` (e.g. `{"shape": 2}`: hearts only, whose turns are all visible), except
    `factor`: index `high` in the first set, `low` in the second."""
    fixed = dict(fixed or {})
    for name, index in [(factor, low), (factor, high), *fixed.items()]:
        if name not in FACTOR_NAMES:
            raise ValueError(f"factors are named {FACTOR_NAMES}, got {name!r}")
        if not 0 <= index < FACTOR_SIZES[FACTOR_NAMES.index(name)]:
            raise ValueError(f"{name} takes the indices 0..{FACTOR_SIZES[FACTOR_NAMES.index(name)] - 1}, got {index}")
    if low == high or factor in fixed:
        raise ValueError(
            f"expected two different indices of {factor!r}, not fixed; got {low} and {high}, fixed {fixed}"
        )
    if count < 1 or channels not in (1, 3):
        raise ValueError(f"expected count >= 1 and channels 1 or 3, got count={count}, channels={channels}")
    factors = DSprites().sample_factors(count, np.random.RandomState(seed))
    for name, index in fixed.items():
        factors[:, FACTOR_NAMES.index(name)] = index
    column = FACTOR_NAMES.index(factor)
    sets = []
    for index in (high, low):
        factors[:, column] = index
        pixels = torch.from_numpy(render(factors)).float()[:, None] * 2 - 1  # {0, 1} -> {-1, 1}
        sets.append(pixels.expand(-1, channels, -1, -1).contiguous())
    return sets[0], sets[1]


@dataclass
class AttributeEffects:
    """What moving images along an attribute vector did to each dSprites factor.

    `strengths` `[S]` (nonzero), `changes` `[S, 5]`: the mean change of each factor (columns in
    `factor_names` order, the module docstring's units) from the image decoded at strength 0,
    `absolute_changes` `[S, 5]` the mean of its absolute value, over the images that decode to a
    non-empty image at both strengths; `empty_fraction` `[S]` the fraction that decode to no
    pixel on, `mismatched_pixels` `[S]` the mean number of pixels by which the decoded images
    differ from the nearest dSprites render (how far the move leaves the data)."""

    strengths: np.ndarray
    changes: np.ndarray
    absolute_changes: np.ndarray
    empty_fraction: np.ndarray
    mismatched_pixels: np.ndarray
    factor_names: tuple[str, ...] = FACTOR_NAMES

    @property
    def per_unit_strength(self) -> dict[str, float]:
        """Each factor's signed change per unit strength: the least-squares slope through 0 of the
        mean change against the strength (shape: the unsigned fraction changed per unit)."""
        slope = (self.strengths[:, None] * self.changes).sum(0) / (self.strengths**2).sum()
        return dict(zip(self.factor_names, slope.tolist()))

    @property
    def absolute_per_unit_strength(self) -> dict[str, float]:
        """Each factor's mean absolute change divided by |strength|, averaged over the strengths:
        a factor that moves some images one way and others the other way shows here."""
        per_unit = (self.absolute_changes / np.abs(self.strengths)[:, None]).mean(0)
        return dict(zip(self.factor_names, per_unit.tolist()))

    def markdown(self) -> str:
        """A table: one row per strength, then the per-unit rows; one column per factor."""
        header = "| strength | " + " | ".join(self.factor_names) + " | empty | mismatched pixels |"
        lines = [header, "|" + "---|" * (len(self.factor_names) + 3)]
        for row, strength in enumerate(self.strengths):
            cells = " | ".join(f"{value:+.2f}" for value in self.changes[row])
            empty, mismatch = self.empty_fraction[row], self.mismatched_pixels[row]
            lines.append(f"| {strength:+.2f} | {cells} | {empty:.2f} | {mismatch:.1f} |")
        for name, values in (("per unit", self.per_unit_strength), ("abs. per unit", self.absolute_per_unit_strength)):
            lines.append(f"| {name} | " + " | ".join(f"{value:+.2f}" for value in values.values()) + " | | |")
        return "\n".join(lines)


def factor_changes(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per image, the change of each factor from `before` to `after` (read factors, float
    `[N, 5]`): shape 1 where it differs else 0; orientation modulo the symmetry of the shape read
    `before` (into half a symmetry period either way), rounded to whole steps; the others their
    difference. The rounding: a quarter turn is 9.75 steps, a half turn 19.5, and renders whose
    orientations differ by 10 or 29 steps (square) or 20 (ellipse) can be the same pixels, so the
    reading leaves up to half a step of a symmetry turn that the images do not resolve."""
    change = after - before
    change[:, 0] = (after[:, 0] != before[:, 0]).astype(np.float64)
    shape = np.nan_to_num(before[:, 0]).astype(np.int64)
    period = np.array([SYMMETRY_STEPS[name] for name in SHAPES])[shape]
    change[:, 2] = np.rint((change[:, 2] + period / 2) % period - period / 2)
    empty = np.isnan(before).any(axis=1) | np.isnan(after).any(axis=1)
    change[empty] = np.nan
    return change


@torch.no_grad()
def attribute_effects(
    model, vector: torch.Tensor, pixel_values: torch.Tensor, strengths: Sequence[float] = DEFAULT_STRENGTHS
) -> AttributeEffects:
    """Move the codes of `pixel_values` (`[N, C, 64, 64]` in [-1, 1], e.g. the "without" set of
    [`dsprites_attribute_sets`]) by each of `strengths` times `vector` (the code's shape), decode,
    and read the dSprites factors back from the pixels: an [`AttributeEffects`] (module docstring)."""
    strengths = np.asarray([float(strength) for strength in strengths])
    if strengths.size == 0 or (strengths == 0).any():
        raise ValueError(
            f"expected nonzero strengths (0 is the baseline each is compared with), got {strengths.tolist()}"
        )
    if pixel_values.dim() != 4 or pixel_values.shape[-2:] != (64, 64):
        raise ValueError(f"expected dSprites-sized images [N, C, 64, 64] in [-1, 1], got {tuple(pixel_values.shape)}")

    def read(strength: float) -> tuple[np.ndarray, np.ndarray]:
        decoded = apply_attribute(model, pixel_values, vector, strength)
        reading = read_factors((decoded.float().cpu().numpy() + 1) / 2)
        return reading.factors, reading.mismatched_pixels

    baseline, _ = read(0.0)
    changes, absolute, empty, mismatch = [], [], [], []
    for strength in strengths:
        factors, mismatched = read(strength)
        change = factor_changes(baseline, factors)
        valid = ~np.isnan(change).any(axis=1)
        changes.append(change[valid].mean(0) if valid.any() else np.full(len(FACTOR_NAMES), np.nan))
        absolute.append(np.abs(change[valid]).mean(0) if valid.any() else np.full(len(FACTOR_NAMES), np.nan))
        empty.append(float(np.isnan(factors).any(axis=1).mean()))
        mismatch.append(float(mismatched.mean()))
    return AttributeEffects(strengths, np.stack(changes), np.stack(absolute), np.array(empty), np.array(mismatch))
