"""The demo (`latentcode-demo`): what its tabs compute, and the page driven in a real browser."""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from helpers import load_script, require_shared, require_shared_dataset, tiny_config

import latentcode
from latentcode.demo import inference
from latentcode.demo.browser import find_chromium
from latentcode.demo.inference import DemoInputError
from latentcode.evaluation import psnr
from latentcode.modeling import VQVAEEncoderOutput
from latentcode.prior import build_prior, sample_images

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
DATASETS = SHARED / "datasets"
# A vector-latent VAE (the β-VAE family's backbone): one 5-dimensional code per 32x32 image.
VECTOR_VAE = dict(backbone="vector", sample_size=32, latent_channels=5, vector_hidden_channels=8)


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory) -> dict[str, inference.DemoModel]:
    """Tiny random models of each family (downsampling x2, sample_size 16, tiles of 16 pixels),
    saved and loaded by path."""
    root = tmp_path_factory.mktemp("demo-models")
    classes = {"vqvae": latentcode.VQVAEModel, "vae": latentcode.VAEModel, "autoencoder": latentcode.AutoencoderModel}
    loaded = {}
    for family, model_class in classes.items():
        torch.manual_seed(0)
        overrides = {"codebook_size": 64} if family == "vqvae" else {}
        model_class(tiny_config(family, **overrides)).save_pretrained(root / family)
        loaded[family] = inference.load_model(str(root / family), tile_size=16)
    return loaded


@pytest.fixture(scope="module")
def vector_vae(tmp_path_factory) -> inference.DemoModel:
    """A small random vector-latent VAE, saved and loaded by path."""
    root = tmp_path_factory.mktemp("vector-vae")
    torch.manual_seed(0)
    latentcode.VAEModel(tiny_config("vae", **VECTOR_VAE)).save_pretrained(root)
    return inference.load_model(str(root))


# A photo tokenizer as issue 31 makes them: residual VQ on taef2's f8 latent, 2 levels of 16
# codes per 8x8 pixels (0.125 bits per pixel), its codebooks untrained (the wiring, not quality).
PHOTO_TOKENIZER = dict(quantizer="residual_vq", codebook_size=16, num_quantizers=2)
KODAK_PHOTO = "kodim23.png"  # 768x512: 96x64 tokens


@pytest.fixture(scope="module")
def photo_tokenizer(tmp_path_factory) -> inference.DemoModel:
    """taef2 converted from ../shared/pretrained/taesd by the conversion script, made a VQ-VAE by
    `VQVAEModel.from_autoencoder(..., **PHOTO_TOKENIZER)`, saved and loaded by path as the demo loads it."""
    taesd = require_shared(SHARED / "pretrained" / "taesd", "the TAESD checkpoints")
    root = tmp_path_factory.mktemp("photo-tokenizer")
    convert = load_script("conversion/convert_taesd_to_latentcode.py")
    convert.main(["--encoder_path", str(taesd / "taef2_encoder.pth"), "--decoder_path",
                  str(taesd / "taef2_decoder.pth"), "--output_dir", str(root / "taef2")])  # fmt: skip
    torch.manual_seed(0)
    taef2 = latentcode.AutoencoderModel.from_pretrained(root / "taef2")
    latentcode.VQVAEModel.from_autoencoder(taef2, **PHOTO_TOKENIZER).save_pretrained(root / "photo-tokenizer-taef2")
    return inference.load_model(str(root / "photo-tokenizer-taef2"))


def photo(width: int = 48, height: int = 32, mode: str = "RGB") -> PIL.Image.Image:
    """A smooth real-looking crop of scikit-image's astronaut (non-square, to catch transposes)."""
    from skimage import data

    return PIL.Image.fromarray(data.astronaut()[100 : 100 + height * 4 : 4, 150 : 150 + width * 4 : 4]).convert(mode)


# ----------------------------------------------------------------------------------------------
# What the tabs compute
# ----------------------------------------------------------------------------------------------


def test_reconstruct_vq_reports_the_token_cost_and_tiles_large_images(demo_models):
    loaded = demo_models["vqvae"]
    pixels, notes = inference.to_pixels(loaded, photo())
    assert pixels.shape == (1, 3, 32, 48) and notes == []
    result = inference.reconstruct(loaded, pixels)
    model = loaded.model
    with torch.inference_mode():
        indices = model.encode(pixels).indices
        expected = model.decode_indices(indices).sample
        model.disable_tiling()
        untiled = model.decode_indices(model.encode(pixels).indices).sample
        model.enable_tiling()
    torch.testing.assert_close(result.reconstruction, expected)
    assert not torch.allclose(result.reconstruction, untiled, atol=1e-3)  # 48x32 > the 16-pixel tile: tiled
    assert result.latent_shape == (16, 24) and torch.equal(result.indices, indices)
    assert result.bits == 16 * 24 * 6  # log2(64) bits per token
    assert result.bits_per_pixel == pytest.approx(6 / 4)
    assert result.psnr == pytest.approx(float(psnr(expected, pixels)[0]))
    from skimage.metrics import structural_similarity

    reference_ssim = structural_similarity(
        result.reconstruction[0].permute(1, 2, 0).double().numpy(),
        pixels[0].permute(1, 2, 0).double().numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=2.0,
        channel_axis=2,
    )
    assert result.ssim == pytest.approx(reference_ssim, abs=1e-6)
    assert "PSNR" in result.summary() and "2,304 bits per image" in result.summary()


