"""Image grids: `[N, C, H, W]` pixels in [-1, 1] -> one PIL image or PNG (training validation,
evaluation reports, samplers). [`reconstruction_grid`] is the one grid of originals above their
reconstructions that training validation and `latentcode-eval` both draw."""

from __future__ import annotations

import math
from pathlib import Path

import PIL.Image
import torch
import torch.nn.functional as F

from .image_processing import PIL_MODES, pixels_to_uint8


def image_grid(pixels: torch.Tensor, num_columns: int | None = None, padding: int = 2) -> PIL.Image.Image:
    """Pixels `[N, C, H, W]` in [-1, 1] (C in 1, 3, 4) -> one image of `ceil(N / num_columns)` rows.

    `num_columns` defaults to `ceil(sqrt(N))`; `padding` pixels of white separate the cells.
    (Not `torchvision.utils.make_grid`: it turns grey-scale grids into RGB, and torchvision is no
    dependency of the core package; this keeps the images' mode, `"L"`, `"RGB"` or `"RGBA"`.)
    """
    if pixels.dim() != 4 or pixels.shape[1] not in PIL_MODES or pixels.shape[0] == 0:
        raise ValueError(
            f"expected pixels [N, C, H, W] with N >= 1 and C in {sorted(PIL_MODES)}, got shape {tuple(pixels.shape)}"
        )
    count, channels, height, width = pixels.shape
    columns = num_columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    images = pixels_to_uint8(pixels)
    cells = F.pad(images, (padding, padding, padding, padding), value=255)
    blank = cells.new_full((rows * columns - count, *cells.shape[1:]), 255)
    cells = torch.cat([cells, blank])
    cell_height, cell_width = cells.shape[2:]
    grid = cells.view(rows, columns, channels, cell_height, cell_width).permute(0, 3, 1, 4, 2)
    grid = grid.reshape(rows * cell_height, columns * cell_width, channels).numpy()
    return PIL.Image.fromarray(grid[..., 0] if channels == 1 else grid)


def reconstruction_grid(
    originals: torch.Tensor, reconstructions: torch.Tensor, num_columns: int | None = None, min_cell_size: int = 1
) -> PIL.Image.Image:
    """Rows of `num_columns` originals (default: all in one row), each row followed by the row of
    their reconstructions. Both `[N, C, H, W]` in [-1, 1] of one shape. Small images are upscaled
    (nearest, by a whole factor) until a cell is at least `min_cell_size` pixels wide, so that
    32x32 reconstructions in a report are visible."""
    if originals.shape != reconstructions.shape or originals.shape[0] == 0:
        raise ValueError(
            f"expected two non-empty image batches of one shape, got {tuple(originals.shape)} "
            f"and {tuple(reconstructions.shape)}"
        )
    count = originals.shape[0]
    columns = min(num_columns or count, count)
    blank_cells = (-count) % columns
    blank = originals.new_ones((blank_cells, *originals.shape[1:]))  # white in [-1, 1]
    rows = []
    for start in range(0, count, columns):
        rows += [originals[start : start + columns], reconstructions[start : start + columns]]
        if start + columns > count:
            rows[-2:] = [torch.cat([rows[-2], blank]), torch.cat([rows[-1], blank])]
    grid = image_grid(torch.cat(rows), num_columns=columns)
    scale = max(1, math.ceil(min_cell_size / originals.shape[-1]))
    return grid.resize((grid.width * scale, grid.height * scale), PIL.Image.Resampling.NEAREST)


def save_image_grid(pixels: torch.Tensor, path: str | Path, num_columns: int | None = None) -> Path:
    """Write `image_grid(pixels, num_columns)` as a PNG at `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(pixels, num_columns).save(path)
    return path
