"""Screenshots of the demo's tabs, taken in headless chromium: `docs/demo-*.jpg` in the README.

    python docs/screenshots.py taef2 betaB-celeba quickstart-vqvae [--prior PRIOR] [--output_dir docs]
    python docs/screenshots.py photo-tokenizer-taef2 taef2 betaB-celeba --tabs reconstruct codes

The models as `latentcode-demo` takes them, by the names the page shows: run it where the models
are, under the names a user gives them (the README's steps make the first three in the
repository's root; the photo tokenizer's preset writes `photo-tokenizer-taef2`). The first
is preselected (Reconstruct at full resolution on a Kodak photo: taef2, or the photo tokenizer
with its bits per pixel); the Attributes tab opens on the first VAE, at its prior mean, and is
shot with the blond-minus-dark-haired attribute vector on a face. The Codes tab is shot when a
VQ-VAE is among them, with the first one: on a Kodak photo for a photo tokenizer (trained at
`PHOTO_SIZE` pixels or more), a digit for a grey-scale one, else a CIFAR-10 image; a token near
the middle is picked and set to the code half the codebook away. `--tabs` shoots only the tabs
named. Needs the `demo` extra, playwright and Debian's chromium (see `latentcode.demo.browser`).
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from latentcode.demo import inference
from latentcode.demo.app import build_demo
from latentcode.demo.browser import click_image_at, headless_chromium, serve, shown_size

DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
SLOW_MS = 600_000  # a 768x512 photo through every model on a busy CPU
ATTRIBUTE_FACE = "005.png"  # a brown-haired face of the CelebA samples, not in either hair-colour set
PHOTO_SIZE = 128  # a VQ-VAE trained on images this large or larger is shot on a Kodak photo
TABS = ("reconstruct", "attributes", "codes", "compare", "generate")


def shoot(page, path: Path, *images: str) -> None:
    """Screenshot once each `images` selector's <img> has loaded (half-loaded PNGs draw as strips)."""
    for selector in images:
        shown_size(page.locator(selector), timeout_ms=SLOW_MS)
    # JPEG: a third of the PNG's size, and the text stays sharp at quality 85.
    page.screenshot(path=path, full_page=True, type="jpeg", quality=85)


def shoot_attributes(page, face: Path, output: Path) -> None:
    """The tab with `face` encoded, moved along the attribute vector of the prefilled image sets."""
    page.get_by_role("tab", name="Attributes").click()
    page.locator("#attributes-slider-0").wait_for(timeout=SLOW_MS)  # shown on load, at the prior mean
    page.set_input_files("#attributes-input input[type=file]", str(face))
    page.click("#attributes-button")
    page.locator("#attributes-summary", has_text="this image's code").wait_for(timeout=SLOW_MS)
    page.click("#attributes-vector-button")
    page.locator("#attributes-vector-summary", has_text="Attribute vector").wait_for(timeout=SLOW_MS)
    decoded = page.locator("#attributes-output img")
    before = decoded.get_attribute("src")
    number = page.locator("#attributes-strength input[type=number]")
    number.fill("1.5")
    number.press("Enter")
    page.wait_for_function(
        "([selector, old]) => { const img = document.querySelector(selector); return img && img.src !== old; }",
        arg=["#attributes-output img", before],
        timeout=SLOW_MS,
    )
    page.click("#attributes-sample-button")
    shoot(page, output / "demo-attributes.jpg", "#attributes-traversal img", "#attributes-samples img")


