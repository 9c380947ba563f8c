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


class SlicingTilingMixin:
    """Batch slicing and tiled encode / decode, opt-in as in diffusers' autoencoders, for a model
    with a `downsampling_factor` and a `config.sample_size` (the default tile size).

    The model runs its encoder and decoder through `_split_batch` (slices of the batch) and
    `_map_tiles` (overlapping tiles of a large image, blended)."""

    use_slicing = False
    slice_size = 1
    use_tiling = False
    tile_overlap_factor = 0.25

    @property
    def tile_sample_size(self) -> int:
        """Tile size in pixels: the one given to `enable_tiling`, else `config.sample_size`."""
        return getattr(self, "_tile_sample_size", None) or self.config.sample_size

    def enable_slicing(self, slice_size: int = 1) -> None:
        """Encode and decode batches `slice_size` images at a time to bound memory."""
        self.use_slicing, self.slice_size = True, slice_size

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, tile_sample_size: int | None = None, tile_overlap_factor: float = 0.25) -> None:
        """Encode and decode images larger than `tile_sample_size` (default `config.sample_size`)
        in overlapping tiles whose outputs are blended over `tile_overlap_factor` of a tile."""
        tile = tile_sample_size or self.config.sample_size
        factor = self.downsampling_factor
        if tile % factor != 0 or tile < 2 * factor:
            raise ValueError(
                f"tile_sample_size must be a multiple of the downsampling factor {factor} and at least "
                f"{2 * factor}, got {tile}"
            )
        if not 0.0 <= tile_overlap_factor < 1.0:
            raise ValueError(f"tile_overlap_factor must be in [0, 1), got {tile_overlap_factor}")
        self.use_tiling, self._tile_sample_size, self.tile_overlap_factor = True, tile, tile_overlap_factor

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def _split_batch(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """`fn(x)`, slice by slice of the batch when slicing is on."""
        if self.use_slicing and x.shape[0] > self.slice_size:
            return torch.cat([fn(chunk) for chunk in x.split(self.slice_size)])
        return fn(x)

    def _is_tiled(self, x: torch.Tensor, decoding: bool = False) -> bool:
        """Whether `_map_tiles` splits `x` (pixels, or a code when `decoding`) into tiles."""
        tile = self.tile_sample_size // (self.downsampling_factor if decoding else 1)
        return self.use_tiling and max(x.shape[2:]) > tile

    def _map_tiles(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, decoding: bool) -> torch.Tensor:
        """`fn(x)` for pixels `x` (encoding) or a code `x` (`decoding`), over blended tiles when
        `_is_tiled`. Tiles start a whole number of latent positions apart."""
        if not self._is_tiled(x, decoding):
            return fn(x)
        factor = self.downsampling_factor
        overlap = round(self.tile_sample_size * self.tile_overlap_factor / factor) * factor
        tile, stride = self.tile_sample_size, self.tile_sample_size - overlap
        if decoding:
            return tiled_map(x, fn, tile // factor, stride // factor, factor)
        return tiled_map(x, fn, tile, stride, 1 / factor)
