"""latentcode's VQVAEModel / VAEModel against diffusers' VQModel / AutoencoderKL, side by side.

Both models of a pair have the same architecture and the same weights: the diffusers model is
built first and ours is converted from it with `VQVAEModel.from_diffusers` /
`VAEModel.from_diffusers`. For every row (family, dtype, image size, operation) the two are
timed interleaved in one process, alternating which goes first, so that a busy machine slows
both alike; the table reports medians and ours / diffusers speedups, plus the peak memory of
one call.

Operations:
    encode  pixels -> code (VQ: quantised, with token indices; VAE: the posterior)
    decode  code -> pixels (VQ: diffusers' `decode` quantises its input, so ours does too)
    train   forward + backward + AdamW step on the default objective (MSE + the family's
            regulariser); bf16 training is autocast with fp32 weights, as `accelerate
            --mixed_precision bf16` runs it. fp32 / bf16 inference runs the model in that dtype.

Ours runs in channels_last memory format (`model.to(memory_format=torch.channels_last)`, an
opt-in any user has), except in bf16 training where it is slower on CPU (`--channels_last
auto|always|never`); `--peer_channels_last` gives diffusers channels_last too, to separate the
layout's gain from the implementation's.

    python benchmarks/bench_models.py --quick          # a few minutes on 2 CPU cores
    python benchmarks/bench_models.py                  # the README table
    python benchmarks/bench_models.py --compile        # both sides under torch.compile
    python benchmarks/bench_models.py --threads 1 --clock cpu   # on a machine others are using

Peak memory: on CUDA `torch.cuda.max_memory_allocated`; on CPU the rise of the process's peak
resident memory (Linux VmHWM, reset before the call) over its resident memory before it.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, VQModel
from diffusers.utils import logging as diffusers_logging

from latentcode import VAEModel, VQVAEModel

# (block_out_channels, layers_per_block, batch size per image size)
ARCHITECTURES = {
    # LDM's f4 layout (three levels, two ResNet blocks per level, mid-block attention) at half
    # the width of CompVis' (128, 256, 512), so that the whole table takes minutes on 2 cores.
    "full": dict(block_out_channels=(64, 128, 256), layers_per_block=2, batch={32: 8, 64: 4, 256: 1}),
    "quick": dict(block_out_channels=(32, 64, 128), layers_per_block=1, batch={32: 8, 64: 4, 256: 1}),
}
CODEBOOK_SIZE = 8192


def build_pair(family: str, block_out_channels, layers_per_block: int):
    """A diffusers model with random weights and ours converted from it, both in train mode."""
    levels = len(block_out_channels)
    common = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        norm_num_groups=32,
    )
    if family == "vqvae":
        peer = VQModel(latent_channels=3, num_vq_embeddings=CODEBOOK_SIZE, **common)
        ours = VQVAEModel.from_diffusers(peer)
    else:
        peer = AutoencoderKL(latent_channels=4, **common)
        ours = VAEModel.from_diffusers(peer)
    return peer, ours


# -- the three operations, for each side -----------------------------------------------------


def encode_fn(model, family: str, is_ours: bool):
    if is_ours:
        if family == "vqvae":
            return lambda x: model.encode(x).indices
        return lambda x: model.encode(x).latent_dist.mean
    if family == "vqvae":
        return lambda x: model.quantize(model.encode(x).latents)[2][2]
    return lambda x: model.encode(x).latent_dist.mean


def train_loss_fn(model, family: str, is_ours: bool):
    """The default objective, computed the same way on both sides."""
    if is_ours:
        return lambda x: model(x).loss
    if family == "vqvae":

        def vq_loss(x):
            out = model(x)
            return F.mse_loss(out.sample.float(), x.float()) + out.commit_loss.mean()

        return vq_loss

    def kl_loss(x):
        posterior = model.encode(x).latent_dist
        sample = model.decode(posterior.sample()).sample
        kl = posterior.kl().float().mean()
        return F.mse_loss(sample.float(), x.float()) + 1e-3 * kl / x[0].numel()

    return kl_loss


@dataclass
class Side:
    """One implementation prepared for one row: `step()` runs the operation once."""

    step: object
    name: str


def prepare(model, family, is_ours, op, dtype, x, latents, channels_last, compile_model):
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        latents = latents.contiguous(memory_format=torch.channels_last)
    if op == "train":
        model = model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        loss_fn = train_loss_fn(model, family, is_ours)
        if compile_model:
            loss_fn = torch.compile(loss_fn)
        autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

        def train_step():
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(x)
            loss.backward()
            optimizer.step()

        return train_step
    model = model.eval().to(dtype)
    x, latents = x.to(dtype), latents.to(dtype)
    if op == "encode":
        fn, arg = encode_fn(model, family, is_ours), x
    else:
        fn, arg = (lambda z: model.decode(z).sample), latents
    if compile_model:
        fn = torch.compile(fn)

    def inference_step():
        with torch.inference_mode():
            fn(arg)

    return inference_step


def use_channels_last(mode: str, op: str, dtype: torch.dtype) -> bool:
    if mode == "auto":
        return not (op == "train" and dtype == torch.bfloat16)
    return mode == "always"


# -- measurement -------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(
    steps: dict[str, object], repeats: int, device: torch.device, clock=time.perf_counter
) -> dict[str, list[float]]:
    """Seconds per call of each step, run in alternating order after one warm-up call each."""
    for step in steps.values():
        step()
    synchronize(device)
    times = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            start = clock()
            steps[name]()
            synchronize(device)
            times[name].append(clock() - start)
    return times


# "cpu" (this process's CPU time) is for a shared machine: other processes' load does not count,
# but it is only a fair clock with --threads 1 (threads waiting on each other burn CPU time).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

_LIBC = ctypes.CDLL("libc.so.6") if platform.system() == "Linux" else None


def _resident_kib(field: str) -> int:
    status = open("/proc/self/status").read()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1))


def peak_memory_mib(step, device: torch.device) -> float | None:
    """Peak extra memory of one call in MiB, or None where it cannot be measured."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if _LIBC is None:
        return None
    _LIBC.malloc_trim(0)  # hand freed heap memory back so the baseline is what is really live
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current resident size
    before = _resident_kib("VmRSS")
    step()
    return (_resident_kib("VmHWM") - before) / 1024


