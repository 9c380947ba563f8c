"""Conversion tests: diffusers VQModel / AutoencoderKL / AutoencoderTiny both ways, CompVis checkpoints in,
scaling factors, and safety (corrupt files, wrong keys, malicious pickles).

Every model is a random-weight diffusers model with tiny channel counts; outputs are compared
with diffusers' own on the same inputs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, StableDiffusionPipeline, VQModel
from safetensors.torch import load_file, save_file

from latentcode import (
    AutoencoderConfig,
    AutoencoderModel,
    LatentCodeImageProcessor,
    LatentCodePreTrainedModel,
    VAEModel,
    VQVAEConfig,
    VQVAEModel,
)
from latentcode.conversion import CheckpointError

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4


def load_script(name: str):
    """Import a script from conversion/ as a module (its `main(argv)` is then callable)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "conversion" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Make every parameter matter: non-trivial norm affines and biases."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.dim() == 1 and "norm" in name and name.endswith("weight"):
                parameter.copy_(1.0 + 0.2 * noise)
            elif parameter.dim() == 1:
                parameter.copy_(0.1 * noise)
    return model.eval()


def block_types(levels: int, attention: tuple[int, ...]) -> dict:
    return dict(
        down_block_types=tuple(
            "AttnDownEncoderBlock2D" if level in attention else "DownEncoderBlock2D" for level in range(levels)
        ),
        up_block_types=tuple(
            "AttnUpDecoderBlock2D" if level in attention else "UpDecoderBlock2D" for level in reversed(range(levels))
        ),
    )


# (block_out_channels, layers_per_block, attention levels, mid attention, image channels, extra config)
VQ_CASES = {
    "1level-rgb": ((8,), 1, (), True, 3, dict(latent_channels=3, vq_embed_dim=3)),
    "2levels-gray-attn0": ((8, 16), 2, (0,), False, 1, dict(latent_channels=4, vq_embed_dim=6)),
    "3levels-attn2": ((8, 8, 16), 1, (2,), True, 3, dict(latent_channels=2, vq_embed_dim=5)),
    "4levels-amused-flags": (
        (8, 8, 16, 16),
        2,
        (),
        False,
        3,
        dict(latent_channels=3, vq_embed_dim=4, lookup_from_codebook=True, force_upcast=True, scaling_factor=0.5),
    ),
}
KL_CASES = {
    "1level-gray-noquant": ((8,), 2, (), False, 1, dict(latent_channels=2, use_quant_conv=False)),
    "2levels-attn1-shift": (
        (8, 16),
        1,
        (1,),
        True,
        3,
        dict(latent_channels=4, use_post_quant_conv=False, shift_factor=0.1, latents_mean=[0.0] * 4),
    ),
    "3levels": ((8, 8, 16), 2, (), True, 3, dict(latent_channels=3)),
    "4levels-gray": ((8, 8, 16, 16), 1, (0, 3), True, 1, dict(latent_channels=4)),
}


def make_diffusers(kind: str, case: str, seed: int = 0):
    channels, layers, attention, mid, image_channels, extra = (VQ_CASES if kind == "vq" else KL_CASES)[case]
    cls = VQModel if kind == "vq" else AutoencoderKL
    torch.manual_seed(seed)
    model = cls(
        in_channels=image_channels,
        out_channels=image_channels,
        block_out_channels=channels,
        layers_per_block=layers,
        norm_num_groups=4,
        mid_block_add_attention=mid,
        sample_size=16,
        **block_types(len(channels), attention),
        **({"num_vq_embeddings": 32} if kind == "vq" else {}),
        **extra,
    )
    model = randomize(model, seed)
    if kind == "vq":
        # Codes drawn from the model's own latents, so that images use many of them.
        with torch.no_grad():
            latents = model.encode(pixels_for(model, seed=seed + 100)).latents
            vectors = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
            choice = torch.randint(
                len(vectors), (model.config.num_vq_embeddings,), generator=torch.Generator().manual_seed(seed)
            )
            model.quantize.embedding.weight.copy_(vectors[choice] + 0.01 * torch.randn_like(vectors[choice]))
    return model


def pixels_for(model, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, model.config.in_channels, 16, 16, generator=generator) * 2 - 1


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    expected_sd, actual_sd = expected.state_dict(), actual.state_dict()
    assert expected_sd.keys() == actual_sd.keys()
    for key, value in expected_sd.items():
        assert actual_sd[key].dtype == value.dtype, key
        assert torch.equal(actual_sd[key], value), key


def public_config(model) -> dict:
    return {key: value for key, value in dict(model.config).items() if not key.startswith("_")}


