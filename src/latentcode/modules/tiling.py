"""Tiled application of a convolutional network to large images, as diffusers' AutoencoderKL
does: overlapping tiles are processed one at a time and their outputs are cross-faded
linearly over the overlap, so memory is bounded by the tile size and seams stay invisible."""

from __future__ import annotations

from collections.abc import Callable

import torch


def _blend_vertical(above: torch.Tensor, below: torch.Tensor, extent: int) -> torch.Tensor:
    extent = min(above.shape[2], below.shape[2], extent)
    if extent == 0:
        return below
    weight = torch.arange(extent, device=below.device, dtype=below.dtype).div(extent).view(1, 1, extent, 1)
    below = below.clone()
    below[:, :, :extent] = above[:, :, -extent:] * (1 - weight) + below[:, :, :extent] * weight
    return below


def _blend_horizontal(left: torch.Tensor, right: torch.Tensor, extent: int) -> torch.Tensor:
    extent = min(left.shape[3], right.shape[3], extent)
    if extent == 0:
        return right
    weight = torch.arange(extent, device=right.device, dtype=right.dtype).div(extent).view(1, 1, 1, extent)
    right = right.clone()
    right[:, :, :, :extent] = left[:, :, :, -extent:] * (1 - weight) + right[:, :, :, :extent] * weight
    return right


def tiled_map(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    tile_size: int,
    stride: int,
    scale: float,
) -> torch.Tensor:
    """Apply `fn` to overlapping tiles of `x` and stitch the outputs.

    Args:
        x: `[B, C, H, W]`.
        fn: maps a tile `[B, C, h, w]` to `[B, C', h * scale, w * scale]`.
        tile_size: tile side in input pixels.
        stride: distance between tile origins in input pixels (`< tile_size` for overlap);
            `stride * scale` and `tile_size * scale` must be integers.
        scale: output size / input size (`1/f` for an encoder, `f` for a decoder).

    Returns:
        `[B, C', H * scale, W * scale]`.
    """
    out_stride = round(stride * scale)
    blend_extent = round(tile_size * scale) - out_stride
    height, width = x.shape[2], x.shape[3]
    rows = []
    for top in range(0, height, stride):
        row = []
        for left in range(0, width, stride):
            row.append(fn(x[:, :, top : top + tile_size, left : left + tile_size]))
        rows.append(row)
    stitched_rows = []
    for i, row in enumerate(rows):
        cropped = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = _blend_vertical(rows[i - 1][j], tile, blend_extent)
            if j > 0:
                tile = _blend_horizontal(row[j - 1], tile, blend_extent)
            row[j] = tile
            cropped.append(tile[:, :, :out_stride, :out_stride])
        stitched_rows.append(torch.cat(cropped, dim=3))
    return torch.cat(stitched_rows, dim=2)
