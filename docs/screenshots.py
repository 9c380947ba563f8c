"""Screenshots of the demo's tabs, taken in headless chromium: `docs/demo-*.jpg` in the README.

    python docs/screenshots.py VQVAE VAE [--prior PRIOR] [--output_dir docs]

Needs the `demo` extra, playwright and Debian's chromium (see `latentcode.demo.browser`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from latentcode.demo import inference
from latentcode.demo.app import build_demo
from latentcode.demo.browser import headless_chromium, serve

DATASETS = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"


def shoot(page, path: Path) -> None:
    # JPEG: a third of the PNG's size, and the text stays sharp at quality 85.
    page.screenshot(path=path, full_page=True, type="jpeg", quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vqvae")
    parser.add_argument("vae")
    parser.add_argument("--prior")
    parser.add_argument("--output_dir", default=str(Path(__file__).parent))
    args = parser.parse_args()
    models = [inference.load_model(args.vqvae), inference.load_model(args.vae)]
    prior, prior_model = inference.load_prior(args.prior, models) if args.prior else (None, None)
    examples = inference.example_images(DATASETS, tempfile.mkdtemp(), multiple_of=16)
    kodak, cifar = examples[0], examples[-1]
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)

    with serve(build_demo(models, prior, prior_model, examples)) as url, headless_chromium((1280, 1000)) as page:
        page.goto(url)
        page.set_input_files("#reconstruct-input input[type=file]", str(kodak))
        page.click("#reconstruct-button")
        page.locator("#reconstruct-summary", has_text="PSNR").wait_for(timeout=300_000)
        shoot(page, output / "demo-reconstruct.jpg")

        page.get_by_role("tab", name="Codes").click()
        page.set_input_files("#codes-input input[type=file]", str(cifar))
        page.click("#codes-button")
        grid = page.locator("#codes-grid img")
        grid.wait_for(timeout=60_000)
        box = grid.bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.4)
        page.get_by_text("Token (row").wait_for(timeout=60_000)
        page.get_by_label("new code").fill("7")
        page.get_by_role("button", name="Decode with this token changed").click()
        page.locator("#codes-edited img").wait_for(timeout=60_000)
        shoot(page, output / "demo-codes.jpg")

        page.get_by_role("tab", name="Compare").click()
        page.set_input_files("#compare-input input[type=file]", str(examples[1]))
        page.click("#compare-button")
        page.locator("#compare-gallery img").first.wait_for(timeout=300_000)
        shoot(page, output / "demo-compare.jpg")

        page.get_by_role("tab", name="Generate").click()
        page.click("#sample-button")
        page.locator("#samples img").wait_for(timeout=300_000)
        page.set_input_files("#interpolate-start input[type=file]", str(examples[-2]))
        page.set_input_files("#interpolate-end input[type=file]", str(cifar))
        page.click("#interpolate-button")
        page.locator("#interpolate-strip img").wait_for(timeout=300_000)
        shoot(page, output / "demo-generate.jpg")


if __name__ == "__main__":
    main()
