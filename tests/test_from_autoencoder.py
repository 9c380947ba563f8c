"""`VQVAEModel.from_autoencoder`: a VQ-VAE on a trained continuous model's encoder and decoder.

On tiny random `VAEModel` / `AutoencoderModel`s of both grid backbones: the token API's shapes,
the source's weights copied bit-exactly and kept bit-identical through optimiser steps while
frozen, save / load, the decoded values against the source's own decoder, and a decoder
fine-tune against a frozen copy of the source's decoder. On taef2 from
../shared/pretrained (skipped where absent): a VQ-VAE at 0.25 bits per pixel whose latent-space
loss a few optimiser steps lower.
"""

from __future__ import annotations

import random

import pytest
import torch
from helpers import SHARED, require_shared, require_shared_dataset, tiny_model
from PIL import Image

from latentcode.image_processing import LatentCodeImageProcessor
from latentcode.modeling import VQVAEModel
from latentcode.modeling.from_autoencoder import (
    SourceDecoder,
    continuous_latents,
    decode_latents,
    latent_space_loss,
    start_decoder_finetune,
)
from latentcode.modules.latent_adapters import DECODER_PARTS, pretrained_parts

SOURCES = {
    "vae-ldm": ("vae", {}),
    "autoencoder-ldm": ("autoencoder", {}),
    "vae-tiny": ("vae", {"backbone": "tiny", "attention_levels": ()}),
    "autoencoder-tiny": ("autoencoder", {"backbone": "tiny", "attention_levels": ()}),
}
# Two levels of 16 codes per position (residual VQ): 8 bits per latent position.
QUANTIZER = {"quantizer": "residual_vq", "codebook_size": 16, "num_quantizers": 2}


def source_model(name: str):
    family, overrides = SOURCES[name]
    return tiny_model(family, seed=1, **overrides)


