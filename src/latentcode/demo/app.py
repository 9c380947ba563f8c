"""The demo page (Gradio); the `latentcode-demo` command line is `command.py` (which a Space
running this file calls).

    latentcode-demo MODEL [MODEL ...] [--prior PRIOR] [--port 7860]
    latentcode-demo --model MODEL [--model MODEL ...]

MODEL is a folder or Hub id of a latentcode model (offline from the Hugging Face cache with
`HF_HUB_OFFLINE=1`); PRIOR a VQ-VAE prior saved by `training/train_prior.py`. As a Space's
`app.py` this file runs as it is, with the models in `LATENTCODE_DEMO_MODELS` (space-separated)
and the prior in `LATENTCODE_DEMO_PRIOR`. For example, the converted published checkpoints
(README, "pretrained models"): `latentcode-demo --model taef2 --model betaB_celeba` shows taef2's
full-resolution reconstructions of photos and betaB_celeba's ten face attributes on sliders.

Tabs: Reconstruct (an image at its own size, PSNR / SSIM / bits), Attributes (a slider per latent
dimension, decoded live, opening on the prior mean; an attribute vector from two image sets on a
strength slider; the traversal grid, samples from the prior), Codes (a VQ-VAE's tokens),
Compare (every model on one image) and Generate (samples, interpolation).

Image uploads reach the handlers unprocessed (`preprocess=False`) so that `inference.open_image`,
not Gradio, opens them and every unreadable, oversized or misfitting file gets a readable
message in the page.
"""

from __future__ import annotations

import functools
import logging
import math
import sys

# Absolute imports: a Space runs a copy of this file as a script, outside the package.
from latentcode.demo import (
    inference,
    main,  # noqa: F401  (the command line, command.py: `latentcode.demo.app:main` as before)
)
from latentcode.demo.inference import DemoInputError, DemoModel
from latentcode.grids import image_grid

logger = logging.getLogger(__name__)

INSTALL_HINT = 'The demo needs Gradio: pip install "latentcode[demo]"  (or: pip install gradio)'
INTERPOLATION_STEPS = 9
MAX_SAMPLES = 16
ATTRIBUTE_SAMPLES = 8
# Outputs fill their box, so that 32x32 reconstructions are as visible as 768x512 ones.
PAGE_CSS = ".fill-box img { width: 100%; height: 100%; object-fit: contain; }"
OUTPUT_HEIGHT = 400
# The token grid and the decoded photo, side by side over the page's width: a 96x64 grid is shown
# some 6 screen pixels per token in a 1280-pixel-wide window, enough to click one.
TOKEN_VIEW_HEIGHT = 480
COST_EXAMPLES = 3  # the header's code cost is the mean over this many of the page's examples


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


# ----------------------------------------------------------------------------------------------
# What the page's buttons do (no layout; Gradio only for its error type)
# ----------------------------------------------------------------------------------------------


