"""The vector-latent VQ-VAE: a VQ-VAE on the `"vector"` backbone quantises its code vector as
`num_latent_tokens` groups of `codebook_dim` entries, one token each, with every quantizer.

Shapes of every token API function, the layout (token g is the vector's entries g*D .. (g+1)*D,
checked against the quantizer applied to each group alone), save / load, bits per image,
train.py, latentcode-tokenize, the prior over the tokens, the demo, and the clear refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from helpers import load_script, reset_accelerate_state
from test_training import tiny_run_values
from transformers import AutoModel

from latentcode import LatentCodeImageProcessor, VAEConfig, VQVAEConfig, VQVAEModel
from latentcode.demo import inference
from latentcode.evaluation import evaluate
from latentcode.modules.quantizers import QUANTIZERS
from latentcode.prior import build_prior, prior_loss, sample_images, token_mapping
from latentcode.tokenize import load_codes, tokenize
from latentcode.tokens import grid_as_vector_code, latent_shape, sequence_to_indices, vector_code_as_grid
from latentcode.training import load_config, train

VECTOR = dict(
    backbone="vector",
    sample_size=32,
    in_channels=1,
    vector_hidden_channels=8,
    vector_hidden_size=32,
    latent_channels=16,
)
# One model per quantizer: its fields and the token shape of one image they give (G tokens of
# codebook_dim entries; G = latent_channels // codebook_dim unless num_latent_tokens says).
RECIPES = {
    "vq": (dict(codebook_size=32, codebook_dim=4), (4,)),
    "simvq": (dict(quantizer="simvq", codebook_size=32, codebook_dim=4), (4,)),
    "fsq": (dict(quantizer="fsq", quantizer_config={"levels": [5, 4, 3]}, num_latent_tokens=6), (6,)),
    "lfq": (dict(quantizer="lfq", codebook_size=16), (4,)),
    "bsq": (dict(quantizer="bsq", codebook_size=16), (4,)),
    "residual_vq": (dict(quantizer="residual_vq", codebook_size=32, num_quantizers=2, codebook_dim=8), (2, 2)),
}
QUANTIZER_NAMES = sorted(RECIPES)

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def build(quantizer: str = "vq", seed: int = 0, **overrides) -> VQVAEModel:
    torch.manual_seed(seed)
    return VQVAEModel(VQVAEConfig(**{**VECTOR, **RECIPES[quantizer][0], **overrides})).eval()


@pytest.fixture(scope="module")
def pixels(digits) -> torch.Tensor:
    """Six real digits at the vector backbone's 32x32, `[6, 1, 32, 32]` in [-1, 1]."""
    return F.interpolate(digits[:6], size=32, mode="bilinear", align_corners=False).clamp(-1, 1)


def trained_step(model: VQVAEModel, pixels: torch.Tensor) -> VQVAEModel:
    """One training forward pass (k-means initialises a VQ codebook from the data), back in eval."""
    model.train()
    model(pixels)
    return model.eval()


def test_every_quantizer_has_a_recipe_here():
    assert set(RECIPES) == set(QUANTIZERS)


@pytest.mark.parametrize("quantizer", QUANTIZER_NAMES)
def test_forward_and_backward_train_every_layer(quantizer, pixels):
    model = build(quantizer).train()
    tokens = RECIPES[quantizer][1]
    output = model(pixels)
    width = model.config.num_latent_tokens * model.config.codebook_dim
    assert output.sample.shape == pixels.shape
    assert output.latents.shape == output.quantized.shape == (6, width)
    assert output.indices.shape == (6, *tokens) and output.indices.dtype == torch.long
    assert torch.isfinite(output.loss)
    output.loss.backward()
    # (post_quant_conv's bias: an untrained FSQ rounds every entry to 0, so its weight gets none yet)
    for name in ("encoder.head.weight", "quant_conv.weight", "post_quant_conv.bias", "decoder.deconvs.0.weight"):
        gradient = model.get_parameter(name).grad
        assert gradient is not None and gradient.abs().sum() > 0, name


@pytest.mark.parametrize("quantizer", QUANTIZER_NAMES)
def test_token_g_is_the_quantizer_applied_to_entries_g_of_the_vector(quantizer, pixels):
    model = trained_step(build(quantizer), pixels)
    encoded = model.encode(pixels)
    size = model.config.codebook_dim
    for token in range(model.config.num_latent_tokens):
        group = encoded.latents[:, token * size : (token + 1) * size]
        alone = model.quantizer(group.reshape(6, size, 1, 1), update_codebook=False)
        assert torch.equal(encoded.indices[:, token], alone.indices[:, 0, 0])
        torch.testing.assert_close(encoded.quantized[:, token * size : (token + 1) * size], alone.quantized[:, :, 0, 0])


