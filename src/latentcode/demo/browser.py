"""The demo served on a free local port and a headless chromium to drive it (tests, screenshots):
[`serve`], [`headless_chromium`], and what a test or a screenshot reads or clicks on an image of
the page ([`shown_size`], [`fetch_image`], [`click_image_at`]).

Chromium is Debian's (`apt-get install -y chromium`), driven by playwright (`pip install
playwright`, no `playwright install`); the flags keep it off the network and the GPU.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Iterator

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def find_chromium() -> str | None:
    """The chromium executable on the PATH (Debian installs `/usr/bin/chromium`), or `None`."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def serve(demo) -> Iterator[str]:
    """Launch a Gradio `demo` on a free localhost port; yields its URL and closes it afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    from .app import launch

    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@contextlib.contextmanager
def headless_chromium(viewport: tuple[int, int] = (1280, 900)):
    """A playwright page in headless chromium; raises `FileNotFoundError` when chromium is missing."""
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    if executable is None:
        raise FileNotFoundError("no chromium on the PATH: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_FLAGS))
        try:
            yield browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        finally:
            browser.close()


# The size an <img> is drawn at: its box, less the bands `object-fit: contain` leaves empty; 0x0
# until the image has loaded (a half-loaded PNG draws as a strip).
_SHOWN_SIZE_JS = """img => {
    if (!img.complete || !img.naturalWidth) return [0, 0];
    const box = img.getBoundingClientRect();
    const scale = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight);
    return [img.naturalWidth * scale, img.naturalHeight * scale];
}"""


def shown_size(image_locator, timeout_ms: int = 20_000) -> tuple[float, float]:
    """(width, height) in CSS pixels at which the page draws the loaded image of a playwright
    locator of an `<img>` (waits until it has loaded)."""
    image_locator.wait_for(timeout=timeout_ms)
    image_locator.page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image_locator.element_handle(), timeout=timeout_ms
    )
    width, height = image_locator.evaluate(_SHOWN_SIZE_JS)
    return width, height


def fetch_image(page, image_locator):
    """The PIL image an `<img>` of the page shows, fetched from its `src` by the page's context."""
    import io

    import PIL.Image

    response = page.request.get(image_locator.get_attribute("src"))
    return PIL.Image.open(io.BytesIO(response.body()))


def click_image_at(page, image_locator, x: float, y: float) -> None:
    """Click the point (x, y), in the image's own pixels, of a loaded `<img>` of the page drawn
    scaled to fit its box, centred, its aspect kept (as `object-fit: contain` draws it). The image
    is scrolled into view first: the mouse clicks inside the window only."""
    image_locator.scroll_into_view_if_needed()
    box = image_locator.bounding_box()
    natural_width, natural_height = image_locator.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    shown_width, shown_height = image_locator.evaluate(_SHOWN_SIZE_JS)
    scale = shown_width / natural_width
    left = box["x"] + (box["width"] - shown_width) / 2
    top = box["y"] + (box["height"] - shown_height) / 2
    page.mouse.click(left + x * scale, top + y * scale)
