"""The three model families: shapes, losses, Hugging Face I/O, the VAE's distribution maths, slicing and
tiling, bad input. (The VQ-VAE's codebook in a model: test_quantizers.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import tiny_config, tiny_model
from transformers import AutoConfig, AutoModel
from transformers.modeling_layers import GradientCheckpointingLayer

import latentcode
from latentcode.families import FAMILIES
from latentcode.modules.distributions import DiagonalGaussianDistribution
from latentcode.modules.tiling import tiled_map


def test_forward_reconstructs_input_shape_and_reports_family_losses(family):
    model = tiny_model(family)
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    output = model(pixels)
    assert output.sample.shape == pixels.shape
    assert torch.isfinite(output.loss)
    expected_reconstruction = torch.nn.functional.mse_loss(output.sample, pixels)
    torch.testing.assert_close(output.reconstruction_loss, expected_reconstruction)
    if family == "autoencoder":
        torch.testing.assert_close(output.loss, output.reconstruction_loss)
        assert output.latents.shape == (2, 4, 8, 8)
    elif family == "vae":
        kl_per_value = output.kl / pixels[0].numel()
        torch.testing.assert_close(output.loss, output.reconstruction_loss + model.config.kl_weight * kl_per_value)
        assert output.kl > 0
    else:
        # The default codebook is an EMA of the encoder outputs: only the commitment term is a loss.
        torch.testing.assert_close(output.loss, output.reconstruction_loss + 0.25 * output.commitment_loss)
        assert output.indices.shape == (2, 8, 8) and output.indices.dtype == torch.long
        learned = tiny_model(family, quantizer_config={"codebook_ema": False})(pixels)
        expected = learned.reconstruction_loss + learned.codebook_loss + 0.25 * learned.commitment_loss
        torch.testing.assert_close(learned.loss, expected)


@pytest.mark.parametrize(
    "overrides, image_shape",
    [
        (dict(in_channels=1, block_out_channels=(16,), attention_levels=(0,)), (1, 1, 12, 12)),  # factor 1, grey
        (dict(in_channels=4, block_out_channels=(8, 8, 16, 16)), (1, 4, 32, 32)),  # factor 8, RGBA
        (dict(in_channels=3, out_channels=1, dropout=0.1), (1, 3, 16, 16)),
    ],
)
def test_backbone_sizes_and_channels(family, overrides, image_shape):
    model = tiny_model(family, **overrides)
    pixels = torch.randn(image_shape)
    factor = model.downsampling_factor
    assert factor == 2 ** (len(model.config.block_out_channels) - 1)
    encoded = model.encode(pixels)
    latents = encoded.latent_dist.mean if family == "vae" else encoded.latents
    assert latents.shape[2:] == (image_shape[2] // factor, image_shape[3] // factor)
    sample = model.decode(latents).sample
    assert sample.shape == (image_shape[0], model.config.out_channels, *image_shape[2:])


def test_loss_needs_matching_input_and_output_channels(family):
    model = tiny_model(family, out_channels=1)
    with pytest.raises(ValueError, match=r"reconstruction of shape \(1, 1, 16, 16\).*\(1, 3, 16, 16\)"):
        model(torch.randn(1, 3, 16, 16))


def test_save_and_load_is_bit_identical(family, tmp_path):
    model = tiny_model(family, scaling_factor=0.5)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == model.config.model_type and config["scaling_factor"] == 0.5

    loaded = FAMILIES[family].model_class.from_pretrained(tmp_path).eval()
    for (name, value), (loaded_name, loaded_value) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == loaded_name and torch.equal(value, loaded_value), name
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(pixels).sample, loaded(pixels).sample)


def test_auto_classes_return_the_right_family(family, tmp_path):
    model = tiny_model(family)
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is type(model.config)
    assert type(AutoModel.from_pretrained(tmp_path)) is FAMILIES[family].model_class


@pytest.mark.single_thread
def test_hub_id_loads_offline_from_the_cache(tmp_path):
    """A model placed in the Hugging Face cache layout loads by Hub id with HF_HUB_OFFLINE=1."""
    model = tiny_model("vqvae")
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--latentcode-test--tiny-vqvae"
    model.save_pretrained(repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    expected = model.quantizer.codebook.detach().sum().item()

    script = (
        "import latentcode, torch;"
        "m = latentcode.VQVAEModel.from_pretrained('latentcode-test/tiny-vqvae');"
        "print(repr(m.quantizer.codebook.detach().sum().item()))"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) == expected


def test_kl_and_nll_equal_torch_distributions():
    torch.manual_seed(0)
    parameters = torch.randn(3, 8, 4, 4)
    posterior = DiagonalGaussianDistribution(parameters)
    mean, logvar = parameters.chunk(2, dim=1)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(posterior.kl(), torch.distributions.kl_divergence(q, prior).sum(dim=(1, 2, 3)))

    other = DiagonalGaussianDistribution(torch.randn(3, 8, 4, 4))
    p = torch.distributions.Normal(other.mean, other.std)
    torch.testing.assert_close(posterior.kl(other), torch.distributions.kl_divergence(q, p).sum(dim=(1, 2, 3)))

    sample = torch.randn(3, 4, 4, 4)
    torch.testing.assert_close(posterior.nll(sample), -q.log_prob(sample).sum(dim=(1, 2, 3)))
    torch.testing.assert_close(posterior.mode(), mean)


def test_reparameterised_sample_is_reproducible_and_differentiable():
    parameters = torch.randn(2, 8, 3, 3, requires_grad=True)
    posterior = DiagonalGaussianDistribution(parameters)
    first = posterior.sample(generator=torch.Generator().manual_seed(7))
    second = posterior.sample(generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second)
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, posterior.mean + posterior.std * eps)
    first.sum().backward()
    assert parameters.grad[:, :4].abs().min() > 0  # mean
    assert parameters.grad[:, 4:].abs().sum() > 0  # log-variance


def test_vae_prior_samples_are_reproducible():
    model = tiny_model("vae")
    first = model.sample(3, generator=torch.Generator().manual_seed(1))
    second = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert first.shape == (3, 3, 16, 16)
    assert torch.equal(first, second)
    z = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, model.decode(z).sample)


def test_gradient_checkpointing_gives_the_same_gradients(family):
    model = tiny_model(family).train()
    pixels = torch.randn(2, 3, 16, 16)
    kwargs = {"sample_posterior": False} if family == "vae" else {}
    model(pixels, **kwargs).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # transformers 5's own API, no deprecation
        model.activation_checkpointing_enable()
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(layers) == 2 * (len(model.config.block_out_channels) + 1)  # levels and mid blocks
    checkpointed = []
    for layer in layers:
        assert layer.gradient_checkpointing
        function = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *args, f=function: checkpointed.append(1) or f(*args)
    model(pixels, **kwargs).loss.backward()
    assert len(checkpointed) == len(layers)
    for name, parameter in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(parameter.grad, expected[name], msg=name)


def test_slicing_gives_identical_outputs(family):
    model = tiny_model(family)
    pixels = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        expected = model(pixels).sample
        model.enable_slicing(slice_size=2)
        sliced = model(pixels).sample
    torch.testing.assert_close(sliced, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "fn, scale",
    [
        (lambda t: t * 2 + 1, 1),
        (lambda t: torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest"), 2),
        (lambda t: torch.nn.functional.avg_pool2d(t, 2), 0.5),
    ],
)
def test_tiled_map_stitches_local_operations_exactly(fn, scale):
    x = torch.randn(2, 3, 40, 56)
    torch.testing.assert_close(tiled_map(x, fn, tile_size=16, stride=12, scale=scale), fn(x))


def test_tiled_encode_decode_matches_shapes_and_blending_hides_seams():
    model = tiny_model("vae")
    coordinates = torch.linspace(0, 1, 64)
    yy, xx = torch.meshgrid(coordinates, coordinates, indexing="ij")
    smooth = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), torch.sin(2 * (xx + yy))]).unsqueeze(0)

    def encode_decode():
        with torch.no_grad():
            latents = model.encode(smooth).latent_dist.mean
            return latents, model.decode(latents).sample

    reference_latents, reference = encode_decode()
    model.enable_tiling(tile_sample_size=64)  # one tile covers the image: the untiled path
    assert torch.equal(encode_decode()[1], reference)
    model.enable_tiling(tile_sample_size=32, tile_overlap_factor=0.0)
    seam_latents, seams = encode_decode()
    model.enable_tiling(tile_sample_size=32, tile_overlap_factor=0.25)
    blended_latents, blended = encode_decode()
    assert blended_latents.shape == reference_latents.shape and blended.shape == reference.shape
    # Each tile normalises with its own GroupNorm statistics, so tiles never match the whole
    # image exactly; cross-fading the overlaps brings them closer than butting tiles together.
    assert (blended_latents - reference_latents).abs().mean() < (seam_latents - reference_latents).abs().mean()
    assert (blended - reference).abs().mean() < (seams - reference).abs().mean()


@pytest.mark.single_thread
def test_overfits_real_digits(family, digits):
    torch.manual_seed(0)
    codebook = {"codebook_size": 32} if family == "vqvae" else {}
    model = FAMILIES[family].model_class(tiny_config(family, in_channels=1, **codebook)).train()
    batch = digits[:32]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with torch.no_grad():
        initial = model(batch).reconstruction_loss.item()
    # 50 steps: on seeds 0-2 every family is at <= 0.088 x its initial loss by then (<= 0.022 after
    # 120), so the bound below keeps a margin of almost 3x.
    for _ in range(50):
        optimizer.zero_grad()
        model(batch).loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        final = model(batch).reconstruction_loss.item()
    assert final < 0.25 * initial, (initial, final)


def test_architectures_build_models_with_the_documented_shapes():
    config = latentcode.architecture_config("vqvae_paper_32", family="vqvae")
    assert (config.codebook_size, config.codebook_dim, config.downsampling_factor) == (512, 64, 4)
    vae = latentcode.architecture_config("mnist", family="vae", latent_channels=2)
    assert vae.in_channels == 1 and vae.latent_channels == 2 and not hasattr(vae, "codebook_size")
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        latentcode.architecture_config("nope")


# -- bad input: each raises a ValueError naming what was expected and what came ------------------


def test_wrong_channel_count_is_rejected(family):
    with pytest.raises(ValueError, match=r"in_channels=3.*\(2, 1, 16, 16\)"):
        tiny_model(family).encode(torch.randn(2, 1, 16, 16))


def test_grey_images_for_an_rgb_model_and_back_say_how_to_convert_them():
    """Issue 33 item 10: the message names what came and the fix (PIL's convert, the image
    processor, the tensor expression); each fix it gives, followed, gives the model's input."""
    import numpy as np
    import PIL.Image

    from latentcode import LatentCodeImageProcessor

    rgb_model, grey_model = tiny_model("vqvae"), tiny_model("vqvae", in_channels=1)
    rng = np.random.default_rng(0)
    colour = PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    grey = colour.convert("L")
    rgb_processor = LatentCodeImageProcessor.from_model_config(rgb_model.config)
    grey_processor = LatentCodeImageProcessor.from_model_config(grey_model.config)
    cases = (
        (rgb_model, grey_processor(grey).pixel_values, "grey-scale images (1 channel) for an RGB model", "RGB"),
        (grey_model, rgb_processor(colour).pixel_values, "RGB images (3 channels) for a grey-scale model", "L"),
    )
    for model, pixel_values, what_came, mode in cases:
        with pytest.raises(ValueError) as error:
            model.encode(pixel_values)
        message = str(error.value)
        assert what_came in message, message
        assert f'`image.convert("{mode}")`' in message
        assert "LatentCodeImageProcessor.from_model_config(model.config)(images).pixel_values" in message
        # The tensor fix the message gives, run as written, is what PIL's conversion gives
        # (PIL rounds to uint8: within one step of 2/255).
        expression = message.rsplit("pixels already in [-1, 1]: ", 1)[1]
        fixed = eval(expression, {"torch": torch, "pixel_values": pixel_values})  # noqa: S307 (our own message)
        processor = rgb_processor if mode == "RGB" else grey_processor
        converted = processor((grey if mode == "RGB" else colour).convert(mode)).pixel_values
        torch.testing.assert_close(fixed, converted, rtol=0, atol=2 / 255 + 1e-6)
        model.encode(fixed)  # accepted
    with pytest.raises(ValueError, match=r"got Image; the model's image processor .* converts images"):
        rgb_model.encode(grey)
    with pytest.raises(ValueError, match=r"a single image \[C, H, W\] needs the batch dimension: pixel_values\[None\]"):
        rgb_model.encode(torch.zeros(3, 16, 16))


