"""New images from latentcode models: VAE prior samples and latent interpolation (grids are in
`latentcode.grids`, latent diffusion in `latentcode.latent_diffusion`).

- `interpolate`: decode points on the path between the latents of two images (spherical for
  Gaussian codes), for any of the three families.

`python -m latentcode.generation --pretrained_model_name_or_path PATH --output_dir DIR` writes
`samples.png` (VAE prior samples) and, with `--interpolate A.png B.png`, `interpolation.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import command_line
from .threads import add_threads_argument, set_num_threads

# ----------------------------------------------------------------------------------------------
# Interpolation
# ----------------------------------------------------------------------------------------------


def slerp(start: torch.Tensor, end: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation per batch row between `start` and `end` `[B, ...]`.

    Draws from N(0, I) lie near a sphere; slerp stays near it where a straight line would pass
    through the low-norm interior that a VAE decoder has never seen. Falls back to linear
    interpolation for (anti)parallel rows, where the arc is undefined.
    """
    a, b = start.flatten(1).float(), end.flatten(1).float()
    cosine = (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(dim=1).clamp(-1, 1)
    angle = torch.acos(cosine)
    sine = torch.sin(angle)
    parallel = sine.abs() < 1e-6
    safe_sine = torch.where(parallel, torch.ones_like(sine), sine)
    weight_a = torch.where(parallel, 1 - weight, torch.sin((1 - weight) * angle) / safe_sine)
    weight_b = torch.where(parallel, torch.full_like(sine, weight), torch.sin(weight * angle) / safe_sine)
    mixed = weight_a[:, None] * a + weight_b[:, None] * b
    return mixed.view_as(start).to(start.dtype)


@torch.no_grad()
def interpolate(
    model, start: torch.Tensor, end: torch.Tensor, num_steps: int = 8, spherical: bool | None = None
) -> torch.Tensor:
    """Decode `num_steps` evenly spaced points between the latents of `start` and `end`.

    Args:
        model: a latentcode model of any family; the path runs through its `continuous_code` (a
            VQ-VAE's `decode` snaps every point to the codebook, so the path moves in discrete steps).
        start, end: pixels `[B, C, H, W]` in [-1, 1], paired row by row.
        spherical: slerp (default for a model with a Gaussian prior, `model.can_sample_prior`: the
            VAE) or linear.

    Returns:
        `[B * num_steps, C, H, W]`: row `b` of an `num_steps`-column grid goes from `start[b]`
        (reconstructed) to `end[b]`.
    """
    if start.shape != end.shape:
        raise ValueError(f"start and end must have the same shape, got {tuple(start.shape)} and {tuple(end.shape)}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 (both ends included), got {num_steps}")
    if spherical is None:
        spherical = model.can_sample_prior
    latent_start, latent_end = model.continuous_code(start), model.continuous_code(end)
    frames = []
    for weight in torch.linspace(0, 1, num_steps).tolist():
        if spherical:
            frames.append(slerp(latent_start, latent_end, weight))
        else:
            frames.append(torch.lerp(latent_start, latent_end, weight))
    path = torch.stack(frames, dim=1).flatten(0, 1)  # [B * num_steps, D, h, w], pair-major
    return model.decode(path, return_dict=True).sample


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


@command_line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="VAE prior samples and latent interpolation grids as PNG.")
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="a latentcode model folder or Hub id")
    parser.add_argument("--output_dir", required=True, help="folder for samples.png and interpolation.png")
    parser.add_argument(
        "--num_samples", type=int, default=16, help="prior samples (VAE only); 0 for none (default: 16)"
    )
    parser.add_argument("--interpolate", nargs=2, metavar=("START", "END"), help="two image files")
    parser.add_argument(
        "--num_steps", type=int, default=8, help="frames of the interpolation, both images included (default: 8)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior samples (default: 0)")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    set_num_threads(args.threads)
    # The model code loads after the options are read: --help and a bad option answer at once.
    import PIL.Image
    from transformers import AutoModel

    from . import modeling  # noqa: F401  (registers the families with AutoModel)
    from .grids import save_image_grid
    from .hub import resolve_pretrained
    from .image_processing import LatentCodeImageProcessor

    model = AutoModel.from_pretrained(resolve_pretrained(args.pretrained_model_name_or_path)).eval()
    output_dir = Path(args.output_dir)
    if args.num_samples and model.can_sample_prior:
        samples = model.sample(args.num_samples, generator=torch.Generator(model.device).manual_seed(args.seed))
        print(save_image_grid(samples, output_dir / "samples.png"))
    if args.interpolate:
        processor = LatentCodeImageProcessor.from_model_config(model.config)
        start, end = (processor(PIL.Image.open(path)).pixel_values.to(model.device) for path in args.interpolate)
        frames = interpolate(model, start, end, args.num_steps)
        print(save_image_grid(frames, output_dir / "interpolation.png", num_columns=args.num_steps))


if __name__ == "__main__":
    main()
