"""The generated dSprites: the published factor grid, determinism, each factor changing the image
as it should, the dataset order, and `builtin:dsprites` as a training / evaluation source."""

from __future__ import annotations

import numpy as np
import pytest

from latentcode.data import load_image_stream, open_source
from latentcode.data.dsprites import (
    FACTOR_NAMES,
    FACTOR_SIZES,
    FACTOR_VALUES,
    NUM_IMAGES,
    DSprites,
    DSpritesImages,
    draw,
    factors_to_index,
    index_to_factors,
    render,
)
from latentcode.data.images import EveryTenth


def centroid(image: np.ndarray) -> np.ndarray:
    rows, columns = np.nonzero(image)
    return np.array([columns.mean(), rows.mean()])


def test_the_factor_grid_is_the_published_one():
    assert FACTOR_NAMES == ("shape", "scale", "orientation", "position_x", "position_y")
    assert FACTOR_SIZES == (3, 6, 40, 32, 32) and NUM_IMAGES == 737_280 == len(DSprites()) == len(DSpritesImages())
    assert {name: len(values) for name, values in FACTOR_VALUES.items()} == dict(zip(FACTOR_NAMES, FACTOR_SIZES))
    assert FACTOR_VALUES["scale"] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert FACTOR_VALUES["orientation"][[0, 1, -1]] == pytest.approx([0.0, 2 * np.pi / 39, 2 * np.pi])
    assert FACTOR_VALUES["position_x"][[0, 1, -1]] == pytest.approx([0.0, 1 / 31, 1.0])


def test_images_are_binary_64x64_and_deterministic():
    factors = DSprites().sample_factors(50, np.random.RandomState(0))
    images = render(factors)
    assert images.shape == (50, 64, 64) and images.dtype == bool
    assert np.array_equal(images, render(factors.copy()))
    assert images.any(axis=(1, 2)).all()  # every shape is drawn...
    assert not images[:, [0, -1], :].any() and not images[:, :, [0, -1]].any()  # ...inside the frame
    observations = DSprites().sample_observations_from_factors(factors)
    assert observations.shape == (50, 1, 64, 64) and observations.dtype == np.float32
    assert set(np.unique(observations)) == {0.0, 1.0}


def test_render_moves_sprites_and_equals_drawing_each_pixel():
    """render() shifts the sprite drawn at position (0, 0); draw() computes every pixel at the
    factors' own position: the same pixels, for every shape, scale and orientation."""
    factors = DSprites().sample_factors(400, np.random.RandomState(4))
    factors[:120, 2] = np.arange(120) % 40  # every orientation of every shape
    factors[:120, 0] = np.arange(120) // 40
    factors[120:130, 3:] = [[0, 0], [31, 31], [0, 31], [31, 0], [1, 30], [30, 1], [15, 16], [16, 15], [2, 2], [29, 29]]
    assert np.array_equal(render(factors), draw(factors))


def test_sampling_draws_each_factor_uniformly_with_one_randint_per_factor():
    """disentanglement_lib's order: factors drawn column by column from the RandomState."""
    factors = DSprites().sample_factors(4, np.random.RandomState(1))
    expected = np.random.RandomState(1)
    assert np.array_equal(factors, np.stack([expected.randint(size, size=4) for size in FACTOR_SIZES], axis=1))
    many = DSprites().sample_factors(20000, np.random.RandomState(2))
    assert [len(np.unique(column)) for column in many.T] == list(FACTOR_SIZES)


def test_position_x_and_y_move_the_shape_by_one_pixel_per_step():
    base = np.array([[2, 3, 7, 10, 12]])
    right, down = base + [0, 0, 0, 1, 0], base + [0, 0, 0, 0, 1]
    image = render(base)[0]
    assert np.array_equal(render(right)[0], np.roll(image, 1, axis=1))
    assert np.array_equal(render(down)[0], np.roll(image, 1, axis=0))
    assert centroid(render(right)[0]) - centroid(image) == pytest.approx([1.0, 0.0])


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_scale_grows_the_area_as_its_square_and_orientation_turns_the_shape(shape):
    areas = [render([[shape, scale, 0, 15, 15]])[0].sum() for scale in range(6)]
    assert np.all(np.diff(areas) > 0)
    assert areas[-1] / areas[0] == pytest.approx(4.0, rel=0.15)  # scale 1 vs 0.5: twice as wide
    first, turned = render([[shape, 5, 0, 15, 15], [shape, 5, 5, 15, 15]])
    assert not np.array_equal(first, turned)
    assert abs(int(first.sum()) - int(turned.sum())) < 0.1 * first.sum()  # turning keeps the area
    assert np.array_equal(first, render([[shape, 5, 39, 15, 15]])[0])  # 0 and 2 pi: one image