class DemoHandlers:
    """The page's handlers over `models`: each takes the inputs of its button and returns the
    values of its outputs; a mistake the user can fix raises [`DemoInputError`].

    Args:
        models: loaded models ([`inference.load_model`]).
        prior / prior_model: a token prior and the model it samples codes for ([`inference.load_prior`]).
        max_pixels: larger uploads are refused with a message.
    """

    def __init__(self, models: list[DemoModel], prior=None, prior_model: DemoModel | None = None, max_pixels=0):
        self.models, self.prior, self.prior_model, self.max_pixels = models, prior, prior_model, max_pixels
        self.by_name = {loaded.name: loaded for loaded in models}
        self.names = list(self.by_name)
        self.token_names = [loaded.name for loaded in models if loaded.has_tokens]
        # The most levels of a residual quantiser among the models: the Codes tab offers that many.
        self.token_levels = max(
            [loaded.model.config.num_quantizers or 1 for loaded in models if loaded.has_tokens], default=1
        )
        self.multilevel_tokens = self.token_levels > 1
        self.sampling_names = [
            loaded.name for loaded in models if loaded.model.can_sample_prior or loaded is prior_model
        ]
        # The Attributes tab opens on a model with a prior: its sliders can start at the prior mean.
        self.attribute_names = sorted(self.names, key=lambda name: not self.by_name[name].model.can_sample_prior)

    def model_table(self, example_paths: list = ()) -> str:
        """A Markdown table: each model, what it is, what its code costs on the page's examples, where it came from."""
        images = [inference.open_image(path, self.max_pixels or 10**8) for path in list(example_paths)[:COST_EXAMPLES]]
        rows = "\n".join(
            f"| `{loaded.name}` | {loaded.describe()} | {loaded.code_cost(images)} | {loaded.source()} |"
            for loaded in self.models
        )
        header = (
            f"| model | what it is | its code, mean over {len(images)} examples at the Attributes tab's size | from |"
        )
        return f"{header}\n|---|---|---|---|\n{rows}"

    def pick(self, name: str) -> DemoModel:
        if name not in self.by_name:
            raise DemoInputError(f"Pick a model: one of {self.names}, got {name!r}.")
        return self.by_name[name]

    def open_upload(self, payload):
        return inference.open_image(_upload_path(payload), self.max_pixels)

    def reconstruct(self, name, payload):
        """-> original, reconstruction, |difference| images and the summary line."""
        loaded = self.pick(name)
        pixels, notes = inference.to_pixels(loaded, self.open_upload(payload))
        result = inference.reconstruct(loaded, pixels)
        return (
            inference.to_image(loaded, result.original),
            inference.to_image(loaded, result.reconstruction),
            inference.difference_image(result.original, result.reconstruction),
            " ".join([result.summary(), *notes]),
        )

    def encode_tokens(self, name, payload):
        """-> token grid, code histogram, decoded tokens, summary, the tokens' state and a hint."""
        loaded = self.pick(name)
        pixels, notes = inference.to_pixels(loaded, self.open_upload(payload))
        result = inference.reconstruct(loaded, pixels)
        state = {"model": name, "indices": result.indices, "reconstruction": result.reconstruction, "cell": None}
        return (
            inference.token_grid_image(result.indices),
            inference.code_histogram(result.indices, loaded.model.codebook_size),
            inference.to_image(loaded, result.reconstruction),
            " ".join([result.summary(), *notes]),
            state,
            "Click a token of the grid.",
        )

    def pick_cell(self, state, position: tuple[int, int], level: int = 0):
        """A click at image `position` (x, y) on the token grid -> the new state, the grid (drawn at
        `level`) with the token marked, a line naming it and its code at that level."""
        if not state:
            raise DemoInputError("Encode an image first.")
        row, col = inference.token_at(state["indices"], position)
        return self._token_view(state, row, col, int(level or 0))

    def show_level(self, state, level):
        """Another level of a residual quantiser's tokens -> the grid drawn at it (the picked token
        marked), the line naming the picked token and its code at that level (as [`pick_cell`];
        a hint and no code while none is picked)."""
        if not state:
            raise DemoInputError("Encode an image first.")
        level = int(level or 0)
        inference.check_level(state["indices"], level)
        if state["cell"] is None:
            return state, inference.token_grid_image(state["indices"], level=level), "Click a token of the grid.", 0
        return self._token_view(state, *state["cell"], level)

    @staticmethod
    def _token_view(state, row: int, col: int, level: int):
        """-> the state with `(row, col)` picked, the grid at `level` with it marked, its line and code."""
        indices = state["indices"]
        code = inference.token_code(indices, row, col, level)
        where = f"row {row}, col {col}" + (f", level {level}" if level else "")
        return (
            {**state, "cell": (row, col)},
            inference.token_grid_image(indices, marked=(row, col), level=level),
            f"Token ({where}): code {code}.",
            code,
        )

    def change_token(self, state, code, level):
        """-> the tokens decoded with the picked one changed, and |change| from the reconstruction
        (on a latent grid, with the token's neighbourhood boxed: one token of a 768x512 photo is a
        dot)."""
        if not state or state["cell"] is None:
            raise DemoInputError("Encode an image and click a cell of the token grid first.")
        if code is None or level is None:
            raise DemoInputError("Give a code (and a level for residual VQ).")
        loaded = self.pick(state["model"])
        row, col = state["cell"]
        edited = inference.change_token(loaded, state["indices"], row, col, int(code), int(level))
        change = inference.difference_image(state["reconstruction"], edited)
        if not loaded.vector_latent:  # a vector latent's token is no place in the image
            change = inference.box_token(change, row, col, loaded.model.downsampling_factor)
        return inference.to_image(loaded, edited), change

    def compare(self, chosen, payload):
        """-> a gallery (the original, then each model's reconstruction) and a Markdown table."""
        if not chosen:
            raise DemoInputError("Pick at least one model to compare.")
        image = self.open_upload(payload)
        gallery, rows = [], []
        for name in chosen:
            loaded = self.pick(name)
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
                f"({result.bits_per_pixel:.4g} bpp) |"
            )
        table = "| model | PSNR (dB) | SSIM | latent grid | bits per image |\n|---|---|---|---|---|\n" + "\n".join(rows)
        return gallery, table

    def sample(self, name, count, seed, temperature):
        loaded = self.pick(name)
        prior = self.prior if loaded is self.prior_model else None
        samples = inference.prior_samples(
            loaded, int(count), int(seed or 0), prior=prior, temperature=float(temperature)
        )
        return image_grid(samples)

    def interpolate(self, name, start_payload, end_payload):
        """-> the frames, their strip, the middle frame and the slider's position (0.5)."""
        loaded = self.pick(name)
        frames, strip = inference.interpolation_frames(
            loaded, self.open_upload(start_payload), self.open_upload(end_payload), INTERPOLATION_STEPS
        )
        return frames, strip, frames[INTERPOLATION_STEPS // 2], 0.5

    def attributes_start(self, name, payload, from_prior: bool = False):
        """Encode the image (or take the prior mean with `from_prior`) as the sliders' base.

        -> the state, the decoded base, the traversal grid, a summary line and one slider label
        per slider (`None`: hidden), `inference.MAX_SLIDERS` of them."""
        loaded = self.pick(name)
        image = None if from_prior else self.open_upload(payload)
        base = inference.attribute_base(loaded, image)
        decoded = inference.to_image(loaded, inference.decode_code(loaded, base.code))
        labels = [base.slider_label(position) for position in range(len(base.dims))]
        labels += [None] * (inference.MAX_SLIDERS - len(labels))
        where = "the prior mean (0)" if image is None else "this image's code"
        channels = inference.code_dimensions(loaded.model)
        summary = f"Sliders move {len(base.dims)} of the {channels} latent dimensions of `{name}` around {where}"
        if loaded.has_tokens:
            summary += " (before quantisation: the decoded image changes only where a token changes)"
        if base.kl is not None:
            summary += f"; KL of this image's code: {float(base.kl.sum()) / math.log(2):.1f} bits"
        values = ", ".join(f"{round(value, 2) + 0.0:+.2f}" for value in inference.traversal_values().tolist())
        summary += f". Traversal grid: one row per dimension, moved by {values}."
        return {"model": name, "base": base}, decoded, inference.traversal_grid(loaded, base), summary, labels

    def attributes_decode(self, state, vector: inference.AttributeVector | None, strength, *offsets):
        """The base code moved by the sliders' values (the first `len(dims)` of `offsets`) and by
        `strength` times the attribute vector (when there is one), decoded."""
        if not state:
            raise DemoInputError("Pick an image (or start from the prior mean) first.")
        loaded, base = self.pick(state["model"]), state["base"]
        code = inference.moved_code(base, [float(offset) for offset in offsets[: len(base.dims)]])
        if vector is not None and float(strength or 0) != 0:
            if vector.model != loaded.name:
                raise DemoInputError(
                    f"The attribute vector was made with `{vector.model}`, the sliders move `{loaded.name}`'s code: "
                    "press “Make the attribute vector” again."
                )
            code = inference.add_attribute(code, vector.vector, float(strength))
        return inference.to_image(loaded, inference.decode_code(loaded, code))

    def attributes_vector(self, name, with_payloads, without_payloads):
        """Two image sets (uploads) -> the attribute vector of `name` and its summary line."""
        loaded = self.pick(name)
        with_images = [self.open_upload(payload) for payload in with_payloads or []]
        without_images = [self.open_upload(payload) for payload in without_payloads or []]
        vector = inference.make_attribute_vector(loaded, with_images, without_images)
        return vector, vector.summary()

    def attributes_samples(self, name, seed):
        """`ATTRIBUTE_SAMPLES` random draws from the model's prior, decoded, in one grid."""
        return self.sample(name, ATTRIBUTE_SAMPLES, seed, 1.0)

    @staticmethod
    def slide(frames, weight):
        if not frames:
            return None
        return frames[round(float(weight) * (len(frames) - 1))]


def shown_in_page(gr, handler):
    """`handler` whose mistakes (and the library's `ValueError`s) become a message in the page;
    anything else too, with the traceback in the server log instead of the browser."""

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


# ----------------------------------------------------------------------------------------------
# The page: one function per tab
# ----------------------------------------------------------------------------------------------


def _image_input(gr, label: str, elem_id: str):
    return gr.Image(label=label, type="filepath", sources=["upload", "clipboard"], elem_id=elem_id)


def _image_output(gr, label: str, elem_id: str, value=None):
    return gr.Image(
        value, label=label, type="pil", format="png", interactive=False, elem_id=elem_id, height=OUTPUT_HEIGHT,
        elem_classes=["fill-box"],
    )  # fmt: skip


def _reconstruct_tab(gr, handlers: DemoHandlers, examples: list) -> None:
    # The three outputs get the page's full width in a row of their own: beside the inputs they
    # were a third of three quarters of it.
    with gr.Tab("Reconstruct"):
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(handlers.names, value=handlers.names[0], label="model")
                button = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct-button")
                summary = gr.Markdown(elem_id="reconstruct-summary")
            with gr.Column(scale=1):
                image = _image_input(gr, "image (at its own size)", "reconstruct-input")
            with gr.Column(scale=1):
                if examples:
                    gr.Examples(examples, inputs=[image], label="examples")
        with gr.Row(equal_height=True):
            original = _image_output(gr, "original", "reconstruct-original")
            reconstruction = _image_output(gr, "reconstruction", "reconstruct-output")
            difference = _image_output(gr, f"|difference| x {inference.DIFFERENCE_GAIN}", "reconstruct-difference")
    button.click(
        shown_in_page(gr, handlers.reconstruct),
        [model, image],
        [original, reconstruction, difference, summary],
        preprocess=False,
    )


def _attributes_tab(gr, handlers: DemoHandlers, examples: list, attribute_sets=((), ())) -> None:
    """Sliders over the latent dimensions of an image's code (or the prior mean, where the tab
    opens for a model with a prior), decoded live; an attribute vector made from two image sets on
    a strength slider; the traversal grid around the code; random draws from the prior."""
    names = handlers.attribute_names
    opening = _attributes_opening(handlers, names[0])
    with gr.Tab("Attributes"):
        state = gr.State(opening[0])
        vector_state = gr.State()
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(names, value=names[0], label="model", elem_id="attributes-model")
                image = _image_input(gr, "image (resized to the model's size)", "attributes-input")
                with gr.Row():
                    encode = gr.Button("Encode this image", variant="primary", elem_id="attributes-button")
                    prior_mean = gr.Button("Start from the prior mean", elem_id="attributes-prior-button")
                if examples:
                    gr.Examples(examples, inputs=[image], label="examples (faces and digits for the β-VAEs)")
            with gr.Column(scale=1):
                summary = gr.Markdown(opening[3], elem_id="attributes-summary")
                decoded = _image_output(gr, "decoded (moves with the sliders)", "attributes-output", opening[1])
            with gr.Column(scale=1):
                strength = gr.Slider(
                    -inference.SLIDER_SPAN, inference.SLIDER_SPAN, value=0, step=0.1, visible=False,
                    label="attribute vector's strength", elem_id="attributes-strength",
                )  # fmt: skip
                sliders = [
                    gr.Slider(
                        -inference.SLIDER_SPAN,
                        inference.SLIDER_SPAN,
                        value=0,
                        step=0.1,
                        visible=label is not None,
                        label=label or f"slider {position}",
                        elem_id=f"attributes-slider-{position}",
                    )  # fmt: skip
                    for position, label in enumerate(opening[4])
                ]
        vector_section = _attribute_vector_section(gr, attribute_sets)
        traversal = gr.Image(
            opening[2], label="traversal: one row per dimension", type="pil", format="png", interactive=False,
            elem_id="attributes-traversal", elem_classes=["fill-box"], height=2 * OUTPUT_HEIGHT,
        )  # fmt: skip
        with gr.Row():
            with gr.Column(scale=1):
                seed = gr.Number(value=0, precision=0, label="seed")
                sample = gr.Button("Random samples from the prior", elem_id="attributes-sample-button")
            with gr.Column(scale=3):
                samples = _image_output(gr, "samples from the prior N(0, I)", "attributes-samples")
    components = dict(
        state=state, vector_state=vector_state, model=model, image=image, encode=encode, prior_mean=prior_mean,
        summary=summary, decoded=decoded, strength=strength, sliders=sliders, traversal=traversal, seed=seed,
        sample=sample, samples=samples, **vector_section,
    )  # fmt: skip
    _wire_attributes(gr, handlers, components)


def _attributes_opening(handlers: DemoHandlers, name: str) -> tuple:
    """What the Attributes tab shows on load: for a model with a prior, `attributes_start` at the
    prior mean (its sliders visible); else an empty state, a hint and hidden sliders."""
    if handlers.by_name[name].model.can_sample_prior:
        return handlers.attributes_start(name, None, from_prior=True)
    hint = f"`{name}` has no prior: encode an image to put its code on sliders."
    return None, None, None, hint, [None] * inference.MAX_SLIDERS


def _attribute_vector_section(gr, attribute_sets) -> dict:
    """Two multi-file uploads (images with an attribute, images without) and the button that
    makes their attribute vector. Returns the components the wiring needs."""
    gr.Markdown(
        "**Attribute vector**: the mean code of images with an attribute minus the mean code of images "
        "without it (`latentcode.traversal.attribute_vector`), added to the code above by the strength slider."
    )
    with gr.Row():
        with_files, without_files = (
            gr.File(
                value=[str(path) for path in paths] or None,
                file_count="multiple",
                type="filepath",
                label=label,
                elem_id=elem_id,
                height=160,
            )
            for paths, label, elem_id in zip(
                attribute_sets,
                ("images with the attribute (e.g. blond hair)", "images without it (e.g. dark hair)"),
                ("attributes-with", "attributes-without"),
            )
        )
        with gr.Column():
            button = gr.Button("Make the attribute vector", variant="primary", elem_id="attributes-vector-button")
            line = gr.Markdown(elem_id="attributes-vector-summary")
    return {"with_files": with_files, "without_files": without_files, "vector_button": button, "vector_line": line}


def _wire_attributes(gr, handlers: DemoHandlers, tab: dict) -> None:
    """The Attributes tab's events over its components (`tab`, by name, from `_attributes_tab`)."""
    sliders, strength = tab["sliders"], tab["strength"]

    def show(new_state, base_image, grid, line, labels):
        """The tab's outputs for a new base code: the sliders relabelled and at 0, the strength at 0."""
        updates = [gr.update(value=0, label=label, visible=label is not None) for label in labels]
        return new_state, base_image, grid, line, gr.update(value=0), *updates

    def start(name, payload, from_prior=False):
        return show(*handlers.attributes_start(name, payload, from_prior))

    def start_from_prior(name):
        return start(name, None, from_prior=True)

    def switch_model(name):
        """A newly picked model opens as the page does: at its prior mean, or with a hint and no sliders."""
        return show(*_attributes_opening(handlers, name))

    def make_vector(name, with_paths, without_paths):
        vector, line = handlers.attributes_vector(name, with_paths, without_paths)
        return vector, line, gr.update(value=0, visible=True)

    outputs = [tab["state"], tab["decoded"], tab["traversal"], tab["summary"], strength, *sliders]
    model, state, decoded = tab["model"], tab["state"], tab["decoded"]
    tab["encode"].click(shown_in_page(gr, start), [model, tab["image"]], outputs, preprocess=False)
    tab["prior_mean"].click(shown_in_page(gr, start_from_prior), [model], outputs)
    model.input(shown_in_page(gr, switch_model), [model], outputs)
    tab["vector_button"].click(
        shown_in_page(gr, make_vector), [model, tab["with_files"], tab["without_files"]],
        [tab["vector_state"], tab["vector_line"], strength],
    )  # fmt: skip
    gr.on(
        [slider.input for slider in [strength, *sliders]], shown_in_page(gr, handlers.attributes_decode),
        [state, tab["vector_state"], strength, *sliders], [decoded], trigger_mode="always_last",
    )  # fmt: skip
    tab["sample"].click(shown_in_page(gr, handlers.attributes_samples), [model, tab["seed"]], [tab["samples"]])


def _codes_tab(gr, handlers: DemoHandlers, examples: list) -> None:
    """The tokens of an image: the grid (one colour per code, click one) beside the decoded photo,
    both as large as the page allows (a 768x512 photo at f8 has 96x64 tokens); the level of a
    residual quantiser to show and edit; the photo decoded with the picked token changed."""
    with gr.Tab("Codes"):
        if not handlers.token_names:
            gr.Markdown("No VQ-VAE loaded: tokens exist only for models whose code is tokens.")
            return
        tokens_state = gr.State()
        with gr.Row():
            with gr.Column(scale=1):
                names = handlers.token_names
                model = gr.Dropdown(names, value=names[0], label="VQ-VAE")
                image = _image_input(gr, "image", "codes-input")
                encode_button = gr.Button("Encode to tokens", variant="primary", elem_id="codes-button")
                if examples:
                    gr.Examples(examples, inputs=[image], label="examples")
            with gr.Column(scale=2):
                summary = gr.Markdown(elem_id="codes-summary")
                used = "codes used by this image" + (" (all levels)" if handlers.token_levels > 1 else "")
                histogram = _image_output(gr, used, "codes-histogram")
        with gr.Row(equal_height=True):
            # Not "fill-box": a grid is drawn at least as large as its box (inference.MIN_GRID_SIDE)
            # and scaled down to fit, as Gradio's click coordinates assume.
            grid = gr.Image(
                label="tokens (one colour per code): click one", type="pil", format="png", interactive=False,
                elem_id="codes-grid", height=TOKEN_VIEW_HEIGHT,
            )  # fmt: skip
            decoded = gr.Image(
                label="decoded tokens", type="pil", format="png", interactive=False, elem_id="codes-reconstruction",
                height=TOKEN_VIEW_HEIGHT, elem_classes=["fill-box"],
            )  # fmt: skip
        with gr.Row(equal_height=True):
            selected = gr.Markdown(elem_id="codes-selected")
            level = gr.Radio(
                [(f"level {number}" + (" (coarsest)" if number == 0 else ""), number)
                 for number in range(handlers.token_levels)],
                value=0, label="level shown and edited (residual VQ)", elem_id="codes-level",
                visible=handlers.token_levels > 1,
            )  # fmt: skip
            code = gr.Number(label="new code", value=0, precision=0, elem_id="codes-code")
            change_button = gr.Button("Decode with this token changed", elem_id="codes-change-button")
        with gr.Row():
            edited = _image_output(gr, "decoded with the token changed", "codes-edited")
            change = _image_output(gr, f"|change| x {inference.DIFFERENCE_GAIN}", "codes-edited-difference")

    def encode(name, payload):
        """The handler's outputs, and the level back at 0 (the grid shows level 0)."""
        return *handlers.encode_tokens(name, payload), 0

    def on_pick_cell(state, chosen_level, event):
        return handlers.pick_cell(state, event.index, chosen_level)

    # A real class, not the string `from __future__` makes of it: Gradio injects the click by this type.
    on_pick_cell.__annotations__["event"] = gr.SelectData
    outputs = [grid, histogram, decoded, summary, tokens_state, selected, level]
    encode_button.click(shown_in_page(gr, encode), [model, image], outputs, preprocess=False)
    picked = [tokens_state, grid, selected, code]
    grid.select(shown_in_page(gr, on_pick_cell), [tokens_state, level], picked)
    level.input(shown_in_page(gr, handlers.show_level), [tokens_state, level], picked)
    change_button.click(shown_in_page(gr, handlers.change_token), [tokens_state, code, level], [edited, change])


def _compare_tab(gr, handlers: DemoHandlers, examples: list) -> None:
    with gr.Tab("Compare"), gr.Row():
        with gr.Column(scale=1):
            chosen = gr.CheckboxGroup(handlers.names, value=handlers.names, label="models")
            image = _image_input(gr, "image", "compare-input")
            button = gr.Button("Compare", variant="primary", elem_id="compare-button")
            if examples:
                gr.Examples(examples, inputs=[image], label="examples")
        with gr.Column(scale=3):
            gallery = gr.Gallery(
                label="side by side", columns=len(handlers.names) + 1, format="png", elem_id="compare-gallery",
                object_fit="contain", height=OUTPUT_HEIGHT + 60,
            )  # fmt: skip
            table = gr.Markdown(elem_id="compare-table")
    button.click(shown_in_page(gr, handlers.compare), [chosen, image], [gallery, table], preprocess=False)


def _samples_section(gr, handlers: DemoHandlers) -> None:
    gr.Markdown("### Samples")
    if not handlers.sampling_names:
        gr.Markdown("No model here samples: load a VAE, or a VQ-VAE with `--prior`.")
        return
    with gr.Row():
        with gr.Column(scale=1):
            names = handlers.sampling_names
            model = gr.Dropdown(names, value=names[0], label="model")
            count = gr.Slider(1, MAX_SAMPLES, value=8, step=1, label="samples")
            seed = gr.Number(value=0, precision=0, label="seed")
            temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="temperature (VQ-VAE prior)")
            button = gr.Button("Sample", variant="primary", elem_id="sample-button")
        with gr.Column(scale=3):
            samples = _image_output(gr, "samples", "samples")
    button.click(shown_in_page(gr, handlers.sample), [model, count, seed, temperature], [samples])


