"""latentcode's VQVAEModel / VAEModel against diffusers' VQModel / AutoencoderKL, side by side.

Both models of a pair have the same architecture and the same weights: the diffusers model is
built first and ours is converted from it with `VQVAEModel.from_diffusers` /
`VAEModel.from_diffusers`. Both run with default settings: NCHW input tensors, fp32 weights, no
`.to(memory_format=...)`, no compile. Each row (threads, family, image size, operation) times
the two interleaved in one process, alternating which goes first, so that a busy machine slows
both alike; cells are medians, and `spread` is the interquartile range over the median of the
noisier side, to show how far a cell can be trusted.

Operations:
    encode  pixels -> code (VQ: quantised, with token indices; VAE: the posterior mean)
    decode  code -> pixels (VQ: diffusers' `decode` quantises its input, so ours does too)
    train   forward + backward + AdamW step on the default objective (MSE + the family's
            regulariser)

Extra rows (default run, at 32x32, batch 32, with the most threads measured):
    direct   encode / decode / train with ours' Winograd convolutions switched off
             (`model.set_conv_implementation("direct")`): every convolution is oneDNN's
             direct one, as in diffusers; `vs eager` is against ours by default.
    compile  encode / decode with both sides' backbone under `torch.compile` (ours: `model.compile()`; diffusers:
             its encoder and decoder compiled the same way); `vs eager` is ours compiled
             against ours eager.
    bf16     encode / decode under `torch.autocast("cpu", torch.bfloat16)` (ours keeps the
             quantizer in fp32); `vs eager` is against ours in fp32, and `PSNR` is the bf16
             reconstruction's against the fp32 one.

Distance to the machine's limit: the hardware's fp32 FMA peak (a small C program of
independent FMA chains, compiled with the system's `cc -O3 -march=native`; skipped with a
message when there is no compiler) and the sustained fp32 throughput of a large matmul and of
the model's own 3x3 convolutions are measured first (same threads); every row reports ours'
achieved GFLOP/s, with FLOPs counted by `torch.utils.flop_counter.FlopCounterMode`, and its
fraction of the conv peak and of the FMA peak. Before the model rows, one table per thread
count times single 3x3 convolutions of the backbone's shapes as oneDNN's direct convolution
and as ours' Winograd F(4x4, 3x3), with each one's error against float64.

    python benchmarks/bench_models.py                  # the table of benchmarks/README.md
    python benchmarks/bench_models.py --quick          # narrower model, fewer repeats
    python benchmarks/bench_models.py --threads 2 --sizes 256 --ops encode decode
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, VQModel
from diffusers.utils import logging as diffusers_logging
from torch.utils.flop_counter import FlopCounterMode

from latentcode import VAEModel, VQVAEModel
from latentcode.modules import winograd

# The backbone of issue 11's measurement: three levels, one ResNet block per level, mid-block
# attention; batch per image size.
ARCHITECTURES = {
    "default": dict(block_out_channels=(64, 128, 128), layers_per_block=1),
    "quick": dict(block_out_channels=(32, 64, 64), layers_per_block=1),
}
BATCH = {32: 32, 64: 8, 256: 1}
CODEBOOK_SIZE = 1024
EXTRA_ROWS_SIZE = 32


def build_pair(family: str, block_out_channels, layers_per_block: int):
    """A diffusers model with random weights and ours converted from it."""
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
        return peer, VQVAEModel.from_diffusers(peer)
    peer = AutoencoderKL(latent_channels=4, **common)
    return peer, VAEModel.from_diffusers(peer)


# -- the operations, for each side -------------------------------------------------------------


def inference_fn(model, family: str, is_ours: bool, op: str):
    """`fn(input) -> tensor` for encode / decode."""
    if op == "decode":
        return lambda z: model.decode(z).sample
    if family == "vae":
        return lambda x: model.encode(x).latent_dist.mean
    if is_ours:
        return lambda x: model.encode(x).indices
    return lambda x: model.quantize(model.encode(x).latents)[2][2]


def train_loss_fn(model, family: str, is_ours: bool):
    """The default objective, computed the same way on both sides."""
    if is_ours:
        return lambda x: model(x).loss
    if family == "vqvae":
        return lambda x: (lambda out: F.mse_loss(out.sample, x) + out.commit_loss.mean())(model(x))

    def kl_loss(x):
        posterior = model.encode(x).latent_dist
        sample = model.decode(posterior.sample()).sample
        return F.mse_loss(sample, x) + 1e-3 * posterior.kl().mean() / x[0].numel()

    return kl_loss


def compile_backbone(model, is_ours: bool) -> None:
    if is_ours:
        model.compile()
    else:
        model.encoder.compile()
        model.decoder.compile()


def prepare(model, family, is_ours, op, x, latents, variant):
    """A function that runs the operation once (and returns its output for inference)."""
    if variant == "compile":
        compile_backbone(model, is_ours)
    if is_ours and variant == "direct":
        # Ours with every convolution as nn.Conv2d (no Winograd), to show what it gains.
        model.set_conv_implementation("direct")
    if op == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        loss_fn = train_loss_fn(model, family, is_ours)

        def run():
            optimizer.zero_grad(set_to_none=True)
            loss_fn(x).backward()
            optimizer.step()

    else:
        model.eval()
        fn = inference_fn(model, family, is_ours, op)
        arg = x if op == "encode" else latents
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16")

        def run():
            with torch.inference_mode(), autocast:
                return fn(arg)

    return run


# -- measurement -------------------------------------------------------------------------------


# "cpu" (this process's CPU time) is for a shared machine: other processes' load does not count,
# but it is only a fair clock with one thread (threads waiting on each other burn CPU time).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def interleaved_times(steps: dict[str, object], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each step, in alternating order after two warm-up calls each."""
    for step in steps.values():
        step()
        step()
    times = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            start = clock()
            steps[name]()
            times[name].append(clock() - start)
    return times


