"""Convert a CompVis autoencoder checkpoint to a latentcode model: taming-transformers VQGAN,
latent-diffusion first stage (VQ or KL), or a Stable Diffusion VAE (.ckpt or .safetensors).

    python conversion/convert_compvis_to_latentcode.py --checkpoint_path vqgan_imagenet_f16_1024/last.ckpt \
        --original_config_file vqgan_imagenet_f16_1024/model.yaml --output_dir vqgan-f16-1024

Without --original_config_file the architecture is inferred from the weights' shapes. Files are
read without unpickling code; any weight that does not fit the model stops the conversion.
"""

from __future__ import annotations

import argparse

from latentcode.conversion.cli import add_scaling_factor_arguments, save_converted_model
from latentcode.conversion.compvis import from_compvis
from latentcode.errors import command_line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint_path", required=True, help=".ckpt / .safetensors file")
    parser.add_argument("--original_config_file", default=None, help="the model's original YAML (optional)")
    parser.add_argument("--sample_size", type=int, default=None, help="image size the model is meant for")
    parser.add_argument(
        "--norm_num_groups", type=int, default=None, help="GroupNorm groups, for forks that changed CompVis' 32"
    )
    parser.add_argument("--output_dir", required=True, help="where save_pretrained writes the latentcode model")
    add_scaling_factor_arguments(parser)
    return parser.parse_args(argv)


@command_line
def main(argv=None) -> None:
    args = parse_args(argv)
    overrides = {
        name: getattr(args, name) for name in ("sample_size", "norm_num_groups") if getattr(args, name) is not None
    }
    model = from_compvis(args.checkpoint_path, args.original_config_file, **overrides)
    save_converted_model(model, args)


if __name__ == "__main__":
    main()
