"""VQ-VAE codes as token sequences, for autoregressive priors and multimodal language models.

A VQ-VAE turns an image into a grid of code indices `[B, h, w]` (or `[B, h, w, depth]` for
residual / multi-level quantisers); on a vector-latent backbone into `G = num_latent_tokens`
indices `[B, G]` (`[B, G, depth]`), one per group of its code vector. Sequence models want `[B, L]`:

- `indices_to_sequence` / `sequence_to_indices` flatten and restore the grid in raster order
  (row by row, left to right, and for a depth axis all levels of one position together, coarse
  to fine, as RQ-Transformer orders them). `L = h * w * depth` (`G * depth`).
- `latent_shape` says which grid an image size gives.
- `vector_code_as_grid` / `grid_as_vector_code`: a vector latent's tokens laid out as the
  `[B, D, 1, G]` grid the quantizers take, and back (the one place that layout is defined).
- `ImageTokenMapping` places the `codebook_size` codes in a larger vocabulary: code `i` becomes
  token `offset + i`, optionally between begin-of-image and end-of-image tokens. This is
  Chameleon's image-token mapping with a contiguous block of ids; with `offset=0` and a
  begin-of-image id of `codebook_size` it is the vocabulary of a pure image prior.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from .families import family_of
from .modules.backbones import get_backbone


def latent_shape(config, image_size: int | Sequence[int], depth: int = 1) -> tuple[int, ...]:
    """Shape of the code grid of one image: `(h, w)`, or `(h, w, depth)` when `depth > 1`; for a
    vector-latent VQ-VAE config `(G,)` or `(G, depth)`, G = `config.num_latent_tokens`.

    Args:
        config: a latentcode model config (its backbone says whether the code is a grid).
        image_size: `H` for a square image or `(H, W)`; each must be divisible by the downsampling
            factor (a vector latent takes `config.sample_size` only).
        depth: code levels per position (residual / multi-level quantisers).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    code = get_backbone(config.backbone).latent_code_shape(config, 1, image_size)  # checks the image size
    if len(code) == 1:  # one vector per image: its tokens are the groups of the vector
        if not family_of(config).model_class.has_tokens:
            raise ValueError(
                f"a {type(config).__name__} on backbone={config.backbone!r} has a continuous vector code, no tokens; "
                "token shapes belong to a VQVAEConfig (num_latent_tokens)"
            )
        grid = (config.num_latent_tokens,)
    else:
        grid = code[1:]
    return grid if depth == 1 else (*grid, depth)


