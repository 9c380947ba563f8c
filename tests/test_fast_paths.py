"""The default fast paths give the reference's answers: the channels_last backbone against
diffusers at identical weights, `model.compile()` against eager, a compiled training run that
resumes, and bf16 autocast inference against fp32. Speed itself is measured in benchmarks/."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, VQModel

from latentcode import VAEModel, VQVAEModel

TOLERANCE = 1e-5
BACKBONE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
)


def diffusers_pair(family: str):
    torch.manual_seed(0)
    if family == "vqvae":
        peer = VQModel(latent_channels=4, num_vq_embeddings=64, **BACKBONE)
        return peer.eval(), VQVAEModel.from_diffusers(peer).eval()
    peer = AutoencoderKL(latent_channels=4, **BACKBONE)
    return peer.eval(), VAEModel.from_diffusers(peer).eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("threads", [2], indirect=True)
@pytest.mark.parametrize("family", ["vqvae", "vae"])
def test_default_settings_match_diffusers_under_inference_mode_and_in_training(family, threads):
    peer, ours = diffusers_pair(family)
    pixels = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        if family == "vqvae":
            latents = peer.encode(pixels).latents
            encoded = ours.encode(pixels)
            assert max_diff(encoded.latents, latents) <= TOLERANCE
            assert torch.equal(encoded.indices.flatten(), peer.quantize(latents)[2][2].flatten())
            decoded, reference = ours.decode(latents).sample, peer.decode(latents).sample
        else:
            latents = peer.encode(pixels).latent_dist.mean
            assert max_diff(ours.encode(pixels).latent_dist.mean, latents) <= TOLERANCE
            decoded, reference = ours.decode(latents).sample, peer.decode(latents).sample
        assert max_diff(decoded, reference) <= TOLERANCE
    # Whatever the backbone's internal layout, the user gets an ordinary [B, C, H, W] tensor.
    assert decoded.shape == pixels.shape
    assert torch.equal(decoded.contiguous(), decoded) and torch.equal(
        decoded.reshape(3, -1), decoded.contiguous().view(3, -1)
    )

    # Training mode (autograd recording, no in-place shortcuts): same outputs and gradients.
    pixels = pixels.clone().requires_grad_()
    reference_pixels = pixels.detach().clone().requires_grad_()
    ours.train(), peer.train()
    if family == "vqvae":
        sample, reference = ours(pixels).sample, peer(reference_pixels).sample
    else:
        sample = ours(pixels, sample_posterior=False).sample
        reference = peer(reference_pixels, sample_posterior=False).sample
    assert max_diff(sample, reference) <= TOLERANCE
    sample.square().sum().backward()
    reference.square().sum().backward()
    assert max_diff(pixels.grad, reference_pixels.grad) <= 1e-4 * reference_pixels.grad.abs().max().item()
    decoder_weight = ours.decoder.up[0].blocks[0].conv1.weight.grad
    reference_weight = peer.decoder.up_blocks[0].resnets[0].conv1.weight.grad
    assert max_diff(decoder_weight, reference_weight) <= 1e-4 * reference_weight.abs().max().item()


def psnr(reference: torch.Tensor, test: torch.Tensor) -> float:
    """dB, against the reference's own peak-to-peak range (a random-weight model's outputs span
    less than [-1, 1], and the bound should not depend on that)."""
    value_range = (reference.max() - reference.min()).item()
    return 10 * torch.log10(torch.tensor(value_range**2 / (reference - test).square().mean().item())).item()


# bf16 keeps 8 significant bits (~2.4 decimal digits); through ~20 layers the reconstruction
# stays above this bound (measured ~40 dB here); a silently fp32 or broken path fails it.
BF16_PSNR_BOUND_DB = 30.0


def test_bf16_autocast_inference_keeps_the_quantizer_in_fp32():
    _, model = diffusers_pair("vqvae")
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.inference_mode():
        reference = model(pixels).sample
        reference_latents = model.encode(pixels).latents
        with torch.autocast("cpu", dtype=torch.bfloat16):
            encoded = model.encode(pixels)
            sample = model.decode_indices(encoded.indices).sample
        fp32_indices = model.encode(pixels).indices
        codes = model.quantizer.indices_to_codes(encoded.indices)
    assert encoded.latents.dtype == torch.bfloat16  # the backbone ran in bf16 ...
    assert encoded.quantized.dtype == torch.float32  # ... the quantizer in fp32
    assert torch.equal(encoded.quantized, codes)
    assert sample.dtype == torch.bfloat16
    # Latents rounded to bf16 pick mostly the same codes as fp32 latents.
    agree = (encoded.indices == fp32_indices).float().mean().item()
    assert agree > 0.9, agree
    assert max_diff(encoded.latents, reference_latents) > 0  # not vacuous: bf16 did round
    value = psnr(reference, sample.float())
    assert BF16_PSNR_BOUND_DB < value < 80, value


# -- torch.compile -------------------------------------------------------------------------------

# One level, no attention: the fewest inductor kernels (compiling costs about a minute on 2 cores).
COMPILE_BACKBONE = dict(block_out_channels=[16], layers_per_block=1, norm_num_groups=8, mid_block_add_attention=False)


def test_compiled_model_equals_eager(monkeypatch):
    from latentcode import VQVAEConfig
    from latentcode.modules import winograd

    torch.manual_seed(0)
    # 64 channels, where eager runs Winograd's convolutions and compiled graphs nn.Conv2d's: the
    # compiled model is compared with eager direct convolutions (the same arithmetic).
    backbone = dict(COMPILE_BACKBONE, block_out_channels=[64])
    model = VQVAEModel(VQVAEConfig(codebook_size=32, latent_channels=4, **backbone)).eval()
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    chunks = []  # Winograd's chunks
    chunk = winograd._chunk
    monkeypatch.setattr(winograd, "_chunk", lambda *args: chunks.append(1) or chunk(*args))
    with torch.inference_mode():
        model.encode(pixels)
        assert chunks  # eager: Winograd
        model.set_conv_implementation("direct")
        eager = model.encode(pixels)
        eager_sample = model.decode_indices(eager.indices).sample
        model.set_conv_implementation("auto")
    model.compile()
    assert model.encoder._compiled_call_impl is not None and model.decoder._compiled_call_impl is not None
    assert set(model.state_dict()) == set(VQVAEModel(model.config).state_dict())  # keys unchanged
    chunks.clear()
    with torch.inference_mode():
        compiled = model.encode(pixels)
        compiled_sample = model.decode_indices(compiled.indices).sample
    assert not chunks  # compiled: nn.Conv2d
    assert max_diff(compiled.latents, eager.latents) <= TOLERANCE
    assert torch.equal(compiled.indices, eager.indices)
    assert max_diff(compiled_sample, eager_sample) <= TOLERANCE


def test_compiled_training_run_resumes_from_a_checkpoint(tmp_path):
    from helpers import reset_accelerate_state
    from test_training import _assert_identical, _weights, tiny_config

    from latentcode.training import train

    # aot_eager: dynamo's graph capture and AOTAutograd's joint forward/backward graph, the parts
    # that decide whether a compiled model trains and resumes (graph breaks, guards on module
    # state, state-dict keys), without inductor's C++ builds (minutes on 2 busy cores);
    # inductor's numerics are checked above and its training speed in benchmarks/.
    options = dict(
        torch_compile=True,
        torch_compile_backend="aot_eager",
        max_train_steps=4,
        checkpointing_steps=2,
        model=dict(in_channels=1, latent_channels=4, codebook_size=32, **COMPILE_BACKBONE),
    )
    train(tiny_config(tmp_path, "uninterrupted", **options))
    reset_accelerate_state()
    checkpoint = tmp_path / "uninterrupted" / "checkpoint-2"
    train(tiny_config(tmp_path, "resumed", resume_from_checkpoint=str(checkpoint), **options))
    reference = _weights(tmp_path / "uninterrupted")
    resumed = _weights(tmp_path / "resumed")
    _assert_identical(reference, resumed)
    # The compiled run trained: its weights moved away from the checkpoint it resumed from.
    start = _weights(checkpoint)
    assert any(not torch.equal(start[key], reference[key]) for key in reference)


# -- Winograd convolution (CPU fp32 inference) ---------------------------------------------------

# Winograd F(4x4, 3x3) in float32 against a float64 direct convolution: max abs error over the
# output's max abs value. Measured 4e-6 to 9e-6 (oneDNN's direct convolution: ~3e-7), growing
# with the input channels; a wrong transform or tile index is off by O(1).
WINOGRAD_RELATIVE_BOUND = 3e-5


@pytest.mark.parametrize(
    "batch, in_channels, out_channels, height, width, bias, channels_last",
    [
        (2, 64, 64, 16, 16, True, True),  # whole images per chunk
        (1, 64, 96, 13, 7, True, False),  # sizes not multiples of 4, NCHW input
        (1, 64, 64, 70, 70, False, True),  # rows of tiles per chunk, cropped, no bias
        (3, 128, 64, 8, 12, True, True),
    ],
)
def test_winograd_convolution_matches_a_float64_direct_convolution(
    batch, in_channels, out_channels, height, width, bias, channels_last
):
    from latentcode.modules.winograd import winograd_conv2d

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
    x = torch.randn(batch, in_channels, height, width)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        result = winograd_conv2d(conv, x)
        reference = torch.nn.functional.conv2d(
            x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(), padding=1
        )
    assert result.shape == reference.shape and result.dtype == torch.float32
    assert result.is_contiguous(memory_format=torch.channels_last)
    scale = reference.abs().max().item()
    assert max_diff(result, reference) <= WINOGRAD_RELATIVE_BOUND * scale


def test_winograd_convolution_gradients_match_float64_ones():
    from latentcode.modules.winograd import winograd_conv2d

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 96, 3, padding=1)
    x = torch.randn(2, 64, 13, 10, requires_grad=True)
    upstream = torch.randn(2, 96, 13, 10)
    winograd_conv2d(conv, x).backward(upstream)
    reference_conv = torch.nn.Conv2d(64, 96, 3, padding=1).double()
    reference_conv.load_state_dict(conv.state_dict())
    x64 = x.detach().double().requires_grad_()
    reference_conv(x64).backward(upstream.double())
    # The input's gradient runs Winograd's algorithm, the weight's and the bias' oneDNN's.
    for grad, reference in (
        (x.grad, x64.grad),
        (conv.weight.grad, reference_conv.weight.grad),
        (conv.bias.grad, reference_conv.bias.grad),
    ):
        assert max_diff(grad, reference) <= WINOGRAD_RELATIVE_BOUND * reference.abs().max().item()
    reference_bias_grad = reference_conv.bias.grad.clone()
    # Double backward (create_graph, e.g. a gradient penalty) is differentiable as nn.Conv2d's.
    conv.weight.grad = None
    (grad_x,) = torch.autograd.grad(winograd_conv2d(conv, x).square().sum(), x, create_graph=True)
    grad_x.square().sum().backward()
    reference_conv.weight.grad = None
    (reference_grad_x,) = torch.autograd.grad(reference_conv(x64).square().sum(), x64, create_graph=True)
    reference_grad_x.square().sum().backward()
    scale = reference_conv.weight.grad.abs().max().item()
    assert max_diff(conv.weight.grad, reference_conv.weight.grad) <= WINOGRAD_RELATIVE_BOUND * scale
    # Only the bias trained (frozen weights and input): it still gets its gradient.
    conv.weight.requires_grad_(False)
    conv.bias.grad = None
    winograd_conv2d(conv, x.detach()).backward(upstream)
    assert max_diff(conv.bias.grad, reference_bias_grad) <= 1e-5 * reference_bias_grad.abs().max().item()


def test_winograd_follows_weight_changes_and_applies_only_to_cpu_fp32_inference():
    from latentcode.modules import winograd

    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(2, 64, 16, 16)
    with torch.inference_mode():
        assert winograd.applies(conv, x)
        before = winograd.winograd_conv2d(conv, x)
        conv.weight.data.mul_(2)  # bypasses the version counter: nothing may be cached
        after = winograd.winograd_conv2d(conv, x)
        bias = conv.bias.view(1, -1, 1, 1)
        assert max_diff(after - bias, 2 * (before - bias)) <= WINOGRAD_RELATIVE_BOUND * before.abs().max().item()
        assert not winograd.applies(conv, x.double())
        assert not winograd.applies(conv, x[:, :, :8, :8])  # 8 tiles: too little work
        for other in (
            torch.nn.Conv2d(64, 64, 3, padding=1, stride=2),
            torch.nn.Conv2d(64, 64, 1),
            torch.nn.Conv2d(64, 64, 3, padding=0),
            torch.nn.Conv2d(64, 64, 3, padding=1, groups=2),
            torch.nn.Conv2d(64, 32, 3, padding=1),  # too thin
            torch.nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect"),
            type("LoRAConv", (torch.nn.Conv2d,), {})(64, 64, 3, padding=1),  # a subclass's forward differs
        ):
            assert not winograd.applies(other, x), other
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not winograd.applies(conv, x)
        hook = conv.register_forward_hook(lambda *args: None)
        assert not winograd.applies(conv, x)
        hook.remove()
        # "direct" never, "winograd" wherever it computes the convolution, whatever its size.
        assert not winograd.applies(conv, x, "direct")
        assert winograd.applies(conv, x[:, :, :8, :8], "winograd")
        assert winograd.applies(torch.nn.Conv2d(64, 32, 3, padding=1), x, "winograd")
        assert not winograd.applies(torch.nn.Conv2d(64, 64, 1), x, "winograd")


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_each_model_chooses_its_conv_implementation(threads):
    """`set_conv_implementation` is per model, visible and not saved; with two threads "auto"
    runs oneDNN and "winograd" Winograd's algorithm, both within the stated bound of each other."""
    from latentcode import VQVAEConfig
    from latentcode.modules.backbones import ldm as backbone

    config = VQVAEConfig(codebook_size=32, latent_channels=4, block_out_channels=[64], norm_num_groups=8)
    model, other = VQVAEModel(config).eval(), VQVAEModel(config).eval()
    other.load_state_dict(model.state_dict())
    assert model.conv_implementation == "auto"
    model.set_conv_implementation("winograd")
    blocks = [m for m in model.modules() if isinstance(m, backbone.ResnetBlock)]
    assert blocks and all(block.conv_implementation == "winograd" for block in blocks)
    assert all(m.conv_implementation == "auto" for m in other.modules() if isinstance(m, backbone.ResnetBlock))
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        winograd_latents, direct_latents = model.encode(pixels).latents, other.encode(pixels).latents
    assert not torch.equal(winograd_latents, direct_latents)
    assert max_diff(winograd_latents, direct_latents) <= WINOGRAD_MODEL_RELATIVE_BOUND * direct_latents.abs().max()
    with pytest.raises(
        ValueError, match=r"conv implementation must be one of \('auto', 'winograd', 'direct'\), got 'fast'"
    ):
        model.set_conv_implementation("fast")


