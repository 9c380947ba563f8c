"""New images from latentcode models: VAE prior samples, latent interpolation, latent diffusion.

- `image_grid` / `save_image_grid`: `[N, C, H, W]` pixels -> one PNG grid (used by every
  sampler here, by `latentcode.prior` and by the training scripts).
- `interpolate`: decode points on the path between the latents of two images (spherical for
  Gaussian codes), for any of the three families.
- Latent diffusion in miniature: `latent_unet` sizes a diffusers `UNet2DModel` for a model's
  latents, `diffusion_loss` is the epsilon-prediction objective, `latent_diffusion_pipeline`
  wraps everything in diffusers' `LDMPipeline` with our model as its `vqvae`.

`python -m latentcode.generation --pretrained_model_name_or_path PATH --output_dir DIR` writes
`samples.png` (VAE prior samples) and, with `--interpolate A.png B.png`, `interpolation.png`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import PIL.Image
import torch
import torch.nn.functional as F

from .image_processing import PIL_MODES, LatentCodeImageProcessor, pixels_to_uint8
from .modeling import VAEModel

# ----------------------------------------------------------------------------------------------
# Grids
# ----------------------------------------------------------------------------------------------


def image_grid(pixels: torch.Tensor, num_columns: int | None = None, padding: int = 2) -> PIL.Image.Image:
    """Pixels `[N, C, H, W]` in [-1, 1] (C in 1, 3, 4) -> one image of `ceil(N / num_columns)` rows.

    `num_columns` defaults to `ceil(sqrt(N))`; `padding` pixels of white separate the cells.
    (Not `torchvision.utils.make_grid`: it turns grey-scale grids into RGB, and torchvision is no
    dependency of the core package; this keeps the images' mode, `"L"`, `"RGB"` or `"RGBA"`.)
    """
    if pixels.dim() != 4 or pixels.shape[1] not in PIL_MODES or pixels.shape[0] == 0:
        raise ValueError(
            f"expected pixels [N, C, H, W] with N >= 1 and C in {sorted(PIL_MODES)}, got shape {tuple(pixels.shape)}"
        )
    count, channels, height, width = pixels.shape
    columns = num_columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    images = pixels_to_uint8(pixels)
    cells = F.pad(images, (padding, padding, padding, padding), value=255)
    blank = cells.new_full((rows * columns - count, *cells.shape[1:]), 255)
    cells = torch.cat([cells, blank])
    cell_height, cell_width = cells.shape[2:]
    grid = cells.view(rows, columns, channels, cell_height, cell_width).permute(0, 3, 1, 4, 2)
    grid = grid.reshape(rows * cell_height, columns * cell_width, channels).numpy()
    return PIL.Image.fromarray(grid[..., 0] if channels == 1 else grid)


def reconstruction_grid(
    originals: torch.Tensor, reconstructions: torch.Tensor, num_columns: int | None = None
) -> PIL.Image.Image:
    """Rows of `num_columns` originals (default: all in one row), each row followed by the row of
    their reconstructions. Both `[N, C, H, W]` in [-1, 1] of one shape."""
    if originals.shape != reconstructions.shape or originals.shape[0] == 0:
        raise ValueError(
            f"expected two non-empty image batches of one shape, got {tuple(originals.shape)} "
            f"and {tuple(reconstructions.shape)}"
        )
    count = originals.shape[0]
    columns = min(num_columns or count, count)
    blank_cells = (-count) % columns
    blank = originals.new_ones((blank_cells, *originals.shape[1:]))  # white in [-1, 1]
    rows = []
    for start in range(0, count, columns):
        rows += [originals[start : start + columns], reconstructions[start : start + columns]]
        if start + columns > count:
            rows[-2:] = [torch.cat([rows[-2], blank]), torch.cat([rows[-1], blank])]
    return image_grid(torch.cat(rows), num_columns=columns)


def save_image_grid(pixels: torch.Tensor, path: str | Path, num_columns: int | None = None) -> Path:
    """Write `image_grid(pixels, num_columns)` as a PNG at `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(pixels, num_columns).save(path)
    return path


# ----------------------------------------------------------------------------------------------
# Interpolation
# ----------------------------------------------------------------------------------------------


def continuous_latents(
    model, pixel_values: torch.Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The continuous code that `model.decode` takes back, `[B, D, h, w]`: the AutoEncoder's
    latents, the VAE posterior's mean (or a sample of it with `sample_posterior`, as latent
    diffusion trains on), the VQ-VAE's latents before quantisation (`decode` quantises them)."""
    encoded = model.encode(pixel_values)
    if hasattr(encoded, "latent_dist"):
        return encoded.latent_dist.sample(generator=generator) if sample_posterior else encoded.latent_dist.mode()
    return encoded.latents


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
        model: an `AutoencoderModel`, `VAEModel` or `VQVAEModel` (whose `decode` snaps every point
            to the codebook, so the path moves in discrete steps).
        start, end: pixels `[B, C, H, W]` in [-1, 1], paired row by row.
        spherical: slerp (default for the VAE, whose latents are Gaussian) or linear.

    Returns:
        `[B * num_steps, C, H, W]`: row `b` of an `num_steps`-column grid goes from `start[b]`
        (reconstructed) to `end[b]`.
    """
    if start.shape != end.shape:
        raise ValueError(f"start and end must have the same shape, got {tuple(start.shape)} and {tuple(end.shape)}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 (both ends included), got {num_steps}")
    if spherical is None:
        spherical = isinstance(model, VAEModel)
    latent_start, latent_end = continuous_latents(model, start), continuous_latents(model, end)
    frames = []
    for weight in torch.linspace(0, 1, num_steps).tolist():
        if spherical:
            frames.append(slerp(latent_start, latent_end, weight))
        else:
            frames.append(torch.lerp(latent_start, latent_end, weight))
    path = torch.stack(frames, dim=1).flatten(0, 1)  # [B * num_steps, D, h, w], pair-major
    return model.decode(path).sample


# ----------------------------------------------------------------------------------------------
# Latent diffusion
# ----------------------------------------------------------------------------------------------


def latent_unet(
    model_config,
    image_size: int | None = None,
    block_out_channels=(64, 128),
    layers_per_block: int = 1,
    norm_num_groups: int = 32,
):
    """A diffusers `UNet2DModel` on the latents of a model with `model_config`: `latent_channels`
    in and out, `image_size / downsampling_factor` square (`image_size` defaults to
    `config.sample_size`), self-attention on the lowest of the `block_out_channels` levels."""
    from diffusers import UNet2DModel

    levels = len(block_out_channels)
    return UNet2DModel(
        sample_size=(image_size or model_config.sample_size) // model_config.downsampling_factor,
        in_channels=model_config.latent_channels,
        out_channels=model_config.latent_channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
    )


def diffusion_loss(unet, scheduler, latents: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Epsilon-prediction MSE of `unet` on scaled latents `[B, D, h, w]` at uniform random timesteps."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=latents.device
    )
    noisy = scheduler.add_noise(latents, noise, timesteps)
    return F.mse_loss(unet(noisy, timesteps).sample.float(), noise.float())


@torch.no_grad()
def latent_scaling_factor(latents: torch.Tensor) -> float:
    """`1 / std` of a sample of latents, so that scaled latents have unit variance, as the
    Stable Diffusion VAE's 0.18215 was chosen."""
    return 1.0 / latents.float().std().item()


def latent_diffusion_pipeline(model, unet, scheduler=None):
    """diffusers' `LDMPipeline` with `model` (ours, VAE or VQ-VAE) as `vqvae` and a DDIM scheduler.

    The pipeline divides the denoised latents by `model.config.scaling_factor` and calls
    `model.decode(latents).sample`, which both of our families provide.
    """
    from diffusers import DDIMScheduler, LDMPipeline

    return LDMPipeline(vqvae=model, unet=unet, scheduler=scheduler or DDIMScheduler())


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="VAE prior samples and latent interpolation grids as PNG.")
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="a latentcode model folder or Hub id")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_samples", type=int, default=16, help="prior samples (VAE only); 0 for none")
    parser.add_argument("--interpolate", nargs=2, metavar=("START", "END"), help="two image files")
    parser.add_argument("--num_steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from transformers import AutoModel

    import latentcode  # noqa: F401  (registers the model classes with AutoModel)

    model = AutoModel.from_pretrained(args.pretrained_model_name_or_path).eval()
    output_dir = Path(args.output_dir)
    if args.num_samples and hasattr(model, "sample"):
        samples = model.sample(args.num_samples, generator=torch.Generator(model.device).manual_seed(args.seed))
        print(save_image_grid(samples, output_dir / "samples.png"))
    if args.interpolate:
        processor = LatentCodeImageProcessor.from_model_config(model.config)
        start, end = (processor(PIL.Image.open(path)).pixel_values.to(model.device) for path in args.interpolate)
        frames = interpolate(model, start, end, args.num_steps)
        print(save_image_grid(frames, output_dir / "interpolation.png", num_columns=args.num_steps))


if __name__ == "__main__":
    main()
