"""The tile size the command lines (`latentcode-eval --full_resolution`, `latentcode-demo`) give a
model for images larger than it was trained on, when the user names none.

Tiles bound memory only; tiles much smaller than this add per-tile overhead and overlap (encode +
decode of a 1024x768 photo by a 32-pixel model, one thread of a loaded 2-core machine: 27 s in
32-pixel tiles, 8.6 s in 256-pixel tiles, 7.3 s untiled; a 768x512 photo in 32-pixel tiles is 700
model calls). No torch here: the commands name the default in their `--help`.
"""

from __future__ import annotations

# The smallest default tile, in pixels.
MIN_DEFAULT_TILE_SIZE = 256


def default_tile_size(sample_size: int) -> int:
    """The tile of a model trained at `sample_size` pixels: that size, but at least `MIN_DEFAULT_TILE_SIZE`."""
    return max(sample_size, MIN_DEFAULT_TILE_SIZE)
