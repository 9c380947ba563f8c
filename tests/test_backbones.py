"""The backbone axis: each offered backbone x family pair (forward, shapes, save / load, tokens),
the declared downsampling factor and latent shape, and the clear refusals."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import AutoModel

from latentcode.families import FAMILIES
from latentcode.modules.backbones import BACKBONES, get_backbone

BACKBONE_FIELDS = {
    "ldm": dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, sample_size=16),
    "vector": dict(sample_size=32, vector_hidden_channels=8, vector_hidden_size=16, in_channels=1),
    "tiny": dict(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=8, sample_size=16),
}
PAIRS = [(backbone.name, family) for backbone in BACKBONES.values() for family in backbone.families]


def build(backbone: str, family: str, **overrides):
    fields = dict(BACKBONE_FIELDS[backbone], backbone=backbone, latent_channels=6, **overrides)
    if family == "vqvae":
        fields["codebook_size"] = 32
    return FAMILIES[family].model_class(FAMILIES[family].config_class(**fields)).eval()


def images(model, batch: int = 2) -> torch.Tensor:
    size = model.config.sample_size
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, model.config.in_channels, size, size, generator=generator) * 2 - 1


@pytest.mark.parametrize("backbone, family", PAIRS)
def test_forward_shapes_follow_the_declared_latent_shape(backbone, family):
    model = build(backbone, family)
    x = images(model)
    output = model(x)
    assert output.sample.shape == x.shape
    assert torch.isfinite(output.loss)
    code = output.latents if family != "vqvae" else output.quantized
    assert tuple(code.shape[1:]) == model.latent_code_shape()
    factor = model.downsampling_factor
    expected = (6,) if backbone == "vector" else (6, 16 // factor, 16 // factor)
    assert model.latent_code_shape() == expected
    assert model.decode(code).sample.shape == x.shape


@pytest.mark.parametrize("backbone, family", PAIRS)
def test_save_and_load_round_trip_is_bit_identical(backbone, family, tmp_path):
    model = build(backbone, family)
    x = images(model)
    if family == "vqvae":
        model.train()
        model(x)  # initialises the codebook from the data
        model.eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.backbone == backbone
    torch.testing.assert_close(loaded(x).sample, model(x).sample, rtol=0, atol=0)


def test_declared_downsampling_factors():
    assert build("ldm", "vae").downsampling_factor == 2
    assert build("tiny", "vae").downsampling_factor == 4
    assert build("vector", "vae").downsampling_factor == 32  # the whole image is one latent position


def test_vector_vae_samples_and_kl_per_image():
    model = build("vector", "vae")
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 32, 32)
    assert samples.min() >= -1 and samples.max() <= 1  # the sigmoid output mapped to [-1, 1]
    posterior = model.encode(images(model)).latent_dist
    assert posterior.mean.shape == (2, 6)
    expected = 0.5 * (posterior.mean**2 + posterior.var - 1 - posterior.logvar).sum(1)
    torch.testing.assert_close(posterior.kl(), expected)


def test_tiny_vqvae_tokens_round_trip():
    model = build("tiny", "vqvae")
    x = images(model)
    model.train()
    model(x)
    model.eval()
    sequence = model.encode_to_sequence(x)
    assert sequence.shape == (2, 4 * 4)
    torch.testing.assert_close(model.decode_sequence(sequence).sample, model(x).sample)


def test_hidden_states_per_backbone():
    assert len(build("vector", "vae")(images(build("vector", "vae")), output_hidden_states=True).hidden_states) == 5
    tiny = build("tiny", "autoencoder")
    maps = tiny(images(tiny), output_hidden_states=True).hidden_states
    assert [tuple(m.shape[1:]) for m in maps] == [(8, 16, 16), (16, 8, 8), (16, 4, 4)]


def test_tiny_tiling_matches_shapes():
    model = build("tiny", "autoencoder", sample_size=16)
    model.enable_tiling(tile_sample_size=16)
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    assert model(x).sample.shape == x.shape


def test_tiny_pooling_branch_and_latent_clamp():
    model = build("tiny", "autoencoder", tiny_midblock_pooling=True)
    pooled = [name for name, _ in model.named_modules() if name.endswith(".pool")]
    # the lowest level's blocks only: 2 in the encoder, 2 in the decoder
    assert len(pooled) == 4
    z = torch.full((1, 6, 4, 4), 100.0)
    clamp = model.decoder.layers[0]
    torch.testing.assert_close(clamp(z), torch.full_like(z, 3 * torch.tanh(torch.tensor(100.0 / 3)).item()))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: replace(get_backbone("vector"), families=("vae",)).check_family("vqvae"), "vector x vqvae, tiny x"),
        (lambda: build("ldm", "vqvae", num_latent_tokens=4), "has a latent grid whose positions are the tokens"),
        (lambda: build("vector", "vae", sample_size=48), "(32, 64)"),
        (lambda: build("ldm", "vae", backbone_typo=1), "has no field"),
        (lambda: get_backbone("resnet"), "unknown backbone 'resnet'"),
        (lambda: build("vector", "vae").enable_tiling(), "no tiles"),
        (lambda: build("vector", "vae").decode(torch.zeros(1, 6, 1, 1)), "expected latents of shape [B, 6]"),
        (lambda: build("vector", "vae")(torch.zeros(1, 1, 64, 64)), "exactly config.sample_size = 32x32"),
        (lambda: build("vector", "vae").sample(2, latent_size=4), "leave it None"),
    ],
)
def test_refusals_name_what_was_expected(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)


def test_tiny_gradient_checkpointing_gives_the_same_gradients():
    model = build("tiny", "autoencoder").train()
    x = images(model)
    model(x).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert all(block.gradient_checkpointing for block in model.modules() if type(block).__name__ == "TinyBlock")
    model(x).loss.backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[name], msg=name)


# ----------------------------------------------------------------------------------------------
# A decoder wider or deeper than the encoder (`decoder_block_out_channels`, issue 23)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["autoencoder", "vae", "vqvae"])
def test_wider_decoder_builds_its_own_widths_and_round_trips(family, tmp_path):
    model = build("ldm", family, decoder_block_out_channels=(16, 64), decoder_layers_per_block=2)
    up = model.decoder.up  # lowest resolution first
    assert [level.blocks[0].conv1.out_channels for level in up] == [64, 16]
    assert [len(level.blocks) for level in up] == [3, 3]  # decoder_layers_per_block + 1
    assert model.decoder.conv_in.out_channels == 64
    assert [level.blocks[0].conv1.out_channels for level in model.encoder.down] == [16, 32]
    assert [len(level.blocks) for level in model.encoder.down] == [1, 1]
    x = images(model)
    assert model(x).sample.shape == x.shape
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.config.decoder_block_out_channels == [16, 64]
    assert loaded.config.decoder_layers_per_block == 2
    torch.manual_seed(0)
    expected = model(x).sample
    torch.manual_seed(0)
    assert torch.equal(loaded(x).sample, expected)


def test_decoder_fields_equal_to_the_encoder_are_the_symmetric_model():
    written = build("ldm", "vqvae", decoder_block_out_channels=(16, 32), decoder_layers_per_block=1)
    plain = build("ldm", "vqvae")
    assert written.config.decoder_block_out_channels is None and written.config.decoder_layers_per_block is None
    assert written.config.to_diff_dict() == plain.config.to_diff_dict()
    assert [name for name, _ in written.named_parameters()] == [name for name, _ in plain.named_parameters()]


def test_wider_decoder_does_not_export_to_diffusers_and_says_why():
    from latentcode.conversion.diffusers import to_diffusers

    with pytest.raises(ValueError, match="decoder_block_out_channels"):
        to_diffusers(build("ldm", "vqvae", decoder_block_out_channels=(16, 64)))
    to_diffusers(build("ldm", "vqvae", decoder_block_out_channels=(16, 32)))  # symmetric: exports


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(decoder_block_out_channels=(16, 32, 64)), "one entry per level of block_out_channels (2"),
        (dict(decoder_block_out_channels=(16, 36)), "divisible by norm_num_groups=8, got decoder_block_out_channels"),
        (dict(decoder_layers_per_block=0), "decoder_layers_per_block must be a positive int, got 0"),
    ],
)
def test_decoder_fields_refuse_what_the_backbone_cannot_build(overrides, message):
    with pytest.raises(ValueError) as error:
        build("ldm", "vae", **overrides)
    assert message in str(error.value)


def test_decoder_fields_belong_to_the_ldm_backbone():
    with pytest.raises(ValueError, match="option of the 'ldm' backbone.*backbone='tiny'"):
        build("tiny", "autoencoder", decoder_block_out_channels=(8, 16, 32))