def spread(times: list[float]) -> float:
    quartiles = statistics.quantiles(times, n=4)
    return (quartiles[2] - quartiles[0]) / statistics.median(times)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def best_gflops(fn, flops: int, repeats: int) -> float:
    fn()
    best = min(_timed(fn) for _ in range(repeats))
    return flops / best / 1e9


def _timed(fn) -> float:
    start = clock()
    fn()
    return clock() - start


# (batch, in channels, out channels, height = width): 3x3 convolutions of the default backbone
# at its three image sizes (32x32 batch 32, 64x64 batch 8, 256x256 batch 1).
WINOGRAD_SHAPES = [
    (32, 64, 64, 32),
    (32, 128, 128, 16),
    (32, 128, 128, 8),
    (8, 64, 64, 64),
    (8, 128, 128, 32),
    (1, 64, 64, 256),
    (1, 128, 128, 128),
    (1, 128, 128, 64),
]


def winograd_rows(threads: int, repeats: int) -> list[str]:
    """Markdown rows: one 3x3 convolution (channels_last input, inference) as oneDNN's direct
    `nn.Conv2d` and as ours' Winograd F(4x4, 3x3), best of `repeats`, with the max abs error
    of each against a float64 convolution over the output's max abs value."""
    rows = []
    for batch, in_channels, out_channels, size in WINOGRAD_SHAPES:
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1)
        x = torch.randn(batch, in_channels, size, size).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            reference = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
            scale = reference.abs().max().item()
            errors = [
                (out.double() - reference).abs().max().item() / scale
                for out in (conv(x), winograd.winograd_conv2d(conv, x))
            ]
            direct_s, winograd_s = (
                min(_timed(fn) for _ in range(repeats))
                for fn in (lambda conv=conv, x=x: conv(x), lambda conv=conv, x=x: winograd.winograd_conv2d(conv, x))
            )
        rows.append(
            f"| {threads} | {batch} | {in_channels} -> {out_channels} | {size}x{size} | {1e3 * direct_s:.1f} "
            f"| {1e3 * winograd_s:.1f} | {direct_s / winograd_s:.2f}x | {errors[0]:.1e} | {errors[1]:.1e} |"
        )
    return rows


WINOGRAD_HEADER = (
    "| threads | batch | channels | size | oneDNN direct ms | Winograd ms | speedup | direct rel. error "
    "| Winograd rel. error |\n|---:|---:|---|---|---:|---:|---:|---:|---:|"
)


def machine_peaks(channels: int, repeats: int) -> dict[str, float]:
    """Sustained fp32 GFLOP/s of a 2048^3 matmul and of the backbone's widest 3x3 convolution
    (channels -> channels, 64x64, batch 8, channels_last and NCHW, the faster), best of repeats."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    matmul = best_gflops(lambda: a @ b, 2 * 2048**3, repeats)
    weight = torch.randn(channels, channels, 3, 3)
    conv = 0.0
    for memory_format in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(8, channels, 64, 64).contiguous(memory_format=memory_format)
        w = weight.contiguous(memory_format=memory_format)
        with torch.inference_mode():
            flops = count_flops(lambda x=x, w=w: F.conv2d(x, w, padding=1))
            conv = max(conv, best_gflops(lambda x=x, w=w: F.conv2d(x, w, padding=1), flops, repeats))
    return {"matmul": matmul, "conv": conv}


# The hardware's limit: each process runs 12 independent chains of fp32 vector FMAs on registers
# (no memory traffic), so its FLOP/s is what the core's FMA units can issue at their clock.
FMA_PEAK_SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#endif
#define CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define DECLARE(i) vec a##i = SET1(seed * i);
#define STEP(i) a##i = FMA(a##i, b, c);
#define SUM(i) s = ADD(s, a##i);
int main(int argc, char **argv) {
    long iters = atol(argv[1]);
    float seed = (float)argc * 0.5f, lanes[LANES];
    vec b = SET1(0.999999f), c = SET1(1e-7f), s = SET1(0.0f);
    CHAINS(DECLARE)
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long k = 0; k < iters; k++) { CHAINS(STEP) }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHAINS(SUM)
    __builtin_memcpy(lanes, &s, sizeof(s)); /* uses the result, so the loop is not removed */
    double seconds = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
    printf("%.3f %g\n", 2.0 * LANES * 12 * iters / seconds / 1e9, lanes[0]);
    return 0;
}
"""


