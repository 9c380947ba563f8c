"""Conversion tests: diffusers VQModel / AutoencoderKL both ways, CompVis checkpoints in,
scaling factors, and safety (corrupt files, wrong keys, malicious pickles).

Every model is a random-weight diffusers model with tiny channel counts; outputs are compared
with diffusers' own on the same inputs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, VQModel
from safetensors.torch import load_file, save_file

from latentcode import AutoencoderConfig, AutoencoderModel, LatentCodePreTrainedModel, VAEModel, VQVAEModel
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
            ["--model_name_or_path", str(tmp_path / kind / "ours"), "--output_dir", str(tmp_path / kind / "diffusers")]
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
    assert (model.config.commitment_weight, model.config.codebook_weight) == (0.25, 1.0)
    assert_same_weights(reference, model.to_diffusers())
    # From a folder, diffusers loads fp16 weights as fp32 (exactly); export casts back bit-identically.
    reference.save_pretrained(tmp_path)
    model = VQVAEModel.from_diffusers(tmp_path)
    assert_same_weights(reference, model.to_diffusers().half())
    with pytest.raises(ValueError, match="block_out_channels"):
        VQVAEModel.from_diffusers(tmp_path, block_out_channels=[8, 8, 32])


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


def test_hub_id_converts_offline_from_the_cache(tmp_path):
    """A Hub id resolves from an HF cache folder with no network (HF_HUB_OFFLINE=1), through the CLI."""
    reference = make_diffusers("kl", "2levels-attn1-shift")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someorg--tiny-vae"
    reference.save_pretrained(repo / "snapshots" / commit / "vae")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    script = REPO / "conversion" / "convert_diffusers_to_latentcode.py"
    command = [sys.executable, str(script), "--model_name_or_path", "someorg/tiny-vae", "--subfolder", "vae"]
    result = subprocess.run(
        command + ["--output_dir", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model = VAEModel.from_pretrained(tmp_path / "out")
    assert model.config.shift_factor == reference.config.shift_factor
    assert_same_weights(reference, model.to_diffusers())


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
    model = VQVAEModel.from_diffusers(make_diffusers("vq", "1level-rgb"))
    model.config.quantizer = "fsq"  # as an FSQ model's config says; VQModel has only a plain codebook
    with pytest.raises(ValueError, match="cannot express quantizer='fsq'"):
        model.to_diffusers()


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