def test_reconstruct_vae_bits_are_the_kl_to_the_prior(demo_models):
    loaded = demo_models["vae"]
    pixels, _ = inference.to_pixels(loaded, photo(16, 16))
    result = inference.reconstruct(loaded, pixels)
    with torch.inference_mode():
        posterior = loaded.model.encode(pixels).latent_dist
        expected = loaded.model.decode(posterior.mode()).sample
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(posterior.mean.double(), posterior.std.double()),
        torch.distributions.Normal(0.0, 1.0),
    )
    assert result.bits == pytest.approx(float(reference.sum()) / math.log(2), rel=1e-4)
    torch.testing.assert_close(result.reconstruction, expected)
    assert result.latent_shape == (4, 8, 8)


def test_user_mistakes_give_readable_messages(demo_models, tmp_path):
    loaded = demo_models["vqvae"]
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    with pytest.raises(DemoInputError, match=r"notes.png is not an image file"):
        inference.open_image(not_an_image, max_pixels=10**6)
    photo(40, 40).save(tmp_path / "big.png")
    with pytest.raises(DemoInputError, match=r"big.png is 40x40 .*at most 0.0 megapixels"):
        inference.open_image(tmp_path / "big.png", max_pixels=1000)
    with pytest.raises(DemoInputError, match="No image"):
        inference.open_image(None, max_pixels=1000)
    with pytest.raises(DemoInputError, match=r"33x33.*divisible by its downsampling factor 2 \(e.g. 32x32\)"):
        inference.to_pixels(loaded, photo(33, 33))
    grey = photo(16, 16, mode="L")
    pixels, notes = inference.to_pixels(loaded, grey)
    assert notes == ["grey-scale image converted to RGB for this 3-channel model."]
    expected = torch.from_numpy(np.array(grey)).float() / 127.5 - 1
    for channel in range(3):
        torch.testing.assert_close(pixels[0, channel], expected)