def _interpolation_section(gr, handlers: DemoHandlers, examples: list) -> None:
    gr.Markdown("### Interpolation between two images (resized and cropped to the model's size)")
    frames_state = gr.State()
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(handlers.names, value=handlers.names[0], label="model")
            with gr.Row():
                start = _image_input(gr, "from", "interpolate-start")
                end = _image_input(gr, "to", "interpolate-end")
            button = gr.Button("Interpolate", variant="primary", elem_id="interpolate-button")
            if examples:
                gr.Examples([[a[0], b[0]] for a, b in zip(examples[:2], examples[1:3])], inputs=[start, end])
        with gr.Column(scale=3):
            strip = _image_output(gr, "the path", "interpolate-strip")
            weight = gr.Slider(0, 1, value=0.5, step=1 / (INTERPOLATION_STEPS - 1), label="position")
            frame = _image_output(gr, "at this position", "interpolate-frame")
    button.click(
        shown_in_page(gr, handlers.interpolate), [model, start, end], [frames_state, strip, frame, weight],
        preprocess=False,
    )  # fmt: skip
    weight.change(handlers.slide, [frames_state, weight], [frame])


def build_demo(
    models: list[DemoModel],
    prior=None,
    prior_model: DemoModel | None = None,
    examples: list = (),
    max_pixels: int = 4_000_000,
    attribute_examples: list = (),
    attribute_sets: tuple[list, list] = ((), ()),
):
    """The page: tabs Reconstruct, Attributes, Codes, Compare and Generate over `models`.

    Args:
        models: loaded models ([`inference.load_model`]); the first is preselected.
        prior / prior_model: a token prior and the model it samples codes for ([`inference.load_prior`]).
        examples: image files offered under every image input.
        max_pixels: larger uploads are refused with a message.
        attribute_examples: image files offered first in the Attributes tab (faces and digits of
            the β-VAEs' data sets, [`inference.attribute_examples`]).
        attribute_sets: two lists of image files the Attributes tab's attribute vector starts
            with: images with an attribute and without it ([`inference.hair_colour_examples`]).
    """
    gr = import_gradio()
    handlers = DemoHandlers(models, prior, prior_model, max_pixels)
    photos = [[str(path)] for path in examples]
    faces = [[str(path)] for path in attribute_examples]
    with gr.Blocks(title="latentcode demo") as demo:
        table = handlers.model_table([*attribute_examples, *examples])
        gr.Markdown("# latentcode: image tokenizers at work\n" + table, elem_id="model-table")
        _reconstruct_tab(gr, handlers, photos)
        _attributes_tab(gr, handlers, faces + photos, attribute_sets)
        _codes_tab(gr, handlers, photos)
        _compare_tab(gr, handlers, photos)
        with gr.Tab("Generate"):
            _samples_section(gr, handlers)
            _interpolation_section(gr, handlers, photos)
    return demo


def launch(demo, **options) -> None:
    """`demo.launch(**options)` with the page's style sheet."""
    demo.launch(css=PAGE_CSS, **options)


if __name__ == "__main__":  # a Space: this file is a copy outside the package; run the command line
    sys.exit(main())
