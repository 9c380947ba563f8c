"""Nearest-code search and VQ layers: latentcode vs diffusers vs vector-quantize-pytorch.

    python benchmarks/bench_quantizers.py            # the full table of the README
    python benchmarks/bench_quantizers.py --quick    # a smaller N and fewer shapes, ~1 minute
    python benchmarks/bench_quantizers.py --tune     # time block shapes of our search

For N vectors against K codes of dimension D it times, in one process on the same inputs:

- `matmul`: one plain `x @ codebook.T`, the materialised N x K distance matrix's matmul alone;
- `ours search`: `nearest_codebook_indices`, the exact chunked search alone;
- `ours`: `latentcode.modules.quantizers.VectorQuantizer` (eval: the plain quantizer; train: the
  default recipe of `VQVAEConfig()`, EMA update + usage window + dead-code restart);
- `diffusers`: `diffusers.models.autoencoders.vae.VectorQuantizer` (cdist + argmin);
- `vq-pytorch`: `vector_quantize_pytorch.VectorQuantize` (EMA codebook, its default).

Forward ("fwd") and forward+backward ("fwd+bwd", train mode only) times are the minimum over
repeats (the minimum is the least disturbed by other processes on a shared machine). Peak
memory is the growth of the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs before each measurement) over the resident set at the start of it, with
glibc told to return large blocks to the system so that freed memory is not reused unseen.
A peer is not run where its N x K intermediates would not fit in `--memory_limit_gib`; the
table says so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    # Large allocations through mmap, freed back at once: peak RSS then sees every big tensor.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402

from latentcode.modules.quantizers import QuantizerLossWeights, VectorQuantizer, nearest_codebook_indices  # noqa: E402
from latentcode.modules.quantizers import search as search_module  # noqa: E402

FULL_SHAPES = [(8, 1024), (8, 16384), (64, 1024), (64, 16384), (256, 16384), (8, 2**18)]
QUICK_SHAPES = [(8, 1024), (64, 16384), (8, 2**18)]


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_bytes(fn) -> int:
    """Growth of the peak resident set while `fn()` runs."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current resident set
    start = _status("VmRSS")
    fn()
    return max(0, _status("VmHWM") - start)