def test_vector_grid_layout_round_trips():
    code = torch.arange(2 * 12.0).view(2, 12)
    grid = vector_code_as_grid(code, 3)  # 3 tokens of 4 entries
    assert grid.shape == (2, 4, 1, 3)
    assert torch.equal(grid[1, :, 0, 2], code[1, 8:12])  # token 2 of image 1: entries 8..11
    assert torch.equal(grid_as_vector_code(grid), code)
    with pytest.raises(ValueError, match="does not split into num_latent_tokens=5 tokens"):
        vector_code_as_grid(code, 5)


@pytest.mark.parametrize("quantizer", QUANTIZER_NAMES)
def test_every_token_api_function_agrees_on_the_shapes(quantizer, pixels):
    model = trained_step(build(quantizer), pixels)
    tokens = RECIPES[quantizer][1]
    config = model.config
    assert model.latent_shape() == model.latent_shape(32) == model.stored_code_shape() == tokens
    assert latent_shape(config, 32, depth=config.num_quantizers or 1) == tokens
    assert model.latent_code_shape() == (config.num_latent_tokens * config.codebook_dim,) == (config.code_channels,)
    encoded = model.encode(pixels)
    sequence = model.encode_to_sequence(pixels)
    assert sequence.shape == (6, math.prod(tokens))
    assert torch.equal(sequence, encoded.indices.reshape(6, -1))  # residual levels of a token together
    assert torch.equal(sequence_to_indices(sequence, tokens), encoded.indices)
    assert torch.equal(model.stored_code(encoded)["indices"], sequence)
    with torch.no_grad():
        from_indices = model.decode_indices(encoded.indices).sample
        assert torch.equal(model.decode_sequence(sequence).sample, from_indices)
        assert torch.equal(model.decode(encoded.latents).sample, from_indices)  # decode quantises first
        assert torch.equal(model.reconstruct(pixels), from_indices)
        torch.testing.assert_close(model(pixels).sample, from_indices)  # the straight-through sum rounds


@pytest.mark.parametrize("quantizer", QUANTIZER_NAMES)
def test_bits_per_image_are_tokens_times_log2_codebook_size(quantizer, pixels):
    model = build(quantizer)
    tokens = math.prod(RECIPES[quantizer][1])
    expected = tokens * math.log2(model.config.codebook_size)
    size = model.code_size(model.encode(pixels))
    assert size.shape == RECIPES[quantizer][1] and size.meaning == f"{tokens} tokens x log2({model.codebook_size})"
    assert torch.equal(size.bits, torch.full((6,), expected, dtype=torch.float64))


def test_bits_per_image_of_explicit_sizes():
    assert build("vq").code_size(build("vq").encode(torch.zeros(1, 1, 32, 32))).bits.item() == 4 * 5  # 4 x log2(32)
    residual = build("residual_vq")
    assert residual.code_size(residual.encode(torch.zeros(1, 1, 32, 32))).bits.item() == 2 * 2 * 5


@pytest.mark.parametrize("quantizer", QUANTIZER_NAMES)
def test_save_and_load_round_trip_gives_identical_outputs(quantizer, pixels, tmp_path):
    model = trained_step(build(quantizer), pixels)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, VQVAEModel) and loaded.config.num_latent_tokens == model.config.num_latent_tokens
    assert json.loads((tmp_path / "config.json").read_text())["num_latent_tokens"] == model.config.num_latent_tokens
    with torch.no_grad():
        assert torch.equal(loaded.encode(pixels).indices, model.encode(pixels).indices)
        assert torch.equal(loaded.decode_indices(model.encode(pixels).indices).sample, model.reconstruct(pixels))
        # SimVQ's rotation trick multiplies by its codebook transform, whose memory-mapped loaded
        # copy takes another BLAS path: 1-ulp differences (on a latent grid too); the rest are exact.
        exact = dict(rtol=0, atol=0) if quantizer != "simvq" else dict(rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded(pixels).sample, model(pixels).sample, **exact)


