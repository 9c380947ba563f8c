"""latentcode.generation: PNG grids, slerp, latent interpolation and the command line."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import tiny_model

from latentcode.generation import interpolate, main, slerp
from latentcode.grids import image_grid, reconstruction_grid


def test_image_grid_layout():
    values = torch.tensor([-1.0, 0.0, 1.0])  # -> grey levels 0, 128, 255
    pixels = values.view(3, 1, 1, 1).expand(3, 3, 4, 5)  # three flat RGB images, 4 high, 5 wide
    grid = np.asarray(image_grid(pixels, num_columns=2, padding=1))
    assert grid.shape == (2 * 6, 2 * 7, 3)  # 2 rows x 2 columns of (4 + 2) x (5 + 2) cells
    assert (grid[1:5, 1:6] == 0).all() and (grid[1:5, 8:13] == 128).all() and (grid[7:11, 1:6] == 255).all()
    assert (grid[0] == 255).all() and (grid[:, 6:8] == 255).all()  # white padding between cells
    assert (grid[6:, 7:] == 255).all()  # the missing fourth image is blank
    assert image_grid(torch.zeros(5, 1, 4, 4)).mode == "L"
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        image_grid(torch.zeros(3, 2, 4, 4))


def test_slerp_matches_the_formula_and_handles_parallel_vectors():
    generator = torch.Generator().manual_seed(0)
    start, end = torch.randn(2, 3, 4, generator=generator), torch.randn(2, 3, 4, generator=generator)
    a, b = start.flatten(1).double(), end.flatten(1).double()
    angle = torch.acos((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)))
    expected = (torch.sin(0.3 * angle)[:, None] * b + torch.sin(0.7 * angle)[:, None] * a) / torch.sin(angle)[:, None]
    assert torch.allclose(slerp(start, end, 0.3), expected.view_as(start).float(), atol=1e-5)
    assert torch.allclose(slerp(start, 2 * start, 0.5), 1.5 * start)  # parallel: linear


def test_interpolation_runs_between_the_two_reconstructions(digits):
    vae = tiny_model("vae", in_channels=1)
    start, end = digits[:2], digits[2:4]
    frames = interpolate(vae, start, end, num_steps=5)
    assert frames.shape == (10, 1, 16, 16)
    with torch.no_grad():
        first = vae.decode(vae.encode(start).latent_dist.mode()).sample
        last = vae.decode(vae.encode(end).latent_dist.mode()).sample
    # Pair-major: frames 0..4 go from start[0] to end[0], frames 5..9 from start[1] to end[1].
    assert torch.allclose(frames[[0, 5]], first, atol=1e-5) and torch.allclose(frames[[4, 9]], last, atol=1e-5)
    assert not torch.allclose(frames[2], frames[0], atol=1e-3)
    with pytest.raises(ValueError, match="num_steps"):
        interpolate(vae, start, end, num_steps=1)


def test_command_line_writes_sample_and_interpolation_grids(tmp_path, digits):
    tiny_model("vae", in_channels=1).save_pretrained(tmp_path / "vae")
    for name, pixels in (("a.png", digits[0]), ("b.png", digits[1])):
        PIL.Image.fromarray(((pixels[0] + 1) * 127.5).round().byte().numpy()).save(tmp_path / name)
    main([
        "--pretrained_model_name_or_path", str(tmp_path / "vae"), "--output_dir", str(tmp_path / "out"), "--num_samples", "9",
        "--interpolate", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--num_steps", "6",
    ])  # fmt: skip
    assert PIL.Image.open(tmp_path / "out" / "samples.png").size == (3 * 20, 3 * 20)
    assert PIL.Image.open(tmp_path / "out" / "interpolation.png").size == (6 * 20, 20)


def test_reconstruction_grid_puts_each_row_of_originals_above_its_reconstructions():
    originals = -torch.ones(5, 1, 4, 4)  # black
    reconstructions = torch.ones(5, 1, 4, 4) * 0.0  # grey 127.5 -> 128
    grid = np.asarray(reconstruction_grid(originals, reconstructions, num_columns=3))
    cell = 4 + 2 * 2  # image plus padding on both sides
    assert grid.shape == (4 * cell, 3 * cell)
    centre = lambda row, column: grid[row * cell + 4, column * cell + 4]  # noqa: E731
    assert [centre(0, c) for c in range(3)] == [0, 0, 0]
    assert [centre(1, c) for c in range(3)] == [128, 128, 128]
    assert [centre(2, c) for c in range(3)] == [0, 0, 255]  # the sixth cell is blank (white)
    assert [centre(3, c) for c in range(3)] == [128, 128, 255]