# A backbone whose 128-channel convolutions run Winograd's algorithm (the 32-channel ones do not).
WIDE_BACKBONE = dict(BACKBONE, block_out_channels=(64, 128), norm_num_groups=32)
# Model outputs with Winograd convolutions against diffusers' direct ones, over the reference's
# max abs value: ~20 layers of WINOGRAD_RELATIVE_BOUND-sized roundings (measured ~1e-5).
WINOGRAD_MODEL_RELATIVE_BOUND = 1e-4


@pytest.mark.parametrize("family", ["vqvae", "vae"])
def test_winograd_models_match_diffusers_within_the_stated_bound(family, monkeypatch):
    from latentcode.modules import winograd

    torch.manual_seed(0)
    if family == "vqvae":
        peer = VQModel(latent_channels=4, num_vq_embeddings=64, **WIDE_BACKBONE).eval()
        ours = VQVAEModel.from_diffusers(peer).eval()
    else:
        peer = AutoencoderKL(latent_channels=4, **WIDE_BACKBONE).eval()
        ours = VAEModel.from_diffusers(peer).eval()
    calls = []
    convolve = winograd.winograd_conv2d
    monkeypatch.setattr(winograd, "winograd_conv2d", lambda conv, x: calls.append(conv) or convolve(conv, x))
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        if family == "vqvae":
            latents = peer.encode(pixels).latents
            encoded = ours.encode(pixels)
            ours_latents = encoded.latents
            agree = (encoded.indices.flatten() == peer.quantize(latents)[2][2].flatten()).float().mean().item()
            assert agree >= 0.99, agree
        else:
            latents = peer.encode(pixels).latent_dist.mean
            ours_latents = ours.encode(pixels).latent_dist.mean
        decoded, reference = ours.decode(latents).sample, peer.decode(latents).sample
    assert len(calls) >= 10  # the encoder's and the decoder's 128-channel convolutions
    if family == "vae":  # an exported program has plain convolutions, for any runtime
        with torch.no_grad():
            exported = torch.export.export(ours.decoder, (latents,))
        targets = {str(node.target) for node in exported.graph.nodes}
        assert "aten.conv2d.default" in targets and "aten.bmm.default" not in targets, targets
        assert max_diff(exported.module()(latents), ours.decoder(latents)) <= 1e-4 * reference.abs().max().item()
    assert max_diff(ours_latents, latents) <= WINOGRAD_MODEL_RELATIVE_BOUND * latents.abs().max().item()
    assert max_diff(decoded, reference) <= WINOGRAD_MODEL_RELATIVE_BOUND * reference.abs().max().item()
