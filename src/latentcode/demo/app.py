"""The demo page (Gradio) and the `latentcode-demo` command.

    latentcode-demo MODEL [MODEL ...] [--prior PRIOR] [--port 7860]

MODEL is a folder or Hub id of a latentcode model (offline from the Hugging Face cache with
`HF_HUB_OFFLINE=1`); PRIOR a VQ-VAE prior saved by `training/train_prior.py`. As a Space's
`app.py` this file runs as it is, with the models in `LATENTCODE_DEMO_MODELS` (space-separated)
and the prior in `LATENTCODE_DEMO_PRIOR`.

Image uploads reach the handlers unprocessed (`preprocess=False`) so that `inference.open_image`,
not Gradio, opens them and every unreadable, oversized or misfitting file gets a readable
message in the page.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import tempfile

import torch

# Absolute imports: a Space runs a copy of this file as a script, outside the package.
from latentcode.demo import inference
from latentcode.demo.inference import DemoInputError, DemoModel
from latentcode.grids import image_grid

logger = logging.getLogger(__name__)

INSTALL_HINT = 'The demo needs Gradio: pip install "latentcode[demo]"  (or: pip install gradio)'
INTERPOLATION_STEPS = 9
MAX_SAMPLES = 16
# Outputs fill their box, so that 32x32 reconstructions are as visible as 768x512 ones.
PAGE_CSS = ".fill-box img { width: 100%; height: 100%; object-fit: contain; }"
OUTPUT_HEIGHT = 300


def import_gradio():
    """`gradio`, or `SystemExit` saying how to install it."""
    try:
        import gradio
    except ImportError as error:
        raise SystemExit(INSTALL_HINT) from error
    return gradio


def _upload_path(payload) -> str | None:
    """The server-side file of an unprocessed image upload (Gradio has checked it is an upload)."""
    if payload is None:
        return None
    return payload.get("path") if isinstance(payload, dict) else payload


def build_demo(
    models: list[DemoModel],
    prior=None,
    prior_model: DemoModel | None = None,
    examples: list = (),
    max_pixels: int = 4_000_000,
):
    """The page: tabs Reconstruct, Codes, Compare and Generate over `models`.

    Args:
        models: loaded models ([`inference.load_model`]); the first is preselected.
        prior / prior_model: a VQ-VAE prior and the model it samples codes for ([`inference.load_prior`]).
        examples: image files offered under every image input.
        max_pixels: larger uploads are refused with a message.
    """
    gr = import_gradio()
    by_name = {loaded.name: loaded for loaded in models}
    names = list(by_name)
    vq_names = [loaded.name for loaded in models if loaded.is_vq]
    residual_vq = any(loaded.is_vq and (loaded.model.config.num_quantizers or 1) > 1 for loaded in models)
    sampling_names = [loaded.name for loaded in models if loaded.family == "VAE" or loaded is prior_model]
    examples = [[str(path)] for path in examples]

    def shown_in_page(handler):
        """User mistakes (and the library's `ValueError`s) become a message in the page; anything else
        too, with the traceback in the server log instead of the browser."""

        @functools.wraps(handler)
        def wrapper(*args):
            try:
                return handler(*args)
            except ValueError as error:
                raise gr.Error(str(error), duration=None, print_exception=False) from error
            except Exception as error:
                logger.exception("demo handler %s failed", handler.__name__)
                raise gr.Error(f"Internal error ({type(error).__name__}: {error}).", duration=None) from error

        return wrapper

    def pick(name: str) -> DemoModel:
        if name not in by_name:
            raise DemoInputError(f"Pick a model: one of {names}, got {name!r}.")
        return by_name[name]

    def open_upload(payload):
        return inference.open_image(_upload_path(payload), max_pixels)

    def image_input(label: str, elem_id: str):
        return gr.Image(label=label, type="filepath", sources=["upload", "clipboard"], elem_id=elem_id)

    def image_output(label: str, elem_id: str):
        return gr.Image(
            label=label, type="pil", format="png", interactive=False, elem_id=elem_id, height=OUTPUT_HEIGHT,
            elem_classes=["fill-box"],
        )  # fmt: skip

    def model_table() -> str:
        rows = "\n".join(f"| `{loaded.name}` | {loaded.describe()} |" for loaded in models)
        return f"| model | |\n|---|---|\n{rows}"

    # -- handlers -------------------------------------------------------------------------------

    @shown_in_page
    def on_reconstruct(name, payload):
        loaded = pick(name)
        pixels, notes = inference.to_pixels(loaded, open_upload(payload))
        result = inference.reconstruct(loaded, pixels)
        summary = " ".join([result.summary(), *notes])
        return (
            inference.to_image(loaded, result.original),
            inference.to_image(loaded, result.reconstruction),
            inference.difference_image(result.original, result.reconstruction),
            summary,
        )

    @shown_in_page
    def on_encode_tokens(name, payload):
        loaded = pick(name)
        pixels, notes = inference.to_pixels(loaded, open_upload(payload))
        result = inference.reconstruct(loaded, pixels)
        state = {"model": name, "indices": result.indices, "reconstruction": result.reconstruction, "cell": None}
        return (
            inference.token_grid_image(result.indices),
            inference.code_histogram(result.indices, loaded.model.codebook_size),
            inference.to_image(loaded, result.reconstruction),
            " ".join([result.summary(), *notes]),
            state,
            "Click a cell of the token grid.",
        )

    def on_pick_cell(state, event):
        if not state:
            raise DemoInputError("Encode an image first.")
        indices = state["indices"]
        cell = inference.grid_cell_size(indices)
        col, row = (int(coordinate) // cell for coordinate in event.index)
        if not (0 <= row < indices.shape[1] and 0 <= col < indices.shape[2]):
            raise DemoInputError("Click inside the token grid.")
        state = {**state, "cell": (row, col)}
        code = int(indices[0, row, col] if indices.dim() == 3 else indices[0, row, col, 0])
        return (
            state,
            inference.token_grid_image(indices, marked=(row, col)),
            f"Token (row {row}, col {col}): code {code}.",
            code,
        )

    # A real class, not the string `from __future__` makes of it: Gradio injects the click by this type.
    on_pick_cell.__annotations__["event"] = gr.SelectData
    on_pick_cell = shown_in_page(on_pick_cell)

    @shown_in_page
    def on_change_token(state, code, level):
        if not state or state["cell"] is None:
            raise DemoInputError("Encode an image and click a cell of the token grid first.")
        if code is None or level is None:
            raise DemoInputError("Give a code (and a level for residual VQ).")
        loaded = pick(state["model"])
        row, col = state["cell"]
        edited = inference.change_token(loaded, state["indices"], row, col, int(code), int(level))
        return inference.to_image(loaded, edited), inference.difference_image(state["reconstruction"], edited)

    @shown_in_page
    def on_compare(chosen, payload):
        if not chosen:
            raise DemoInputError("Pick at least one model to compare.")
        image = open_upload(payload)
        gallery, rows = [], []
        for name in chosen:
            loaded = pick(name)
            try:
                pixels, _ = inference.to_pixels(loaded, image)
            except DemoInputError as error:
                rows.append(f"| `{name}` | {error} | | | |")
                continue
            result = inference.reconstruct(loaded, pixels)
            if not gallery:
                gallery.append((inference.to_image(loaded, result.original), "original"))
            gallery.append((inference.to_image(loaded, result.reconstruction), f"{name}: {result.psnr:.2f} dB"))
            rows.append(
                f"| `{name}` | {result.psnr:.2f} | {result.ssim_text} | {result.grid_text} | {result.bits:,.0f} "
                f"({result.bits_per_pixel:.4f} bpp) |"
            )
        table = "| model | PSNR (dB) | SSIM | latent grid | bits per image |\n|---|---|---|---|---|\n" + "\n".join(rows)
        return gallery, table

    @shown_in_page
    def on_sample(name, count, seed, temperature):
        loaded = pick(name)
        samples = inference.prior_samples(
            loaded,
            int(count),
            int(seed or 0),
            prior=prior if loaded is prior_model else None,
            temperature=float(temperature),
        )
        return image_grid(samples)

    @shown_in_page
    def on_interpolate(name, start_payload, end_payload):
        loaded = pick(name)
        frames, strip = inference.interpolation_frames(
            loaded, open_upload(start_payload), open_upload(end_payload), INTERPOLATION_STEPS
        )
        return frames, strip, frames[INTERPOLATION_STEPS // 2], 0.5

    def on_slide(frames, weight):
        if not frames:
            return None
        return frames[round(float(weight) * (len(frames) - 1))]

    # -- page -----------------------------------------------------------------------------------

    with gr.Blocks(title="latentcode demo") as demo:
        gr.Markdown("# latentcode: image tokenizers at work\n" + model_table())

        with gr.Tab("Reconstruct"):
            with gr.Row():
                with gr.Column(scale=1):
                    model = gr.Dropdown(names, value=names[0], label="model")
                    image = image_input("image (at its own size)", "reconstruct-input")
                    button = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct-button")
                    if examples:
                        gr.Examples(examples, inputs=[image], label="examples")
                with gr.Column(scale=3):
                    summary = gr.Markdown(elem_id="reconstruct-summary")
                    with gr.Row():
                        original = image_output("original", "reconstruct-original")
                        reconstruction = image_output("reconstruction", "reconstruct-output")
                        difference = image_output(
                            f"|difference| x {inference.DIFFERENCE_GAIN}", "reconstruct-difference"
                        )
            button.click(
                on_reconstruct, [model, image], [original, reconstruction, difference, summary], preprocess=False
            )

        with gr.Tab("Codes"):
            if not vq_names:
                gr.Markdown("No VQ-VAE loaded: tokens exist only for VQ-VAE models.")
            else:
                tokens_state = gr.State()
                with gr.Row():
                    with gr.Column(scale=1):
                        vq_model = gr.Dropdown(vq_names, value=vq_names[0], label="VQ-VAE")
                        vq_image = image_input("image", "codes-input")
                        encode_button = gr.Button("Encode to tokens", variant="primary", elem_id="codes-button")
                        if examples:
                            gr.Examples(examples, inputs=[vq_image], label="examples")
                    with gr.Column(scale=3):
                        tokens_summary = gr.Markdown()
                        with gr.Row():
                            grid = gr.Image(
                                label="tokens (one colour per code): click one", type="pil", format="png",
                                interactive=False, elem_id="codes-grid",
                            )  # fmt: skip
                            histogram = image_output("codes used by this image", "codes-histogram")
                        with gr.Row():
                            token_reconstruction = image_output("decoded tokens", "codes-reconstruction")
                            edited = image_output("decoded with the token changed", "codes-edited")
                            edit_difference = image_output(
                                f"|change| x {inference.DIFFERENCE_GAIN}", "codes-edited-difference"
                            )
                        selected = gr.Markdown()
                        with gr.Row():
                            code = gr.Number(label="new code", value=0, precision=0)
                            level = gr.Number(label="level (residual VQ)", value=0, precision=0, visible=residual_vq)
                            change_button = gr.Button("Decode with this token changed")
                encode_button.click(
                    on_encode_tokens,
                    [vq_model, vq_image],
                    [grid, histogram, token_reconstruction, tokens_summary, tokens_state, selected],
                    preprocess=False,
                )
                grid.select(on_pick_cell, [tokens_state], [tokens_state, grid, selected, code])
                change_button.click(on_change_token, [tokens_state, code, level], [edited, edit_difference])

        with gr.Tab("Compare"):
            with gr.Row():
                with gr.Column(scale=1):
                    chosen = gr.CheckboxGroup(names, value=names, label="models")
                    compare_image = image_input("image", "compare-input")
                    compare_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
                    if examples:
                        gr.Examples(examples, inputs=[compare_image], label="examples")
                with gr.Column(scale=3):
                    gallery = gr.Gallery(
                        label="side by side", columns=len(names) + 1, format="png", elem_id="compare-gallery",
                        object_fit="contain", height=OUTPUT_HEIGHT + 60,
                    )  # fmt: skip
                    table = gr.Markdown()
            compare_button.click(on_compare, [chosen, compare_image], [gallery, table], preprocess=False)

        with gr.Tab("Generate"):
            gr.Markdown("### Samples")
            if not sampling_names:
                gr.Markdown("No model here samples: load a VAE, or a VQ-VAE with `--prior`.")
            else:
                with gr.Row():
                    with gr.Column(scale=1):
                        sample_model = gr.Dropdown(sampling_names, value=sampling_names[0], label="model")
                        count = gr.Slider(1, MAX_SAMPLES, value=8, step=1, label="samples")
                        seed = gr.Number(value=0, precision=0, label="seed")
                        temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="temperature (VQ-VAE prior)")
                        sample_button = gr.Button("Sample", variant="primary", elem_id="sample-button")
                    with gr.Column(scale=3):
                        samples = image_output("samples", "samples")
                sample_button.click(on_sample, [sample_model, count, seed, temperature], [samples])
            gr.Markdown("### Interpolation between two images (resized and cropped to the model's size)")
            frames_state = gr.State()
            with gr.Row():
                with gr.Column(scale=1):
                    path_model = gr.Dropdown(names, value=names[0], label="model")
                    with gr.Row():
                        start = image_input("from", "interpolate-start")
                        end = image_input("to", "interpolate-end")
                    interpolate_button = gr.Button("Interpolate", variant="primary", elem_id="interpolate-button")
                    if examples:
                        gr.Examples([[a[0], b[0]] for a, b in zip(examples[:2], examples[1:3])], inputs=[start, end])
                with gr.Column(scale=3):
                    strip = image_output("the path", "interpolate-strip")
                    weight = gr.Slider(0, 1, value=0.5, step=1 / (INTERPOLATION_STEPS - 1), label="position")
                    frame = image_output("at this position", "interpolate-frame")
            interpolate_button.click(
                on_interpolate, [path_model, start, end], [frames_state, strip, frame, weight], preprocess=False
            )
            weight.change(on_slide, [frames_state, weight], [frame])
    return demo


def launch(demo, **options) -> None:
    """`demo.launch(**options)` with the page's style sheet."""
    demo.launch(css=PAGE_CSS, **options)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="latentcode-demo", description="A web page that shows latentcode models at work."
    )
    parser.add_argument(
        "models", nargs="*", metavar="MODEL",
        help="latentcode model folders or Hub ids (default: $LATENTCODE_DEMO_MODELS, space-separated)",
    )  # fmt: skip
    parser.add_argument(
        "--prior", default=os.environ.get("LATENTCODE_DEMO_PRIOR"), help="a VQ-VAE prior folder or Hub id"
    )
    parser.add_argument("--host", default=None, help="address to serve on (default: Gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--tile_size", type=int, default=None, help="larger images are encoded and decoded in tiles of this size "
        f"(default: the model's sample_size, at least {inference.MIN_TILE_SIZE})",
    )  # fmt: skip
    parser.add_argument("--max_megapixels", type=float, default=4.0, help="larger uploads are refused")
    parser.add_argument(
        "--datasets_dir", default="../shared/datasets", help="Kodak / CIFAR-10 examples; else scikit-image's photos"
    )
    parser.add_argument("--share", action="store_true", help="a public gradio.live link")
    args = parser.parse_args(argv)
    args.models = args.models or os.environ.get("LATENTCODE_DEMO_MODELS", "").split()
    if not args.models:
        parser.error("give at least one MODEL (or set LATENTCODE_DEMO_MODELS)")
    if len(set(args.models)) != len(args.models):
        parser.error(f"each MODEL once, got {args.models}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import_gradio()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.INFO)
    models = [inference.load_model(name, args.device, args.tile_size) for name in args.models]
    prior, prior_model = inference.load_prior(args.prior, models) if args.prior else (None, None)
    examples_dir = tempfile.mkdtemp(prefix="latentcode-demo-examples-")
    largest_factor = max(loaded.model.downsampling_factor for loaded in models)
    examples = inference.example_images(args.datasets_dir, examples_dir, multiple_of=max(16, largest_factor))
    demo = build_demo(models, prior, prior_model, examples, max_pixels=int(args.max_megapixels * 1e6))
    launch(demo, server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[examples_dir])


if __name__ == "__main__":
    sys.exit(main())
