"""Convert a TAESD tiny autoencoder (madebyollin/taesd: taesd, taesdxl, taesd3, taef1, taef2) to a
latentcode AutoencoderModel on the tiny backbone.

    python conversion/convert_taesd_to_latentcode.py --encoder_path ../shared/pretrained/taesd/taef2_encoder.pth \\
        --decoder_path ../shared/pretrained/taesd/taef2_decoder.pth --output_dir taef2

The variant (latent channels, the taef2 pooling branch, widths, blocks per level) is read from the
weights, which are loaded with weights_only=True. The converted model takes and returns pixels in
[-1, 1] and computes exactly what TAESD computes on the same images in [0, 1].
"""

from __future__ import annotations

import argparse

from latentcode.conversion.cli import add_scaling_factor_arguments, save_converted_model
from latentcode.conversion.taesd import from_taesd, taesd_variant
from latentcode.errors import command_line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder_path", required=True, help="TAESD encoder state_dict (e.g. taef2_encoder.pth)")
    parser.add_argument("--decoder_path", required=True, help="TAESD decoder state_dict (e.g. taef2_decoder.pth)")
    parser.add_argument("--output_dir", required=True, help="where save_pretrained writes the latentcode model")
    add_scaling_factor_arguments(parser)
    return parser.parse_args(argv)


@command_line
def main(argv=None) -> None:
    args = parse_args(argv)
    model = from_taesd(args.encoder_path, args.decoder_path)
    print(f"TAESD layout: {taesd_variant(model.config)}")
    save_converted_model(model, args)


if __name__ == "__main__":
    main()
