"""Worker threads that each run single-threaded torch ops, for CPU work split into shares.

Short ops run with intra-op threads each end in a barrier that, on a loaded machine, waits
for a descheduled thread; splitting the work into independent shares, one per worker thread
running its ops on one core, has no barrier but the final join (`benchmarks/bench_quantizers.py`
measures the nearest-code search, the code that uses it).

The threads belong to a [`WorkerPool`]: started on its first use, stopped by its `close()` (or at
the end of a `with` block). The nearest-code search uses `SHARED_POOL`, which the interpreter
closes at exit; `SHARED_POOL.close()` frees its threads earlier, and it restarts when used again.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch


class WorkerPool:
    """A pool of threads, each with one intra-op thread, that grows to the most workers asked for."""

    def __init__(self):
        self._executor: ThreadPoolExecutor | None = None
        self._size = 0
        self._lock = threading.Lock()

    def _executor_for(self, workers: int) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None or self._size < workers:
                if self._executor is not None:
                    self._executor.shutdown(wait=True)
                # set_num_threads in a worker sets that thread's OpenMP / MKL thread count only.
                self._executor = ThreadPoolExecutor(
                    workers, thread_name_prefix="latentcode-worker", initializer=torch.set_num_threads, initargs=(1,)
                )
                self._size = workers
            return self._executor

    def run(self, work: Callable[[int], None], shares: Sequence[int], workers: int) -> None:
        """`work(share)` for every share, spread over `workers` threads; returns when all are done.

        Inference mode is thread-local: workers enter it when the caller is in it, so that they
        may write into the caller's inference tensors.
        """
        in_inference_mode = torch.is_inference_mode_enabled()

        def run(share: int) -> None:
            with torch.inference_mode(in_inference_mode):
                work(share)

        executor = self._executor_for(workers)
        for future in [executor.submit(run, share) for share in shares]:
            future.result()

    def close(self) -> None:
        """Stop the threads (after the work they hold); the next `run` starts new ones."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            self._executor, self._size = None, 0

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


SHARED_POOL = WorkerPool()
atexit.register(SHARED_POOL.close)


def run_in_workers(work: Callable[[int], None], shares: Sequence[int], workers: int) -> None:
    """`SHARED_POOL.run(work, shares, workers)`."""
    SHARED_POOL.run(work, shares, workers)