def test_size_not_divisible_by_the_downsampling_factor_is_rejected(family):
    with pytest.raises(ValueError, match="divisible by the downsampling factor 2.*15x16"):
        tiny_model(family).encode(torch.randn(1, 3, 15, 16))


def test_a_33x33_image_says_how_to_fix_its_size():
    """Issue 20 item 6: the message gives the nearest valid sizes to crop / resize to, and the padding."""
    model = tiny_model("vqvae", block_out_channels=(16, 16, 16))  # factor 4
    with pytest.raises(ValueError) as error:
        model(torch.zeros(1, 3, 33, 33))
    message = str(error.value)
    assert "got 33x33: crop or resize the images to a multiple of 4 (the nearest are 32x32 and 36x36)" in message
    assert "or pad them to 36x36 (e.g. torch.nn.functional.pad(pixels, (0, 3, 0, 3), mode='replicate'))" in message
    padded = torch.nn.functional.pad(torch.zeros(1, 3, 33, 33), (0, 3, 0, 3), mode="replicate")
    assert model(padded).sample.shape == (1, 3, 36, 36)


def test_a_truncated_weights_file_names_the_file_and_the_remedy(tmp_path):
    """Issue 20 item 6: not safetensors' bare "incomplete metadata, file not fully covered"."""
    tiny_model("vae").save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(OSError) as error:
        latentcode.VAEModel.from_pretrained(tmp_path)
    message = str(error.value)
    assert f"cannot read the weights of {tmp_path}: {weights} is truncated or corrupt" in message
    assert (
        "Download it again (from_pretrained(..., force_download=True)), or write it again with save_pretrained"
        in message
    )