def shoot_codes(page, image: Path, codebook_size: int, output: Path) -> None:
    """The tab with `image` encoded by the first VQ-VAE, the token 40 % of the way across and down
    picked (on the grid as shown: `click_image_at`) and changed to the code half the codebook away."""
    page.get_by_role("tab", name="Codes").click()
    page.set_input_files("#codes-input input[type=file]", str(image))
    page.click("#codes-button")
    page.locator("#codes-summary", has_text="PSNR").wait_for(timeout=SLOW_MS)
    grid = page.locator("#codes-grid img")
    width, height = grid.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    click_image_at(page, grid, width * 0.4, height * 0.4)
    line = page.locator("#codes-selected", has_text="Token (row")
    line.wait_for(timeout=SLOW_MS)
    code = int(re.search(r"code (\d+)\.", line.inner_text()).group(1))
    page.locator("#codes-code input").fill(str((code + codebook_size // 2) % codebook_size))
    page.click("#codes-change-button")
    shoot(page, output / "demo-codes.jpg", "#codes-grid img", "#codes-edited img", "#codes-edited-difference img")


def codes_image(loaded, kodak: Path, digit: Path, cifar: Path) -> Path:
    """What the Codes tab encodes for `loaded`: a Kodak photo for a photo tokenizer, a digit for a
    grey-scale model, else a CIFAR-10 image."""
    if loaded.model.config.in_channels == 1:
        return digit
    return kodak if loaded.model.config.sample_size >= PHOTO_SIZE else cifar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--prior")
    parser.add_argument("--output_dir", default=str(Path(__file__).parent))
    parser.add_argument("--tabs", nargs="+", choices=TABS, default=list(TABS), help="the tabs to shoot (default: all)")
    args = parser.parse_args()
    models = [inference.load_model(name) for name in args.models]
    prior, prior_model = inference.load_prior(args.prior, models) if args.prior else (None, None)
    examples_dir = tempfile.mkdtemp()
    examples = inference.example_images(DATASETS, examples_dir, multiple_of=16)
    faces = inference.attribute_examples(DATASETS, examples_dir)
    hair_colour = inference.hair_colour_examples(DATASETS, examples_dir)
    kodak, cifar = examples[0], examples[-1]
    digit = next((path for path in faces if path.name.startswith("mnist")), cifar)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)

    demo = build_demo(models, prior, prior_model, examples, attribute_examples=faces, attribute_sets=hair_colour)
    with serve(demo) as url, headless_chromium((1280, 1000)) as page:
        page.goto(url)
        if "reconstruct" in args.tabs:
            page.set_input_files("#reconstruct-input input[type=file]", str(kodak))
            page.click("#reconstruct-button")
            page.locator("#reconstruct-summary", has_text="PSNR").wait_for(timeout=SLOW_MS)
            shoot(page, output / "demo-reconstruct.jpg", "#reconstruct-original img", "#reconstruct-difference img")
        if "attributes" in args.tabs:
            shoot_attributes(page, DATASETS / "celeba-samples" / ATTRIBUTE_FACE if faces else kodak, output)
        tokenizers = [loaded for loaded in models if loaded.has_tokens]
        if "codes" in args.tabs and tokenizers:
            image = codes_image(tokenizers[0], kodak, digit, cifar)
            shoot_codes(page, image, tokenizers[0].model.codebook_size, output)
        if "compare" in args.tabs:
            page.get_by_role("tab", name="Compare").click()
            page.set_input_files("#compare-input input[type=file]", str(examples[1]))
            page.click("#compare-button")
            page.locator("#compare-table", has_text="PSNR").wait_for(timeout=SLOW_MS)
            shoot(page, output / "demo-compare.jpg", "#compare-gallery img >> nth=0")
        if "generate" in args.tabs:
            shoot_generate(page, faces, examples, cifar, output)


def shoot_generate(page, faces: list[Path], examples: list[Path], cifar: Path, output: Path) -> None:
    """Samples of the first model that samples, and the interpolation between two faces (or photos)."""
    page.get_by_role("tab", name="Generate").click()
    page.click("#sample-button")
    page.locator("#samples img").wait_for(timeout=SLOW_MS)
    page.set_input_files("#interpolate-start input[type=file]", str(faces[0] if faces else examples[-2]))
    page.set_input_files("#interpolate-end input[type=file]", str(faces[2] if faces else cifar))
    page.click("#interpolate-button")
    shoot(page, output / "demo-generate.jpg", "#samples img", "#interpolate-strip img", "#interpolate-frame img")


if __name__ == "__main__":
    main()
