"""Export a latentcode `VQVAEModel` / `VAEModel` to a diffusers `VQModel` / `AutoencoderKL` folder, and
an `AutoencoderModel` on the tiny (TAESD) backbone to an `AutoencoderTiny` folder.

    python conversion/convert_latentcode_to_diffusers.py --pretrained_model_name_or_path my-vqvae --output_dir my-vqvae-diffusers

The folder loads with `VQModel.from_pretrained` / `AutoencoderKL.from_pretrained` /
`AutoencoderTiny.from_pretrained` (weights are bit-identical). Models that diffusers cannot express
(e.g. an FSQ quantizer, taef2's pooling branch) stop with an error.
"""

from __future__ import annotations

import argparse

from transformers import AutoModel

import latentcode.modeling  # noqa: F401  (registers the latentcode model types with AutoModel)
from latentcode.errors import command_line
from latentcode.hub import resolve_pretrained


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="latentcode model folder or Hub id")
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit (default: main)")
    parser.add_argument("--output_dir", required=True, help="where the diffusers model is saved")
    parser.add_argument(
        "--no_safe_serialization",
        dest="safe_serialization",
        action="store_false",
        help="write pickled .bin weights instead of safetensors",
    )
    return parser.parse_args(argv)


@command_line
def main(argv=None) -> None:
    args = parse_args(argv)
    path = resolve_pretrained(args.pretrained_model_name_or_path, revision=args.revision)
    model = AutoModel.from_pretrained(path, revision=args.revision)
    exported = model.to_diffusers()
    exported.save_pretrained(args.output_dir, safe_serialization=args.safe_serialization)
    print(f"wrote diffusers {type(exported).__name__} to {args.output_dir}")


if __name__ == "__main__":
    main()
