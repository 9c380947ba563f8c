"""Convert a disentangling-vae checkpoint (YannDubs/disentangling-vae: VAE, β-VAE of Higgins and of
Burgess, FactorVAE, β-TCVAE) to a latentcode VAEModel on the vector-latent backbone.

    python conversion/convert_disentangling_vae_to_latentcode.py \\
        --checkpoint_path ../shared/pretrained/disentangling-vae/betaB_celeba --output_dir betaB-celeba

The folder holds model.pt (read with weights_only=True) and specs.json (image size, latent_dim).
The converted model takes and returns pixels in [-1, 1] and computes exactly what the original
computes on the same images in [0, 1]. The original specs.json is copied beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil

from latentcode.conversion.cli import add_scaling_factor_arguments, save_converted_model
from latentcode.conversion.disentangling_vae import from_disentangling_vae
from latentcode.errors import command_line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint_path", required=True, help="folder with model.pt and specs.json")
    parser.add_argument("--output_dir", required=True, help="where save_pretrained writes the latentcode model")
    add_scaling_factor_arguments(parser)
    return parser.parse_args(argv)


@command_line
def main(argv=None) -> None:
    args = parse_args(argv)
    model = from_disentangling_vae(args.checkpoint_path)
    save_converted_model(model, args)
    shutil.copy(os.path.join(args.checkpoint_path, "specs.json"), os.path.join(args.output_dir, "original_specs.json"))


if __name__ == "__main__":
    main()