def test_the_three_shapes_differ():
    square, ellipse, heart = render([[s, 5, 0, 15, 15] for s in range(3)])
    assert square.sum() == 20 * 20  # 2 * SPRITE_RADIUS pixels wide at scale 1
    assert ellipse.sum() == pytest.approx(np.pi * 10 * 5, rel=0.1)
    assert len({square.tobytes(), ellipse.tobytes(), heart.tobytes()}) == 3
    assert not np.array_equal(heart, heart[::-1])  # the heart has an up and a down


def test_dataset_order_is_the_published_one():
    """Image i: position_y varies fastest, then position_x, orientation, scale, shape."""
    assert index_to_factors([0, 1, 32, 32 * 32, NUM_IMAGES - 1]).tolist() == [
        [0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0], [2, 5, 39, 31, 31],
    ]  # fmt: skip
    indices = np.random.RandomState(3).randint(NUM_IMAGES, size=100)
    assert np.array_equal(factors_to_index(index_to_factors(indices)), indices)
    assert np.array_equal(np.asarray(DSpritesImages()[1234]) > 0, render(index_to_factors([1234]))[0])


def test_bad_factors_raise_clear_errors():
    with pytest.raises(ValueError, match=r"integers of shape \[N, 5\]"):
        render(np.zeros((2, 4), dtype=int))
    with pytest.raises(ValueError, match="'orientation' takes the indices 0..39, got 40"):
        render([[0, 0, 40, 0, 0]])
    with pytest.raises(IndexError, match="dSprites has the images 0..737279"):
        index_to_factors([NUM_IMAGES])


def test_builtin_dsprites_is_a_source_for_training_and_evaluation():
    train, test = open_source("train", "builtin:dsprites"), open_source("test", "builtin:dsprites")
    assert (len(train), len(test)) == (663_552, 73_728)
    # every tenth image (9, 19, ...) is held out, in a fixed shuffled order: the k-th is held-out image order[k]
    order = np.random.RandomState(0).permutation(73_728)
    rows = test.read_range(0, 3)
    assert [np.array_equal(np.asarray(row["image"]) > 0, render(index_to_factors([10 * i + 9]))[0]) for row, i in
            zip(rows, order[:3])] == [True, True, True]  # fmt: skip
    assert np.array_equal(np.asarray(train.read_range(9, 10)[0]["image"]) > 0, render(index_to_factors([10]))[0])
    first = next(iter(load_image_stream("builtin:dsprites", split="test")))["image"]
    assert first.size == (64, 64) and np.array_equal(
        np.asarray(first.convert("L")) > 0, render(index_to_factors([10 * order[0] + 9]))[0]
    )


def test_the_first_held_out_images_spread_over_every_factor():
    # In storage order the first 64 held-out images were all the smallest square at orientation 0:
    # a run validating on them measured one sprite. The spread order gives every shape, scale and
    # many orientations and positions within the first 64.
    test = EveryTenth(range(NUM_IMAGES), test=True)  # the view maps indices; range holds the image indices
    factors = index_to_factors(np.array([test[k] for k in range(64)]))
    shapes, scales, orientations, xs, ys = (len(set(column)) for column in factors.T)
    # (every tenth image has an odd y: 16 of the 32 rows are held out, all of them also in training)
    assert (shapes, scales) == (3, 6) and orientations >= 25 and xs >= 20 and ys >= 12
    # a permutation: the held-out set is the same as before, each image once
    small = EveryTenth(range(1000), test=True)
    assert sorted(small[k] for k in range(len(small))) == list(range(9, 1000, 10))
    train = EveryTenth(range(1000), test=False)
    assert [train[k] for k in range(len(train))] == [i for i in range(1000) if i % 10 != 9]