def vector_code_as_grid(code: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """A vector latent `[B, G * D]` -> its G tokens as the grid `[B, D, 1, G]` the quantizers take:
    token g is the vector's entries `[g * D, (g + 1) * D)` (a view, no copy)."""
    batch, width = code.shape
    if width % num_tokens:
        raise ValueError(f"a code vector of {width} entries does not split into num_latent_tokens={num_tokens} tokens")
    return code.view(batch, num_tokens, width // num_tokens).permute(0, 2, 1).unsqueeze(2)


def grid_as_vector_code(grid: torch.Tensor) -> torch.Tensor:
    """`[B, D, 1, G]` -> the vector `[B, G * D]`, the inverse of `vector_code_as_grid`."""
    return grid.squeeze(2).permute(0, 2, 1).reshape(grid.shape[0], -1)


def _check_integer(tensor: torch.Tensor, name: str) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.is_floating_point() or tensor.dtype == torch.bool:
        kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be an integer tensor, got {kind}")


def indices_to_sequence(indices: torch.Tensor) -> torch.Tensor:
    """Code grid `[B, h, w]` or `[B, h, w, depth]` (a vector latent's `[B, G]` or `[B, G, depth]`)
    -> sequence `[B, h * w * depth]` (int64, raster order)."""
    _check_integer(indices, "indices")
    if indices.dim() not in (2, 3, 4):
        raise ValueError(
            f"expected indices [B, h, w] or [B, h, w, depth] (a vector latent's [B, G] or [B, G, depth]), got "
            f"shape {tuple(indices.shape)}"
        )
    return indices.long().reshape(indices.shape[0], -1)


def sequence_to_indices(sequence: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Sequence `[B, L]` -> code grid `[B, *shape]`, the inverse of `indices_to_sequence`.

    `shape` is `(h, w)` or `(h, w, depth)` (a vector latent's `(G,)` or `(G, depth)`) as
    `latent_shape` returns; `L` must be its product.
    """
    _check_integer(sequence, "sequence")
    shape = tuple(shape)
    if len(shape) not in (1, 2, 3):
        raise ValueError(f"shape must be (h, w) or (h, w, depth), or a vector latent's (G,) or (G, depth), got {shape}")
    length = 1
    for size in shape:
        length *= size
    if sequence.dim() != 2 or sequence.shape[1] != length:
        raise ValueError(
            f"expected a sequence [B, {length}] for a code grid {shape}, got shape {tuple(sequence.shape)}"
        )
    return sequence.long().reshape(sequence.shape[0], *shape)


@dataclass(frozen=True)
class ImageTokenMapping:
    """Where image codes live in a sequence model's vocabulary.

    Code `i` in `[0, codebook_size)` is token `offset + i`. When `begin_of_image_id` /
    `end_of_image_id` are set, `codes_to_tokens` puts them around every image.

    Args:
        codebook_size: K, the number of image codes.
        offset: token id of code 0.
        begin_of_image_id / end_of_image_id: token ids outside `[offset, offset + K)`, or `None`.

    ```python
    # Image codes after a 32000-token text vocabulary, with <boi> = 32000 + K and <eoi> = 32001 + K:
    mapping = ImageTokenMapping.after_text_vocabulary(32000, codebook_size=K)
    language_model.resize_token_embeddings(mapping.vocab_size)
    tokens = mapping.codes_to_tokens(vqvae.encode_to_sequence(pixels))   # [B, L + 2]
    codes = mapping.tokens_to_codes(tokens)                               # [B, L]
    ```
    """

    codebook_size: int
    offset: int = 0
    begin_of_image_id: int | None = None
    end_of_image_id: int | None = None

    def __post_init__(self):
        if self.codebook_size < 1 or self.offset < 0:
            raise ValueError(f"need codebook_size >= 1 and offset >= 0, got {self.codebook_size} and {self.offset}")
        for name in ("begin_of_image_id", "end_of_image_id"):
            token = getattr(self, name)
            if token is not None and (token < 0 or self.offset <= token < self.offset + self.codebook_size):
                raise ValueError(
                    f"{name} must be a non-negative id outside the image codes' ids "
                    f"[{self.offset}, {self.offset + self.codebook_size}), got {token}"
                )
        if self.begin_of_image_id is not None and self.begin_of_image_id == self.end_of_image_id:
            raise ValueError(f"begin_of_image_id and end_of_image_id must differ, both are {self.begin_of_image_id}")

    @classmethod
    def after_text_vocabulary(
        cls, text_vocab_size: int, codebook_size: int, boundary_tokens: bool = True
    ) -> ImageTokenMapping:
        """Image codes appended to a text vocabulary, then `<boi>`, `<eoi>` if `boundary_tokens`."""
        end = text_vocab_size + codebook_size
        if boundary_tokens:
            return cls(codebook_size, text_vocab_size, begin_of_image_id=end, end_of_image_id=end + 1)
        return cls(codebook_size, text_vocab_size)

    @property
    def vocab_size(self) -> int:
        """The smallest vocabulary holding every id of this mapping."""
        ids = [self.offset + self.codebook_size - 1, self.begin_of_image_id, self.end_of_image_id]
        return max(token for token in ids if token is not None) + 1

    @property
    def boundary_ids(self) -> list[int]:
        """The begin / end-of-image ids that are set, in that order."""
        return [token for token in (self.begin_of_image_id, self.end_of_image_id) if token is not None]

    def is_image_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the tokens that are image codes (not boundary tokens)."""
        return (tokens >= self.offset) & (tokens < self.offset + self.codebook_size)

    def codes_to_tokens(self, sequence: torch.Tensor) -> torch.Tensor:
        """Code sequence `[B, L]` -> tokens `[B, L + number of boundary tokens]`."""
        _check_integer(sequence, "sequence")
        if sequence.dim() != 2:
            raise ValueError(f"expected a code sequence [B, L], got shape {tuple(sequence.shape)}")
        if sequence.numel() and (int(sequence.min()) < 0 or int(sequence.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must be in [0, {self.codebook_size - 1}], got values in "
                f"[{int(sequence.min())}, {int(sequence.max())}]"
            )
        tokens = sequence.long() + self.offset
        batch = sequence.shape[0]
        if self.begin_of_image_id is not None:
            tokens = torch.cat([tokens.new_full((batch, 1), self.begin_of_image_id), tokens], dim=1)
        if self.end_of_image_id is not None:
            tokens = torch.cat([tokens, tokens.new_full((batch, 1), self.end_of_image_id)], dim=1)
        return tokens

    def tokens_to_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens `[B, T]` of images -> code sequences `[B, L]`.

        Boundary tokens, where this mapping has them, must be the first / last token of each row;
        every other token must be an image code.
        """
        _check_integer(tokens, "tokens")
        if tokens.dim() != 2:
            raise ValueError(f"expected tokens [B, T], got shape {tuple(tokens.shape)}")
        start = 0 if self.begin_of_image_id is None else 1
        stop = tokens.shape[1] - (0 if self.end_of_image_id is None else 1)
        for position, token in ((0, self.begin_of_image_id), (-1, self.end_of_image_id)):
            if token is not None and not bool((tokens[:, position] == token).all()):
                raise ValueError(f"expected token {token} at position {position} of every row")
        body = tokens[:, start:stop]
        if not bool(self.is_image_token(body).all()):
            raise ValueError(
                f"expected only image tokens [{self.offset}, {self.offset + self.codebook_size}) between the "
                "boundary tokens"
            )
        return body.long() - self.offset

    def to_dict(self) -> dict:
        """Plain fields, for storing in a model config."""
        return asdict(self)