def test_dtype_casts_and_conversion_do_not_warn_about_float32_modules():
    """Issue 20 item 7: diffusers' `ModelMixin.to()` warned "should be kept in float32: []" on every cast."""
    import logging

    from diffusers.models import modeling_utils

    class Records(logging.Handler):
        messages: list = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    handler = Records()
    logger = logging.getLogger(modeling_utils.__name__)
    logger.addHandler(handler)
    try:
        model = tiny_model("vqvae").to(torch.float16).to(dtype=torch.float32)
        latentcode.VQVAEModel.from_diffusers(model.to_diffusers().half())
        assert not [message for message in handler.messages if "kept in float32" in message]
        model._keep_in_fp32_modules = {"decoder"}  # a model that does keep modules in float32 still warns
        model.to(torch.float16)
        assert any("kept in float32: {'decoder'}" in message for message in handler.messages)
    finally:
        logger.removeHandler(handler)


def test_integer_pixels_are_rejected(family):
    with pytest.raises(ValueError, match="torch.uint8"):
        tiny_model(family)(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_empty_batches_other_dtypes_255_range_and_nan_pixels_are_rejected(family):
    model = tiny_model(family)
    for call in (model.encode, model):
        with pytest.raises(ValueError, match=r"empty batch \(B = 0\)"):
            call(torch.zeros(0, 3, 16, 16))
        for dtype in (torch.float16, torch.float64):  # as diffusers' autoencoders: the model's dtype
            with pytest.raises(
                ValueError, match=rf"pixel_values are {dtype} but the model's weights are torch.float32"
            ):
                call(torch.zeros(1, 3, 16, 16, dtype=dtype))
        with pytest.raises(ValueError, match=r"in \[-1, 1\], got values in \[0, 255\]"):
            call(torch.linspace(0, 255, 768).view(1, 3, 16, 16))
        with pytest.raises(ValueError, match="NaN or inf"):
            call(torch.full((1, 3, 16, 16), float("nan")))
    with pytest.raises(ValueError, match=r"empty batch \(B = 0\)"):
        model.decode(torch.zeros(0, 4, 8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision keeps working
        model.encode(torch.zeros(1, 3, 16, 16, dtype=torch.bfloat16))
    model.encode(torch.randn(1, 3, 16, 16))  # Gaussian noise (diffusers' model tests) is accepted


def test_decode_rejects_latents_with_the_wrong_channels(family):
    with pytest.raises(ValueError, match=r"\[B, 4, h, w\].*\(1, 3, 8, 8\)"):
        tiny_model(family).decode(torch.randn(1, 3, 8, 8))


def test_bad_indices_are_rejected():
    model = tiny_model("vqvae", codebook_size=32)
    with pytest.raises(ValueError, match=r"in \[0, 31\].*\[0, 32\]"):
        model.decode_indices(torch.tensor([[[0, 32]]]))
    with pytest.raises(ValueError, match=r"in \[0, 31\].*\[-1, 0\]"):
        model.decode_indices(torch.tensor([[[0, -1]]]))
    with pytest.raises(ValueError, match=r"\[B, h, w\].*\(4,\)"):
        model.decode_indices(torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="integer tensor.*float32"):
        model.decode_indices(torch.zeros(1, 2, 2))


@pytest.mark.parametrize(
    "family, fields, message",
    [
        ("vqvae", dict(quantizer="kmeans"), "quantizer must be one of"),
        ("vqvae", dict(codebook_size=1), "codebook_size must be an int >= 2"),
        ("vqvae", dict(codebook_dim=8, use_quant_conv=False), "codebook_dim=8 differs from latent_channels=4"),
        ("vae", dict(block_out_channels=(16, 30)), "divisible by norm_num_groups=8"),
        ("vae", dict(attention_levels=(2,)), r"attention_levels must be in \[0, 1\]"),
        ("vae", dict(kl_weight=-1.0), "kl_weight must be >= 0"),
        ("autoencoder", dict(reconstruction_loss="huber"), r"one of \('mse', 'l1'\)"),
        ("autoencoder", dict(block_out_channels=()), "at least one level"),
    ],
)
def test_unknown_or_invalid_config_values_are_rejected(family, fields, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(family, **fields)


def test_the_reconstruction_loss_computes_every_allowed_name_and_refuses_another():
    """`configuration.RECONSTRUCTION_LOSSES` is the one list of names; the config checks it when
    built, and the loss itself raises the same error for a name set on the config afterwards."""
    from latentcode.configuration import RECONSTRUCTION_LOSSES
    from latentcode.modeling.base import mean_reconstruction_loss

    reconstruction, target = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    expected = {"mse": 0.25, "l1": 0.5}
    assert set(RECONSTRUCTION_LOSSES) == set(expected)
    for name in RECONSTRUCTION_LOSSES:
        assert mean_reconstruction_loss(reconstruction, target, name).item() == expected[name]
    model = tiny_model("autoencoder")
    model.config.reconstruction_loss = "huber"
    with pytest.raises(ValueError, match=r"reconstruction_loss must be one of \('mse', 'l1'\), got 'huber'"):
        model(torch.zeros(1, 3, 16, 16))


@pytest.mark.parametrize("backbone", ["ldm", "tiny", "vector"])
def test_a_model_resolves_its_backbone_once_and_still_pickles(backbone):
    """`backbone_spec` and `downsampling_factor` are set when the model is built (not looked up on
    every forward); the spec pickles by name, so a model pickles and copies as before."""
    import copy
    import pickle

    from latentcode.modules.backbones import get_backbone

    size = 32 if backbone == "vector" else 16
    model = tiny_model("vae", backbone=backbone, sample_size=size)
    assert "backbone_spec" in vars(model) and model.backbone_spec is get_backbone(backbone)
    assert model.downsampling_factor == model.config.downsampling_factor
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert twin.backbone_spec is model.backbone_spec
        pixels = torch.rand(1, 3, size, size) * 2 - 1
        torch.testing.assert_close(twin.encode(pixels).latent_dist.mean, model.encode(pixels).latent_dist.mean)


def test_tiling_rejects_tiles_not_aligned_with_the_latent_grid():
    with pytest.raises(ValueError, match="multiple of the downsampling factor 2"):
        tiny_model("vae").enable_tiling(tile_sample_size=15)


def test_push_to_hub_uploads_a_loadable_model(tmp_path, monkeypatch):
    """push_to_hub is transformers' own; a recording stand-in for the Hub API checks what it sends."""
    import types

    import transformers.utils.hub as transformers_hub
    from huggingface_hub import ModelCard

    uploaded = {}

    class RecordingHubApi:
        def create_repo(self, repo_id, **kwargs):
            return types.SimpleNamespace(repo_id=repo_id)

        def create_commit(self, repo_id, operations, **kwargs):
            for operation in operations:
                with open(operation.path_or_fileobj, "rb") as file:
                    uploaded[operation.path_in_repo] = file.read()
            return "commit"

    monkeypatch.setattr(transformers_hub, "_hf_api", RecordingHubApi())
    monkeypatch.setattr(transformers_hub, "create_and_tag_model_card", lambda *args, **kwargs: ModelCard("card"))
    model = tiny_model("vqvae")
    model.push_to_hub("latentcode-test/tiny-vqvae")
    assert {"config.json", "model.safetensors"} <= set(uploaded)
    for name, content in uploaded.items():
        (tmp_path / name).write_bytes(content)
    loaded = latentcode.VQVAEModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.quantizer.codebook, model.quantizer.codebook)
    assert torch.equal(loaded.decoder.conv_out.weight, model.decoder.conv_out.weight)


def test_from_pretrained_refuses_missing_weights_unless_allowed(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    model = tiny_model("vqvae")
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    # A codebook without its EMA statistics is complete: loading derives them.
    derived = {
        k: v for k, v in weights.items() if not any(re.search(p, k) for p in model._keys_to_ignore_on_load_missing)
    }
    save_file(derived, tmp_path / "model.safetensors", metadata={"format": "pt"})
    torch.testing.assert_close(type(model).from_pretrained(tmp_path).quantizer.codebook, model.quantizer.codebook)

    for gone in (["decoder.conv_out.weight"], [k for k in weights if k.startswith("quantizer.")]):
        save_file({k: v for k, v in weights.items() if k not in gone}, tmp_path / "model.safetensors")
        for loader in (type(model), AutoModel):
            with pytest.raises(
                ValueError, match=rf"every weight of VQVAEModel; missing or of another shape \(1\): {gone[0]}"
            ):
                loader.from_pretrained(tmp_path)
        lenient = type(model).from_pretrained(tmp_path, allow_missing_weights=True)  # the explicit opt-in
        assert isinstance(lenient, type(model))


def test_a_model_whose_output_channels_differ_from_its_input_has_no_reconstruction_loss():
    model = tiny_model("autoencoder", out_channels=1)
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    assert model.decode(model.encode(pixels).latents).sample.shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"reconstruction of shape \(1, 1, 16, 16\) cannot match pixels of shape"):
        model(pixels)
