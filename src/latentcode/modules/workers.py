"""Worker threads that each run single-threaded torch ops, for CPU work split into shares.

Short ops run with intra-op threads each end in a barrier that, on a loaded machine, waits
for a descheduled thread; splitting the work into independent shares, one per worker thread
running its ops on one core, has no barrier but the final join (`benchmarks/bench_quantizers.py`
and `benchmarks/bench_models.py` measure the code that uses it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

_POOLS: dict[int, ThreadPoolExecutor] = {}


def worker_pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of `workers` threads, each with one intra-op thread."""
    if workers not in _POOLS:
        # set_num_threads in a worker sets that thread's OpenMP / MKL thread count only.
        _POOLS[workers] = ThreadPoolExecutor(
            workers, thread_name_prefix="latentcode-worker", initializer=torch.set_num_threads, initargs=(1,)
        )
    return _POOLS[workers]


def run_in_workers(work: Callable[[int], None], shares: Sequence[int], workers: int) -> None:
    """`work(share)` for every share, spread over `workers` threads; returns when all are done.

    Inference mode is thread-local: workers enter it when the caller is in it, so that they
    may write into the caller's inference tensors.
    """
    in_inference_mode = torch.is_inference_mode_enabled()

    def run(share: int) -> None:
        with torch.inference_mode(in_inference_mode):
            work(share)

    for future in [worker_pool(workers).submit(run, share) for share in shares]:
        future.result()
