"""CPU time per training step of every preset in `training/configs/` (the README's preset table).

    python benchmarks/bench_presets.py                       # every preset, one thread
    python benchmarks/bench_presets.py --presets vqvae_celeba256 --steps 2

Each preset's model is built as `training/train.py` builds it (`load_config` + `build_model`) and
trained for `--steps` AdamW steps (after one untimed warm-up step) on random pixels at the
preset's resolution and batch size, in fp32, through the family's own loss (`model(pixels).loss`;
a preset's LPIPS and GAN terms are not included). It reports the process CPU time per step with
`--threads` compute threads (default one): CPU time counts the work done, so it barely moves when
other processes share the machine, unlike wall-clock time, which is reported beside it. With one
thread on an idle core, the two are equal.

`--output FILE` appends one JSON row per preset (the setting, both times, the load average
before and after, the date): the row files under `benchmarks/results/presets/` are what the
README's preset table quotes (`tests/test_readme.py` checks the table against them).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from latentcode.training.autoencoder_task import build_model
from latentcode.training.config import load_config

PRESETS = Path(__file__).resolve().parents[1] / "training" / "configs"


def time_preset(path: Path, steps: int) -> dict:
    """`{"preset", "batch", "resolution", "cpu_s", "wall_s", "parameters_m"}` of one preset: seconds
    per step, mean over `steps` timed steps."""
    config = load_config(path)
    torch.manual_seed(0)
    model = build_model(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optimization.learning_rate)
    channels = model.config.in_channels
    pixels = (
        torch.rand(config.optimization.train_batch_size, channels, config.data.resolution, config.data.resolution) * 2
        - 1
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(pixels).loss.backward()
        optimizer.step()

    step()  # warm-up: allocations, kernel selection, lazy initialisation
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    return dict(
        preset=path.stem,
        batch=config.optimization.train_batch_size,
        resolution=config.data.resolution,
        parameters_m=sum(p.numel() for p in model.parameters()) / 1e6,
        cpu_s=(time.process_time() - cpu) / steps,
        wall_s=(time.perf_counter() - wall) / steps,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", help="preset file stems (default: every preset)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per preset")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", help="a JSON-lines row file to append each preset's row to")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.presets or sorted(path.stem for path in PRESETS.glob("*.yaml"))
    print(f"threads: {args.threads}, fp32, {args.steps} timed steps after one warm-up step")
    print("| preset | batch | resolution | parameters (M) | CPU s / step | wall s / step |")
    print("|---|---|---|---|---|---|")
    for name in names:
        load_before = os.getloadavg()
        row = time_preset(PRESETS / f"{name}.yaml", args.steps)
        if args.output:
            setting = dict(threads=args.threads, steps=args.steps, torch=torch.__version__)
            extra = dict(load_average_before=load_before, load_average_after=os.getloadavg())
            extra["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            with open(args.output, "a") as out:
                out.write(json.dumps({**row, **setting, **extra}) + "\n")
        print(
            f"| `{row['preset']}` | {row['batch']} | {row['resolution']} | {row['parameters_m']:.1f} "
            f"| {row['cpu_s']:.2f} | {row['wall_s']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