# ----------------------------------------------------------------------------------------------
# diffusers -> latentcode -> diffusers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(VQ_CASES))
def test_vqmodel_round_trip_matches_diffusers(case):
    reference = make_diffusers("vq", case)
    model = VQVAEModel.from_diffusers(reference)
    pixels = pixels_for(reference)
    with torch.no_grad():
        latents = reference.encode(pixels).latents
        quantized, reference_loss, (_, _, reference_indices) = reference.quantize(latents)
        encoded = model.encode(pixels)
        assert max_diff(encoded.latents, latents) <= TOLERANCE
        assert torch.equal(encoded.indices, reference_indices.view(encoded.indices.shape))
        assert len(encoded.indices.unique()) > 1  # the comparison is not vacuous
        assert max_diff(encoded.quantized, quantized) <= TOLERANCE
        assert max_diff(model.decode(latents).sample, reference.decode(latents).sample) <= TOLERANCE
        assert max_diff(model.decode_indices(encoded.indices).sample, reference.decode(quantized).sample) <= TOLERANCE
        output, reference_output = model(pixels), reference(pixels)
        assert max_diff(output.sample, reference_output.sample) <= TOLERANCE
        # The imported loss weights reproduce diffusers' (legacy) quantiser loss.
        assert abs((output.loss - output.reconstruction_loss).item() - reference_output.commit_loss.item()) < 1e-5

    assert model.config.codebook_dim == reference.config.vq_embed_dim
    assert model.config.scaling_factor == reference.config.scaling_factor
    exported = model.to_diffusers()
    assert isinstance(exported, VQModel)
    assert_same_weights(reference, exported)
    assert public_config(exported) == public_config(reference)


@pytest.mark.parametrize("case", list(KL_CASES))
def test_autoencoderkl_round_trip_matches_diffusers(case):
    reference = make_diffusers("kl", case)
    model = VAEModel.from_diffusers(reference)
    pixels = pixels_for(reference)
    with torch.no_grad():
        posterior, reference_posterior = model.encode(pixels).latent_dist, reference.encode(pixels).latent_dist
        assert max_diff(posterior.mean, reference_posterior.mean) <= TOLERANCE
        assert max_diff(posterior.logvar, reference_posterior.logvar) <= TOLERANCE
        latents = reference_posterior.mean
        assert max_diff(model.decode(latents).sample, reference.decode(latents).sample) <= TOLERANCE
        forward = model(pixels, sample_posterior=False).sample
        assert max_diff(forward, reference(pixels, sample_posterior=False).sample) <= TOLERANCE

    assert model.config.use_quant_conv == reference.config.use_quant_conv
    exported = model.to_diffusers()
    assert isinstance(exported, AutoencoderKL)
    assert_same_weights(reference, exported)
    assert public_config(exported) == public_config(reference)


def test_exported_folders_load_with_diffusers_from_pretrained(tmp_path):
    for kind, case, cls in (("vq", "2levels-gray-attn0", VQModel), ("kl", "2levels-attn1-shift", AutoencoderKL)):
        reference = make_diffusers(kind, case)
        converted = LatentCodePreTrainedModel.from_diffusers(reference)
        assert isinstance(converted, VQVAEModel if kind == "vq" else VAEModel)
        converted.save_pretrained(tmp_path / kind / "ours")
        load_script("convert_latentcode_to_diffusers").main(
            [
                "--pretrained_model_name_or_path",
                str(tmp_path / kind / "ours"),
                "--output_dir",
                str(tmp_path / kind / "diffusers"),
            ]
        )
        loaded = cls.from_pretrained(tmp_path / kind / "diffusers")
        assert_same_weights(reference, loaded)
        pixels = pixels_for(reference)
        with torch.no_grad():
            assert torch.equal(loaded(pixels).sample, reference(pixels).sample)


def test_from_diffusers_keeps_dtype_and_takes_training_overrides(tmp_path):
    reference = make_diffusers("vq", "3levels-attn2").half()
    model = VQVAEModel.from_diffusers(reference, commitment_weight=0.25, codebook_weight=1.0)
    assert model.dtype == torch.float16
    config = model.config
    assert (config.commitment_weight, config.codebook_weight, config.quantizer_config["codebook_ema"]) == (
        0.25,
        1.0,
        False,
    )
    assert_same_weights(reference, model.to_diffusers())
    # From a folder, diffusers loads fp16 weights as fp32 (exactly); export casts back bit-identically.
    reference.save_pretrained(tmp_path)
    model = VQVAEModel.from_diffusers(tmp_path)
    assert_same_weights(reference, model.to_diffusers().half())
    with pytest.raises(ValueError, match="block_out_channels"):
        VQVAEModel.from_diffusers(tmp_path, block_out_channels=[8, 8, 32])
    with pytest.raises(ValueError, match=r"cannot override quantizer options \['l2_normalize'\]"):
        VQVAEModel.from_diffusers(tmp_path, quantizer_config={"l2_normalize": True})


