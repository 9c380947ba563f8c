"""`latentcode-tokenize` (also `python -m latentcode.tokenize`): the command line of [`tokenize`].

Its options are checked before torch, transformers or the data libraries load, so `--help` and
a misspelt flag answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..errors import command_line
from ..hub import push_to_hub
from ..model_loading import add_model_arguments, load_pretrained_model
from ..threads import set_num_threads
from .dataset_folder import LATENT_DTYPES, PARTS


def default_num_workers() -> int:
    """Decoding workers when not given: the cores but one for the model, at most 8."""
    return max(min((os.cpu_count() or 1) - 1, 8), 0)


def build_parser() -> argparse.ArgumentParser:
    from ..training.config import (
        DATA_SOURCE_FIELDS,
        ComputeOptions,
        DataOptions,
        DefaultsHelpFormatter,
        add_config_arguments,
    )

    parser = argparse.ArgumentParser(
        prog="latentcode-tokenize",
        description="Encode every readable image of a dataset with a trained latentcode model and write the codes "
        "as a Hugging Face dataset (parquet shards + dataset card). Resumable; multi-process with accelerate launch.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_model_arguments(parser)
    data = parser.add_argument_group("data (as in training/train.py)")
    add_config_arguments(data, DataOptions, DATA_SOURCE_FIELDS, keep_defaults=True)
    add_config_arguments(parser, ComputeOptions, ["threads"], keep_defaults=True)
    data.add_argument("--resolution", type=int, default=None, help="image size (default: the model's sample_size)")
    data.add_argument("--batch_size", type=int, default=64, help="images per encode call")
    data.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=default_num_workers(),
        help=f"decoding workers (default: the CPU cores but one, at most 8: {default_num_workers()} here)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--output_dir", required=True, help="the dataset folder to write (or to resume)")
    out.add_argument("--flip_copies", action="store_true", help="also encode each image flipped horizontally")
    out.add_argument("--latent_dtype", default="float32", choices=LATENT_DTYPES, help="VAE / AutoEncoder latents")
    out.add_argument("--rows_per_shard", type=int, default=5000, help="source images per parquet shard")
    out.add_argument("--device", default=None, help="default: the process's accelerator device, else cpu")
    out.add_argument("--push_to_hub", action="store_true", help="upload the finished dataset to --hub_dataset_id")
    out.add_argument("--hub_dataset_id", default=None, help="Hub dataset repository, org/name")
    out.add_argument("--hub_token", default=None, help="Hub token (default: the logged-in one)")
    return parser


def push_codes_to_hub(output_dir: str, repo_id: str, token: str | None = None) -> None:
    """Upload a finished code dataset (without the units-in-progress folder) as one Hub commit."""
    push_to_hub(
        output_dir,
        repo_id,
        what="the tokenised dataset",
        retry="rerun the same command with --push_to_hub to upload it (the encoding is not redone)",
        repo_type="dataset",
        token=token,
        ignore_patterns=[f"{PARTS}/*"],
    )


@command_line
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.push_to_hub and not args.hub_dataset_id:
        raise SystemExit("--push_to_hub needs --hub_dataset_id org/name")
    set_num_threads(args.threads)
    from accelerate import PartialState

    from .writer import tokenize

    state = PartialState()
    model = load_pretrained_model(args.pretrained_model_name_or_path, revision=args.revision, cache_dir=args.cache_dir)
    model = model.to(args.device or state.device)
    start = time.perf_counter()
    info = tokenize(
        model,
        args.output_dir,
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        split=args.split,
        train_data_dir=args.train_data_dir,
        image_column=args.image_column,
        cache_dir=args.cache_dir,
        resolution=args.resolution,
        batch_size=args.batch_size,
        num_workers=args.dataloader_num_workers,
        rows_per_shard=args.rows_per_shard,
        flip_copies=args.flip_copies,
        latent_dtype=args.latent_dtype,
        model_name_or_path=args.pretrained_model_name_or_path,
        revision=args.revision,
        rank=state.process_index,
        world_size=state.num_processes,
        barrier=state.wait_for_everyone if state.num_processes > 1 else None,
    )
    if info is not None:
        seconds = time.perf_counter() - start
        print(
            f"{args.output_dir}: {info['rows']:,} rows ({info['images']:,} images, {info['corrupt_files']} unreadable "
            f"skipped), {info['bits_per_image']:.0f} bits per image, in {seconds:.1f} s"
        )
        if args.push_to_hub:
            push_codes_to_hub(args.output_dir, args.hub_dataset_id, args.hub_token)
    # Several processes: end the process group before the interpreter exits, as train.py's engine
    # does; left to exit, gloo's threads can be torn down joinable and abort the process.
    state.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
