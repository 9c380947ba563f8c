"""The demo (`latentcode-demo`): what its tabs compute, and the page driven in a real browser."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import tiny_config

import latentcode
from latentcode.demo import inference
from latentcode.demo.browser import find_chromium
from latentcode.demo.inference import DemoInputError
from latentcode.evaluation import psnr
from latentcode.prior import build_prior, sample_images

DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"


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
    from latentcode.demo.app import main

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
    from latentcode.demo.app import build_demo

    wired = {fn.name: len(fn.inputs) for fn in build_demo(models).fns.values()}
    assert wired == {
        "reconstruct": 2, "encode_tokens": 2, "on_pick_cell": 1, "change_token": 3, "compare": 2, "sample": 4,
        "interpolate": 3, "slide": 2,
    }  # fmt: skip


def _browser_or_skip():
    for package in ("gradio", "playwright"):
        pytest.importorskip(package, reason=f"the browser test needs `{package}` (pip install -e '.[dev]')")
    if find_chromium() is None:
        pytest.skip("the browser test needs Debian's chromium on the PATH (apt-get install -y chromium)")


def test_page_in_a_real_browser(demo_models, tmp_path, monkeypatch):
    """Upload an image, press Reconstruct, read the PSNR and the reconstruction's size; click a
    token and decode it changed; upload a broken file and read the error."""
    _browser_or_skip()
    from latentcode.demo.app import build_demo
    from latentcode.demo.browser import headless_chromium, serve

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

            page.get_by_role("tab", name="Codes").click()
            page.set_input_files("#codes-input input[type=file]", str(tmp_path / "photo.png"))
            page.click("#codes-button")
            grid = page.locator("#codes-grid img")
            grid.wait_for(timeout=30_000)
            box = grid.bounding_box()
            width = grid.evaluate("img => img.naturalWidth")
            cell = inference.grid_cell_size(expected.indices) * box["width"] / width  # displayed pixels per token
            page.mouse.click(box["x"] + 5.5 * cell, box["y"] + 2.5 * cell)
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
