"""Token API: code grids <-> sequences, latent shapes, image-token vocabulary mapping."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_config, tiny_model

from latentcode.tokens import ImageTokenMapping, indices_to_sequence, latent_shape, sequence_to_indices


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 4, 4, 3)], ids=["grid", "grid_with_depth"])
def test_sequence_round_trip_is_exact_and_raster_ordered(shape):
    indices = torch.randint(0, 1000, shape, generator=torch.Generator().manual_seed(0))
    sequence = indices_to_sequence(indices)
    assert sequence.dtype == torch.long and sequence.shape == (shape[0], indices[0].numel())
    assert torch.equal(sequence_to_indices(sequence, shape[1:]), indices)
    # Raster order: row by row, and for a depth axis all levels of one position together.
    width = shape[2]
    depth = shape[3] if len(shape) == 4 else 1
    for row, column, level in [(0, 0, 0), (1, 2, 0), (shape[1] - 1, width - 1, depth - 1)]:
        expected = indices[1, row, column, level] if depth > 1 else indices[1, row, column]
        assert sequence[1, (row * width + column) * depth + level] == expected


def test_sequence_shape_errors():
    with pytest.raises(ValueError, match=r"\[B, 12\]"):
        sequence_to_indices(torch.zeros(2, 10, dtype=torch.long), (3, 4))
    with pytest.raises(ValueError, match="integer"):
        indices_to_sequence(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"\[B, h, w\] or \[B, h, w, depth\] \(a vector latent's \[B, G\]"):
        indices_to_sequence(torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"a vector latent's \(G,\) or \(G, depth\), got \(\)"):
        sequence_to_indices(torch.zeros(2, 1, dtype=torch.long), ())


def test_latent_shape():
    config = tiny_config("vqvae", block_out_channels=(16, 32, 32))  # downsampling factor 4
    assert latent_shape(config, 32) == (8, 8)
    assert latent_shape(config, (16, 48)) == (4, 12)
    assert latent_shape(config, 32, depth=4) == (8, 8, 4)
    with pytest.raises(ValueError, match="divisible by the downsampling factor 4"):
        latent_shape(config, 30)


@pytest.mark.parametrize(
    "quantizer, options, grid",
    [
        ("vq", {}, (8, 8)),
        ("fsq", {}, (8, 8)),
        ("lfq", {"codebook_size": 64}, (8, 8)),
        ("residual_vq", {"num_quantizers": 3, "codebook_size": 32}, (8, 8, 3)),
    ],
)
def test_model_sequence_api_matches_indices_api(digits, quantizer, options, grid):
    model = tiny_model("vqvae", in_channels=1, quantizer=quantizer, **options)
    pixels = digits[:3]
    sequence = model.encode_to_sequence(pixels)
    indices = model.encode(pixels).indices
    assert model.latent_shape() == model.latent_shape(16) == tuple(indices.shape[1:]) == grid
    assert torch.equal(sequence, indices.reshape(3, -1))
    assert 0 <= sequence.min() and sequence.max() < model.config.codebook_size  # a vocabulary of codebook_size
    with torch.no_grad():
        assert torch.equal(model.decode_sequence(sequence).sample, model.decode_indices(indices).sample)
    # Non-square images need their size to restore the grid.
    wide = torch.cat([pixels, pixels.flip(3)], dim=3)  # [3, 1, 16, 32]
    with torch.no_grad():
        restored = model.decode_sequence(model.encode_to_sequence(wide), image_size=(16, 32)).sample
        assert torch.equal(restored, model.decode_indices(model.encode(wide).indices).sample)


def test_mapping_after_text_vocabulary_round_trip():
    mapping = ImageTokenMapping.after_text_vocabulary(100, codebook_size=16)
    assert (mapping.offset, mapping.begin_of_image_id, mapping.end_of_image_id) == (100, 116, 117)
    assert mapping.vocab_size == 118
    codes = torch.randint(0, 16, (4, 9), generator=torch.Generator().manual_seed(0))
    tokens = mapping.codes_to_tokens(codes)
    assert tokens.shape == (4, 11)
    assert (tokens[:, 0] == 116).all() and (tokens[:, -1] == 117).all()
    assert torch.equal(tokens[:, 1:-1], codes + 100)
    assert mapping.is_image_token(tokens).tolist() == [[False] + [True] * 9 + [False]] * 4
    assert torch.equal(mapping.tokens_to_codes(tokens), codes)
    assert ImageTokenMapping(**mapping.to_dict()) == mapping


def test_mapping_matches_chameleon_image_vocabulary():
    """transformers' Chameleon mapping on a vocabulary whose image tokens form one block."""
    from transformers.models.chameleon.modeling_chameleon import ChameleonImageVocabularyMapping

    def chameleon_name(code: int) -> str:  # Chameleon spells code digits as letters: 12 -> "IMGIMGBCZ"
        return "IMGIMG" + "".join(chr(ord("A") + int(digit)) for digit in str(code)) + "Z"

    text_vocab_size, codebook_size = 50, 120
    vocab = {f"text{i}": i for i in range(text_vocab_size)}
    vocab.update({chameleon_name(code): text_vocab_size + code for code in range(codebook_size)})
    reference = ChameleonImageVocabularyMapping(vocab)
    ours = ImageTokenMapping.after_text_vocabulary(text_vocab_size, codebook_size, boundary_tokens=False)
    codes = torch.randint(0, codebook_size, (3, 20), generator=torch.Generator().manual_seed(1))
    assert torch.equal(ours.codes_to_tokens(codes), reference.convert_img2bpe(codes).long())


def test_mapping_errors():
    mapping = ImageTokenMapping(16, offset=0, begin_of_image_id=16)
    with pytest.raises(ValueError, match=r"codes must be in \[0, 15\]"):
        mapping.codes_to_tokens(torch.tensor([[3, 16]]))
    with pytest.raises(ValueError, match="expected token 16 at position 0"):
        mapping.tokens_to_codes(torch.tensor([[3, 4]]))
    with pytest.raises(ValueError, match="only image tokens"):
        mapping.tokens_to_codes(torch.tensor([[16, 3, 16]]))
    with pytest.raises(ValueError, match="outside the image codes"):
        ImageTokenMapping(16, offset=10, begin_of_image_id=12)