def test_to_diffusers_is_refused_naming_why():
    with pytest.raises(ValueError, match=r"diffusers has no vector-latent VQModel: .* latent grid \[B, C, h, w\]"):
        build("vq").to_diffusers()


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: VQVAEConfig(num_latent_tokens=4),
            "num_latent_tokens=4 sets how many tokens a vector latent is split into, but backbone='ldm' has a "
            "latent grid whose positions are the tokens; drop num_latent_tokens, or use backbone='vector'",
        ),
        (
            lambda: VQVAEConfig(**{**VECTOR, "latent_channels": 10}, codebook_dim=4),
            "latent_channels=10 is not a multiple of 4: set num_latent_tokens",
        ),
        (lambda: VQVAEConfig(**VECTOR, num_latent_tokens=0), "num_latent_tokens must be a positive int"),
        (lambda: VQVAEConfig(**VECTOR, num_latent_tokens=2.5), "num_latent_tokens must be a positive int"),
        (
            lambda: VQVAEConfig(**VECTOR, codebook_dim=4, num_latent_tokens=3, use_quant_conv=False),
            "num_latent_tokens * codebook_dim=12 differs from latent_channels=16: use_quant_conv and "
            "use_post_quant_conv must be True",
        ),
        (
            lambda: build("vq").decode_indices(torch.zeros(1, 2, 2, dtype=torch.long)),
            "expected token indices [B, 4] (num_latent_tokens=4 tokens of a vector latent), got shape (1, 2, 2)",
        ),
        (lambda: build("residual_vq").decode_indices(torch.zeros(1, 2, dtype=torch.long)), "[B, 2, 2]"),
        (lambda: build("vq").decode(torch.zeros(1, 16, 1, 1)), "expected latents of shape [B, 16]"),
        (
            lambda: build("vq").decode(torch.zeros(4, dtype=torch.long), force_not_quantize=True, shape=(1, 2, 2, 4)),
            "decode them with decode_indices(indices [B, num_latent_tokens])",
        ),
        (lambda: build("vq").latent_shape(64), "codes 32x32 images only"),
        (lambda: latent_shape(VAEConfig(**VECTOR), 32), "has a continuous vector code, no tokens"),
    ],
)
def test_bad_configs_and_inputs_are_refused_naming_the_fix(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)


def test_default_token_count_splits_the_encoders_vector():
    config = VQVAEConfig(**VECTOR, codebook_dim=4)
    assert (config.num_latent_tokens, config.code_channels) == (4, 16)
    fsq = VQVAEConfig(**{**VECTOR, "latent_channels": 32}, quantizer="fsq", quantizer_config={"levels": [8, 5, 5, 5]})
    assert (fsq.codebook_dim, fsq.num_latent_tokens) == (4, 8)
    assert VQVAEConfig(block_out_channels=(32,), norm_num_groups=8).num_latent_tokens is None  # grid backbones


def test_train_py_trains_it_and_writes_model_metrics_and_card(tmp_path):
    model = dict(VECTOR, codebook_size=32, codebook_dim=4, num_latent_tokens=8)
    model.pop("sample_size")
    values = tiny_run_values(tmp_path / "run", model=model, resolution=32, max_train_steps=4)
    result = train(load_config(**values))
    output = tmp_path / "run"
    trained = VQVAEModel.from_pretrained(output)
    assert (trained.config.backbone, trained.config.num_latent_tokens, trained.latent_shape()) == ("vector", 8, (8,))
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["details"]["global_step"] == 4 and math.isfinite(metrics["metrics"]["psnr"])
    assert 0 < metrics["metrics"]["codebook_usage"] <= 1
    assert all(math.isfinite(loss) for loss in result.losses)
    card = (output / "README.md").read_text()
    assert "VQVAEModel.from_pretrained" in card and "quantizer's terms" in card


def test_tokenize_then_the_prior_trains_on_the_tokens(tmp_path, pixels):
    vqvae_dir = tmp_path / "vqvae"
    vqvae = trained_step(build("vq", num_latent_tokens=6), pixels)
    vqvae.save_pretrained(vqvae_dir)
    info = tokenize(vqvae, tmp_path / "codes", dataset_name="builtin:digits", split="test", progress=False)
    assert info["latent_shape"] == [6] and info["bits_per_image"] == 6 * 5
    codes = load_codes(tmp_path / "codes", expected_model=vqvae)
    assert codes[0]["latent_shape"].tolist() == [6] and len(codes[0]["indices"]) == 6

    script = load_script("training/train_prior.py")
    reset_accelerate_state()
    config = script.parse_args(
        ["--pretrained_model_name_or_path", str(vqvae_dir), "--codes_dataset", str(tmp_path / "codes"),
         "--output_dir", str(tmp_path / "prior"), "--max_train_steps", "2", "--train_batch_size", "8",
         "--num_samples", "2", "--hidden_size", "16", "--num_layers", "1", "--num_heads", "2",
         "--lr_warmup_steps", "1", "--validation_steps", "0", "--report_to", "none"]
    )  # fmt: skip
    report = script.main(config)
    prior = AutoModel.from_pretrained(tmp_path / "prior")
    assert prior.config.latent_shape == [6]
    assert report["details"]["global_step"] == 2 and math.isfinite(report["metrics"]["nll"])
    assert (tmp_path / "prior" / "samples.png").is_file()


