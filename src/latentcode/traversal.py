"""Latent traversals, attribute vectors and per-dimension KL: seeing and steering a latent code.

A latent *dimension* is one entry of a vector latent `[D]` (the `"vector"` backbone) or one
channel of a latent grid `[C, h, w]`. An image's *code* is the VAE's posterior mean, the
AutoEncoder's latent, or the VQ-VAE's latent before quantisation (its decoder quantises).

- [`per_dimension_kl`]: KL(q(z|x) || N(0, I)) of each dimension, averaged over images: what each
  dimension spends (a dimension the posterior leaves at the prior has KL 0). The posterior
  computes it (`DiagonalGaussianDistribution.kl_per_channel`, which the evaluation's per-dimension
  KL uses too). KL is not information: a posterior moved away from N(0, I) by the same amount for
  every image spends KL and says nothing about the image.
- [`posterior_mean_activity`]: the variance over images of each dimension's posterior mean, Burda
  et al. (2016)'s activity; [`active_dimensions`] counts those over [`ACTIVE_VARIANCE`]: the
  dimensions whose code changes with the image.
- [`traversal_codes`] / [`latent_traversal`]: for each chosen dimension, a row of codes equal to
  a base code (an image's, or the prior mean 0) except that the dimension is moved by each of
  `values` — the grid of the disentanglement papers. With the prior mean as base, a row sweeps
  the dimension through `values` itself.
- [`attribute_vector`] / [`apply_attribute`]: the mean code difference of two image sets (e.g.
  blond minus dark-haired faces), added to any image's code with a strength;
  [`attribute_traversal`] decodes a row of strengths around an image's code or the prior mean.

Command line: `latentcode-traverse --pretrained_model_name_or_path MODEL --output_path grid.png
[--image face.png] [--data_dir faces/ --top_k 10]`, or one row along an attribute vector with
`--attribute_with blond/ --attribute_without dark/` (see `latentcode-traverse --help`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch

from .errors import command_line
from .threads import add_threads_argument, set_num_threads

# A latent dimension is *active* when the variance over images of its posterior mean exceeds this
# (Burda et al. 2016, "Importance Weighted Autoencoders", section 5.2: Cov_x(E_q(u|x)[u]) > 0.01).
# Its KL would not do: a collapsed posterior can sit away from the prior, with KL, for every image.
ACTIVE_VARIANCE = 0.01


def code_dimensions(model) -> int:
    """The latent dimensions of `model`'s code: the entries of a vector latent, the channels of a
    grid (`latent_channels`; a VQ-VAE's `code_channels`, which `decode` takes)."""
    return model.latent_code_shape()[0]


def _check_dims(model, dims: Sequence[int]) -> list[int]:
    channels = code_dimensions(model)
    dims = [int(d) for d in dims]
    if not dims or any(not 0 <= d < channels for d in dims):
        raise ValueError(
            f"expected latent dimensions in [0, {channels}) (the code's {channels} dimensions), got {dims}"
        )
    return dims


@torch.no_grad()
def continuous_codes(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Pixels `[B, C, H, W]` in [-1, 1] -> codes `[B, *model.latent_code_shape()]`: the VAE's
    posterior mean, the AutoEncoder's latents, the VQ-VAE's latents before quantisation."""
    return model.continuous_code(pixel_values)


@torch.no_grad()
def per_dimension_kl(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per latent dimension in nats, averaged over the batch and summed over
    the latent positions of a grid: `[latent_channels]`. The sum over dimensions is the VAE's KL."""
    if not model.can_sample_prior:
        raise ValueError(f"per-dimension KL needs a VAE's posterior; {type(model).__name__} has a deterministic code")
    return model.encode(pixel_values, return_dict=True).latent_dist.kl_per_channel().mean(0)


@torch.no_grad()
def posterior_mean_activity(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Burda et al.'s activity of each latent dimension: the variance over the images of
    `pixel_values` `[B, C, H, W]` of its posterior mean (population variance; a grid's channel
    averages it over its positions): `[latent_channels]`."""
    if not model.can_sample_prior:
        raise ValueError(f"posterior activity needs a VAE's posterior; {type(model).__name__} has a deterministic code")
    means = model.encode(pixel_values, return_dict=True).latent_dist.mean.double()
    return activity_of(means.var(dim=0, unbiased=False)).float()


def activity_of(variance: torch.Tensor) -> torch.Tensor:
    """Each dimension's activity from the variance over images of the posterior mean at each of
    its positions (`[D]` for a vector latent, `[C, h, w]` for a grid): `[D]` or `[C]`, a grid's
    channel averaging its positions."""
    return variance.reshape(variance.shape[0], -1).mean(1)


def active_dimensions(activity: torch.Tensor, threshold: float = ACTIVE_VARIANCE) -> int:
    """How many entries of a per-dimension activity `[D]` ([`posterior_mean_activity`]) exceed `threshold`."""
    return int((activity > threshold).sum())


def top_dimensions(kl: torch.Tensor, k: int) -> list[int]:
    """The `k` dimensions of largest KL, largest first."""
    if not 1 <= k <= kl.numel():
        raise ValueError(f"top_k must be in [1, {kl.numel()}] (the latent dimensions), got {k}")
    return torch.argsort(kl, descending=True)[:k].tolist()


def traversal_codes(base: torch.Tensor, dims: Sequence[int], values: torch.Tensor) -> torch.Tensor:
    """Base code `[D]` or `[C, h, w]` -> `[len(dims) * len(values), *base.shape]`: row `i` holds
    the base with dimension `dims[i]` (a whole channel of a grid) moved by each of `values`."""
    rows = []
    for dim in dims:
        codes = base.expand(len(values), *base.shape).clone()
        codes[:, dim] += values.to(base).view(-1, *[1] * (base.dim() - 1))
        rows.append(codes)
    return torch.cat(rows)


@torch.no_grad()
def latent_traversal(
    model,
    pixel_values: torch.Tensor | None = None,
    dims: Sequence[int] | None = None,
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decoded traversal grid `[len(dims) * len(values), C, H, W]` in [-1, 1], row-major (one row
    per dimension): around the code of `pixel_values` (`[1, C, H, W]`), or the prior mean (0)
    when None. `dims` defaults to every dimension, `values` to `linspace(-2, 2, 7)` (two prior
    standard deviations either side)."""
    values = torch.linspace(-2, 2, 7) if values is None else values
    dims = _check_dims(model, range(code_dimensions(model)) if dims is None else dims)
    base = _base_code(model, pixel_values, "to traverse around")
    return model.decode(traversal_codes(base, dims, values), return_dict=True).sample


def _base_code(model, pixel_values: torch.Tensor | None, purpose: str) -> torch.Tensor:
    """The code `[*model.latent_code_shape()]` a traversal starts from: that of one image `[1, C, H, W]`, or the
    prior mean (0) when `pixel_values` is None."""
    if pixel_values is None:
        return torch.zeros(model.latent_code_shape(), device=model.device, dtype=model.dtype)
    if pixel_values.dim() != 4 or pixel_values.shape[0] != 1:
        raise ValueError(f"expected one image [1, C, H, W] {purpose}, got shape {tuple(pixel_values.shape)}")
    return continuous_codes(model, pixel_values)[0]


@torch.no_grad()
def attribute_vector(model, with_attribute: torch.Tensor, without_attribute: torch.Tensor) -> torch.Tensor:
    """Mean code of images with an attribute minus mean code of images without it: `[*model.latent_code_shape()]`.
    Both image sets are `[B, C, H, W]` in [-1, 1] (B may differ)."""
    return continuous_codes(model, with_attribute).mean(0) - continuous_codes(model, without_attribute).mean(0)


@torch.no_grad()
def apply_attribute(model, pixel_values: torch.Tensor, vector: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Decode the codes of `pixel_values` `[B, C, H, W]` moved by `strength * vector` -> `[B, C, H, W]`."""
    codes = continuous_codes(model, pixel_values)
    if vector.shape != codes.shape[1:]:
        raise ValueError(
            f"expected an attribute vector of the code's shape {tuple(codes.shape[1:])}, got {tuple(vector.shape)}"
        )
    return model.decode(codes + strength * vector.to(codes), return_dict=True).sample


@torch.no_grad()
def attribute_traversal(
    model, vector: torch.Tensor, pixel_values: torch.Tensor | None = None, values: torch.Tensor | None = None
) -> torch.Tensor:
    """Decoded row `[len(values), C, H, W]` in [-1, 1]: the code of `pixel_values` (`[1, C, H, W]`),
    or the prior mean (0) when None, moved by each of `values` times the attribute `vector`
    (`[*model.latent_code_shape()]`, [`attribute_vector`]). `values` defaults to `linspace(-2, 2, 7)`."""
    values = torch.linspace(-2, 2, 7) if values is None else values
    base = _base_code(model, pixel_values, "to move along the vector")
    if vector.shape != base.shape:
        raise ValueError(
            f"expected an attribute vector of the code's shape {tuple(base.shape)}, got {tuple(vector.shape)}: "
            "make it from images of the size this code comes from"
        )
    strengths = values.to(base).view(-1, *[1] * base.dim())
    return model.decode(base + strengths * vector.to(base), return_dict=True).sample


# -- command line -------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="latentcode-traverse",
        description="Render a latent traversal grid (one row per latent dimension) of a latentcode model, or one "
        "row along an attribute vector (--attribute_with / --attribute_without).",
    )
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="model folder or Hub id")
    parser.add_argument("--output_path", required=True, help="PNG to write")
    parser.add_argument("--image", default=None, help="traverse around this image's code (default: the prior mean)")
    parser.add_argument("--data_dir", default=None, help="images whose per-dimension KL ranks the dimensions")
    parser.add_argument(
        "--top_k", type=int, default=None, help="only the k dimensions of largest KL (needs --data_dir)"
    )
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="these dimensions (default: all)")
    parser.add_argument("--steps", type=int, default=7, help="values per dimension (or strengths of the attribute)")
    parser.add_argument("--span", type=float, default=2.0, help="move each dimension by -span .. +span")
    parser.add_argument(
        "--attribute_with", nargs="+", default=None, metavar="PATH",
        help="images (files or folders) that show an attribute: draw one row along the attribute vector, "
        "their mean code minus that of --attribute_without, at strengths -span .. +span",
    )  # fmt: skip
    parser.add_argument(
        "--attribute_without", nargs="+", default=None, metavar="PATH",
        help="images (files or folders) that do not show it",
    )  # fmt: skip
    add_threads_argument(parser)
    return parser.parse_args(argv)


def load_images(paths: Sequence[str], processor) -> torch.Tensor:
    """Every image named in `paths` (image files, or folders searched recursively) as pixels
    `[N, C, R, R]` in [-1, 1], prepared by `processor` (a `LatentCodeImageProcessor`)."""
    from PIL import Image

    from .conversion.cli import image_folder_batches

    batches = []
    for path in paths:
        if os.path.isdir(path):
            batches.extend(image_folder_batches(path, processor))
        elif os.path.isfile(path):
            with Image.open(path) as image:
                batches.append(processor(image, return_tensors="pt").pixel_values)
        else:
            raise SystemExit(f"{path!r} is neither an image file nor a folder of images; give existing paths")
    return torch.cat(batches)


def mean_kl_over_folder(model, folder: str, processor) -> torch.Tensor:
    """[`per_dimension_kl`] averaged over every image under `folder`: `[latent_channels]`."""
    from .conversion.cli import image_folder_batches

    total, count = 0.0, 0
    for batch in image_folder_batches(folder, processor):
        total = total + per_dimension_kl(model, batch) * len(batch)
        count += len(batch)
    return total / count


@command_line
def main(argv=None) -> None:
    args = parse_args(argv)  # before the model code loads: --help answers at once
    set_num_threads(args.threads)
    from transformers import AutoModel

    from . import modeling  # noqa: F401  (registers the families with AutoModel)
    from .grids import save_image_grid
    from .hub import resolve_pretrained
    from .image_processing import LatentCodeImageProcessor

    if args.top_k is not None and (args.data_dir is None or args.dims is not None):
        raise SystemExit("--top_k ranks dimensions by their KL over --data_dir images; give --data_dir, not --dims")
    attribute = args.attribute_with is not None or args.attribute_without is not None
    if attribute and (args.attribute_with is None or args.attribute_without is None):
        raise SystemExit("an attribute vector needs both image sets: give --attribute_with and --attribute_without")
    if attribute and (args.dims is not None or args.data_dir is not None):
        raise SystemExit("--attribute_with draws one row along the attribute vector; leave out --dims / --data_dir")
    model = AutoModel.from_pretrained(resolve_pretrained(args.pretrained_model_name_or_path)).eval()
    processor = LatentCodeImageProcessor.from_model_config(model.config)
    pixels = None if args.image is None else load_images([args.image], processor)
    values = torch.linspace(-args.span, args.span, args.steps)
    if attribute:
        grid = attribute_row(model, processor, args.attribute_with, args.attribute_without, pixels, values)
    else:
        dims = args.dims
        if args.data_dir is not None:
            kl = mean_kl_over_folder(model, args.data_dir, processor)
            print("per-dimension KL (nats):", ", ".join(f"{d}: {v:.2f}" for d, v in enumerate(kl.tolist())))
            dims = top_dimensions(kl, args.top_k) if args.top_k is not None else dims
        grid = latent_traversal(model, pixels, dims, values)
    print(f"wrote {save_image_grid(grid, args.output_path, num_columns=args.steps)}")


def attribute_row(model, processor, with_paths, without_paths, pixels, values: torch.Tensor) -> torch.Tensor:
    """`main`'s row for `--attribute_with` / `--attribute_without`: the attribute vector of the two
    image sets (printed), then [`attribute_traversal`] around `pixels` (or the prior mean)."""
    with_attribute, without_attribute = load_images(with_paths, processor), load_images(without_paths, processor)
    vector = attribute_vector(model, with_attribute, without_attribute)
    entries = ": " + ", ".join(f"{value:+.2f}" for value in vector.tolist()) if vector.dim() == 1 else ""
    print(
        f"attribute vector: mean code of {len(with_attribute)} images with it minus {len(without_attribute)} "
        f"without, norm {float(vector.float().norm()):.2f}{entries}"
    )
    return attribute_traversal(model, vector, pixels, values)