def pixels(batch: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def assert_same_state(module: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    actual = module.state_dict()
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


@pytest.mark.parametrize("name", SOURCES)
def test_token_api_shapes(name):
    vqvae = VQVAEModel.from_autoencoder(source_model(name), **QUANTIZER)
    x = pixels()
    encoded = vqvae.encode(x)
    assert encoded.indices.shape == (2, 8, 8, 2) and encoded.indices.dtype == torch.int64
    assert encoded.latents.shape == encoded.quantized.shape == (2, 4, 8, 8)
    assert vqvae.decode_indices(encoded.indices).sample.shape == x.shape
    sequence = vqvae.encode_to_sequence(x)
    assert sequence.shape == (2, 8 * 8 * 2)
    assert torch.equal(vqvae.decode_sequence(sequence).sample, vqvae.decode_indices(encoded.indices).sample)
    assert vqvae(x).sample.shape == x.shape


@pytest.mark.parametrize("name", SOURCES)
def test_pretrained_weights_are_copied_bit_exactly(name):
    source = source_model(name)
    vqvae = VQVAEModel.from_autoencoder(source, **QUANTIZER)
    assert_same_state(vqvae.encoder, source.encoder.state_dict())
    assert_same_state(vqvae.decoder, source.decoder.state_dict())
    assert_same_state(vqvae.quant_conv.pretrained, source.quant_conv.state_dict())
    assert_same_state(vqvae.post_quant_conv.pretrained, source.post_quant_conv.state_dict())
    assert vqvae.config.source_autoencoder["family"] == SOURCES[name][0]
    assert vqvae.config.backbone == source.config.backbone


def test_the_code_is_the_source_latent_and_decodes_through_the_source_decoder():
    """Values: `latents` are the learned projection of the VAE's posterior mean; the decoded
    tokens are the source's `decode` of the de-quantised code projected back."""
    source = source_model("vae-ldm")
    vqvae = VQVAEModel.from_autoencoder(source, **QUANTIZER, codebook_dim=3)
    with torch.no_grad():
        vqvae.quant_conv.to_code.bias.normal_()  # projections that are not the identity
        vqvae.post_quant_conv.from_code.bias.normal_()
        x = pixels()
        encoded = vqvae.encode(x)
        mean = source.encode(x).latent_dist.mean
        torch.testing.assert_close(encoded.latents, vqvae.quant_conv.to_code(mean), rtol=1e-6, atol=1e-6)
        code = vqvae.quantizer.indices_to_codes(encoded.indices)
        expected = source.decode(vqvae.post_quant_conv.from_code(code)).sample
        torch.testing.assert_close(vqvae.decode_indices(encoded.indices).sample, expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(continuous_latents(vqvae, x), mean, rtol=1e-6, atol=1e-6)


def test_identity_projections_when_the_code_is_as_wide_as_the_latent():
    source = source_model("autoencoder-tiny")
    vqvae = VQVAEModel.from_autoencoder(source, quantizer="fsq", quantizer_config={"levels": [8, 8, 8, 8]})
    x = pixels()
    with torch.no_grad():
        latents = source.encode(x).latents
        assert torch.equal(vqvae.quant_conv.to_code(latents), latents)
        assert torch.equal(vqvae.post_quant_conv.from_code(latents), latents)


def adamw_steps(model, steps: int = 3):
    """`steps` AdamW steps (with weight decay, which would move any weight it reaches) on the model's loss."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for step in range(steps):
        optimizer.zero_grad()
        model(pixels(seed=step)).loss.backward()
        optimizer.step()


@pytest.mark.parametrize("name", ["vae-ldm", "autoencoder-tiny"])
def test_frozen_weights_stay_bit_identical_through_training(name):
    vqvae = VQVAEModel.from_autoencoder(
        source_model(name), quantizer="vq", codebook_size=16, corrector_config={"hidden_channels": 8}
    )
    frozen = {part: state(module) for part, module in pretrained_parts(vqvae).items()}
    learned = state(vqvae.post_quant_conv.from_code), state(vqvae.post_quant_conv.corrector)
    adamw_steps(vqvae)
    for part, module in pretrained_parts(vqvae).items():
        assert_same_state(module, frozen[part])
    assert not torch.equal(vqvae.post_quant_conv.from_code.weight, learned[0]["weight"])
    assert not torch.equal(vqvae.post_quant_conv.corrector.net[-1].weight, learned[1]["net.4.weight"])


def test_unfrozen_parts_train_and_the_choice_is_recorded():
    vqvae = VQVAEModel.from_autoencoder(source_model("vae-ldm"), **QUANTIZER, frozen=False)
    assert all(p.requires_grad for p in vqvae.decoder.parameters())
    before = state(vqvae.decoder)
    adamw_steps(vqvae, steps=1)
    assert not torch.equal(vqvae.decoder.state_dict()["conv_out.weight"], before["conv_out.weight"])
    vqvae.freeze_autoencoder()
    assert vqvae.config.source_autoencoder["frozen"] is True
    assert not any(p.requires_grad for module in pretrained_parts(vqvae).values() for p in module.parameters())


@pytest.mark.parametrize("name", ["vae-ldm", "autoencoder-tiny"])
def test_save_and_load_round_trip(name, tmp_path):
    vqvae = VQVAEModel.from_autoencoder(source_model(name), **QUANTIZER, corrector_config={"hidden_channels": 8})
    adamw_steps(vqvae, steps=2)  # a fitted codebook and a corrector that is not the identity
    vqvae.eval()
    x = pixels(seed=7)
    vqvae.save_pretrained(tmp_path)
    loaded = VQVAEModel.from_pretrained(tmp_path)
    assert loaded.config.source_autoencoder == vqvae.config.source_autoencoder
    assert loaded.config.corrector_config == {"hidden_channels": 8, "num_blocks": 2}
    assert torch.equal(loaded.encode(x).indices, vqvae.encode(x).indices)
    assert torch.equal(loaded(x).sample, vqvae(x).sample)
    frozen = [p.requires_grad for module in pretrained_parts(loaded).values() for p in module.parameters()]
    assert frozen and not any(frozen), "loading keeps the pretrained parts frozen, as the config records"
    assert loaded.quant_conv.to_code.weight.requires_grad


def test_a_new_corrector_is_the_identity():
    source = source_model("autoencoder-ldm")
    plain = VQVAEModel.from_autoencoder(source, **QUANTIZER)
    torch.manual_seed(3)
    corrected = VQVAEModel.from_autoencoder(source, **QUANTIZER, corrector_config={})
    corrected.quantizer.load_state_dict(plain.quantizer.state_dict())
    indices = plain.encode(pixels()).indices
    assert torch.equal(corrected.decode_indices(indices).sample, plain.decode_indices(indices).sample)


def test_image_processor_and_tiling():
    vqvae = VQVAEModel.from_autoencoder(source_model("autoencoder-tiny"), **QUANTIZER)
    image = Image.fromarray((torch.rand(24, 40, 3) * 255).byte().numpy())
    processed = LatentCodeImageProcessor.from_model_config(vqvae.config, size=32)(image).pixel_values
    assert vqvae.encode(processed).indices.shape[1:3] == (16, 16)
    vqvae.enable_tiling(tile_sample_size=16)
    large = pixels(batch=1, size=48)
    assert vqvae.encode(large).indices.shape == (1, 24, 24, 2)
    assert vqvae.decode_indices(vqvae.encode(large).indices).sample.shape == large.shape


def test_evaluation_reports_bits_per_pixel():
    """tokens x log2 K / pixels: 8 x 8 positions x 2 levels x log2 16 bits for 16 x 16 pixels."""
    from latentcode.evaluation.evaluate import evaluate

    vqvae = VQVAEModel.from_autoencoder(source_model("autoencoder-ldm"), **QUANTIZER)
    encoded = vqvae.encode(pixels())
    assert vqvae.code_size(encoded).bits_per_pixel(16, 16).tolist() == [2.0, 2.0]
    assert evaluate(vqvae, [pixels(), pixels(seed=1)], throughput=False).metrics["bits_per_pixel"] == 2.0


def test_bad_inputs_are_refused():
    vqvae = VQVAEModel.from_autoencoder(source_model("vae-ldm"), **QUANTIZER)
    with pytest.raises(ValueError, match="AutoencoderModel or VAEModel"):
        VQVAEModel.from_autoencoder(vqvae, **QUANTIZER)
    with pytest.raises(ValueError, match="corrector_config has no key 'width'"):
        VQVAEModel.from_autoencoder(source_model("vae-ldm"), **QUANTIZER, corrector_config={"width": 8})
    config = vqvae.config.to_dict()
    for key in ("model_type", "transformers_version", "source_autoencoder"):
        config.pop(key, None)
    config["corrector_config"] = {}
    with pytest.raises(ValueError, match="no source_autoencoder"):
        type(vqvae.config)(**config)
    ordinary = tiny_model("vqvae")
    with pytest.raises(ValueError, match="not made from one"):
        ordinary.freeze_autoencoder()


# -- latent patches: one token per p x p latent positions ----------------------------------------

# One token per 2x2 patch of the 4-channel latent: 16 values, 2 levels of 16 codes.
PATCHES = {**QUANTIZER, "latent_patch_size": 2, "codebook_dim": 16}


def patches_by_hand(latents: torch.Tensor, p: int) -> torch.Tensor:
    """`[B, L, h, w]` -> `[B, L*p*p, h/p, w/p]`: channel `c*p*p + a*p + b` of token (i, j) is
    `latents[:, c, p*i + a, p*j + b]` (an independent statement of pixel_unshuffle's layout)."""
    batch, channels, height, width = latents.shape
    out = torch.empty(batch, channels * p * p, height // p, width // p)
    for c in range(channels):
        for a in range(p):
            for b in range(p):
                out[:, c * p * p + a * p + b] = latents[:, c, a::p, b::p]
    return out


@pytest.mark.parametrize("name", ["vae-ldm", "autoencoder-tiny"])
def test_latent_patches_make_a_coarser_token_grid(name, tmp_path):
    source = source_model(name)
    vqvae = VQVAEModel.from_autoencoder(source, **PATCHES, corrector_config={"hidden_channels": 8})
    assert vqvae.config.latent_patch_size == 2
    assert (source.downsampling_factor, vqvae.downsampling_factor, vqvae.config.downsampling_factor) == (2, 4, 4)
    x = pixels(size=16)
    encoded = vqvae.encode(x)
    assert encoded.indices.shape == (2, 4, 4, 2) and encoded.latents.shape == (2, 16, 4, 4)
    assert vqvae.latent_shape(16) == (4, 4, 2) and vqvae.latent_code_shape(16) == (16, 4, 4)
    with torch.no_grad():  # identity projections (D = 2 * 2 * 4): the code is z's 2x2 patches, exactly
        latents = continuous_latents(vqvae, x)
        assert torch.equal(encoded.latents, patches_by_hand(latents, 2))
        assert torch.equal(vqvae.post_quant_conv.from_code(encoded.latents), encoded.latents)
        corrector = vqvae.post_quant_conv.corrector
        vqvae.post_quant_conv.corrector = None
        assert torch.equal(vqvae.post_quant_conv.latent_estimate(encoded.latents), latents)
        vqvae.post_quant_conv.corrector = corrector
    decoded = vqvae.decode_indices(encoded.indices).sample
    assert decoded.shape == x.shape
    assert torch.equal(vqvae.decode_sequence(vqvae.encode_to_sequence(x), 16).sample, decoded)
    # 4 x 4 tokens x 2 levels x log2 16 bits for 16 x 16 pixels.
    assert vqvae.code_size(encoded).bits_per_pixel(16, 16).tolist() == [0.5, 0.5]

    adamw_steps(vqvae, steps=2)
    vqvae.eval()
    vqvae.save_pretrained(tmp_path)
    loaded = VQVAEModel.from_pretrained(tmp_path)
    assert loaded.config.latent_patch_size == 2 and loaded.downsampling_factor == 4
    assert torch.equal(loaded.encode(x).indices, vqvae.encode(x).indices)
    assert torch.equal(loaded(x).sample, vqvae(x).sample)


def test_latent_patches_tile_on_whole_tokens():
    vqvae = VQVAEModel.from_autoencoder(source_model("autoencoder-tiny"), **PATCHES).eval()
    large = pixels(batch=1, size=48)
    untiled = vqvae.encode(large).indices
    vqvae.enable_tiling(tile_sample_size=16)
    tiled = vqvae.encode(large).indices
    assert tiled.shape == untiled.shape == (1, 12, 12, 2)
    assert vqvae.decode_indices(tiled).sample.shape == large.shape
    with pytest.raises(ValueError, match="multiple of the downsampling factor 4"):
        vqvae.enable_tiling(tile_sample_size=18)


def test_fitted_projections_are_the_principal_components_of_the_patches():
    """Projections fitted to latents whose 2x2 patches have rank D pass the patches through exactly."""
    from latentcode.modeling.from_autoencoder import fit_projections

    vqvae = VQVAEModel.from_autoencoder(source_model("autoencoder-ldm"), **{**PATCHES, "codebook_dim": 3})
    generator = torch.Generator().manual_seed(0)
    patches = torch.einsum(
        "bdhw,dl->blhw", torch.randn(4, 3, 4, 4, generator=generator), torch.randn(3, 16, generator=generator)
    )
    latents = torch.nn.functional.pixel_shuffle(patches + torch.linspace(-2, 2, 16).view(1, 16, 1, 1), 2)
    fit_projections(vqvae, latents)
    with torch.no_grad():
        code = vqvae.quant_conv.code(latents)
        assert code.shape == (4, 3, 4, 4)
        torch.testing.assert_close(vqvae.post_quant_conv.latent_estimate(code), latents, rtol=1e-4, atol=1e-4)


def test_latent_patches_refuse_what_does_not_split_into_patches():
    vqvae = VQVAEModel.from_autoencoder(source_model("autoencoder-tiny"), **PATCHES)
    with pytest.raises(ValueError, match="divisible by the downsampling factor 4.*14x14"):
        vqvae.encode(pixels(size=14))  # 7 x 7 latent positions: no whole 2x2 patches
    with pytest.raises(ValueError, match="latent_patch_size=2 codes 2x2 patches of latent positions.* grid of 5x6"):
        latent_space_loss(vqvae, torch.randn(2, 4, 5, 6))
    config = vqvae.config.to_dict()
    for key in ("model_type", "transformers_version", "source_autoencoder"):
        config.pop(key, None)
    with pytest.raises(ValueError, match="latent_patch_size=2 codes patches.*no source_autoencoder"):
        type(vqvae.config)(**config)
    with pytest.raises(ValueError, match="latent_patch_size must be a positive int, got 0"):
        VQVAEModel.from_autoencoder(source_model("autoencoder-tiny"), **{**PATCHES, "latent_patch_size": 0})


# -- taef2, the published tiny autoencoder ------------------------------------------------------


def photo_crops(count: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """`count` random `size` x `size` crops of the training photos, `[count, 3, size, size]` in [-1, 1]."""
    files = sorted(require_shared_dataset("photos/train").glob("*"))
    rng = random.Random(seed)
    crops = []
    for path in rng.sample(files, count):
        image = Image.open(path).convert("RGB")
        left, top = rng.randrange(image.width - size), rng.randrange(image.height - size)
        crop = torch.tensor(list(image.crop((left, top, left + size, top + size)).getdata()), dtype=torch.float32)
        crops.append(crop.view(size, size, 3).permute(2, 0, 1) / 127.5 - 1)
    return torch.stack(crops)


def test_taef2_tokenizer_at_a_quarter_bit_per_pixel_trains_in_latent_space():
    from latentcode.conversion.taesd import from_taesd

    folder = require_shared(SHARED / "pretrained" / "taesd", "the TAESD checkpoints")
    taef2 = from_taesd(folder / "taef2_encoder.pth", folder / "taef2_decoder.pth").eval()
    # f8, 2 levels of 256 codes per latent position: 16 bits per 64 pixels. Without dead-code
    # restarts: 16 crops give each of the 256 codes a few latents, and a restart would replace
    # the codes k-means fitted with single latents of the batch.
    vqvae = VQVAEModel.from_autoencoder(
        taef2,
        quantizer="residual_vq",
        codebook_size=256,
        num_quantizers=2,
        quantizer_config={"dead_code_restart": False},
        corrector_config={"hidden_channels": 32},
    )
    assert vqvae.config.backbone == "tiny" and vqvae.config.source_autoencoder["family"] == "autoencoder"
    crops = photo_crops(16)
    with torch.no_grad():
        latents = continuous_latents(vqvae, crops)
        torch.testing.assert_close(latents, taef2.encode(crops).latents, rtol=1e-5, atol=1e-5)
    encoded = vqvae.encode(crops)
    assert torch.equal(vqvae.code_size(encoded).bits_per_pixel(64, 64), torch.full((16,), 0.25, dtype=torch.float64))

    vqvae.train()
    latent_space_loss(vqvae, latents)  # the first training batch fits the codebooks (k-means)

    def loss() -> float:
        vqvae.eval()
        with torch.no_grad():
            value = latent_space_loss(vqvae, latents).latent_loss.item()
        vqvae.train()
        return value

    before = loss()
    trainable = [p for p in vqvae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    for _ in range(10):
        optimizer.zero_grad()
        latent_space_loss(vqvae, latents).loss.backward()
        optimizer.step()
    after = loss()
    assert after < 0.97 * before, (before, after)


def test_fitted_projections_are_the_principal_components():
    """On latents of rank D around a mean, projections fitted to them pass z through exactly."""
    from latentcode.modeling.from_autoencoder import fit_projections

    vqvae = VQVAEModel.from_autoencoder(source_model("autoencoder-ldm"), **QUANTIZER, codebook_dim=2)
    generator = torch.Generator().manual_seed(0)
    latents = torch.einsum(
        "bdhw,dl->blhw", torch.randn(4, 2, 8, 8, generator=generator), torch.randn(2, 4, generator=generator)
    )
    latents = latents + torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 4, 1, 1)
    random_start = vqvae.post_quant_conv.from_code(vqvae.quant_conv.to_code(latents))
    fit_projections(vqvae, latents)
    with torch.no_grad():
        through = vqvae.post_quant_conv.from_code(vqvae.quant_conv.to_code(latents))
    torch.testing.assert_close(through, latents, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(random_start, latents, atol=1e-2)


@pytest.mark.parametrize("name", ["vae-ldm", "autoencoder-tiny"])
def test_decoder_loss_is_the_source_decoders_error_on_the_decoded_crops(name):
    """The loss through the frozen decoder equals the mean squared error between the source model's
    own decodings of z_hat and z on the decoded crops, enters the loss with its weight, and trains
    the quantiser side while the decoder gets no gradient."""
    torch.manual_seed(0)
    source = source_model(name)
    vqvae = VQVAEModel.from_autoencoder(source, **QUANTIZER, corrector_config={"hidden_channels": 8})
    with torch.no_grad():
        latents = continuous_latents(vqvae, pixels(batch=3, size=32))  # [3, 4, 16, 16]
    vqvae.eval()
    result = latent_space_loss(vqvae, latents, decoder_loss_weight=2.5, decoder_loss_crops=2, decoder_loss_size=4)
    crop = (slice(0, 2), slice(None), slice(0, 4), slice(0, 4))
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(
            source.decode(result.estimate[crop]).sample, source.decode(latents[crop]).sample
        )
    torch.testing.assert_close(result.decoder_loss, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(result.loss, result.latent_loss + result.quantizer_loss + 2.5 * result.decoder_loss)
    assert result.decoder_loss > 0

    result.decoder_loss.backward()
    assert vqvae.post_quant_conv.from_code.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in vqvae.decoder.parameters())
    without = latent_space_loss(vqvae, latents)
    assert without.decoder_loss == 0 and torch.equal(without.loss, without.latent_loss + without.quantizer_loss)


def changed_weights(module: torch.nn.Module, original: torch.nn.Module) -> list[str]:
    """The names of `module`'s weights that differ from those of `original`, a module of the same layout."""
    reference = original.state_dict()
    return [name for name, tensor in module.state_dict().items() if not torch.equal(tensor, reference[name])]


# The decoder loss of the fine-tune tests: every latent of the batch, an 8 x 8 crop of each.
FINETUNE_CROPS = dict(decoder_loss_weight=1.0, decoder_loss_crops=3, decoder_loss_size=8)


def finetune_latents(vqvae) -> torch.Tensor:
    with torch.no_grad():
        return continuous_latents(vqvae, pixels(batch=3, size=32))  # [3, 4, 16, 16]


def train_with_decoder_loss(vqvae, latents: torch.Tensor, target, steps: int = 10) -> tuple[float, float]:
    """(the decoder loss on `latents`, in evaluation mode, after the k-means fit, and after `steps`
    AdamW steps of `latent_space_loss` with the decoder loss against `target`). The learning rate
    is 1e-4: at the quantiser's 1e-3, Adam's first steps (about the learning rate per weight)
    throw these tiny random decoders off and the decoder loss rises."""
    options = dict(FINETUNE_CROPS, target_decoder=target)

    def decoder_loss() -> float:
        vqvae.eval()
        with torch.no_grad():
            value = latent_space_loss(vqvae, latents, **options).decoder_loss.item()
        vqvae.train()
        return value

    vqvae.train()
    latent_space_loss(vqvae, latents)  # the first training batch fits the codebooks (k-means)
    before = decoder_loss()
    optimizer = torch.optim.AdamW([p for p in vqvae.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        latent_space_loss(vqvae, latents, **options).loss.backward()
        optimizer.step()
    return before, decoder_loss()


@pytest.mark.parametrize("name", ["vae-ldm", "autoencoder-tiny"])
def test_a_decoder_finetune_trains_the_decoder_against_a_frozen_copy_of_the_source(name, tmp_path):
    """With `start_decoder_finetune` the decoder (and the source's projection before it) trains:
    the decoder loss is the error between its images of z_hat and the source decoder's images of
    z, gradients reach both the decoder and z_hat, optimiser steps change the decoder, while the
    encoder and the target stay bit-identical to the source's; the saved model keeps the
    fine-tuned decoder, records it, and refuses a second fine-tune (its target is gone)."""
    torch.manual_seed(0)
    source = source_model(name)
    vqvae = VQVAEModel.from_autoencoder(source, **QUANTIZER, corrector_config={"hidden_channels": 8})
    target = start_decoder_finetune(vqvae)
    assert vqvae.config.source_autoencoder["decoder_finetuned"] is True
    assert vqvae.config.source_autoencoder["frozen"] is True  # what loading applies
    for part, module in pretrained_parts(vqvae).items():
        assert all(p.requires_grad == (part in DECODER_PARTS) for p in module.parameters()), part
    assert not any(p.requires_grad for p in target.parameters())
    assert not target.train().training  # a trainer's .train() leaves the target as it is

    encoder = state(vqvae.encoder)
    latents = finetune_latents(vqvae)
    latent_space_loss(vqvae, latents, **FINETUNE_CROPS, target_decoder=target).loss.backward()
    assert all(p.grad is not None for p in vqvae.decoder.parameters())
    assert sum(p.grad.abs().sum() for p in vqvae.decoder.parameters()) > 0
    assert vqvae.post_quant_conv.from_code.weight.grad.abs().sum() > 0  # through z_hat
    vqvae.zero_grad()
    train_with_decoder_loss(vqvae, latents, target)

    assert changed_weights(vqvae.decoder, source.decoder)
    assert_same_state(vqvae.encoder, encoder)
    assert_same_state(target.decoder, source.decoder.state_dict())
    if target.projection is not None:
        assert_same_state(target.projection, source.post_quant_conv.state_dict())
    # The loss's value: the fine-tuned decoder's images of z_hat against the source model's of z.
    vqvae.eval()
    with torch.no_grad():
        result = latent_space_loss(vqvae, latents, **FINETUNE_CROPS, target_decoder=target)
        crop = (slice(0, 3), slice(None), slice(0, 8), slice(0, 8))
        expected = torch.nn.functional.mse_loss(
            decode_latents(vqvae, result.estimate[crop]), source.decode(latents[crop]).sample
        )
    torch.testing.assert_close(result.decoder_loss, expected, rtol=1e-5, atol=1e-7)

    vqvae.save_pretrained(tmp_path)
    loaded = VQVAEModel.from_pretrained(tmp_path)
    assert loaded.config.source_autoencoder == vqvae.config.source_autoencoder
    assert_same_state(loaded.decoder, state(vqvae.decoder))
    assert not any(p.requires_grad for module in pretrained_parts(loaded).values() for p in module.parameters())
    x = pixels(seed=5)
    assert torch.equal(loaded(x).sample, vqvae(x).sample)
    with pytest.raises(ValueError, match=r"decoder was fine-tuned already .* make the VQ-VAE again from the source"):
        start_decoder_finetune(loaded)


def test_a_decoder_finetune_lowers_the_decoder_loss_where_the_frozen_decoder_does_not():
    """The same 10 steps from the same start, the decoder fine-tuned or frozen, the target the
    source's decoder either way: the fine-tune lowers the decoder loss well below both its start
    and what the frozen decoder reaches."""
    runs = {}
    for finetune in (True, False):
        torch.manual_seed(0)
        vqvae = VQVAEModel.from_autoencoder(
            source_model("vae-ldm"), **QUANTIZER, corrector_config={"hidden_channels": 8}
        )
        target = start_decoder_finetune(vqvae) if finetune else SourceDecoder(vqvae)
        runs[finetune] = train_with_decoder_loss(vqvae, finetune_latents(vqvae), target)
    (start, finetuned), (frozen_start, frozen) = runs[True], runs[False]
    assert start == frozen_start
    assert finetuned < 0.6 * start and finetuned < 0.6 * frozen, runs


def test_a_model_saved_before_decoder_finetuned_existed_loads_with_the_source_decoder(tmp_path):
    vqvae = VQVAEModel.from_autoencoder(source_model("autoencoder-tiny"), **QUANTIZER)
    config = vqvae.config.to_dict()
    del config["source_autoencoder"]["decoder_finetuned"]
    for key in ("model_type", "transformers_version"):
        config.pop(key, None)
    assert type(vqvae.config)(**config).source_autoencoder == vqvae.config.source_autoencoder
    assert vqvae.config.source_autoencoder["decoder_finetuned"] is False
    with pytest.raises(ValueError, match="start_decoder_finetune trains the decoder a VQ-VAE took from a pretrained"):
        start_decoder_finetune(tiny_model("vqvae"))
