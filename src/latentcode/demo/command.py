"""The `latentcode-demo` command line: its options and `main`, which loads the page (`app`) and
the models (`inference`) only once the options are checked, so that `--help` and a bad option
answer without importing torch, transformers or Gradio. `app` re-exports both (a Space runs
`app.py`)."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile

# Absolute imports, as in app.py: a Space runs a copy of app.py as a script, outside the package.
from latentcode.threads import add_threads_argument, set_num_threads
from latentcode.tile_size import MIN_DEFAULT_TILE_SIZE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="latentcode-demo", description="A web page that shows latentcode models at work."
    )
    parser.add_argument(
        "models", nargs="*", metavar="MODEL",
        help="latentcode model folders or Hub ids (default: $LATENTCODE_DEMO_MODELS, space-separated)",
    )  # fmt: skip
    parser.add_argument(
        "--model", action="append", default=[], dest="more_models", metavar="MODEL",
        help="one more model folder or Hub id (repeatable; the same as a positional MODEL)",
    )  # fmt: skip
    parser.add_argument(
        "--prior", default=os.environ.get("LATENTCODE_DEMO_PRIOR"), help="a VQ-VAE prior folder or Hub id"
    )
    parser.add_argument("--host", default=None, help="address to serve on (default: Gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860 or the next free one)")
    parser.add_argument("--device", default=None, help="where the models run (default: cuda when available, else cpu)")
    parser.add_argument(
        "--tile_size", type=int, default=None, help="larger images are encoded and decoded in tiles of this size "
        f"(default: the model's sample_size, at least {MIN_DEFAULT_TILE_SIZE})",
    )  # fmt: skip
    parser.add_argument("--max_megapixels", type=float, default=4.0, help="larger uploads are refused")
    parser.add_argument(
        "--datasets_dir",
        default="../shared/datasets",
        help="Kodak / CIFAR-10 examples (else scikit-image's photos), CelebA / MNIST samples for the Attributes tab",
    )
    parser.add_argument("--share", action="store_true", help="a public gradio.live link")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    args.models = [*args.models, *args.more_models] or os.environ.get("LATENTCODE_DEMO_MODELS", "").split()
    if not args.models:
        parser.error("give at least one MODEL (or set LATENTCODE_DEMO_MODELS)")
    if len(set(args.models)) != len(args.models):
        parser.error(f"each MODEL once, got {args.models}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_num_threads(args.threads)
    # The page and the models (torch, transformers) load only now, after the options are checked.
    from latentcode.demo import inference
    from latentcode.demo.app import build_demo, import_gradio, launch

    import_gradio()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.INFO)
    models = [inference.load_model(name, args.device, args.tile_size) for name in args.models]
    prior, prior_model = inference.load_prior(args.prior, models) if args.prior else (None, None)
    examples_dir = tempfile.mkdtemp(prefix="latentcode-demo-examples-")
    largest_factor = max(loaded.model.downsampling_factor for loaded in models)
    examples = inference.example_images(args.datasets_dir, examples_dir, multiple_of=max(16, largest_factor))
    faces = inference.attribute_examples(args.datasets_dir, examples_dir)
    hair_colour = inference.hair_colour_examples(args.datasets_dir, examples_dir)
    demo = build_demo(models, prior, prior_model, examples, int(args.max_megapixels * 1e6), faces, hair_colour)
    launch(demo, server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[examples_dir])