@dataclass
class Row:
    family: str
    dtype: str
    size: int
    batch: int
    op: str
    diffusers_ms: float
    ours_ms: float
    speedup: float
    diffusers_peak_mib: float | None
    ours_peak_mib: float | None


def run(args) -> list[Row]:
    device = torch.device(args.device)
    architecture = ARCHITECTURES["quick" if args.quick else "full"]
    repeats = args.repeats or (3 if args.quick else 5)
    rows = []
    for family in args.families:
        torch.manual_seed(0)
        peer, ours = build_pair(family, architecture["block_out_channels"], architecture["layers_per_block"])
        peer, ours = peer.to(device), ours.to(device)
        latent_channels = ours.config.codebook_dim if family == "vqvae" else ours.config.latent_channels
        factor = ours.downsampling_factor
        for dtype_name in args.dtypes:
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
            for size in args.sizes:
                batch = architecture["batch"].get(size, 1)
                generator = torch.Generator().manual_seed(size)
                x = (torch.rand(batch, 3, size, size, generator=generator) * 2 - 1).to(device)
                latents = torch.randn(batch, latent_channels, size // factor, size // factor, generator=generator)
                latents = latents.to(device)
                for op in args.ops:
                    # Fresh copies: a training step changes the weights, bf16 inference casts them.
                    steps = {
                        "diffusers": prepare(
                            copy.deepcopy(peer),
                            family,
                            False,
                            op,
                            dtype,
                            x,
                            latents,
                            args.peer_channels_last,
                            args.compile,
                        ),
                        "ours": prepare(
                            copy.deepcopy(ours),
                            family,
                            True,
                            op,
                            dtype,
                            x,
                            latents,
                            use_channels_last(args.channels_last, op, dtype),
                            args.compile,
                        ),
                    }
                    times = interleaved_times(steps, repeats, device, CLOCKS[args.clock])
                    memory = {name: peak_memory_mib(step, device) for name, step in steps.items()}
                    diffusers_s, ours_s = (statistics.median(times[name]) for name in ("diffusers", "ours"))
                    row = Row(
                        family,
                        dtype_name,
                        size,
                        batch,
                        op,
                        1e3 * diffusers_s,
                        1e3 * ours_s,
                        diffusers_s / ours_s,
                        memory["diffusers"],
                        memory["ours"],
                    )
                    rows.append(row)
                    print(format_row(row), flush=True)
                    del steps
                    gc.collect()
    return rows


# -- output ------------------------------------------------------------------------------------

HEADER = (
    "| model | dtype | size | batch | op | diffusers ms | ours ms | speedup | diffusers peak MiB | ours peak MiB |\n"
    "|---|---|---|---|---|---:|---:|---:|---:|---:|"
)


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def format_row(row: Row) -> str:
    name = {"vqvae": "VQVAEModel vs VQModel", "vae": "VAEModel vs AutoencoderKL"}[row.family]
    return (
        f"| {name} | {row.dtype} | {row.size} | {row.batch} | {row.op} | {row.diffusers_ms:.1f} | {row.ours_ms:.1f} "
        f"| {row.speedup:.2f}x | {_mib(row.diffusers_peak_mib)} | {_mib(row.ours_peak_mib)} |"
    )


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read()).group(1)
    except (OSError, AttributeError):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="narrow models and 3 repeats: minutes on 2 CPU cores")
    parser.add_argument("--families", nargs="+", default=["vqvae", "vae"], choices=["vqvae", "vae"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 256])
    parser.add_argument(
        "--ops", nargs="+", default=["encode", "decode", "train"], choices=["encode", "decode", "train"]
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per side (default 5, quick 3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--channels_last",
        default="auto",
        choices=["auto", "always", "never"],
        help="memory format of ours; auto: channels_last except in bf16 training, where CPU autocast's fp32 "
        "GroupNorm round trips make it slower",
    )
    parser.add_argument("--peer_channels_last", action="store_true", help="run diffusers in channels_last too")
    parser.add_argument("--compile", action="store_true", help="torch.compile both sides (slow to compile on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--clock", default="wall", choices=sorted(CLOCKS), help="wall time, or process CPU time for a shared machine"
    )
    parser.add_argument("--output_json", default=None, help="also write the rows and the machine here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    diffusers_logging.set_verbosity_error()  # bf16 casts warn once per model copy
    device = torch.device(args.device)
    print(
        f"# machine: {machine_description(device)}; torch {torch.__version__}; {args.clock} clock; "
        f"load {os.getloadavg()}"
    )
    print(HEADER, flush=True)
    start = time.perf_counter()
    rows = run(args)
    print(f"# {time.perf_counter() - start:.0f} s; load {os.getloadavg()}")
    if args.output_json:
        with open(args.output_json, "w") as file:
            json.dump(
                {"machine": machine_description(device), "args": vars(args), "rows": [asdict(r) for r in rows]},
                file,
                indent=2,
            )


if __name__ == "__main__":
    main()