def fma_peak_gflops(threads: int, repeats: int = 3) -> float | None:
    """The CPU's fp32 FMA peak over `threads` cores (GFLOP/s): `FMA_PEAK_SOURCE` compiled with
    `-O3 -march=native`, one process per core run at once, their sum, best of `repeats`. None
    (with a message) when no C compiler is found or the build fails."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print("# FMA peak: skipped, no C compiler (cc / gcc) on PATH")
        return None
    with tempfile.TemporaryDirectory() as folder:
        source, binary = os.path.join(folder, "fma_peak.c"), os.path.join(folder, "fma_peak")
        with open(source, "w") as file:
            file.write(FMA_PEAK_SOURCE)
        build = subprocess.run([compiler, "-O3", "-march=native", source, "-o", binary], capture_output=True, text=True)
        if build.returncode != 0:
            print(f"# FMA peak: skipped, {compiler} failed: {build.stderr.strip()[:200]}")
            return None
        best = 0.0
        for _ in range(repeats):
            runs = [subprocess.Popen([binary, "50000000"], stdout=subprocess.PIPE, text=True) for _ in range(threads)]
            best = max(best, sum(float(run.communicate()[0].split()[0]) for run in runs))
        return best


def psnr(reference: torch.Tensor, test: torch.Tensor, peak_to_peak: float = 2.0) -> float:
    mse = (reference.float() - test.float()).square().mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(peak_to_peak**2 / mse)).item()


@torch.inference_mode()
def bf16_reconstruction_psnr(model, pixels: torch.Tensor) -> float:
    """PSNR (dB, pixels in [-1, 1]) of the reconstruction under bf16 autocast against fp32's."""
    model = copy.deepcopy(model).eval()
    reference = model(pixels).sample
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return psnr(reference, model(pixels).sample)


@dataclass
class Row:
    threads: int
    family: str
    size: int
    batch: int
    op: str
    variant: str  # "eager", "direct", "compile" or "bf16"
    diffusers_ms: float
    ours_ms: float
    spread: float
    ours_gflops: float
    conv_peak_fraction: float
    fma_peak_fraction: float | None
    ours_eager_ms: float | None = None  # compile / bf16 rows: ours in fp32 eager
    bf16_psnr: float | None = None


