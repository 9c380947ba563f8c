"""Screenshots of the demo's tabs, taken in headless chromium: `docs/demo-*.jpg` in the README.

    python docs/screenshots.py taef2 betaB-celeba quickstart-vqvae [--prior PRIOR] [--output_dir docs]

The models as `latentcode-demo` takes them, by the names the page shows: run it where the models
are, under the names a user gives them (the README's steps make these three in the repository's
root). The first is preselected (Reconstruct at full resolution: taef2); the Attributes tab opens
on the first VAE, at its prior mean, and is shot with the blond-minus-dark-haired attribute vector
on a face. The Codes tab is shot only when a VQ-VAE is among them (on a digit for a grey-scale
one). Needs the `demo` extra, playwright and Debian's chromium (see `latentcode.demo.browser`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from latentcode.demo import inference
from latentcode.demo.app import build_demo
from latentcode.demo.browser import headless_chromium, serve, shown_size

DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
SLOW_MS = 600_000  # a 768x512 photo through every model on a busy CPU
ATTRIBUTE_FACE = "005.png"  # a brown-haired face of the CelebA samples, not in either hair-colour set


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


def shoot_codes(page, image: Path, output: Path) -> None:
    page.get_by_role("tab", name="Codes").click()
    page.set_input_files("#codes-input input[type=file]", str(image))
    page.click("#codes-button")
    grid = page.locator("#codes-grid img")
    grid.wait_for(timeout=SLOW_MS)
    box = grid.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.4)
    page.get_by_text("Token (row").wait_for(timeout=SLOW_MS)
    page.get_by_label("new code").fill("7")
    page.get_by_role("button", name="Decode with this token changed").click()
    shoot(page, output / "demo-codes.jpg", "#codes-edited img")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--prior")
    parser.add_argument("--output_dir", default=str(Path(__file__).parent))
    args = parser.parse_args()
    models = [inference.load_model(name) for name in args.models]
    prior, prior_model = inference.load_prior(args.prior, models) if args.prior else (None, None)
    examples_dir = tempfile.mkdtemp()
    examples = inference.example_images(DATASETS, examples_dir, multiple_of=16)
    faces = inference.attribute_examples(DATASETS, examples_dir)
    hair_colour = inference.hair_colour_examples(DATASETS, examples_dir)
    kodak, cifar = examples[0], examples[-1]
    digit = next((path for path in faces if path.name.startswith("mnist")), cifar)
    grey_tokens = any(loaded.has_tokens and loaded.model.config.in_channels == 1 for loaded in models)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)

    demo = build_demo(models, prior, prior_model, examples, attribute_examples=faces, attribute_sets=hair_colour)
    with serve(demo) as url, headless_chromium((1280, 1000)) as page:
        page.goto(url)
        page.set_input_files("#reconstruct-input input[type=file]", str(kodak))
        page.click("#reconstruct-button")
        page.locator("#reconstruct-summary", has_text="PSNR").wait_for(timeout=SLOW_MS)
        shoot(page, output / "demo-reconstruct.jpg", "#reconstruct-original img", "#reconstruct-difference img")

        shoot_attributes(page, DATASETS / "celeba-samples" / ATTRIBUTE_FACE if faces else kodak, output)
        if any(loaded.has_tokens for loaded in models):
            shoot_codes(page, digit if grey_tokens else cifar, output)

        page.get_by_role("tab", name="Compare").click()
        page.set_input_files("#compare-input input[type=file]", str(examples[1]))
        page.click("#compare-button")
        page.locator("#compare-table", has_text="PSNR").wait_for(timeout=SLOW_MS)
        shoot(page, output / "demo-compare.jpg", "#compare-gallery img >> nth=0")

        page.get_by_role("tab", name="Generate").click()
        page.click("#sample-button")
        page.locator("#samples img").wait_for(timeout=SLOW_MS)
        page.set_input_files("#interpolate-start input[type=file]", str(faces[0] if faces else examples[-2]))
        page.set_input_files("#interpolate-end input[type=file]", str(faces[2] if faces else cifar))
        page.click("#interpolate-button")
        shoot(page, output / "demo-generate.jpg", "#samples img", "#interpolate-strip img", "#interpolate-frame img")


if __name__ == "__main__":
    main()