def best_time(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def make_layers(name: str, num_codes: int, dim: int, codebook: torch.Tensor):
    """(eval-mode layer, train-mode layer, call) for one implementation, sharing `codebook`."""
    if name == "ours":
        plain = VectorQuantizer(num_codes, dim)
        # VQVAEConfig()'s recipe; k-means init is a one-off, so it is done before timing.
        recipe = VectorQuantizer(
            num_codes,
            dim,
            codebook_ema=True,
            codebook_ema_decay=0.99,
            kmeans_init=False,
            dead_code_restart=True,
            dead_code_threshold=0.5,
        )
        for layer in (plain, recipe):
            layer.codebook.data.copy_(codebook)
            if layer.codebook_ema:
                layer.ema_codebook_sum.copy_(codebook)

        def call(layer, latents):  # latents [N, D] -> [1, D, N, 1] feature map
            output = layer(latents.T[None, :, :, None])
            return output.quantized, QuantizerLossWeights()(output.terms)[0]

        return plain, recipe, call
    if name == "diffusers":
        from diffusers.models.autoencoders.vae import VectorQuantizer as DiffusersVectorQuantizer

        layer = DiffusersVectorQuantizer(num_codes, dim, beta=0.25, legacy=False)
        layer.embedding.weight.data.copy_(codebook)

        def call(layer, latents):
            quantized, loss, _ = layer(latents.T[None, :, :, None])
            return quantized, loss

        return layer, layer, call
    if name == "vq-pytorch":
        from vector_quantize_pytorch import VectorQuantize

        layer = VectorQuantize(dim=dim, codebook_size=num_codes)
        layer._codebook.embed.data.copy_(codebook[None])

        def call(layer, latents):
            quantized, _, loss = layer(latents[None])
            return quantized, loss

        return layer, layer, call
    raise ValueError(f"unknown implementation {name!r}")


# Bytes per N x K element that each peer materialises at once (distances, argmin temporaries,
# one-hot), measured at small sizes; used to skip runs that would not fit.
PEER_BYTES_PER_DISTANCE = {"diffusers": 8, "vq-pytorch": 16}


def run_shape(num_vectors: int, dim: int, num_codes: int, repeats: int, memory_limit: float, peers: list[str]):
    torch.manual_seed(0)
    latents = torch.randn(num_vectors, dim)
    codebook = torch.randn(num_codes, dim)
    rows = []
    if num_vectors * num_codes * 4 <= memory_limit:
        seconds = best_time(lambda: latents @ codebook.T, repeats)
        memory = peak_extra_bytes(lambda: latents @ codebook.T)
        rows.append(("matmul", "eval", seconds, None, memory))
    else:
        rows.append(("matmul", "eval", None, None, f"N x K = {num_vectors * num_codes * 4 / 2**30:.0f} GiB"))
    seconds = best_time(lambda: nearest_codebook_indices(latents, codebook), repeats)
    memory = peak_extra_bytes(lambda: nearest_codebook_indices(latents, codebook))
    rows.append(("ours search", "eval", seconds, None, memory))
    for name in ["ours", *peers]:
        if name != "ours" and num_vectors * num_codes * PEER_BYTES_PER_DISTANCE[name] > memory_limit:
            need = num_vectors * num_codes * PEER_BYTES_PER_DISTANCE[name] / 2**30
            rows.append((name, "eval", None, None, f"out of memory (needs ~{need:.0f} GiB)"))
            rows.append((name, "train", None, None, f"out of memory (needs ~{need:.0f} GiB)"))
            continue
        eval_layer, train_layer, call = make_layers(name, num_codes, dim, codebook)
        eval_layer.eval()  # the peers use one layer for both modes
        with torch.no_grad():
            forward = best_time(lambda layer=eval_layer, call=call: call(layer, latents), repeats)
            memory = peak_extra_bytes(lambda layer=eval_layer, call=call: call(layer, latents))
        rows.append((name, "eval", forward, None, memory))

        train_layer.train()
        trainable = latents.clone().requires_grad_()

        def train_step(layer=train_layer, call=call, trainable=trainable):
            quantized, loss = call(layer, trainable)
            (quantized.square().mean() + loss).backward()

        def train_forward(layer=train_layer, call=call, trainable=trainable):
            with torch.no_grad():
                call(layer, trainable)

        forward = best_time(train_forward, repeats)
        forward_backward = best_time(train_step, repeats)
        memory = peak_extra_bytes(train_step)
        rows.append((name, "train", forward, forward_backward, memory))
    return rows


def format_table(results, num_vectors: int) -> str:
    lines = [
        f"N = {num_vectors}, {torch.get_num_threads()} threads, times in ms (minimum over repeats), "
        "peak = extra resident memory",
        "",
        "| D | K | impl | mode | fwd ms | fwd+bwd ms | peak MiB | ours fwd is x faster | fwd / matmul |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (dim, num_codes), rows in results.items():
        times = {(name, mode): (forward, backward) for name, mode, forward, backward, _ in rows}
        matmul = times.get(("matmul", "eval"), (None, None))[0]
        for name, mode, forward, backward, memory in rows:
            ours = times.get(("ours", mode), (None, None))[0]
            cells = [str(dim), f"2^{num_codes.bit_length() - 1}", name, mode]
            cells.append(f"{forward * 1e3:.1f}" if forward is not None else "-")
            cells.append(f"{backward * 1e3:.1f}" if backward is not None else "-")
            cells.append(f"{memory / 2**20:.0f}" if isinstance(memory, int) else memory)
            speedup = forward / ours if forward is not None and ours and name != "ours" else None
            cells.append(f"{speedup:.2f}" if speedup is not None else "")
            cells.append(f"{forward / matmul:.2f}" if forward is not None and matmul else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tune(num_vectors: int, shapes, repeats: int) -> None:
    """Time block shapes of the search for each (D, K)."""
    candidates = [(64, 4096), (128, 2048), (256, 1024), (256, 4096), (512, 2048), (1024, 1024)]
    default = (search_module.DEFAULT_BLOCK_ROWS, search_module.DEFAULT_BLOCK_CODES)
    for dim, num_codes in shapes:
        latents, codebook = torch.randn(num_vectors, dim), torch.randn(num_codes, dim)
        timings = []
        for rows, codes in candidates:
            search_module.DEFAULT_BLOCK_ROWS, search_module.DEFAULT_BLOCK_CODES = rows, codes
            seconds = best_time(lambda x=latents, c=codebook: nearest_codebook_indices(x, c), repeats)
            timings.append(f"{rows}x{codes}: {seconds * 1e3:.0f} ms")
        print(f"D={dim} K={num_codes}: " + ", ".join(timings), flush=True)
    search_module.DEFAULT_BLOCK_ROWS, search_module.DEFAULT_BLOCK_CODES = default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 4096, three shapes, fewer repeats")
    parser.add_argument("--tune", action="store_true", help="time block shapes of our search instead")
    parser.add_argument("--num_vectors", type=int, default=None, help="N (default 16384, 4096 with --quick)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--memory_limit_gib", type=float, default=6.0, help="skip runs needing more")
    parser.add_argument("--peers", nargs="*", default=["diffusers", "vq-pytorch"])
    args = parser.parse_args()
    num_vectors = args.num_vectors or (4096 if args.quick else 16384)
    repeats = args.repeats or (2 if args.quick else 5)
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    if args.tune:
        tune(num_vectors, shapes, repeats)
        return
    print(f"load average at start: {os.getloadavg()}", flush=True)
    results = {}
    for dim, num_codes in shapes:
        results[(dim, num_codes)] = run_shape(
            num_vectors, dim, num_codes, repeats, args.memory_limit_gib * 2**30, args.peers
        )
        print(f"done D={dim} K={num_codes}", file=sys.stderr, flush=True)
    print(format_table(results, num_vectors))
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