def test_evaluation_counts_each_residual_level_of_each_token(pixels):
    model = trained_step(build("residual_vq"), pixels)
    metrics = evaluate(model, [pixels[:4], pixels[4:]]).metrics
    indices = model.encode(pixels).indices  # [6, 2 tokens, 2 levels]
    used = [indices[..., level].unique().numel() / 32 for level in range(2)]
    assert metrics["codebook_usage"] == pytest.approx(sum(used) / 2)


def test_the_prior_library_over_the_tokens(pixels):
    vqvae = trained_step(build("residual_vq"), pixels)
    sequence = vqvae.encode_to_sequence(pixels)  # [6, 2 tokens x 2 levels]
    torch.manual_seed(0)
    prior = build_prior(vqvae.config.codebook_size, vqvae.latent_shape(), hidden_size=16, num_layers=1, num_heads=2)
    loss = prior_loss(prior, sequence, token_mapping(prior.config))
    assert abs(loss.item() - math.log(vqvae.config.codebook_size + 1)) < 0.5  # untrained: close to uniform
    loss.backward()
    images = sample_images(prior, vqvae, num_samples=3, seed=0)
    assert images.shape == (3, 1, 32, 32) and images.abs().max() <= 1


def test_demo_reconstructs_edits_tokens_and_moves_the_code(pixels):
    model = trained_step(build("vq"), pixels)
    loaded = inference.DemoModel("vector-vq", model, LatentCodeImageProcessor.from_model_config(model.config))
    assert "32 codes (vq) in 4 tokens (groups of 4 entries)" in loaded.describe() and loaded.vector_latent
    result = inference.reconstruct(loaded, pixels[:1])
    assert result.latent_shape == (4,) and result.bits == 20 and result.indices.shape == (1, 1, 4)  # one row
    torch.testing.assert_close(result.reconstruction, model.decode_indices(model.encode(pixels[:1]).indices).sample)
    assert inference.token_grid_image(result.indices).size[0] == 4 * inference.grid_cell_size(result.indices)
    code = (int(result.indices[0, 0, 2]) + 1) % 32
    edited = inference.change_token(loaded, result.indices, 0, 2, code)
    expected = model.encode(pixels[:1]).indices.clone()
    expected[0, 2] = code
    torch.testing.assert_close(edited, model.decode_indices(expected).sample)
    # The Attributes tab moves the code before quantisation: all 16 entries, decoded through the quantizer.
    image = loaded.processor.postprocess(pixels[:1])[0]
    base = inference.attribute_base(loaded, image)
    assert base.dims == list(range(16)) and base.code.shape == (16,)
    moved = inference.moved_code(base, [0.0] * 15 + [50.0])
    assert inference.decode_code(loaded, moved).shape == (1, 1, 32, 32)


def test_demo_page_handlers_on_the_tokens_and_sliders(pixels, tmp_path):
    from latentcode.demo.app import DemoHandlers

    model = trained_step(build("residual_vq"), pixels)  # 2 tokens x 2 levels
    loaded = inference.DemoModel("vector-rvq", model, LatentCodeImageProcessor.from_model_config(model.config))
    handlers = DemoHandlers([loaded], max_pixels=10**6)
    assert handlers.token_names == ["vector-rvq"] and handlers.multilevel_tokens
    loaded.processor.postprocess(pixels[:1])[0].save(tmp_path / "digit.png")
    upload = {"path": str(tmp_path / "digit.png")}
    grid, _, decoded, summary, state, _ = handlers.encode_tokens("vector-rvq", upload)
    assert state["indices"].shape == (1, 1, 2, 2) and "latent grid 2x2" in summary and "20 bits" in summary
    cell = inference.grid_cell_size(state["indices"])
    assert grid.size == (2 * cell, cell)  # the two tokens side by side in one row
    state, _, line, code = handlers.pick_cell(state, (cell + 1, 1))
    assert state["cell"] == (0, 1) and line == f"Token (row 0, col 1): code {code}."
    edited, _ = handlers.change_token(state, (code + 1) % 32, 1)  # token 1, level 1
    expected = model.encode(loaded.processor(PIL.Image.open(tmp_path / "digit.png")).pixel_values).indices.clone()
    expected[0, 1, 1] = (code + 1) % 32
    assert edited.size == decoded.size == (32, 32)
    assert (
        np.asarray(edited) == np.asarray(loaded.processor.postprocess(model.decode_indices(expected).sample)[0])
    ).all()
    _, _, _, summary, labels = handlers.attributes_start("vector-rvq", upload)
    assert "Sliders move 16 of the 16 latent dimensions" in summary and "before quantisation" in summary
    assert labels == [f"dimension {d}" for d in range(16)]
    with pytest.raises(inference.DemoInputError, match="samples only with a prior: start the demo with --prior"):
        handlers.sample("vector-rvq", 2, 0, 1.0)