def test_vq_export_without_quant_convs_uses_exact_identity_projections():
    model = randomize(
        VQVAEModel(
            VQVAEModel.config_class(
                block_out_channels=(8, 16),
                norm_num_groups=4,
                layers_per_block=1,
                latent_channels=3,
                codebook_size=16,
                use_quant_conv=False,
                use_post_quant_conv=False,
            )
        ),
        seed=3,
    )
    exported = model.to_diffusers()
    pixels = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        latents = torch.randn(2, 3, 4, 4)
        assert torch.equal(exported.quant_conv(latents), latents)
        assert torch.equal(exported.post_quant_conv(latents), latents)
        assert max_diff(exported.encode(pixels).latents, model.encode(pixels).latents) <= TOLERANCE
        assert max_diff(exported(pixels).sample, model(pixels).sample) <= TOLERANCE


def test_hub_id_converts_offline_from_the_cache(tmp_path, monkeypatch):
    """A Hub id resolves from an HF cache folder with no network (Hub offline), through the CLI's
    `main(argv)`, from a subfolder. (test_entry_points runs the script in a fresh interpreter with
    HF_HUB_OFFLINE=1 and HF_HUB_CACHE in its environment, on a root-level checkpoint.)"""
    reference = make_diffusers("kl", "2levels-attn1-shift")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someorg--tiny-vae"
    reference.save_pretrained(repo / "snapshots" / commit / "vae")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr("latentcode.hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("latentcode.hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    load_script("convert_diffusers_to_latentcode").main(
        [
            "--pretrained_model_name_or_path",
            "someorg/tiny-vae",
            "--subfolder",
            "vae",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    model = VAEModel.from_pretrained(tmp_path / "out")
    assert model.config.shift_factor == reference.config.shift_factor
    assert_same_weights(reference, model.to_diffusers())


# ----------------------------------------------------------------------------------------------
# The tiny (TAESD) backbone <-> diffusers AutoencoderTiny
# ----------------------------------------------------------------------------------------------

CELEBA = REPO.parent / "shared" / "datasets" / "celeba-samples"


def make_autoencoder_tiny(seed: int = 0, **extra):
    """A random-weight AutoencoderTiny, 3 levels of width 8 (random biases: every weight matters)."""
    torch.manual_seed(seed)
    sizes = dict(encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8))
    blocks = dict(num_encoder_blocks=(1, 2, 2), num_decoder_blocks=(2, 2, 1))
    return randomize(AutoencoderTiny(**sizes, **blocks, **extra), seed)


def tiny_autoencoder(widths: tuple[int, ...], seed: int, **extra) -> AutoencoderModel:
    """A random-weight AutoencoderModel on the tiny backbone that AutoencoderTiny can express."""
    torch.manual_seed(seed)
    fields = dict(layers_per_block=1, norm_num_groups=4, latent_channels=4, scaling_factor=0.5, use_quant_conv=False)
    config = AutoencoderConfig(backbone="tiny", block_out_channels=widths, use_post_quant_conv=False, **fields | extra)
    return randomize(AutoencoderModel(config), seed)


def real_faces(count: int = 4) -> torch.Tensor:
    """CelebA faces `[B, 3, 64, 64]` in [-1, 1] (random pixels when ../shared is absent)."""
    from PIL import Image

    if not CELEBA.is_dir():
        return torch.rand(count, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    processor = LatentCodeImageProcessor(size=64)
    images = [Image.open(CELEBA / f"{index:03d}.png").convert("RGB") for index in range(count)]
    return processor(images, return_tensors="pt").pixel_values


def test_autoencoder_tiny_round_trip_is_exact():
    reference = make_autoencoder_tiny(latent_channels=4, latent_magnitude=2.5, scaling_factor=0.7, shift_factor=0.1)
    model = LatentCodePreTrainedModel.from_diffusers(reference)
    assert type(model) is AutoencoderModel and model.config.backbone == "tiny" and model.downsampling_factor == 4
    assert (model.config.latent_magnitude, model.config.scaling_factor, model.config.shift_factor) == (2.5, 0.7, 0.1)
    exported = model.to_diffusers()
    assert type(exported) is AutoencoderTiny and public_config(exported) == public_config(reference)
    assert_same_weights(reference, exported)  # max abs difference 0, both ways
    pixels = real_faces()
    model.set_conv_implementation("direct")  # diffusers' kernels: bit-identical outputs
    with torch.no_grad():
        latents = reference.encode(pixels).latents
        assert torch.equal(model.encode(pixels).latents, latents)
        assert torch.equal(model.decode(latents).sample, reference.decode(latents).sample)
        assert torch.equal(model(pixels).sample, reference.decode(latents).sample)
        # scale_latents (8-bit storage) reads the carried latent_magnitude / latent_shift
        assert torch.equal(exported.scale_latents(latents), reference.scale_latents(latents))
    model.set_conv_implementation("auto")
    with torch.no_grad():
        assert max_diff(model(pixels).sample, reference.decode(latents).sample) <= TOLERANCE


def test_tiny_autoencoder_exports_through_the_scripts(tmp_path):
    ours = tiny_autoencoder((16, 16), seed=1)
    ours.save_pretrained(tmp_path / "ours")
    export = load_script("convert_latentcode_to_diffusers")
    export.main(["--pretrained_model_name_or_path", str(tmp_path / "ours"), "--output_dir", str(tmp_path / "tiny")])
    loaded = AutoencoderTiny.from_pretrained(tmp_path / "tiny")
    assert_same_weights(ours.to_diffusers(), loaded)
    assert loaded.config.scaling_factor == 0.5 and loaded.config.latent_channels == 4
    load_script("convert_diffusers_to_latentcode").main(
        ["--pretrained_model_name_or_path", str(tmp_path / "tiny"), "--output_dir", str(tmp_path / "back")]
    )
    back = AutoencoderModel.from_pretrained(tmp_path / "back")
    assert_same_weights(ours, back)
    assert (back.config.backbone, back.config.block_out_channels, back.config.scaling_factor) == ("tiny", [16, 16], 0.5)


def test_stable_diffusion_with_an_autoencoder_tiny_export_gives_our_images(tmp_path):
    """StableDiffusionPipeline with our tiny AutoEncoder and with its AutoencoderTiny export (its
    vae_scale_factor read from `block_out_channels`, `decode(latents / scaling_factor)`)."""
    from test_diffusers_pipelines import text_to_image, tiny_stable_diffusion

    ours = tiny_autoencoder((8, 8), seed=2)
    ours.set_conv_implementation("direct")
    pipeline = tiny_stable_diffusion(ours, tmp_path / "tokenizer")
    native = StableDiffusionPipeline(**{**pipeline.components, "vae": ours.to_diffusers()})
    native.set_progress_bar_config(disable=True)
    assert native.vae_scale_factor == pipeline.vae_scale_factor == 2
    images = text_to_image(pipeline)
    assert images.shape == (2, 16, 16, 3) and images.std() > 0.01
    np.testing.assert_array_equal(images, text_to_image(native))


def test_models_autoencoder_tiny_cannot_express_are_refused():
    taef2_layout = tiny_autoencoder((64, 64), seed=0, latent_channels=32, tiny_midblock_pooling=True)
    with pytest.raises(ValueError, match="no group-norm pooling branch .*taef2, 32 latent channels"):
        taef2_layout.to_diffusers()
    with pytest.raises(ValueError, match=r"one width at every level.*\[8, 16\]"):
        tiny_autoencoder((8, 16), seed=0).to_diffusers()
    with pytest.raises(ValueError, match="no 1x1 projections around the latent"):
        tiny_autoencoder((8,), seed=0, use_quant_conv=True).to_diffusers()
    vae = VAEModel(VAEModel.config_class(backbone="tiny", block_out_channels=(32,)))
    with pytest.raises(ValueError, match="VAEConfig on backbone='tiny' has no diffusers counterpart"):
        vae.to_diffusers()
    with pytest.raises(ValueError, match="converts from a diffusers AutoencoderKL, got a AutoencoderTiny"):
        VAEModel.from_diffusers(make_autoencoder_tiny())
    with pytest.raises(ValueError, match="converts from a diffusers AutoencoderTiny, got a VQModel"):
        AutoencoderModel.from_diffusers(VQModel(block_out_channels=(8,), norm_num_groups=4))
    with pytest.raises(ValueError, match="act_fn='gelu'.*has act_fn='relu'"):
        AutoencoderModel.from_diffusers(make_autoencoder_tiny(act_fn="gelu"))
    with pytest.raises(ValueError, match=r"not a TAESD layout: expected \[1, 2, 2\]"):
        AutoencoderModel.from_diffusers(
            AutoencoderTiny(
                encoder_block_out_channels=(8,) * 3,
                decoder_block_out_channels=(8,) * 3,
                num_encoder_blocks=(1, 2, 2),
                num_decoder_blocks=(1, 2, 2),
            )  # fmt: skip
        )


# ----------------------------------------------------------------------------------------------
# What cannot be converted fails clearly
# ----------------------------------------------------------------------------------------------


def test_unsupported_diffusers_architectures_are_named():
    asymmetric = VQModel(
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("AttnDownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),  # attention at level 1 in the decoder
    )
    with pytest.raises(ValueError, match=r"encoder levels \[0\] but decoder levels \[1\]"):
        VQVAEModel.from_diffusers(asymmetric)
    with pytest.raises(ValueError, match="norm_type='spatial'"):
        VQVAEModel.from_diffusers(VQModel(block_out_channels=(32,), norm_num_groups=32, norm_type="spatial"))
    with pytest.raises(ValueError, match="act_fn='gelu'"):
        VAEModel.from_diffusers(AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, act_fn="gelu"))
    with pytest.raises(ValueError, match="converts from a diffusers AutoencoderKL, got a VQModel"):
        VAEModel.from_diffusers(VQModel(block_out_channels=(8,), norm_num_groups=4))


def test_unexportable_models_are_refused():
    with pytest.raises(ValueError, match="AutoencoderModel has no diffusers counterpart"):
        AutoencoderModel(AutoencoderConfig(block_out_channels=(8,), norm_num_groups=4)).to_diffusers()
    fsq = VQVAEModel(
        VQVAEConfig(block_out_channels=(8,), norm_num_groups=4, quantizer="fsq", quantizer_config={"levels": [5, 5, 5]})
    )
    with pytest.raises(ValueError, match="cannot express quantizer='fsq'"):
        fsq.to_diffusers()


def test_native_vqvae_exports_and_inexpressible_quantizers_are_refused():
    sizes = dict(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=3, codebook_size=16)
    model = randomize(VQVAEModel(VQVAEConfig(**sizes)), seed=4)  # the default training recipe
    with torch.no_grad():
        model.quantizer.codebook.normal_(0, 0.3)
    exported = model.to_diffusers()
    assert torch.equal(exported.quantize.embedding.weight, model.quantizer.codebook)
    pixels = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        _, _, (_, _, indices) = exported.quantize(exported.encode(pixels).latents)
        assert torch.equal(model.encode(pixels).indices.flatten(), indices.flatten())
        assert max_diff(exported(pixels).sample, model(pixels).sample) <= TOLERANCE
    cosine = VQVAEModel(VQVAEConfig(quantizer_config={"l2_normalize": True}, **sizes))
    with pytest.raises(ValueError, match="cannot express {'quantizer_config.l2_normalize': True}"):
        cosine.to_diffusers()
    residual = VQVAEModel(VQVAEConfig(quantizer="residual_vq", num_quantizers=2, **sizes))
    with pytest.raises(ValueError, match="cannot express quantizer='residual_vq'"):
        residual.to_diffusers()


def test_training_only_quantizer_options_do_not_block_export():
    """Issue 19 item 4: the gradient estimator and the usage window only change training (the
    quantizer class says so); a plain VQ model trained with the rotation trick exports."""
    sizes = dict(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=3, codebook_size=16)
    options = {"gradient_estimator": "rotation", "usage_window": 64, "codebook_ema": False}
    model = randomize(VQVAEModel(VQVAEConfig(quantizer_config=options, **sizes)), 6)
    exported = model.to_diffusers()
    pixels = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        assert max_diff(exported(pixels).sample, model(pixels).sample) <= TOLERANCE


class WarmupVQVAEConfig(VQVAEConfig):
    """A config subclass adding one training setting and one field that changes the model."""

    training_only_options = ("commitment_warmup_steps",)

    def __init__(self, commitment_warmup_steps: int = 0, extra_mid_blocks: int = 0, **kwargs):
        self.commitment_warmup_steps = commitment_warmup_steps
        self.extra_mid_blocks = extra_mid_blocks
        super().__init__(**kwargs)


class WarmupVQVAEModel(VQVAEModel):
    config_class = WarmupVQVAEConfig


def test_training_fields_declared_by_a_config_subclass_do_not_block_export():
    sizes = dict(block_out_channels=(8, 16), norm_num_groups=4, latent_channels=3, codebook_size=16)
    assert {"commitment_warmup_steps", "kl_weight"}.isdisjoint(VQVAEConfig.all_training_only_options())
    assert {"commitment_warmup_steps", "dropout"} <= WarmupVQVAEConfig.all_training_only_options()
    model = randomize(WarmupVQVAEModel(WarmupVQVAEConfig(commitment_warmup_steps=500, **sizes)), seed=5)
    exported = model.to_diffusers()
    assert isinstance(exported, VQModel)
    pixels = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        assert max_diff(exported(pixels).sample, model(pixels).sample) <= TOLERANCE
    # A new field not declared as training-only may change the model: export names it and stops.
    with pytest.raises(ValueError, match="cannot express {'extra_mid_blocks': 2}"):
        WarmupVQVAEModel(WarmupVQVAEConfig(extra_mid_blocks=2, **sizes)).to_diffusers()


def test_diffusers_folder_with_wrong_keys_names_them(tmp_path):
    reference = make_diffusers("vq", "1level-rgb")
    reference.save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    state_dict = load_file(weights)
    state_dict["encoder.extra_layer.weight"] = torch.zeros(3)
    del state_dict["decoder.conv_out.bias"]
    save_file(state_dict, weights)
    with pytest.raises(CheckpointError) as error:
        VQVAEModel.from_diffusers(tmp_path)
    assert "encoder.extra_layer.weight" in str(error.value)
    assert "decoder.conv_out.bias" in str(error.value)


# ----------------------------------------------------------------------------------------------
# CompVis checkpoints (taming-transformers / latent-diffusion / Stable Diffusion VAE)
# ----------------------------------------------------------------------------------------------


def diffusers_to_compvis(state_dict: dict, num_levels: int, conv_attention: bool) -> dict:
    """The CompVis layout of a diffusers VQModel / AutoencoderKL state dict: the inverse of
    diffusers' `convert_ldm_vae_checkpoint` (decoder levels indexed by resolution, `nin_shortcut`,
    `attn_1`, q/k/v/proj_out attention stored as 1x1 convs when `conv_attention`)."""
    import re

    compvis = {}
    for key, value in state_dict.items():
        key = re.sub(r"^decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up.{num_levels - 1 - int(m.group(1))}.", key)
        key = re.sub(r"^encoder\.down_blocks\.(\d+)\.", r"encoder.down.\1.", key)
        for old, new in (
            ("resnets.", "block."),
            ("attentions.", "attn."),
            ("downsamplers.0.", "downsample."),
            ("upsamplers.0.", "upsample."),
            ("mid_block.block.0.", "mid.block_1."),
            ("mid_block.block.1.", "mid.block_2."),
            ("mid_block.attn.0.", "mid.attn_1."),
            ("conv_shortcut", "nin_shortcut"),
            ("conv_norm_out", "norm_out"),
            ("group_norm", "norm"),
            ("to_q.", "q."),
            ("to_k.", "k."),
            ("to_v.", "v."),
            ("to_out.0.", "proj_out."),
        ):
            key = key.replace(old, new)
        if conv_attention and re.search(r"\.(q|k|v|proj_out)\.weight$", key):
            value = value[:, :, None, None]
        compvis[key] = value.clone()
    return compvis


def compvis_diffusers_model(kind: str, seed: int = 0):
    """Tiny CompVis-compatible models (CompVis GroupNorm has 32 groups)."""
    torch.manual_seed(seed)
    if kind == "kl":  # Stable Diffusion VAE layout: no level attention
        model = AutoencoderKL(
            block_out_channels=(32, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=16,
            **block_types(2, ()),
        )
    else:  # taming VQGAN layout: attention at the lowest level, codebook dim != latent channels
        model = VQModel(
            block_out_channels=(32, 32, 64),
            layers_per_block=2,
            latent_channels=4,
            vq_embed_dim=3,
            num_vq_embeddings=64,
            norm_num_groups=32,
            sample_size=16,
            **block_types(3, (2,)),
        )
    return randomize(model, seed)


LDM_YAML = """
model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    scale_factor: 0.3
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        lossconfig: {target: ldm.modules.losses.LPIPSWithDiscriminator, params: {kl_weight: 1.0e-06}}
        ddconfig: {double_z: true, z_channels: 4, resolution: 16, in_channels: 3, out_ch: 3, ch: 32,
                   ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}
"""
TAMING_YAML = """
model:
  target: taming.models.vqgan.VQModel
  params:
    embed_dim: 3
    n_embed: 64
    ddconfig: {double_z: false, z_channels: 4, resolution: 16, in_channels: 3, out_ch: 3, ch: 32,
               ch_mult: [1, 1, 2], num_res_blocks: 2, attn_resolutions: [4], dropout: 0.0}
    lossconfig: {target: taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator, params: {codebook_weight: 1.0}}
"""


def test_latent_diffusion_kl_ckpt_with_yaml_matches_diffusers(tmp_path):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    reference = compvis_diffusers_model("kl")
    compvis = diffusers_to_compvis(reference.state_dict(), num_levels=2, conv_attention=True)
    # The layout is the one diffusers' own single-file converter reads back to the same weights.
    config = dict(down_block_types=reference.config.down_block_types, up_block_types=reference.config.up_block_types)
    back = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in compvis.items()}, config)
    assert back.keys() == reference.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in reference.state_dict().items())

    # A full latent-diffusion checkpoint: autoencoder under first_stage_model., other parts beside it.
    full = {f"first_stage_model.{k}": v for k, v in compvis.items()}
    full["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(2)
    full["first_stage_model.loss.logvar"] = torch.zeros(())
    torch.save({"state_dict": full, "global_step": 7}, tmp_path / "model.ckpt")
    (tmp_path / "model.yaml").write_text(LDM_YAML)

    load_script("convert_compvis_to_latentcode").main(
        [
            "--checkpoint_path", str(tmp_path / "model.ckpt"),
            "--original_config_file", str(tmp_path / "model.yaml"),
            "--output_dir", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    model = VAEModel.from_pretrained(tmp_path / "out")
    assert model.config.scaling_factor == 0.3 and model.config.sample_size == 16
    assert model.config.kl_weight == 1e-6
    pixels = pixels_for(reference)
    with torch.no_grad():
        assert max_diff(model.encode(pixels).latent_dist.mean, reference.encode(pixels).latent_dist.mean) <= TOLERANCE
        assert max_diff(model(pixels).sample, reference(pixels).sample) <= TOLERANCE
    assert_same_weights(reference, model.to_diffusers())


def test_sd_vae_safetensors_with_vae_prefix_infers_config(tmp_path):
    from latentcode.conversion import from_compvis

    reference = compvis_diffusers_model("kl", seed=5)
    compvis = diffusers_to_compvis(reference.state_dict(), num_levels=2, conv_attention=False)
    save_file({f"vae.{k}": v for k, v in compvis.items()}, tmp_path / "vae.safetensors")
    model = from_compvis(tmp_path / "vae.safetensors")
    assert model.config.scaling_factor == 0.18215  # Stable Diffusion's, when nothing says otherwise
    pixels = pixels_for(reference)
    with torch.no_grad():
        latents = reference.encode(pixels).latent_dist.mean
        assert max_diff(model.decode(latents).sample, reference.decode(latents).sample) <= TOLERANCE
    assert_same_weights(reference, model.to_diffusers())


class ModelCheckpoint:
    """Stands for pytorch_lightning's callback class, which Lightning pickles as a dict key."""


def save_lightning_like_ckpt(path, state_dict):
    """torch.save as PyTorch Lightning 1.x does for taming: with the callback class in the pickle."""
    import types

    names = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint")
    modules = {name: types.ModuleType(name) for name in names}
    modules[names[-1]].ModelCheckpoint = ModelCheckpoint
    ModelCheckpoint.__module__ = names[-1]
    sys.modules.update(modules)
    try:
        torch.save({"state_dict": state_dict, "callbacks": {ModelCheckpoint: {"best_model_score": 0.1}}}, path)
    finally:
        for name in names:
            del sys.modules[name]
        ModelCheckpoint.__module__ = __name__


def test_taming_vqgan_ckpt_converts_with_and_without_yaml(tmp_path):
    from latentcode.conversion import from_compvis
    from latentcode.conversion.compvis import config_from_state_dict, config_from_yaml

    reference = compvis_diffusers_model("vq")
    compvis = diffusers_to_compvis(reference.state_dict(), num_levels=3, conv_attention=True)
    compvis["loss.discriminator.main.0.weight"] = torch.zeros(2, 3, 4, 4)
    compvis["model_ema.num_updates"] = torch.tensor(1000)
    save_lightning_like_ckpt(tmp_path / "last.ckpt", compvis)
    (tmp_path / "model.yaml").write_text(TAMING_YAML)

    from_yaml = config_from_yaml(str(tmp_path / "model.yaml"))
    inferred = config_from_state_dict(compvis)
    assert {k: v for k, v in from_yaml.items() if k in inferred} == inferred

    for original_config in (None, tmp_path / "model.yaml"):
        model = from_compvis(tmp_path / "last.ckpt", original_config)
        assert isinstance(model, VQVAEModel)
        assert (model.config.codebook_size, model.config.codebook_dim, model.config.attention_levels) == (64, 3, [2])
        pixels = pixels_for(reference)
        with torch.no_grad():
            latents = reference.encode(pixels).latents
            _, _, (_, _, indices) = reference.quantize(latents)
            encoded = model.encode(pixels)
            assert torch.equal(encoded.indices, indices.view(encoded.indices.shape))
            assert max_diff(model(pixels).sample, reference(pixels).sample) <= TOLERANCE
    assert_same_weights(reference, model.to_diffusers())


def test_unsupported_compvis_options_are_named():
    import yaml

    from latentcode.conversion.compvis import config_from_yaml

    config = yaml.safe_load(TAMING_YAML)
    config["model"]["params"]["ddconfig"]["resamp_with_conv"] = False
    with pytest.raises(ValueError, match="resamp_with_conv"):
        config_from_yaml(config)
    config["model"]["target"] = "taming.models.vqgan.GumbelVQ"
    with pytest.raises(ValueError, match="GumbelVQ"):
        config_from_yaml(config)


# ----------------------------------------------------------------------------------------------
# Safety
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compvis_weights():
    return diffusers_to_compvis(compvis_diffusers_model("kl").state_dict(), num_levels=2, conv_attention=True)


def test_extra_and_missing_keys_stop_the_conversion(tmp_path, compvis_weights):
    from latentcode.conversion import from_compvis

    weights = dict(compvis_weights)
    weights["encoder.mid.attn_2.q.weight"] = torch.zeros(64, 64)
    del weights["decoder.up.0.block.1.conv2.bias"]
    torch.save({"state_dict": weights}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as error:
        from_compvis(tmp_path / "bad.ckpt")
    message = str(error.value)
    assert "conversion stopped" in message
    assert "encoder.mid.attn_2.q.weight" in message  # named as it maps into our model
    assert "decoder.up.1.blocks.1.conv2.bias" in message  # CompVis up.0 is our last decoder level


def test_corrupt_and_truncated_files_fail_clearly(tmp_path, compvis_weights):
    from latentcode.conversion import from_compvis

    torch.save({"state_dict": compvis_weights}, tmp_path / "good.ckpt")
    data = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.ckpt").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    save_file(compvis_weights, tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    for name in ("truncated.ckpt", "garbage.ckpt", "truncated.safetensors"):
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            from_compvis(tmp_path / name)
    with pytest.raises(CheckpointError, match="does not exist"):
        from_compvis(tmp_path / "missing.ckpt")


def test_a_flipped_byte_or_nan_weights_stop_the_conversion(tmp_path, compvis_weights):
    from latentcode.conversion import from_compvis

    torch.save({"state_dict": compvis_weights}, tmp_path / "good.ckpt")
    data = bytearray((tmp_path / "good.ckpt").read_bytes())
    name = next(key for key in compvis_weights if key.endswith("conv_out.weight"))
    offset = data.index(compvis_weights[name].numpy().tobytes()[:64])  # inside that tensor's stored bytes
    data[offset + 5] ^= 0x01
    (tmp_path / "flipped.ckpt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"flipped.ckpt.*corrupt or truncated \(member .* fails its CRC check\)"):
        from_compvis(tmp_path / "flipped.ckpt")

    broken = dict(compvis_weights)
    broken[name] = broken[name].clone()
    broken[name][0, 0, 0, 0] = float("nan")
    torch.save({"state_dict": broken}, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match=rf"NaN or inf values in {name}; conversion stopped"):
        from_compvis(tmp_path / "nan.ckpt")


class RunsCode:
    """A pickle payload that runs a shell command when unpickled with plain pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, writer):
    import pickle

    from latentcode.conversion import from_compvis

    marker = tmp_path / "pwned"
    payload = {"state_dict": {"encoder.conv_in.weight": torch.zeros(1)}, "x": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, tmp_path / "evil.ckpt")
    else:
        (tmp_path / "evil.ckpt").write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="may try to execute code"):
        from_compvis(tmp_path / "evil.ckpt")
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Scaling factor
# ----------------------------------------------------------------------------------------------


def test_compute_scaling_factor_is_inverse_std_of_latents(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    from latentcode.conversion import compute_scaling_factor
    from latentcode.conversion.cli import image_folder_batches

    digits = load_digits().images[:12]  # 8x8 grey images, values 0..16
    for i, image in enumerate(digits):
        Image.fromarray((image * 255 / 16).astype("uint8")).resize((16, 16)).save(tmp_path / f"{i:02d}.png")

    vq = VQVAEModel.from_diffusers(make_diffusers("vq", "2levels-gray-attn0"))
    vae = VAEModel.from_diffusers(make_diffusers("kl", "1level-gray-noquant"))
    processor = LatentCodeImageProcessor(size=16, num_channels=1)
    batches = list(image_folder_batches(tmp_path, processor, batch_size=5))
    assert [len(batch) for batch in batches] == [5, 5, 2]
    pixels = torch.cat(batches)
    assert pixels.min() >= -1 and pixels.max() <= 1 and pixels.std() > 0.3
    with torch.no_grad():
        expected_vq = 1 / vq.encode(pixels).latents.double().std().item()
        samples = vae.encode(pixels).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    assert compute_scaling_factor(vq, batches) == pytest.approx(expected_vq, rel=1e-6)
    # One batch of all images draws the same noise as the reference sample above.
    factor = compute_scaling_factor(vae, [pixels], generator=torch.Generator().manual_seed(0))
    assert factor == pytest.approx(1 / samples.double().std().item(), rel=1e-6)

    vq.save_pretrained(tmp_path / "vq")
    weights = tmp_path / "vq.safetensors"
    save_file(diffusers_to_compvis(vq.to_diffusers().state_dict(), 2, conv_attention=True), weights)
    load_script("convert_compvis_to_latentcode").main(
        [
            "--checkpoint_path", str(weights), "--norm_num_groups", "4", "--output_dir", str(tmp_path / "out"),
            "--compute_scaling_factor", str(tmp_path), "--resolution", "16",
        ]
    )  # fmt: skip
    converted = VQVAEModel.from_pretrained(tmp_path / "out")
    assert converted.config.scaling_factor == pytest.approx(expected_vq, rel=1e-6)
    assert LatentCodeImageProcessor.from_pretrained(tmp_path / "out").num_channels == 1
