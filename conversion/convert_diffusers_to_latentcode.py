"""Convert a diffusers `VQModel` / `AutoencoderKL` / `AutoencoderTiny` (local folder or Hub id) to a latentcode model.

    python conversion/convert_diffusers_to_latentcode.py --pretrained_model_name_or_path CompVis/ldm-celebahq-256 \
        --subfolder vqvae --output_dir ldm-celebahq-vq

Hub ids load from the Hugging Face cache when the network is absent (set HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import argparse

from latentcode import LatentCodePreTrainedModel
from latentcode.conversion.cli import add_scaling_factor_arguments, save_converted_model
from latentcode.errors import command_line
from latentcode.hub import resolve_pretrained


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="diffusers model folder or Hub id")
    parser.add_argument("--subfolder", default=None, help="e.g. 'vae' or 'vqvae' inside a pipeline repo")
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit (default: main)")
    parser.add_argument("--output_dir", required=True, help="where save_pretrained writes the latentcode model")
    add_scaling_factor_arguments(parser)
    return parser.parse_args(argv)


@command_line
def main(argv=None) -> None:
    args = parse_args(argv)
    # A misspelt folder or an uncached Hub id offline is named here, before diffusers' own lookup.
    path = resolve_pretrained(args.pretrained_model_name_or_path, subfolder=args.subfolder, revision=args.revision)
    model = LatentCodePreTrainedModel.from_diffusers(path, subfolder=args.subfolder, revision=args.revision)
    save_converted_model(model, args)


if __name__ == "__main__":
    main()
