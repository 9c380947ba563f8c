"""Training throughput (images/s) with 1 and 2 data-parallel processes on CPU, through accelerate.

    python benchmarks/bench_training_scaling.py --quick     # about a minute on 2 CPU cores
    python benchmarks/bench_training_scaling.py             # the README table

The driver launches this same file as a worker with `accelerate launch` (1 process: `--cpu`;
2 processes: `--multi_gpu --num_processes 2` with ACCELERATE_USE_CPU=1, i.e. DDP over gloo) and
prints one row per process count. Each worker runs the training step of `training/train.py`'s
core (forward through the DDP-wrapped model, `accelerator.backward`, AdamW step) on a fixed
per-process batch of real images (scikit-learn digits, resized), so the global batch grows
with the processes (weak scaling), as it does when one adds GPUs. The machine's cores are split
evenly between the processes (`torch.set_num_threads(cores // processes)`): on 2 cores, 2
processes have 1 thread each, so the comparison is threads-in-one-process against processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

SETTINGS = {
    # model architecture (latentcode.architectures), per-process batch, image size, timed steps
    "full": dict(architecture="vqvae_paper_32", batch=32, size=32, steps=20),
    "quick": dict(architecture="mnist", batch=32, size=32, steps=10),
}


def worker(args) -> None:
    import numpy as np
    import torch.nn.functional as F
    from accelerate import Accelerator
    from sklearn.datasets import load_digits

    from latentcode import VQVAEModel, architecture_config

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    torch.manual_seed(0)
    setting = SETTINGS["quick" if args.quick else "full"]
    config = architecture_config(setting["architecture"], family="vqvae", sample_size=setting["size"])
    model = VQVAEModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)

    digits = torch.from_numpy(load_digits().images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    start = accelerator.process_index * setting["batch"]
    pixels = F.interpolate(digits[start : start + setting["batch"]], size=setting["size"], mode="bilinear")
    pixels = pixels.expand(-1, config.in_channels, -1, -1).contiguous().to(accelerator.device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(pixels).loss
        accelerator.backward(loss)
        optimizer.step()

    for _ in range(3):  # warm-up: allocator, DDP buckets, k-means initialisation of the codebook
        step()
    accelerator.wait_for_everyone()
    began = time.perf_counter()
    for _ in range(setting["steps"]):
        step()
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - began
    if accelerator.is_main_process:
        images = setting["steps"] * setting["batch"] * accelerator.num_processes
        result = dict(
            processes=accelerator.num_processes,
            threads_per_process=torch.get_num_threads(),
            per_process_batch=setting["batch"],
            global_batch=setting["batch"] * accelerator.num_processes,
            steps=setting["steps"],
            seconds=seconds,
            images_per_s=images / seconds,
            model=setting["preset"],
            image_size=setting["size"],
        )
        with open(args.result_file, "w") as file:
            json.dump(result, file)


def launch(num_processes: int, quick: bool, result_file: str) -> dict:
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if num_processes == 1:
        command += ["--cpu", "--num_processes", "1"]
    else:
        command += ["--multi_gpu", "--num_processes", str(num_processes)]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", os.path.abspath(__file__)]
    command += ["--worker", "--result_file", result_file] + (["--quick"] if quick else [])
    env = dict(os.environ, ACCELERATE_USE_CPU="1")
    subprocess.run(command, check=True, env=env)
    with open(result_file) as file:
        return json.load(file)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small MNIST preset, 10 timed steps")
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result_file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output_json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return

    print(f"# {os.cpu_count()} CPU cores; torch {torch.__version__}; load {os.getloadavg()}")
    print("| processes | threads / process | global batch | images / s | speedup |")
    print("|---:|---:|---:|---:|---:|")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for count in args.processes:
            row = launch(count, args.quick, os.path.join(folder, f"{count}.json"))
            rows.append(row)
            speedup = row["images_per_s"] / rows[0]["images_per_s"]
            print(
                f"| {count} | {row['threads_per_process']} | {row['global_batch']} | {row['images_per_s']:.1f} "
                f"| {speedup:.2f}x |",
                flush=True,
            )
    print(f"# model {rows[0]['model']} at {rows[0]['image_size']}x{rows[0]['image_size']}; load {os.getloadavg()}")
    if args.output_json:
        with open(args.output_json, "w") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
