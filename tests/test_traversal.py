"""Traversals, attribute vectors and per-dimension KL on known values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.distributions import Normal, kl_divergence

from latentcode import AutoencoderConfig, AutoencoderModel, VAEConfig, VAEModel
from latentcode.grids import image_grid
from latentcode.image_processing import LatentCodeImageProcessor
from latentcode.traversal import (
    apply_attribute,
    attribute_traversal,
    attribute_vector,
    continuous_codes,
    latent_traversal,
    main,
    per_dimension_kl,
    top_dimensions,
    traversal_codes,
)

VECTOR = dict(backbone="vector", in_channels=1, sample_size=32, latent_channels=4, vector_hidden_channels=8)


def images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return VAEModel(VAEConfig(**VECTOR)).eval()


def test_per_dimension_kl_equals_torch_distributions(vae):
    x = images(5)
    posterior = vae.encode(x).latent_dist
    expected = kl_divergence(Normal(posterior.mean, posterior.std), Normal(0.0, 1.0)).mean(0)
    kl = per_dimension_kl(vae, x)
    torch.testing.assert_close(kl, expected)
    torch.testing.assert_close(kl.sum(), posterior.kl().mean())


def test_per_dimension_kl_of_a_latent_grid_sums_the_positions():
    torch.manual_seed(0)
    model = VAEModel(VAEConfig(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=3))
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    posterior = model.encode(x).latent_dist
    expected = kl_divergence(Normal(posterior.mean, posterior.std), Normal(0.0, 1.0)).sum((2, 3)).mean(0)
    torch.testing.assert_close(per_dimension_kl(model, x), expected)


def test_top_dimensions_rank_by_kl():
    assert top_dimensions(torch.tensor([0.1, 3.0, 0.5, 2.0]), 2) == [1, 3]
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 4\]"):
        top_dimensions(torch.zeros(4), 5)


def test_traversal_codes_move_one_dimension_per_row():
    base = torch.tensor([1.0, 2.0, 3.0])
    codes = traversal_codes(base, [0, 2], torch.tensor([-1.0, 0.5]))
    expected = torch.tensor([[0.0, 2.0, 3.0], [1.5, 2.0, 3.0], [1.0, 2.0, 2.0], [1.0, 2.0, 3.5]])
    torch.testing.assert_close(codes, expected)
    grid = traversal_codes(torch.zeros(2, 1, 2), [1], torch.tensor([4.0]))
    torch.testing.assert_close(grid, torch.tensor([[[[0.0, 0.0]], [[4.0, 4.0]]]]))  # a whole channel moves


def test_latent_traversal_decodes_the_sweep(vae):
    values = torch.tensor([-2.0, 0.0, 2.0])
    grid = latent_traversal(vae, dims=[3, 1], values=values)
    codes = torch.zeros(6, 4)
    codes[[0, 1, 2], 3] = values
    codes[[3, 4, 5], 1] = values
    torch.testing.assert_close(grid, vae.decode(codes).sample)
    x = images(1)
    around = latent_traversal(vae, x, dims=[0], values=torch.tensor([0.0]))
    torch.testing.assert_close(around, vae.decode(vae.encode(x).latent_dist.mean).sample)
    with pytest.raises(ValueError, match=r"latent dimensions in \[0, 4\)"):
        latent_traversal(vae, dims=[4])


def test_attribute_vector_is_the_mean_code_difference_and_moves_codes():
    torch.manual_seed(0)
    model = AutoencoderModel(AutoencoderConfig(**VECTOR)).eval()
    with_attribute, without = images(3, seed=1), images(2, seed=2)
    vector = attribute_vector(model, with_attribute, without)
    expected = model.encode(with_attribute).latents.mean(0) - model.encode(without).latents.mean(0)
    torch.testing.assert_close(vector, expected)
    x = images(2, seed=3)
    moved = apply_attribute(model, x, vector, strength=1.5)
    torch.testing.assert_close(moved, model.decode(continuous_codes(model, x) + 1.5 * vector).sample)
    # the mean code of the set without the attribute, moved by the vector, is the other set's mean
    codes = continuous_codes(model, without).mean(0) + vector
    torch.testing.assert_close(codes, continuous_codes(model, with_attribute).mean(0))
    with pytest.raises(ValueError, match=r"code's shape \(4,\)"):
        apply_attribute(model, x, torch.zeros(5))


def test_command_line_ranks_by_kl_and_writes_the_grid(vae, tmp_path, capsys):
    vae.save_pretrained(tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    for index, image in enumerate(images(3)):
        pixels = ((image[0].numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(pixels).save(data / f"{index}.png")
    output = tmp_path / "grid.png"
    main(["--pretrained_model_name_or_path", str(tmp_path / "model"), "--output_path", str(output)]
         + ["--data_dir", str(data), "--top_k", "2", "--steps", "5", "--image", str(data / "0.png")])  # fmt: skip
    assert "per-dimension KL" in capsys.readouterr().out
    assert Image.open(output).size == (5 * 36, 2 * 36)  # 5 values x 2 dimensions, 32 px + 2 x 2 padding


def save_images(folder, pixels: torch.Tensor) -> list:
    """Grey images `[N, 1, H, W]` in [-1, 1] as PNGs in `folder`, which the processor reads back exactly."""
    folder.mkdir()
    paths = []
    for index, image in enumerate(pixels):
        paths.append(folder / f"{index}.png")
        Image.fromarray(((image[0].numpy() + 1) * 127.5).round().astype(np.uint8)).save(paths[-1])
    return paths


def test_attribute_traversal_moves_the_code_along_the_vector(vae):
    vector = torch.tensor([1.0, -0.5, 0.0, 2.0])
    values = torch.tensor([-1.0, 0.0, 2.0])
    row = attribute_traversal(vae, vector, values=values)
    torch.testing.assert_close(row, vae.decode(values[:, None] * vector).sample)  # from the prior mean 0
    x = images(1)
    around = attribute_traversal(vae, vector, x, values)
    torch.testing.assert_close(around, vae.decode(continuous_codes(vae, x) + values[:, None] * vector).sample)
    torch.testing.assert_close(around[2:], apply_attribute(vae, x, vector, strength=2.0))
    with pytest.raises(ValueError, match=r"code's shape \(4,\), got \(5,\)"):
        attribute_traversal(vae, torch.zeros(5))


def test_command_line_draws_a_row_along_an_attribute_vector(vae, tmp_path, capsys):
    """`--attribute_with` / `--attribute_without` (folders or files): the row decodes the prior mean
    moved by -span .. +span times the mean code difference of the two sets."""
    vae.save_pretrained(tmp_path / "model")
    with_paths = save_images(tmp_path / "with", images(3, seed=1))
    without_paths = save_images(tmp_path / "without", images(2, seed=2))
    processor = LatentCodeImageProcessor.from_model_config(vae.config)
    loaded = [processor([Image.open(path) for path in paths], return_tensors="pt").pixel_values
              for paths in (with_paths, without_paths)]  # fmt: skip
    vector = attribute_vector(vae, *loaded)
    output = tmp_path / "row.png"
    main(["--pretrained_model_name_or_path", str(tmp_path / "model"), "--output_path", str(output),
          "--attribute_with", str(tmp_path / "with"), "--attribute_without", *map(str, without_paths),
          "--steps", "5", "--span", "3"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "mean code of 3 images with it minus 2 without" in printed
    assert ", ".join(f"{value:+.2f}" for value in vector.tolist()) in printed
    expected = image_grid(attribute_traversal(vae, vector, values=torch.linspace(-3, 3, 5)), num_columns=5)
    assert np.array_equal(np.asarray(Image.open(output)), np.asarray(expected))  # 5 x (32 + 4) wide, one row
    with pytest.raises(SystemExit, match="give --attribute_with and --attribute_without"):
        main(["--pretrained_model_name_or_path", "m", "--output_path", "o.png", "--attribute_with", "x"])
    with pytest.raises(SystemExit, match="neither an image file nor a folder"):
        main(["--pretrained_model_name_or_path", str(tmp_path / "model"), "--output_path", str(output),
              "--attribute_with", str(tmp_path / "nowhere"), "--attribute_without", str(tmp_path / "without")])  # fmt: skip