def test_tokens_grid_histogram_and_one_changed_token(demo_models):
    loaded = demo_models["vqvae"]
    result = inference.reconstruct(loaded, inference.to_pixels(loaded, photo(16, 16))[0])
    indices = result.indices  # [1, 8, 8]
    cell = inference.grid_cell_size(indices)
    grid = np.asarray(inference.token_grid_image(indices))
    assert grid.shape == (8 * cell, 8 * cell, 3)
    colors = inference.code_colors(torch.arange(64)).numpy()
    assert len({tuple(color) for color in colors}) == 64  # one colour per code
    for row, col in ((0, 0), (3, 5), (7, 7)):
        assert (grid[row * cell + cell // 2, col * cell + cell // 2] == colors[indices[0, row, col]]).all()
    histogram = inference.code_histogram(indices, 64)
    assert histogram.size == (640, 360)

    new_code = (int(indices[0, 3, 5]) + 1) % 64
    edited = inference.change_token(loaded, indices, 3, 5, new_code)
    reference_indices = indices.clone()
    reference_indices[0, 3, 5] = new_code
    with torch.inference_mode():
        torch.testing.assert_close(edited, loaded.model.decode_indices(reference_indices).sample)
    assert not torch.allclose(edited, result.reconstruction)
    with pytest.raises(DemoInputError, match=r"code must be in \[0, 63\]"):
        inference.change_token(loaded, indices, 3, 5, 64)
    with pytest.raises(DemoInputError, match="outside the 8x8 grid"):
        inference.change_token(loaded, indices, 8, 0, 1)


def test_generation_samples_and_interpolates(demo_models, tmp_path):
    vae, vqvae, autoencoder = demo_models["vae"], demo_models["vqvae"], demo_models["autoencoder"]
    samples = inference.prior_samples(vae, 3, seed=1)
    with torch.inference_mode():
        reference = vae.model.sample(3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(samples, reference)
    with pytest.raises(DemoInputError, match="only with a prior: start the demo with --prior"):
        inference.prior_samples(vqvae, 2, seed=0)
    with pytest.raises(DemoInputError, match="no prior"):
        inference.prior_samples(autoencoder, 2, seed=0)

    torch.manual_seed(0)
    prior = build_prior(64, vqvae.model.latent_shape(), hidden_size=32, num_layers=1, num_heads=2)
    prior.config.vqvae_name_or_path = vqvae.name
    prior.save_pretrained(tmp_path / "prior")
    loaded_prior, paired = inference.load_prior(str(tmp_path / "prior"), list(demo_models.values()))
    assert paired is vqvae
    samples = inference.prior_samples(vqvae, 2, seed=3, prior=loaded_prior)
    torch.testing.assert_close(samples, sample_images(loaded_prior, vqvae.model, 2, seed=3).float())

    frames, strip = inference.interpolation_frames(vae, photo(64, 48), photo(20, 20), num_steps=5)
    assert len(frames) == 5 and frames[0].size == (16, 16)
    start = inference.to_model_size(vae, photo(64, 48))
    first = inference.to_image(vae, inference.reconstruct(vae, start).reconstruction)
    difference = np.abs(np.asarray(frames[0], dtype=int) - np.asarray(first, dtype=int))
    assert difference.max() <= 1  # the path starts at the reconstruction (up to batch rounding)
    assert strip.size == (5 * (16 + 4), 16 + 4)


def test_photo_tokenizer_on_a_full_size_kodak_photo(photo_tokenizer):
    """A Kodak photo at 768x512 through a residual-VQ photo tokenizer on taef2: 96x64 tokens x 2
    levels, in 512-pixel tiles; bits per pixel = tokens x log2(K) / pixels, as the model counts
    them; a token picked on the grid, at either level; changing it changes the decoded photo only
    near its 8x8 pixels."""
    from latentcode.demo.app import DemoHandlers

    model = photo_tokenizer.model
    kodak = require_shared_dataset("kodak") / KODAK_PHOTO
    handlers = DemoHandlers([photo_tokenizer], max_pixels=4_000_000)
    assert handlers.token_levels == 2
    described = photo_tokenizer.describe()
    assert "64x64 tokens x 2 levels per 512x512 image (downsampling x8" in described
    assert described.endswith("16 codes (residual_vq): 0.125 bits per pixel")

    grid, _, decoded, summary, state, _ = handlers.encode_tokens(photo_tokenizer.name, {"path": str(kodak)})
    indices = state["indices"]
    assert indices.shape == (1, 64, 96, 2) and decoded.size == (768, 512)
    assert model.use_tiling and model.tile_sample_size == 512  # 768 pixels wide: two tiles
    bits_per_pixel = 64 * 96 * 2 * math.log2(16) / (768 * 512)  # tokens x log2(K) / pixels
    counted = model.code_size(VQVAEEncoderOutput(indices=indices)).bits_per_pixel(512, 768)  # the model's count
    assert float(counted[0]) == bits_per_pixel == 0.125
    assert f"at **{bits_per_pixel:.4g} bits per pixel** (49,152 bits per image: 12288 tokens x log2(16))" in summary
    assert "latent grid 64x96x2 (64x96 tokens x 2 levels)" in summary

    # The grid: 8 pixels per token; picked at level 1 it shows level 1's codes, the token marked.
    cell = inference.grid_cell_size(indices)
    assert cell == inference.MIN_GRID_CELL and grid.size == (96 * cell, 64 * cell)
    state, level_grid, line, code = handlers.pick_cell(state, (60 * cell + 1, 40 * cell + 6), 1)
    assert state["cell"] == (40, 60) and code == int(indices[0, 40, 60, 1])
    assert line == f"Token (row 40, col 60, level 1): code {code}."
    colors = inference.code_colors(indices[0]).numpy()  # [64, 96, 2, 3]
    shown = np.asarray(level_grid)
    for row, col in ((0, 0), (40, 61), (63, 95)):
        assert (shown[row * cell + cell // 2, col * cell + cell // 2] == colors[row, col, 1]).all()
    assert (shown[40 * cell, 60 * cell : 61 * cell] == 255).all()  # the white outline of the picked token
    _, level_0_grid, line_0, code_0 = handlers.show_level(state, 0)
    assert code_0 == int(indices[0, 40, 60, 0]) and line_0 == f"Token (row 40, col 60): code {code_0}."
    assert (np.asarray(level_0_grid)[4, 4] == colors[0, 0, 0]).all()
    with pytest.raises(DemoInputError, match="Click inside the token grid"):
        handlers.pick_cell(state, (96 * cell, 0), 0)
    with pytest.raises(DemoInputError, match=r"level must be in \[0, 1\]"):
        handlers.show_level(state, 2)

    new_code = (code + 8) % 16
    edited_image, change_image = handlers.change_token(state, new_code, 1)  # the picked token, at the level shown
    expected_indices = indices.clone()
    expected_indices[0, 40, 60, 1] = new_code
    with torch.inference_mode():
        edited = model.decode_indices(expected_indices).sample.float()
    assert (_array(edited_image) == _array(inference.to_image(photo_tokenizer, edited))).all()
    change = (edited - state["reconstruction"]).abs().amax(1)[0]  # [512, 768]
    one_level = 2 / 255  # one step of the 8-bit image, in [-1, 1]
    assert change[320:328, 480:488].max() > 4 * one_level  # the token's own 8x8 pixels
    change[320 - 40 : 328 + 40, 480 - 40 : 488 + 40] = 0
    assert change.max() < one_level  # 5 tokens away and further, nothing the 8-bit image shows
    # |change| boxes the token 4 tokens out, in lines of 3 pixels: x 445-447 and 520-522 at y 320-327.
    boxed = _array(change_image)
    assert (boxed[320:328, [445, 447, 520, 522]] == inference.BOX_COLOR).all()
    assert (boxed[320:328, 448:520] == boxed[320:328, 448:520, :1]).all()  # grey inside: the change itself


def test_example_images_come_from_the_shared_datasets_or_scikit_image(tmp_path):
    fallback = inference.example_images(None, tmp_path / "fallback", multiple_of=16)
    assert [path.name for path in fallback] == ["astronaut.png", "coffee.png", "camera.png"]
    assert all(side % 16 == 0 for path in fallback for side in PIL.Image.open(path).size)
    if not (DATASETS / "kodak").is_dir():
        pytest.skip(f"no shared datasets at {DATASETS} (Kodak / CIFAR-10); the scikit-image fallback was tested")
    shared = inference.example_images(DATASETS, tmp_path / "shared", multiple_of=16)
    assert [path.name for path in shared] == [*inference.KODAK_EXAMPLES, "cifar10-test-0.png", "cifar10-test-1.png"]
    assert PIL.Image.open(shared[-1]).size == (32, 32)


def test_command_without_gradio_says_how_to_install_it(monkeypatch):
    from latentcode.demo.command import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # what `import gradio` meets when it is not installed
    with pytest.raises(SystemExit, match=re.escape('pip install "latentcode[demo]"')):
        main(["some/model"])


# ----------------------------------------------------------------------------------------------
# The page: its handlers, its wiring and a real browser
# ----------------------------------------------------------------------------------------------


def test_page_handlers_and_wiring_without_a_browser(demo_models, tmp_path):
    """What each button of the page computes (`DemoHandlers`), and which handlers the page wires."""
    from latentcode.demo.app import DemoHandlers

    models = list(demo_models.values())
    vq_name, vae_name = demo_models["vqvae"].name, demo_models["vae"].name
    handlers = DemoHandlers(models, max_pixels=1_000_000)
    assert handlers.token_names == [vq_name] and handlers.sampling_names == [vae_name]
    assert not handlers.multilevel_tokens
    photo(48, 32).save(tmp_path / "photo.png")
    upload = {"path": str(tmp_path / "photo.png")}

    _, reconstruction, difference, summary = handlers.reconstruct(vae_name, upload)
    assert reconstruction.size == difference.size == (48, 32) and "(KL to the prior N(0, I))" in summary
    _, _, decoded, _, state, _ = handlers.encode_tokens(vq_name, upload)
    cell = inference.grid_cell_size(state["indices"])
    state, _, line, code = handlers.pick_cell(state, (5 * cell + 1, 2 * cell + 1))
    assert state["cell"] == (2, 5) and code == int(state["indices"][0, 2, 5])
    assert line == f"Token (row 2, col 5): code {code}."
    edited, _ = handlers.change_token(state, (code + 1) % 64, 0)
    assert edited.size == decoded.size == (48, 32)
    with pytest.raises(DemoInputError, match="Click inside the token grid"):
        handlers.pick_cell(state, (10_000, 0))
    gallery, table = handlers.compare(handlers.names, upload)
    assert len(gallery) == 1 + len(models) and len(table.splitlines()) == 2 + len(models)
    with pytest.raises(DemoInputError, match="Pick a model"):
        handlers.pick("nope")

    pytest.importorskip("gradio", reason="the page's wiring needs `gradio` (pip install -e '.[demo]')")
    from latentcode.demo.app import _attributes_opening, build_demo

    demo = build_demo(models)
    wired = {fn.name: len(fn.inputs) for fn in demo.fns.values()}
    assert wired == {
        "reconstruct": 2, "start": 2, "start_from_prior": 1, "switch_model": 1, "make_vector": 3,
        "attributes_decode": 3 + inference.MAX_SLIDERS, "attributes_samples": 2, "encode": 2,
        "on_pick_cell": 2, "show_level": 2, "change_token": 3, "compare": 2, "sample": 4,
        "interpolate": 3, "slide": 2,
    }  # fmt: skip
    # The Attributes tab opens on the VAE (the model with a prior) at its prior mean, sliders shown.
    components = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert components["attributes-model"].value == vae_name
    assert components["attributes-slider-3"].visible and not components["attributes-slider-4"].visible  # 4 channels
    assert "around the prior mean (0)" in components["attributes-summary"].value
    assert components["attributes-output"].value is not None and not components["attributes-strength"].visible
    # A model without a prior (picked in the tab, or first) opens with a hint and no sliders.
    state, image, grid, hint, labels = _attributes_opening(handlers, demo_models["autoencoder"].name)
    assert state is image is grid is None and labels == [None] * inference.MAX_SLIDERS and "has no prior" in hint


def _browser_or_skip():
    """Skip, with the reason, where the browser or its driver is missing; fail under `CI=true`,
    whose `.ci/run` installs chromium and the `dev` extra (gradio, playwright)."""
    import importlib.util

    missing = [f"`{package}` (pip install -e '.[dev]')" for package in ("gradio", "playwright")
               if importlib.util.find_spec(package) is None]  # fmt: skip
    if find_chromium() is None:
        missing.append("Debian's chromium on the PATH (apt-get install -y chromium)")
    if missing and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: the browser test needs {', '.join(missing)}; .ci/run installs them", pytrace=False)
    if missing:
        pytest.skip(f"the browser test needs {', '.join(missing)}")


def test_page_in_a_real_browser(demo_models, tmp_path, monkeypatch):
    """Upload an image, press Reconstruct, read the PSNR and the reconstruction's size; click a
    token and decode it changed; upload a broken file and read the error."""
    _browser_or_skip()
    from latentcode.demo.app import build_demo
    from latentcode.demo.browser import click_image_at, headless_chromium, serve, shown_size

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as users run it: the codebook search splits rows over threads
    image = photo(48, 32)
    image.save(tmp_path / "photo.png")
    (tmp_path / "broken.png").write_bytes(b"this is no PNG")
    loaded = demo_models["vqvae"]
    expected = inference.reconstruct(loaded, inference.to_pixels(loaded, image)[0])

    try:
        with serve(build_demo(list(demo_models.values()))) as url, headless_chromium() as page:
            page.goto(url)
            page.set_input_files("#reconstruct-input input[type=file]", str(tmp_path / "photo.png"))
            page.click("#reconstruct-button")
            summary = page.locator("#reconstruct-summary", has_text="PSNR")
            summary.wait_for(timeout=30_000)
            shown_psnr = float(re.search(r"PSNR ([\d.]+) dB", summary.inner_text()).group(1))
            assert shown_psnr == pytest.approx(expected.psnr, abs=0.006)
            output = page.locator("#reconstruct-output img")
            output.wait_for(timeout=10_000)
            size = output.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert size == [48, 32]
            for name in ("original", "output", "difference"):  # drawn large, not as thin strips
                width, height = shown_size(page.locator(f"#reconstruct-{name} img"))
                assert width >= 320 and height >= 128, (name, width, height)

            page.get_by_role("tab", name="Codes").click()
            page.set_input_files("#codes-input input[type=file]", str(tmp_path / "photo.png"))
            page.click("#codes-button")
            grid = page.locator("#codes-grid img")
            shown_size(grid, timeout_ms=30_000)
            cell = inference.grid_cell_size(expected.indices)
            click_image_at(page, grid, 5.5 * cell, 2.5 * cell)
            code = int(expected.indices[0, 2, 5])
            page.get_by_text(f"Token (row 2, col 5): code {code}.").wait_for(timeout=20_000)
            page.get_by_label("new code").fill(str((code + 1) % 64))
            page.get_by_role("button", name="Decode with this token changed").click()
            edited = page.locator("#codes-edited img")
            edited.wait_for(timeout=20_000)
            assert edited.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [48, 32]

            page.get_by_role("tab", name="Reconstruct").click()
            page.set_input_files("#reconstruct-input input[type=file]", str(tmp_path / "broken.png"))
            page.click("#reconstruct-button")
            page.get_by_text("broken.png is not an image file").wait_for(timeout=20_000)
    finally:
        torch.set_num_threads(threads)


def test_codes_tab_with_a_photo_tokenizer_in_a_real_browser(photo_tokenizer, tmp_path, monkeypatch):
    """The Codes tab with a photo tokenizer (residual VQ on taef2) on a 768x512 Kodak photo: the
    bits per pixel; the 96x64 token grid, drawn large enough to click a token; two tokens picked
    on it; the second one's level-1 code read and changed; the photo decoded with it."""
    _browser_or_skip()
    from latentcode.demo.app import build_demo
    from latentcode.demo.browser import click_image_at, fetch_image, headless_chromium, serve, shown_size

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    kodak = require_shared_dataset("kodak") / KODAK_PHOTO
    indices = inference.reconstruct(
        photo_tokenizer, inference.to_pixels(photo_tokenizer, PIL.Image.open(kodak))[0]
    ).indices
    slow = 180_000  # a 768x512 photo through taef2 on one thread of a busy CPU

    with serve(build_demo([photo_tokenizer])) as url, headless_chromium() as page:
        page.goto(url)
        page.get_by_role("tab", name="Codes").click()
        page.set_input_files("#codes-input input[type=file]", str(kodak))
        page.click("#codes-button")
        page.locator("#codes-summary", has_text="PSNR").wait_for(timeout=slow)
        assert "at 0.125 bits per pixel (49,152 bits per image" in page.locator("#codes-summary").inner_text()

        grid = page.locator("#codes-grid img")
        width, height = shown_size(grid)
        assert grid.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [768, 512]
        assert width / 96 >= 5 and height / 64 >= 5, (width, height)  # at least 5 screen pixels per token
        click_image_at(page, grid, 60 * 8 + 4, 40 * 8 + 4)
        code = int(indices[0, 40, 60, 0])
        page.get_by_text(f"Token (row 40, col 60): code {code}.").wait_for(timeout=20_000)
        click_image_at(page, grid, 12 * 8 + 1, 6 * 8 + 6)
        page.get_by_text(f"Token (row 6, col 12): code {int(indices[0, 6, 12, 0])}.").wait_for(timeout=20_000)
        page.locator("#codes-level").get_by_text("level 1").click()
        code = int(indices[0, 6, 12, 1])
        page.get_by_text(f"Token (row 6, col 12, level 1): code {code}.").wait_for(timeout=20_000)
        assert page.locator("#codes-code input").input_value() == str(code)

        new_code = (code + 8) % 16
        page.locator("#codes-code input").fill(str(new_code))
        page.click("#codes-change-button")
        edited = page.locator("#codes-edited img")
        shown_size(edited, timeout_ms=slow)
        expected = inference.change_token(photo_tokenizer, indices, 6, 12, new_code, level=1)
        shown = _array(fetch_image(page, edited).convert("RGB"))
        assert (shown == _array(inference.to_image(photo_tokenizer, expected))).all()


# ----------------------------------------------------------------------------------------------
# The Attributes tab
# ----------------------------------------------------------------------------------------------


def _array(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=int)


def test_attribute_sliders_move_the_decoded_code_by_their_values(vector_vae, tmp_path):
    """Each slider adds its value to one entry of the image's code; the page shows `model.decode` of it."""
    from latentcode.demo.app import DemoHandlers

    model = vector_vae.model
    handlers = DemoHandlers([vector_vae], max_pixels=10**6)
    photo(48, 40).save(tmp_path / "photo.png")
    state, base_image, _, summary, labels = handlers.attributes_start(
        vector_vae.name, {"path": str(tmp_path / "photo.png")}
    )

    pixels = vector_vae.processor(photo(48, 40)).pixel_values  # resized and cropped to 32x32
    with torch.inference_mode():
        posterior = model.encode(pixels).latent_dist
        code = posterior.mean[0]
        moved = code.clone()
        moved[1] += 1.5
        moved[3] -= 2.0
        expected_base, expected_moved = (
            vector_vae.processor.postprocess(model.decode(c[None]).sample)[0] for c in (code, moved)
        )
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1 - posterior.logvar)[0]
    assert labels[:5] == [f"dimension {d} (KL {float(kl[d]):.2f} nats)" for d in range(5)]
    assert labels[5:] == [None] * (inference.MAX_SLIDERS - 5)
    assert "5 of the 5 latent dimensions" in summary and "this image's code" in summary
    torch.testing.assert_close(state["base"].code, code)
    assert (_array(base_image) == _array(expected_base)).all()

    offsets = [0.0, 1.5, 0.0, -2.0, 0.0] + [0.7] * (inference.MAX_SLIDERS - 5)  # hidden sliders are ignored
    shown = handlers.attributes_decode(state, None, 0, *offsets)
    assert shown.size == (32, 32)
    assert (_array(shown) == _array(expected_moved)).all()
    assert (_array(shown) != _array(base_image)).any()  # the move shows (a random decoder barely responds)
    assert (
        _array(handlers.attributes_decode(state, None, 0, *[0.0] * inference.MAX_SLIDERS)) == _array(base_image)
    ).all()
    with pytest.raises(DemoInputError, match="Pick an image"):
        handlers.attributes_decode(None, None, 0, *offsets)


def save_faces(folder: Path, count: int, top: int) -> list[str]:
    """`count` different 40x40 crops of the astronaut photo as PNG files in `folder`."""
    folder.mkdir()
    paths = []
    for number in range(count):
        from skimage import data

        crop = data.astronaut()[top + 12 * number : top + 12 * number + 160 : 4, 120 : 120 + 160 : 4]
        paths.append(str(folder / f"face-{number}.png"))
        PIL.Image.fromarray(crop).save(paths[-1])
    return paths


def test_attribute_vector_moves_the_decoded_code(vector_vae, tmp_path):
    """The vector is the mean code of one upload set minus the other's (`traversal.attribute_vector`
    at the model's size); the strength slider adds strength x vector to the sliders' code."""
    from latentcode.demo.app import DemoHandlers
    from latentcode.traversal import attribute_vector

    model = vector_vae.model
    handlers = DemoHandlers([vector_vae], max_pixels=10**6)
    with_paths, without_paths = save_faces(tmp_path / "with", 3, 0), save_faces(tmp_path / "without", 2, 200)
    vector, line = handlers.attributes_vector(vector_vae.name, with_paths, without_paths)

    def pixels(paths):
        return vector_vae.processor([PIL.Image.open(path) for path in paths]).pixel_values  # 32x32

    torch.testing.assert_close(vector.vector, attribute_vector(model, pixels(with_paths), pixels(without_paths)))
    assert (vector.with_count, vector.without_count) == (3, 2) and "3 images with the attribute minus 2" in line
    assert float(vector.vector.norm()) > 0

    state, base_image, *_ = handlers.attributes_start(vector_vae.name, None, from_prior=True)
    offsets = [0.5, 0.0, 0.0, 0.0, -1.0] + [0.0] * (inference.MAX_SLIDERS - 5)
    code = torch.tensor([0.5, 0.0, 0.0, 0.0, -1.0]) + 2.0 * vector.vector
    with torch.inference_mode():
        expected = vector_vae.processor.postprocess(model.decode(code[None]).sample)[0]
    shown = handlers.attributes_decode(state, vector, 2.0, *offsets)
    assert (_array(shown) == _array(expected)).all()
    assert (_array(handlers.attributes_decode(state, vector, 0, *[0.0] * inference.MAX_SLIDERS))
            == _array(base_image)).all()  # fmt: skip
    assert (_array(handlers.attributes_decode(state, None, 2.0, *[0.0] * inference.MAX_SLIDERS))
            == _array(base_image)).all()  # fmt: skip
    with pytest.raises(DemoInputError, match="Upload at least one image without the attribute"):
        handlers.attributes_vector(vector_vae.name, with_paths, None)
    other = inference.AttributeVector("another-model", vector.vector, 3, 2)
    with pytest.raises(DemoInputError, match="made with `another-model`"):
        handlers.attributes_decode(state, other, 1.0, *offsets)


def test_attribute_vector_of_a_grid_latent_is_resized_to_the_code():
    code = torch.zeros(2, 4, 4)
    vector = torch.arange(8.0).view(2, 2, 2)
    moved = inference.add_attribute(code, vector, 0.5)
    expected = 0.5 * torch.nn.functional.interpolate(vector[None], size=(4, 4), mode="bilinear")[0]
    torch.testing.assert_close(moved, expected)
    with pytest.raises(DemoInputError, match=r"shape \(3, 2, 2\), the code \(2, 4, 4\)"):
        inference.add_attribute(code, torch.zeros(3, 2, 2), 1.0)


def test_attribute_traversal_grid_and_prior_samples(vector_vae, tmp_path):
    from latentcode.demo.app import ATTRIBUTE_SAMPLES, DemoHandlers
    from latentcode.grids import image_grid
    from latentcode.traversal import latent_traversal

    model = vector_vae.model
    handlers = DemoHandlers([vector_vae], max_pixels=10**6)
    photo(32, 32).save(tmp_path / "photo.png")
    values = torch.linspace(-2, 2, 7)
    assert torch.equal(inference.traversal_values(), values)
    _, _, grid, _, _ = handlers.attributes_start(vector_vae.name, {"path": str(tmp_path / "photo.png")})
    pixels = vector_vae.processor(photo(32, 32)).pixel_values
    expected = image_grid(latent_traversal(model, pixels, range(5), values), num_columns=7)
    assert grid.size == (7 * 36, 5 * 36) and (_array(grid) == _array(expected)).all()

    # From the prior mean: row d, column j decodes the code that is 0 except values[j] at d.
    state, base_image, grid, summary, _ = handlers.attributes_start(vector_vae.name, None, from_prior=True)
    assert "the prior mean (0)" in summary and torch.equal(state["base"].code, torch.zeros(5))
    codes = torch.zeros(35, 5)
    for dim in range(5):
        codes[dim * 7 : (dim + 1) * 7, dim] = values
    with torch.inference_mode():
        expected = image_grid(model.decode(codes).sample, num_columns=7)
    assert (_array(grid) == _array(expected)).all()

    samples = handlers.attributes_samples(vector_vae.name, 3)
    with torch.inference_mode():
        reference = model.sample(ATTRIBUTE_SAMPLES, generator=torch.Generator().manual_seed(3))
    assert (_array(samples) == _array(image_grid(reference))).all()


def test_attribute_sliders_on_a_grid_latent_are_the_top_channels_by_kl(demo_models):
    """A grid latent with more channels than sliders: the MAX_SLIDERS channels of largest KL, each
    slider moving its whole channel; a model without a prior cannot start at its mean."""
    torch.manual_seed(1)
    model = latentcode.VAEModel(tiny_config("vae", latent_channels=20)).eval()
    loaded = inference.DemoModel("grid-vae", model, inference.LatentCodeImageProcessor.from_model_config(model.config))
    image = photo(16, 16)
    base = inference.attribute_base(loaded, image)
    pixels = inference.to_model_size(loaded, image)
    with torch.inference_mode():
        posterior = model.encode(pixels).latent_dist
    kl = (0.5 * (posterior.mean.pow(2) + posterior.var - 1 - posterior.logvar))[0].sum((1, 2))
    assert base.dims == torch.argsort(kl, descending=True)[: inference.MAX_SLIDERS].tolist()
    offsets = [0.0] * inference.MAX_SLIDERS
    offsets[2] = -1.0
    code = inference.moved_code(base, offsets)
    expected = posterior.mean[0].clone()
    expected[base.dims[2]] -= 1.0  # the whole 8x8 channel
    torch.testing.assert_close(code, expected)
    with pytest.raises(DemoInputError, match="no prior mean to start from"):
        inference.attribute_base(demo_models["autoencoder"], None)


def test_vector_latent_models_reconstruct_at_their_size_and_say_what_they_are(vector_vae, demo_models, tmp_path):
    from latentcode.demo.app import DemoHandlers

    photo(48, 40).save(tmp_path / "photo.png")
    handlers = DemoHandlers([vector_vae, demo_models["vqvae"]], max_pixels=10**6)
    original, reconstruction, _, summary = handlers.reconstruct(vector_vae.name, {"path": str(tmp_path / "photo.png")})
    assert original.size == reconstruction.size == (32, 32)
    assert "48x40 image resized and centre-cropped to 32x32" in summary and "latent grid 5 " in summary
    assert handlers.attribute_names == [vector_vae.name, demo_models["vqvae"].name]  # a model with a prior first

    table = handlers.model_table([tmp_path / "photo.png"])
    vector_row, vq_row = table.splitlines()[2:]
    assert "VAE on the 'vector' backbone, 3 channels, 5-dimensional latent vector per 32x32 image" in vector_row
    assert re.search(r"bits per 32x32 image, [\d.e-]+ bits per pixel \(KL to the prior N\(0, I\)\)", vector_row)
    assert f"`{vector_vae.name}`" in vector_row
    assert "VQ-VAE on the 'ldm' backbone, 3 channels, 8x8 tokens per 16x16 image (downsampling x2" in vq_row
    assert "64 codes (vq): 1.5 bits per pixel" in vq_row
    assert "384.0 bits per 16x16 image, 1.5 bits per pixel (64 tokens x log2(64))" in vq_row


def test_command_line_takes_models_as_arguments_or_options():
    from latentcode.demo.command import parse_args

    assert parse_args(["--model", "a", "--model", "b"]).models == ["a", "b"]
    assert parse_args(["a", "--model", "b"]).models == ["a", "b"]
    with pytest.raises(SystemExit):
        parse_args(["a", "--model", "a"])


def test_demo_on_the_converted_betab_celeba_checkpoint(tmp_path):
    """The real β-VAE (Burgess et al.'s capacity annealing, CelebA): its 10 dimensions on sliders,
    a face reconstructed, its traversal grid and the model table."""
    checkpoint = SHARED / "pretrained" / "disentangling-vae" / "betaB_celeba"
    if not checkpoint.is_dir() or not (DATASETS / "celeba-samples").is_dir():
        pytest.skip(f"needs {checkpoint} and {DATASETS / 'celeba-samples'} (../shared from the repository root)")
    from latentcode.conversion.disentangling_vae import from_disentangling_vae
    from latentcode.demo.app import DemoHandlers

    from_disentangling_vae(checkpoint).save_pretrained(tmp_path / "betaB_celeba")
    loaded = inference.load_model(str(tmp_path / "betaB_celeba"))
    faces = inference.attribute_examples(DATASETS, tmp_path / "examples")
    assert [path.name for path in faces] == [
        "celeba-000.png",
        "celeba-003.png",
        "celeba-007.png",
        "celeba-012.png",
        "mnist-001.png",
    ]
    handlers = DemoHandlers([loaded], max_pixels=10**6)
    upload = {"path": str(faces[0])}
    _, reconstruction, _, summary = handlers.reconstruct(loaded.name, upload)
    assert reconstruction.size == (64, 64)
    assert float(re.search(r"PSNR ([\d.]+) dB", summary).group(1)) > 12  # blurry (16.7 dB mean, benchmarks), not noise
    state, _, grid, _, labels = handlers.attributes_start(loaded.name, upload)
    assert len([label for label in labels if label]) == 10 and grid.size == (7 * 68, 10 * 68)
    assert (state["base"].kl > 0.5).all()  # capacity annealing to 50 nats: every dimension carries information
    table = handlers.model_table(faces[:1])
    assert "10-dimensional latent vector per 64x64 image" in table and "KL to the prior" in table

    # Blond minus dark-haired faces: adding the vector makes a brown-haired face's hair lighter.
    blond, dark = inference.hair_colour_examples(DATASETS, tmp_path / "hair")
    assert (len(blond), len(dark)) == (14, 15) and blond[0].name == "blond-009.png"
    vector, _ = handlers.attributes_vector(loaded.name, blond, dark)
    state, *_ = handlers.attributes_start(loaded.name, upload)
    zeros = [0.0] * inference.MAX_SLIDERS
    before, after = (_array(handlers.attributes_decode(state, vector, strength, *zeros)) for strength in (0, 1.5))
    hair = (slice(4, 16), slice(16, 48))  # the top of the head, above the forehead
    assert after[hair].mean() > before[hair].mean() + 20, (before[hair].mean(), after[hair].mean())


def _wait_for_new_image(page, selector: str, old_src: str | None) -> None:
    page.wait_for_function(
        "([selector, old]) => { const img = document.querySelector(selector); return img && img.src !== old; }",
        arg=[selector, old_src],
        timeout=30_000,
    )


def _set_slider(page, elem_id: str, value: float) -> None:
    number = page.locator(f"#{elem_id} input[type=number]")
    number.fill(str(value))
    number.press("Enter")


def test_attributes_tab_in_a_real_browser(demo_models, tmp_path, monkeypatch):
    """The tab opens on the prior mean with its sliders shown; encode an image, move a slider: the
    page shows `model.decode` of the moved code; make an attribute vector from two uploaded sets and
    move its strength slider: the image moves by strength x vector. The traversal grid and the
    prior samples appear at a useful size. (On the grid-latent VAE: the vector VAE's random encoder
    gives every image nearly the same code, so its attribute vector would not move a pixel.)"""
    _browser_or_skip()
    from latentcode.demo.app import build_demo
    from latentcode.demo.browser import fetch_image, headless_chromium, serve, shown_size
    from latentcode.traversal import attribute_vector

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    vae = demo_models["vae"]  # 4 latent channels on 8x8 per 16x16 image
    photo(32, 32).save(tmp_path / "photo.png")
    with_paths, without_paths = save_faces(tmp_path / "with", 3, 0), save_faces(tmp_path / "without", 2, 200)
    base = inference.attribute_base(vae, photo(32, 32))
    offsets = [0.0] * 4
    offsets[2] = 2.5
    moved = inference.moved_code(base, offsets)
    expected = inference.to_image(vae, inference.decode_code(vae, moved))
    sets = [vae.processor([PIL.Image.open(path) for path in paths], size=16).pixel_values
            for paths in (with_paths, without_paths)]  # fmt: skip
    vector = attribute_vector(vae.model, *sets)
    expected_with_vector = inference.to_image(vae, inference.decode_code(vae, moved + 2.0 * vector))
    prior_mean = inference.to_image(vae, inference.decode_code(vae, torch.zeros(4, 8, 8)))

    with serve(build_demo([vae])) as url, headless_chromium() as page:
        page.goto(url)
        page.get_by_role("tab", name="Attributes").click()
        # On load, before any button: the prior mean, decoded, with a slider per dimension.
        page.locator("#attributes-summary", has_text="around the prior mean (0)").wait_for(timeout=30_000)
        assert (
            page.locator("#attributes-slider-3").is_visible() and not page.locator("#attributes-slider-4").is_visible()
        )
        output = page.locator("#attributes-output img")
        shown_size(output)
        assert (_array(fetch_image(page, output).convert("RGB")) == _array(prior_mean)).all()
        assert not page.locator("#attributes-strength").is_visible()

        page.set_input_files("#attributes-input input[type=file]", str(tmp_path / "photo.png"))
        page.click("#attributes-button")
        page.locator("#attributes-summary", has_text="around this image's code").wait_for(timeout=30_000)
        width, height = shown_size(page.locator("#attributes-traversal img"))
        assert width >= 256 and height >= 128
        before = output.get_attribute("src")
        _set_slider(page, "attributes-slider-2", 2.5)
        _wait_for_new_image(page, "#attributes-output img", before)
        assert (_array(fetch_image(page, output).convert("RGB")) == _array(expected)).all()

        page.set_input_files("#attributes-with input[type=file]", with_paths)
        page.set_input_files("#attributes-without input[type=file]", without_paths)
        page.locator("#attributes-without", has_text="face-1").wait_for(timeout=30_000)
        page.click("#attributes-vector-button")
        page.locator("#attributes-vector-summary", has_text="3 images with the attribute minus 2").wait_for(
            timeout=30_000
        )
        assert page.locator("#attributes-strength").is_visible()
        before = output.get_attribute("src")
        _set_slider(page, "attributes-strength", 2.0)
        _wait_for_new_image(page, "#attributes-output img", before)
        shown = _array(fetch_image(page, output).convert("RGB"))
        assert (shown == _array(expected_with_vector)).all() and (shown != _array(expected)).any()

        page.click("#attributes-sample-button")
        assert min(shown_size(page.locator("#attributes-samples img"), timeout_ms=30_000)) >= 128