def run_row(pair, family, threads, size, op, variant, repeats, peaks, eager_ms=None) -> Row:
    peer, ours = pair
    batch = BATCH[size]
    factor = ours.downsampling_factor
    generator = torch.Generator().manual_seed(size)
    x = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    latent_channels = ours.config.codebook_dim if family == "vqvae" else ours.config.latent_channels
    latents = torch.randn(batch, latent_channels, size // factor, size // factor, generator=generator)
    # Fresh copies: a training step changes the weights, compile wraps the modules.
    sides = {
        "diffusers": prepare(copy.deepcopy(peer), family, False, op, x, latents, variant),
        "ours": prepare(copy.deepcopy(ours), family, True, op, x, latents, variant),
    }
    times = interleaved_times(sides, repeats)
    diffusers_s, ours_s = (statistics.median(times[name]) for name in ("diffusers", "ours"))
    # Counted in fp32 with direct convolutions: the architecture's FLOPs, the same in every
    # variant (Winograd's does the same convolutions in fewer multiplications). The codebook
    # search runs in worker threads that the counter does not see; it is < 1% of these models' FLOPs.
    flops = count_flops(prepare(copy.deepcopy(ours), family, True, op, x, latents, "direct"))
    gflops = flops / ours_s / 1e9
    row = Row(
        threads,
        family,
        size,
        batch,
        op,
        variant,
        1e3 * diffusers_s,
        1e3 * ours_s,
        max(spread(times["diffusers"]), spread(times["ours"])),
        gflops,
        gflops / peaks["conv"],
        gflops / peaks["fma"] if peaks["fma"] else None,
        eager_ms,
    )
    if variant == "bf16" and op == "decode":
        row.bf16_psnr = bf16_reconstruction_psnr(ours, x)
    del sides
    gc.collect()
    return row


# -- output ------------------------------------------------------------------------------------

HEADER = (
    "| threads | model | size | batch | op | variant | diffusers ms | ours ms | speedup | spread "
    "| ours vs eager | ours GFLOP/s | of conv peak | of FMA peak | bf16 PSNR dB |\n"
    "|---:|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)
NAMES = {"vqvae": "VQVAEModel vs VQModel", "vae": "VAEModel vs AutoencoderKL"}


def format_row(row: Row) -> str:
    vs_eager = f"{row.ours_eager_ms / row.ours_ms:.2f}x" if row.ours_eager_ms else ""
    psnr_cell = f"{row.bf16_psnr:.1f}" if row.bf16_psnr is not None else ""
    fma_cell = f"{100 * row.fma_peak_fraction:.0f}%" if row.fma_peak_fraction is not None else ""
    return (
        f"| {row.threads} | {NAMES[row.family]} | {row.size} | {row.batch} | {row.op} | {row.variant} "
        f"| {row.diffusers_ms:.1f} | {row.ours_ms:.1f} | {row.diffusers_ms / row.ours_ms:.2f}x "
        f"| {100 * row.spread:.0f}% | {vs_eager} | {row.ours_gflops:.1f} | {100 * row.conv_peak_fraction:.0f}% "
        f"| {fma_cell} | {psnr_cell} |"
    )


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read()).group(1)
    except (OSError, AttributeError):
        pass
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    bf16 = [name for name in ("avx512_bf16", "amx_bf16") if name in flags]
    return f"{cpu} ({', '.join(bf16) or 'no bf16 instructions'}), {os.cpu_count()} cores"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="narrower model and 3 repeats")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--families", nargs="+", default=["vqvae", "vae"], choices=["vqvae", "vae"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 256], choices=sorted(BATCH))
    parser.add_argument(
        "--ops", nargs="+", default=["encode", "decode", "train"], choices=["encode", "decode", "train"]
    )
    parser.add_argument(
        "--extra",
        nargs="*",
        default=["direct", "compile", "bf16"],
        choices=["direct", "compile", "bf16"],
        help="extra rows",
    )
    parser.add_argument(
        "--no_winograd_table",
        dest="winograd",
        action="store_false",
        help="skip the per-convolution table of oneDNN against Winograd",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per side (default 9, quick 3)")
    parser.add_argument(
        "--clock", default="wall", choices=sorted(CLOCKS), help="wall time, or process CPU time (1 thread only)"
    )
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    architecture = ARCHITECTURES["quick" if args.quick else "default"]
    repeats = args.repeats or (3 if args.quick else 9)

    diffusers_logging.set_verbosity_error()
    print(f"# machine: {machine_description()}; torch {torch.__version__}; load {os.getloadavg()}")
    print(f"# architecture: {architecture}; {args.clock} clock, median of {repeats} interleaved calls per side")
    start = time.perf_counter()
    pairs = {}
    for family in args.families:
        torch.manual_seed(0)
        pairs[family] = build_pair(family, architecture["block_out_channels"], architecture["layers_per_block"])
    for threads in args.threads:
        torch.set_num_threads(threads)
        peaks = machine_peaks(max(architecture["block_out_channels"]), repeats)
        peaks["fma"] = fma_peak_gflops(threads)
        fma = f"{peaks['fma']:.0f}" if peaks["fma"] else "not measured"
        print(
            f"# {threads} threads: FMA peak {fma} GFLOP/s (the hardware's), matmul peak {peaks['matmul']:.0f} "
            f"GFLOP/s, conv peak {peaks['conv']:.0f} GFLOP/s (fp32)"
        )
        if args.winograd:
            print("\n" + WINOGRAD_HEADER)
            print("\n".join(winograd_rows(threads, repeats)) + "\n", flush=True)
        print(HEADER, flush=True)
        for family in args.families:
            eager = {}
            for size in args.sizes:
                for op in args.ops:
                    row = run_row(pairs[family], family, threads, size, op, "eager", repeats, peaks)
                    eager[(size, op)] = row.ours_ms
                    print(format_row(row), flush=True)
            if threads != max(args.threads):
                continue
            for variant in args.extra:
                # compile / bf16: inference only (compiling a training step of both sides takes
                # tens of minutes on CPU).
                ops = [op for op in args.ops if op != "train" or variant == "direct"]
                for op in ops:
                    base = eager.get((EXTRA_ROWS_SIZE, op))
                    row = run_row(pairs[family], family, threads, EXTRA_ROWS_SIZE, op, variant, repeats, peaks, base)
                    print(format_row(row), flush=True)
    print(f"# {time.perf_counter() - start:.0f} s; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
